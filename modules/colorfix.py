"""Colour correction of a diffusion result against the stage-1 (high-fidelity) image.

``wavelet_color_fix`` is DiffBIR's default (v2/v2.1; borrowed by DiffBIR from StableSR): keep the
high frequencies of the generated image and take the lowest band (colour, illumination) from the
reference. ``adain_color_fix`` is DiffBIR v1's alternative: per-image, per-channel mean/std matching.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F


def _check_pair(content, reference) -> None:
    if not isinstance(content, torch.Tensor) or content.ndim != 4 or content.shape[1] != 3 \
            or not content.is_floating_point():
        raise ValueError(f"content: expected a floating tensor (B,3,H,W), found {type(content).__name__} "
                         f"{tuple(getattr(content, 'shape', ()))} {getattr(content, 'dtype', '')}")
    if not isinstance(reference, torch.Tensor) or not reference.is_floating_point():
        raise ValueError(f"reference: expected a floating tensor (B,3,H,W), found {type(reference).__name__}")
    if reference.shape != content.shape:
        raise ValueError(f"reference: expected the content's shape {tuple(content.shape)} (resize it first), "
                         f"found {tuple(reference.shape)}")


def _work_dtype(x: torch.Tensor) -> torch.dtype:
    return torch.float64 if x.dtype == torch.float64 else torch.float32


def _low_band(image: torch.Tensor, levels: int) -> torch.Tensor:
    """Lowest band after ``levels`` dilated 3x3 binomial blurs (dilation 2^i, replicate padding)."""
    row = torch.tensor([1.0, 2.0, 1.0], dtype=image.dtype, device=image.device)
    kernel = (row[:, None] * row[None, :] / 16.0).expand(image.shape[1], 1, 3, 3).contiguous()
    for i in range(levels):
        d = 2 ** i
        image = F.conv2d(F.pad(image, (d, d, d, d), mode="replicate"), kernel, dilation=d, groups=image.shape[1])
    return image


def wavelet_color_fix(content: torch.Tensor, reference: torch.Tensor, levels: int = 5,
                      clamp: bool = True) -> torch.Tensor:
    """Wavelet colour fix: high frequencies of ``content`` + lowest band of ``reference``.

    The decomposition blurs ``levels`` times with [1,2,1] x [1,2,1] / 16 at dilation 2^i (i = 0..levels-1,
    replicate padding); the high-frequency part is the telescoping sum of the per-level differences,
    i.e. content - low(content), so the result is content - low(content) + low(reference).
    Clamping: DiffBIR does not clamp here (only when converting to uint8 after its final resize);
    with ``clamp=True`` (default, ComfyUI IMAGE range) the result is clamped to [0,1]; pass
    ``clamp=False`` to keep the raw values, e.g. when resizing afterwards.

    Args: content, reference (B,3,H,W) float in [0,1] of the same shape; levels int >= 1.
    Returns: (B,3,H,W) in content's dtype (float32 maths for half types), in [0,1] if clamp.
    """
    _check_pair(content, reference)
    if isinstance(levels, bool) or not isinstance(levels, int) or levels < 1:
        raise ValueError(f"levels: expected an int >= 1, found {levels!r}")
    dtype = _work_dtype(content)
    c = content.to(dtype)
    r = reference.to(device=c.device, dtype=dtype)
    out = c - _low_band(c, levels) + _low_band(r, levels)
    if clamp:
        out = out.clamp(0.0, 1.0)
    return out.to(content.dtype)


def adain_color_fix(content: torch.Tensor, reference: torch.Tensor, eps: float = 1e-5,
                    clamp: bool = True) -> torch.Tensor:
    """AdaIN colour fix: give each channel of each content image the reference's mean and std.

    std = sqrt(unbiased variance over H*W + eps) for both images (DiffBIR v1's ``calc_mean_std``);
    out = (content - mean_c) / std_c * std_r + mean_r, clamped to [0,1] when ``clamp`` (DiffBIR
    clamps only at uint8 conversion).
    Args: content, reference (B,3,H,W) float in [0,1], same shape, H*W >= 2; eps float > 0.
    Returns: (B,3,H,W) in content's dtype.
    """
    _check_pair(content, reference)
    if isinstance(eps, bool) or not isinstance(eps, (int, float)) or not eps > 0:
        raise ValueError(f"eps: expected a float > 0, found {eps!r}")
    b, ch, h, w = content.shape
    if h * w < 2:
        raise ValueError(f"content: expected at least 2 pixels per channel, found {h}x{w}")
    dtype = _work_dtype(content)
    c = content.to(dtype).reshape(b, ch, -1)
    r = reference.to(device=content.device, dtype=dtype).reshape(b, ch, -1)
    mean_c, mean_r = c.mean(dim=2, keepdim=True), r.mean(dim=2, keepdim=True)
    std_c = (c.var(dim=2, keepdim=True) + eps).sqrt()
    std_r = (r.var(dim=2, keepdim=True) + eps).sqrt()
    out = ((c - mean_c) / std_c * std_r + mean_r).reshape(b, ch, h, w)
    if clamp:
        out = out.clamp(0.0, 1.0)
    return out.to(content.dtype)
