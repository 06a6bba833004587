"""RetinaFace face detector (ResNet-50 backbone), as facexlib ships it for DiffBIR's "unaligned faces" task.

A re-implementation whose state-dict keys and shapes are those of facexlib's released
``detection_Resnet50_Final.pth`` (facexlib's ``RetinaFace('resnet50')``; MIT licence), so that file loads into it:

- ``body.*``: torchvision's ResNet-50 up to ``layer4`` (stem conv 7x7/2 + BN + ReLU + max-pool 3x3/2, then
  ``layer1..4`` of 3, 4, 6, 3 bottlenecks, width 64, expansion 4, stride on the 3x3 conv); the outputs of
  ``layer2``, ``layer3``, ``layer4`` (strides 8, 16, 32) are used;
- ``fpn.*``: 1x1 conv+BN+LeakyReLU lateral layers ``output1..3`` to ``out_channels`` (256), top-down nearest
  up-sampling and addition, 3x3 ``merge2`` then ``merge1``;
- ``ssh1..3``: the SSH context module (3x3 branch of out/2 channels, 5x5 and 7x7 branches of out/4 built from
  stacked 3x3 convs; concatenated, ReLU);
- ``ClassHead.i``, ``BboxHead.i``, ``LandmarkHead.i`` (``.conv1x1``): per level, 2 anchors per position, 2 class
  logits, 4 box and 10 landmark offsets per anchor.

The LeakyReLU slope is 0.1 when ``out_channels`` <= 64 and 0 otherwise (facexlib's rule). Widths and block counts
are read from a state dict, so a narrower instance (tests) is the same architecture.

Input: (B, 3, H, W) RGB float in [0, 1]; it is turned into facexlib's input (BGR, 0..255, minus the mean
(104, 117, 123)). Anchors: min sizes (16, 32), (64, 128), (256, 512) at strides 8, 16, 32, centres at
``(j + 0.5) * stride``; offsets decoded with variances (0.1, 0.2); landmarks are (x, y) in input pixels, in the order
left eye, right eye, nose, left mouth corner, right mouth corner (as seen in the image).
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Mapping

import torch
import torch.nn.functional as F
from torch import nn

BGR_MEAN = (104.0, 117.0, 123.0)
MIN_SIZES = ((16, 32), (64, 128), (256, 512))
STEPS = (8, 16, 32)
VARIANCE = (0.1, 0.2)
NUM_ANCHORS = 2
R50 = {"width": 64, "blocks": (3, 4, 6, 3), "out_channels": 256}
SIGNATURE_KEYS = ("body.conv1.weight", "fpn.output1.0.weight", "ssh1.conv3X3.0.weight",
                  "ClassHead.0.conv1x1.weight", "LandmarkHead.0.conv1x1.weight")


def _conv_bn(cin: int, cout: int, k: int, leaky: float | None, stride: int = 1) -> nn.Sequential:
    layers = [nn.Conv2d(cin, cout, k, stride, k // 2, bias=False), nn.BatchNorm2d(cout)]
    if leaky is not None:
        layers.append(nn.LeakyReLU(leaky))
    return nn.Sequential(*layers)


class _Bottleneck(nn.Module):
    def __init__(self, cin: int, width: int, stride: int):
        super().__init__()
        cout = width * 4
        self.conv1 = nn.Conv2d(cin, width, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.conv2 = nn.Conv2d(width, width, 3, stride, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(width)
        self.conv3 = nn.Conv2d(width, cout, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(cout)
        self.downsample = None
        if stride != 1 or cin != cout:
            self.downsample = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x):
        y = F.relu(self.bn1(self.conv1(x)))
        y = F.relu(self.bn2(self.conv2(y)))
        y = self.bn3(self.conv3(y))
        return F.relu(y + (x if self.downsample is None else self.downsample(x)))


class _Body(nn.Module):
    """ResNet-50 (torchvision layout) without its pooling and classifier; returns layer2..4."""

    def __init__(self, width: int, blocks):
        super().__init__()
        self.conv1 = nn.Conv2d(3, width, 7, 2, 3, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        cin = width
        for i, n in enumerate(blocks):
            w = width * 2 ** i
            layer = []
            for j in range(n):
                layer.append(_Bottleneck(cin, w, 2 if (j == 0 and i > 0) else 1))
                cin = w * 4
            setattr(self, f"layer{i + 1}", nn.Sequential(*layer))

    def forward(self, x):
        x = F.max_pool2d(F.relu(self.bn1(self.conv1(x))), 3, 2, 1)
        c2 = self.layer2(self.layer1(x))
        c3 = self.layer3(c2)
        return c2, c3, self.layer4(c3)


class _SSH(nn.Module):
    def __init__(self, ch: int, leaky: float):
        super().__init__()
        self.conv3X3 = _conv_bn(ch, ch // 2, 3, None)
        self.conv5X5_1 = _conv_bn(ch, ch // 4, 3, leaky)
        self.conv5X5_2 = _conv_bn(ch // 4, ch // 4, 3, None)
        self.conv7X7_2 = _conv_bn(ch // 4, ch // 4, 3, leaky)
        self.conv7x7_3 = _conv_bn(ch // 4, ch // 4, 3, None)

    def forward(self, x):
        c5_1 = self.conv5X5_1(x)
        c7_2 = self.conv7X7_2(c5_1)
        return F.relu(torch.cat([self.conv3X3(x), self.conv5X5_2(c5_1), self.conv7x7_3(c7_2)], 1))


class _Head(nn.Module):
    def __init__(self, ch: int, per_anchor: int):
        super().__init__()
        self.per_anchor = per_anchor
        self.conv1x1 = nn.Conv2d(ch, NUM_ANCHORS * per_anchor, 1)

    def forward(self, x):
        y = self.conv1x1(x).permute(0, 2, 3, 1)
        return y.reshape(y.shape[0], -1, self.per_anchor)


class RetinaFace(nn.Module):
    """RetinaFace-R50 (facexlib's key layout). ``forward`` takes (B, 3, H, W) RGB float [0, 1] and returns
    (loc (B, P, 4), scores (B, P) face probability, landmarks (B, P, 10)) raw per anchor (P = all anchors of the
    three levels, in :func:`priors` order)."""

    def __init__(self, width: int = 64, blocks=(3, 4, 6, 3), out_channels: int = 256, device=None, dtype=None):
        super().__init__()
        if out_channels % 4:
            raise ValueError(f"out_channels: expected a multiple of 4, found {out_channels}")
        self.config = {"width": width, "blocks": tuple(blocks), "out_channels": out_channels}
        leaky = 0.1 if out_channels <= 64 else 0.0
        with torch.device(device) if device is not None else contextlib.nullcontext():
            self.body = _Body(width, blocks)
            self.fpn = nn.Module()
            for i in range(3):
                setattr(self.fpn, f"output{i + 1}", _conv_bn(width * 4 * 2 ** (i + 1), out_channels, 1, leaky))
            self.fpn.merge1 = _conv_bn(out_channels, out_channels, 3, leaky)
            self.fpn.merge2 = _conv_bn(out_channels, out_channels, 3, leaky)
            for i in range(3):
                setattr(self, f"ssh{i + 1}", _SSH(out_channels, leaky))
            self.ClassHead = nn.ModuleList(_Head(out_channels, 2) for _ in range(3))
            self.BboxHead = nn.ModuleList(_Head(out_channels, 4) for _ in range(3))
            self.LandmarkHead = nn.ModuleList(_Head(out_channels, 10) for _ in range(3))
        if dtype is not None:
            self.to(dtype)
        self.eval()

    def forward(self, x: torch.Tensor):
        if x.ndim != 4 or x.shape[1] != 3 or not x.is_floating_point():
            raise ValueError(f"x: expected a (B, 3, H, W) float RGB tensor, found {tuple(x.shape)} {x.dtype}")
        mean = torch.tensor(BGR_MEAN, device=x.device, dtype=x.dtype).view(1, 3, 1, 1)
        x = x.flip(1) * 255.0 - mean
        c2, c3, c4 = self.body(x)
        p1, p2, p3 = self.fpn.output1(c2), self.fpn.output2(c3), self.fpn.output3(c4)
        p2 = self.fpn.merge2(p2 + F.interpolate(p3, size=p2.shape[-2:], mode="nearest"))
        p1 = self.fpn.merge1(p1 + F.interpolate(p2, size=p1.shape[-2:], mode="nearest"))
        feats = [self.ssh1(p1), self.ssh2(p2), self.ssh3(p3)]
        loc = torch.cat([h(f) for h, f in zip(self.BboxHead, feats)], 1)
        conf = torch.cat([h(f) for h, f in zip(self.ClassHead, feats)], 1)
        landm = torch.cat([h(f) for h, f in zip(self.LandmarkHead, feats)], 1)
        return loc, conf.softmax(-1)[..., 1], landm


# ------------------------------------------------------------------------------------------------ state dicts


def normalize_retinaface_state_dict(sd: Mapping) -> dict:
    """A flat ``{key: tensor}`` copy: unwraps ``state_dict``/``model``/``net``/``params`` when the top level is not a
    state dict, strips ``module.`` (facexlib strips it too), keeps tensors only."""
    if not isinstance(sd, Mapping):
        raise TypeError(f"state dict: expected a mapping of names to tensors, found {type(sd).__name__}")
    for _ in range(3):
        if any(isinstance(v, torch.Tensor) for v in sd.values()):
            break
        inner = next((sd[k] for k in ("state_dict", "model", "net", "params") if isinstance(sd.get(k), Mapping)),
                     None)
        if inner is None:
            break
        sd = inner
    out = {}
    for k, v in sd.items():
        if isinstance(v, torch.Tensor):
            out[k.removeprefix("module.")] = v
    return out


def is_retinaface_keys(keys) -> bool:
    ks = set(keys)
    return all(k in ks for k in SIGNATURE_KEYS)


def retinaface_config_from_state_dict(sd: Mapping) -> dict:
    """(width, blocks, out_channels) read from the tensor shapes; ValueError naming what is missing."""
    missing = [k for k in SIGNATURE_KEYS if k not in sd]
    if missing:
        raise ValueError(f"expected RetinaFace keys such as {missing[0]!r}")
    width = int(sd["body.conv1.weight"].shape[0])
    blocks = []
    for i in range(1, 5):
        idx = {int(k.split(".")[2]) for k in sd if k.startswith(f"body.layer{i}.")}
        if not idx:
            raise ValueError(f"expected RetinaFace backbone keys body.layer{i}.*")
        blocks.append(max(idx) + 1)
    return {"width": width, "blocks": tuple(blocks), "out_channels": int(sd["fpn.output1.0.weight"].shape[0])}


def build_retinaface(sd: Mapping, device=None, dtype=None) -> RetinaFace:
    """A RetinaFace of the state dict's widths with its weights (strict: every key and shape must match, except
    BatchNorm's ``num_batches_tracked`` counters, which old files lack). ValueError names the first mismatch."""
    cfg = retinaface_config_from_state_dict(sd)
    net = RetinaFace(**cfg, device="meta")
    own = net.state_dict()
    missing = [k for k in own if k not in sd and not k.endswith("num_batches_tracked")]
    extra = [k for k in sd if k not in own]
    if missing or extra:
        what = f"missing {missing[0]!r}" if missing else f"unexpected {extra[0]!r}"
        raise ValueError(f"expected RetinaFace-R50 weights (facexlib's layout), found a different layout ({what}, "
                         f"{len(missing)} missing, {len(extra)} unexpected)")
    for k, v in own.items():
        if k in sd and tuple(sd[k].shape) != tuple(v.shape):
            raise ValueError(f"expected {k} of shape {tuple(v.shape)}, found {tuple(sd[k].shape)}")
    net = RetinaFace(**cfg, device=device, dtype=dtype)
    full = dict(net.state_dict())
    full.update({k: v for k, v in sd.items() if k in full})
    net.load_state_dict(full, strict=True)
    return net.eval()


# ------------------------------------------------------------------------------------------------ decoding


def priors(h: int, w: int, device=None) -> torch.Tensor:
    """(P, 4) anchors (cx, cy, size_x, size_y) in pixels of an (h, w) input, in the heads' order."""
    out = []
    for step, sizes in zip(STEPS, MIN_SIZES):
        fh, fw = math.ceil(h / step), math.ceil(w / step)
        cy, cx = torch.meshgrid((torch.arange(fh, device=device) + 0.5) * step,
                                (torch.arange(fw, device=device) + 0.5) * step, indexing="ij")
        grid = torch.stack([cx, cy], -1).reshape(-1, 1, 2).expand(-1, len(sizes), 2)
        size = torch.tensor(sizes, device=device, dtype=torch.float32).view(1, -1, 1).expand(grid.shape[0], -1, 2)
        out.append(torch.cat([grid, size], -1).reshape(-1, 4))
    return torch.cat(out).float()


def nms(boxes: torch.Tensor, scores: torch.Tensor, iou: float) -> torch.Tensor:
    """Indices kept by greedy non-maximum suppression, best score first. boxes (N, 4) x1, y1, x2, y2."""
    order = scores.argsort(descending=True)
    area = (boxes[:, 2] - boxes[:, 0]).clamp(min=0) * (boxes[:, 3] - boxes[:, 1]).clamp(min=0)
    keep = []
    while order.numel():
        i = order[0]
        keep.append(int(i))
        rest = order[1:]
        lt = torch.maximum(boxes[i, :2], boxes[rest, :2])
        rb = torch.minimum(boxes[i, 2:], boxes[rest, 2:])
        inter = (rb - lt).clamp(min=0).prod(-1)
        overlap = inter / (area[i] + area[rest] - inter).clamp(min=1e-9)
        order = rest[overlap <= iou]
    return torch.tensor(keep, dtype=torch.long)


def decode(loc: torch.Tensor, scores: torch.Tensor, landm: torch.Tensor, anchors: torch.Tensor,
           threshold: float, iou: float):
    """One image's raw outputs -> (boxes (n, 4) x1 y1 x2 y2, scores (n,), landmarks (n, 5, 2)), in input pixels,
    best first: anchors over ``threshold``, then NMS at ``iou``."""
    v0, v1 = VARIANCE
    sel = scores > threshold
    loc, scores, landm, a = loc[sel].float(), scores[sel].float(), landm[sel].float(), anchors[sel]
    centre = a[:, :2] + loc[:, :2] * v0 * a[:, 2:]
    size = a[:, 2:] * torch.exp(loc[:, 2:] * v1)
    boxes = torch.cat([centre - size / 2, centre + size / 2], 1)
    points = a[:, None, :2] + landm.view(-1, 5, 2) * v0 * a[:, None, 2:]
    keep = nms(boxes, scores, iou) if scores.numel() else torch.zeros(0, dtype=torch.long)
    return boxes[keep], scores[keep], points[keep]
