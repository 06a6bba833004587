"""Full-reference restoration metrics: PSNR, SSIM and LPIPS (pure torch).

Convention (BasicSR's ``calculate_psnr`` / ``calculate_ssim``, which pyiqa and most restoration papers follow):

* Images are (B, 3, H, W) float in [0, 1], RGB; they are clamped to [0, 1] and scaled to [0, 255] (no rounding to
  8 bits: an 8-bit image read from disk gives exactly BasicSR's numbers).
* ``crop_border`` pixels are removed from every side before measuring; for super-resolution use the scale factor.
* ``y_channel=True`` measures luma only: ITU-R BT.601 "studio swing" Y = 16 + 65.481 R + 128.553 G + 24.966 B
  (R, G, B in [0, 1]), so Y lies in [16, 235]; the peak stays 255.
* PSNR = 10 log10(255^2 / MSE) over all pixels (and channels) of each image; identical images give +inf.
* SSIM: Gaussian window 11x11, sigma 1.5, C1 = (0.01 * 255)^2, C2 = (0.03 * 255)^2, only windows fully inside the
  image ("valid"), averaged per channel, then over channels.
* LPIPS (Zhang et al. 2018, v0.1, AlexNet): inputs mapped to [-1, 1], the scaling layer, AlexNet's five ReLU
  outputs, unit-normalised over channels, squared difference, a 1x1 linear head per layer, spatial mean, summed.
  Lower is better. The state-dict layout is the ``lpips`` package's / pyiqa's (``net.sliceK.N.*``, ``linK.model.1
  .weight``); :func:`lpips_state_dict` also builds it from torchvision's AlexNet file plus a heads-only file.

All functions compute in float64 and return one value per image as a (B,) float64 tensor.
"""

from __future__ import annotations

import math
import re

import torch
import torch.nn.functional as F
from torch import nn

Y_WEIGHTS = (65.481, 128.553, 24.966)  # BT.601, R G B, for RGB in [0, 1] -> Y in [16, 235]
SSIM_WINDOW = 11
SSIM_SIGMA = 1.5


def _prepare(restored: torch.Tensor, reference: torch.Tensor, crop_border: int, y_channel: bool) -> tuple:
    """Both images as float64 on [0, 255], border-cropped, RGB (B, 3, h, w) or Y (B, 1, h, w)."""
    if restored.ndim != 4 or restored.shape[1] != 3:
        raise ValueError(f"expected (B, 3, H, W) RGB images, found shape {tuple(restored.shape)}")
    if restored.shape != reference.shape:
        raise ValueError(f"expected images of the same size, found {tuple(restored.shape[-2:])} (restored, "
                         f"batch {restored.shape[0]}) and {tuple(reference.shape[-2:])} (reference, batch "
                         f"{reference.shape[0]})")
    h, w = restored.shape[-2:]
    c = int(crop_border)
    if c < 0 or 2 * c >= min(h, w):
        raise ValueError(f"crop_border {c} leaves nothing of a {w}x{h} image")
    out = []
    for x in (restored, reference):
        x = x.detach().to(torch.float64).clamp(0.0, 1.0)
        if c:
            x = x[..., c:h - c, c:w - c]
        if y_channel:
            wts = torch.tensor(Y_WEIGHTS, dtype=torch.float64, device=x.device).view(1, 3, 1, 1)
            x = (x * wts).sum(1, keepdim=True) + 16.0
        else:
            x = x * 255.0
        out.append(x)
    return out[0], out[1]


def rgb_to_y(image: torch.Tensor) -> torch.Tensor:
    """BT.601 luma of (B, 3, H, W) RGB in [0, 1]: (B, 1, H, W) float64 in [16, 235] (the 0..255 scale)."""
    wts = torch.tensor(Y_WEIGHTS, dtype=torch.float64, device=image.device).view(1, 3, 1, 1)
    return (image.to(torch.float64).clamp(0, 1) * wts).sum(1, keepdim=True) + 16.0


def psnr(restored: torch.Tensor, reference: torch.Tensor, crop_border: int = 0, y_channel: bool = False):
    """PSNR in dB of each image pair, (B,) float64 (+inf where identical). Images (B, 3, H, W) in [0, 1]."""
    a, b = _prepare(restored, reference, crop_border, y_channel)
    mse = ((a - b) ** 2).flatten(1).mean(1)
    return 10.0 * torch.log10(255.0 ** 2 / mse)  # mse 0 -> +inf


def _gaussian_window(device) -> torch.Tensor:
    r = SSIM_WINDOW // 2
    x = torch.arange(-r, r + 1, dtype=torch.float64, device=device)
    g = torch.exp(-(x ** 2) / (2 * SSIM_SIGMA ** 2))
    return g / g.sum()


def ssim(restored: torch.Tensor, reference: torch.Tensor, crop_border: int = 0, y_channel: bool = False):
    """SSIM of each image pair, (B,) float64 in [-1, 1]. Images (B, 3, H, W) in [0, 1], each side >= 11 px after
    the border crop."""
    a, b = _prepare(restored, reference, crop_border, y_channel)
    if min(a.shape[-2:]) < SSIM_WINDOW:
        raise ValueError(f"SSIM needs images of at least {SSIM_WINDOW}x{SSIM_WINDOW} pixels after the border crop, "
                         f"found {a.shape[-1]}x{a.shape[-2]}")
    n, ch = a.shape[:2]
    g = _gaussian_window(a.device)
    kx, ky = g.view(1, 1, 1, -1), g.view(1, 1, -1, 1)

    def blur(t):  # separable Gaussian, valid windows only, each channel on its own
        t = t.reshape(n * ch, 1, *t.shape[-2:])
        return F.conv2d(F.conv2d(t, kx), ky)

    c1, c2 = (0.01 * 255) ** 2, (0.03 * 255) ** 2
    mu_a, mu_b = blur(a), blur(b)
    var_a = blur(a * a) - mu_a ** 2
    var_b = blur(b * b) - mu_b ** 2
    cov = blur(a * b) - mu_a * mu_b
    s = ((2 * mu_a * mu_b + c1) * (2 * cov + c2)) / ((mu_a ** 2 + mu_b ** 2 + c1) * (var_a + var_b + c2))
    return s.reshape(n, ch, -1).mean(2).mean(1)


# ------------------------------------------------------------------------------------------------------------------
# LPIPS (AlexNet, v0.1)
# ------------------------------------------------------------------------------------------------------------------

LPIPS_CHANNELS = (64, 192, 384, 256, 256)
# torchvision AlexNet ``features`` index -> LPIPS slice holding it (slices end at the five ReLUs)
_ALEX_SLICE = {0: 1, 2: 2, 3: 2, 5: 3, 6: 3, 8: 4, 10: 5}


class _Slices(nn.Module):
    """AlexNet's ``features`` cut after each ReLU, named like the lpips package (slice1..slice5, torchvision's
    layer indices inside)."""

    def __init__(self):
        super().__init__()
        layers = [nn.Conv2d(3, 64, 11, 4, 2), nn.ReLU(), nn.MaxPool2d(3, 2), nn.Conv2d(64, 192, 5, padding=2),
                  nn.ReLU(), nn.MaxPool2d(3, 2), nn.Conv2d(192, 384, 3, padding=1), nn.ReLU(),
                  nn.Conv2d(384, 256, 3, padding=1), nn.ReLU(), nn.Conv2d(256, 256, 3, padding=1), nn.ReLU()]
        bounds = [(0, 2), (2, 5), (5, 8), (8, 10), (10, 12)]
        for k, (lo, hi) in enumerate(bounds, start=1):
            s = nn.Sequential()
            for i in range(lo, hi):
                s.add_module(str(i), layers[i])
            setattr(self, f"slice{k}", s)

    def forward(self, x):
        feats = []
        for k in range(1, 6):
            x = getattr(self, f"slice{k}")(x)
            feats.append(x)
        return feats


class _Head(nn.Module):
    """One 1x1 linear head; ``model.1`` is where the lpips package keeps the weight (``model.0`` is dropout)."""

    def __init__(self, channels: int):
        super().__init__()
        self.model = nn.Sequential(nn.Identity(), nn.Conv2d(channels, 1, 1, bias=False))

    def forward(self, x):
        return self.model(x)


class LPIPS(nn.Module):
    """LPIPS v0.1 with an AlexNet trunk. ``forward(restored, reference)``: (B, 3, H, W) in [0, 1] (H, W >= 32)
    -> (B,) distance (float32 for float32 weights; 0 = same)."""

    def __init__(self):
        super().__init__()
        self.register_buffer("shift", torch.tensor([-0.030, -0.088, -0.188]).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("scale", torch.tensor([0.458, 0.448, 0.450]).view(1, 3, 1, 1), persistent=False)
        self.net = _Slices()
        for k, ch in enumerate(LPIPS_CHANNELS):
            setattr(self, f"lin{k}", _Head(ch))

    def forward(self, restored: torch.Tensor, reference: torch.Tensor) -> torch.Tensor:
        dtype = self.shift.dtype
        xs = [((2 * t.to(dtype).clamp(0, 1) - 1) - self.shift) / self.scale for t in (restored, reference)]
        fa, fb = self.net(xs[0]), self.net(xs[1])
        total = 0
        for k, (a, b) in enumerate(zip(fa, fb)):
            a = a / (a.pow(2).sum(1, keepdim=True).sqrt() + 1e-10)
            b = b / (b.pow(2).sum(1, keepdim=True).sqrt() + 1e-10)
            total = total + getattr(self, f"lin{k}")((a - b) ** 2).mean((2, 3))
        return total.flatten()


def lpips_state_dict(heads: dict, backbone: dict | None = None) -> dict:
    """The :class:`LPIPS` state dict from released files.

    ``heads``: the lpips package's ``weights/v0.1/alex.pth`` or pyiqa's ``LPIPS_v0.1_alex-*.pth`` (``linK.model.1
    .weight``; may already hold the trunk as ``net.sliceK.N.*``; a ``params`` wrapper is unwrapped). ``backbone``:
    torchvision's AlexNet file (``features.N.weight/bias``), needed only when ``heads`` has no trunk. Raises
    ValueError naming the missing keys.
    """
    if isinstance(heads.get("params"), dict):
        heads = heads["params"]
    # pyiqa's module also lists the heads a second time as ``lins.K.*``; the ``linK.*`` names are the file layout
    out = {k: v for k, v in heads.items() if re.match(r"(lin\d\.|net\.slice\d\.)", k)}
    if backbone is not None and not any(k.startswith("net.") for k in out):
        for key, v in backbone.items():
            parts = key.split(".")
            if len(parts) == 3 and parts[0] == "features" and int(parts[1]) in _ALEX_SLICE:
                out[f"net.slice{_ALEX_SLICE[int(parts[1])]}.{parts[1]}.{parts[2]}"] = v
    missing = sorted(set(LPIPS().state_dict()) - set(out))
    if missing:
        trunk = any(k.startswith("net.") for k in missing)
        raise ValueError(f"LPIPS (AlexNet v0.1) weights incomplete: {len(missing)} tensors missing (first: "
                         f"{missing[0]}); " + ("the AlexNet trunk (torchvision's alexnet-owt-*.pth) is needed "
                                              "besides the heads" if trunk else "the linear heads are missing"))
    return out


def build_lpips(state_dict: dict) -> LPIPS:
    """An eval-mode :class:`LPIPS` holding ``state_dict`` (see :func:`lpips_state_dict`), float32."""
    net = LPIPS()
    net.load_state_dict({k: v.float() for k, v in state_dict.items()}, strict=True)
    return net.eval().requires_grad_(False)


# ------------------------------------------------------------------------------------------------------------------
# tables
# ------------------------------------------------------------------------------------------------------------------

METRIC_COLUMNS = ("psnr", "ssim", "psnr_y", "ssim_y", "lpips", "musiq")
HIGHER_IS_BETTER = {"psnr": True, "ssim": True, "psnr_y": True, "ssim_y": True, "lpips": False, "musiq": True}


def mean_row(rows: list[dict]) -> dict:
    """Column means of ``rows`` (dicts of metric -> float or None); a column with a None anywhere stays None."""
    out = {}
    for col in METRIC_COLUMNS:
        vals = [r.get(col) for r in rows]
        out[col] = None if not vals or any(v is None for v in vals) else sum(vals) / len(vals)
    return out


def format_value(col: str, v) -> str:
    if v is None:
        return "-"
    if math.isinf(v):
        return "inf"
    return f"{v:.4f}" if col in ("ssim", "ssim_y", "lpips") else f"{v:.2f}"


def format_table(rows: list[dict], label: str = "image") -> str:
    """A fixed-width text table: one line per row (``rows[i][label]`` first), metric columns, a header with the
    better direction (up or down) of each."""
    cols = [c for c in METRIC_COLUMNS if any(r.get(c) is not None for r in rows)] or list(METRIC_COLUMNS[:2])
    head = [label] + [f"{c.upper()}{'↑' if HIGHER_IS_BETTER[c] else '↓'}" for c in cols]
    body = [[str(r.get(label, ""))] + [format_value(c, r.get(c)) for c in cols] for r in rows]
    widths = [max(len(line[i]) for line in [head] + body) for i in range(len(head))]
    fmt = lambda line: "  ".join(s.ljust(w) if i == 0 else s.rjust(w) for i, (s, w) in enumerate(zip(line, widths)))
    return "\n".join([fmt(head)] + [fmt(line) for line in body])
