"""Face parsing network (ParseNet from PSFRGAN, as facexlib ships it for DiffBIR's paste masks) and the paste mask.

A re-implementation whose state-dict keys and shapes are those of facexlib's ``parsing_parsenet.pth``
(``ParseNet(in_size=512, out_size=512, parsing_ch=19)``; facexlib: MIT). Blocks are read from a state dict:

- ``encoder.0``: 3x3 conv (reflection padding, bias) 3 -> base channels; ``encoder.1..``: residual blocks that
  halve the size (stride-2 second conv; shortcut = a stride-2 3x3 conv with bias);
- ``body.*``: residual blocks at the smallest size (identity shortcut), added to the encoder output;
- ``decoder.*``: residual blocks that double the size (nearest x2 before the first conv and in the shortcut);
- residual block convs: reflection pad, 3x3 conv without bias, BatchNorm, LeakyReLU 0.2 after the first only;
- ``out_mask_conv`` (19 class logits) and ``out_img_conv`` (unused here).

Input (B, 3, H, W) RGB in [0, 1] (normalised to [-1, 1] inside, as facexlib does), H and W multiples of
2 ** (encoder blocks - 1); output (B, 19, H, W) class logits.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
import torch.nn.functional as F
from torch import nn

SIGNATURE_KEYS = ("encoder.0.conv2d.weight", "body.0.conv1.conv2d.weight", "decoder.0.conv1.conv2d.weight",
                  "out_mask_conv.conv2d.weight")
# facexlib's paste: classes 1..13 and 15 are the face (skin, brows, eyes, glasses, ears, nose, mouth, lips...).
FACE_CLASSES = (1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 15)


class _Conv(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int = 1, up: bool = False, bn: bool = False,
                 act: bool = False):
        super().__init__()
        self.up, self.stride, self.act = up, stride, act
        self.conv2d = nn.Conv2d(cin, cout, 3, stride, bias=not bn)
        if bn:
            self.norm = nn.Module()
            self.norm.norm = nn.BatchNorm2d(cout)

    def forward(self, x):
        if self.up:
            x = F.interpolate(x, scale_factor=2, mode="nearest")
        x = self.conv2d(F.pad(x, (1, 1, 1, 1), mode="reflect"))
        if hasattr(self, "norm"):
            x = self.norm.norm(x)
        return F.leaky_relu(x, 0.2) if self.act else x


class _Res(nn.Module):
    def __init__(self, cin: int, cout: int, scale: str):
        super().__init__()
        self.shortcut_func = None
        if scale != "none" or cin != cout:
            self.shortcut_func = _Conv(cin, cout, 2 if scale == "down" else 1, up=scale == "up")
        self.conv1 = _Conv(cin, cout, up=scale == "up", bn=True, act=True)
        self.conv2 = _Conv(cout, cout, 2 if scale == "down" else 1, bn=True)

    def forward(self, x):
        short = x if self.shortcut_func is None else self.shortcut_func(x)
        return short + self.conv2(self.conv1(x))


class ParseNet(nn.Module):
    """``blocks``: {"encoder": [(cin, cout)...] of the down blocks, "body": [ch...], "decoder": [(cin, cout)...],
    "base": channels of encoder.0, "classes": parsing classes}."""

    def __init__(self, blocks: dict, device=None, dtype=None):
        super().__init__()
        self.blocks = blocks
        with torch.device(device) if device is not None else torch.device("cpu"):
            self.encoder = nn.Sequential(_Conv(3, blocks["base"]), *(_Res(a, b, "down") for a, b in blocks["encoder"]))
            self.body = nn.Sequential(*(_Res(c, c, "none") for c in blocks["body"]))
            self.decoder = nn.Sequential(*(_Res(a, b, "up") for a, b in blocks["decoder"]))
            last = blocks["decoder"][-1][1] if blocks["decoder"] else blocks["base"]
            self.out_img_conv = _Conv(last, 3)
            self.out_mask_conv = _Conv(last, blocks["classes"])
        if dtype is not None:
            self.to(dtype)
        self.eval()

    @property
    def multiple(self) -> int:
        return 2 ** len(self.blocks["encoder"])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.ndim != 4 or x.shape[1] != 3 or x.shape[-1] % self.multiple or x.shape[-2] % self.multiple:
            raise ValueError(f"x: expected (B, 3, H, W) RGB with H, W multiples of {self.multiple}, found "
                             f"{tuple(x.shape)}")
        feat = self.encoder(x * 2.0 - 1.0)
        return self.out_mask_conv(self.decoder(feat + self.body(feat)))


def parsenet_blocks_from_state_dict(sd: Mapping) -> dict:
    missing = [k for k in SIGNATURE_KEYS if k not in sd]
    if missing:
        raise ValueError(f"expected ParseNet keys such as {missing[0]!r}")

    def count(prefix):
        return len({int(k.split(".")[1]) for k in sd if k.startswith(prefix + ".")})

    def io(prefix, i):
        w = sd[f"{prefix}.{i}.conv1.conv2d.weight"]
        return int(w.shape[1]), int(w.shape[0])

    return {"base": int(sd["encoder.0.conv2d.weight"].shape[0]),
            "encoder": [io("encoder", i) for i in range(1, count("encoder"))],
            "body": [io("body", i)[0] for i in range(count("body"))],
            "decoder": [io("decoder", i) for i in range(count("decoder"))],
            "classes": int(sd["out_mask_conv.conv2d.weight"].shape[0])}


def build_parsenet(sd: Mapping, device=None, dtype=None) -> ParseNet:
    """A ParseNet of the state dict's blocks with its weights (strict, BatchNorm counters aside); ValueError names
    the first mismatch."""
    blocks = parsenet_blocks_from_state_dict(sd)
    net = ParseNet(blocks, device="meta")
    own = net.state_dict()
    missing = [k for k in own if k not in sd and not k.endswith("num_batches_tracked")]
    extra = [k for k in sd if k not in own]
    if missing or extra:
        what = f"missing {missing[0]!r}" if missing else f"unexpected {extra[0]!r}"
        raise ValueError(f"expected ParseNet weights (facexlib's layout), found a different layout ({what})")
    for k, v in own.items():
        if k in sd and tuple(sd[k].shape) != tuple(v.shape):
            raise ValueError(f"expected {k} of shape {tuple(v.shape)}, found {tuple(sd[k].shape)}")
    net = ParseNet(blocks, device=device, dtype=dtype)
    full = dict(net.state_dict())
    full.update({k: v for k, v in sd.items() if k in full})
    net.load_state_dict(full, strict=True)
    return net.eval()


def _gaussian_blur(x: torch.Tensor, sigma: float, size: int) -> torch.Tensor:
    r = size // 2
    t = torch.arange(-r, r + 1, dtype=x.dtype, device=x.device)
    k = torch.exp(-(t ** 2) / (2 * sigma ** 2))
    k = k / k.sum()
    pad = min(r, x.shape[-1] - 1, x.shape[-2] - 1)
    x = F.pad(x, (pad, pad, pad, pad), mode="reflect")
    x = F.pad(x, (r - pad,) * 4, mode="replicate") if r > pad else x
    x = F.conv2d(x, k.view(1, 1, 1, -1))
    return F.conv2d(x, k.view(1, 1, -1, 1))


def face_mask(logits: torch.Tensor) -> torch.Tensor:
    """(B, H, W) soft paste mask in [0, 1] from (B, 19, H, W) parsing logits, as facexlib makes it at 512: the face
    classes as 1, blurred twice (Gaussian, sigma 11, 101 px; scaled to H), 10 px borders (scaled) set to 0."""
    h = logits.shape[-2]
    s = h / 512.0
    labels = logits.argmax(1)
    mask = torch.zeros_like(labels, dtype=torch.float32)
    for c in FACE_CLASSES:
        mask[labels == c] = 1.0
    mask = mask[:, None]
    size = max(3, round(101 * s) | 1)
    for _ in range(2):
        mask = _gaussian_blur(mask, 11.0 * s, size)
    b = max(1, round(10 * s))
    mask[..., :b, :] = 0
    mask[..., -b:, :] = 0
    mask[..., :, :b] = 0
    mask[..., :, -b:] = 0
    return mask[:, 0].clamp(0, 1)
