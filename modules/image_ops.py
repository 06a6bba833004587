"""Image layout, channel and padding helpers shared by the pack's modules.

ComfyUI IMAGE tensors are (B, H, W, C) float in [0, 1]; everything in ``modules/`` works on (B, C, H, W).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def check_image_bhwc(image, name: str = "image") -> torch.Tensor:
    """Validate a ComfyUI IMAGE: (B, H, W, C) floating tensor, B >= 1, C in {1, 3, 4}, finite values.

    Returns the tensor unchanged; raises ValueError naming ``name`` otherwise.
    """
    if not isinstance(image, torch.Tensor):
        raise ValueError(f"{name}: expected an IMAGE tensor (B, H, W, C), found {type(image).__name__}")
    if image.ndim != 4:
        raise ValueError(f"{name}: expected an IMAGE of shape (B, H, W, C), found shape {tuple(image.shape)}")
    b, h, w, c = image.shape
    if b == 0 or h == 0 or w == 0:
        raise ValueError(f"{name}: expected a non-empty image batch, found shape {tuple(image.shape)}")
    if c not in (1, 3, 4):
        raise ValueError(f"{name}: expected 1 (grey), 3 (RGB) or 4 (RGBA) channels, found {c}")
    if not image.is_floating_point():
        raise ValueError(f"{name}: expected a floating-point image in [0, 1], found dtype {image.dtype}")
    if not bool(torch.isfinite(image).all()):
        raise ValueError(f"{name}: expected finite values in [0, 1], found NaN or inf")
    return image


def to_rgb_bchw(image: torch.Tensor, name: str = "image") -> torch.Tensor:
    """ComfyUI IMAGE (B, H, W, C) -> (B, 3, H, W) float32 RGB in [0, 1].

    Grey (C = 1) is repeated to three channels; RGBA drops alpha (ComfyUI's LoadImage gives the alpha as a MASK).
    Values are clamped to [0, 1].
    """
    check_image_bhwc(image, name)
    x = image.to(torch.float32)
    if x.shape[-1] == 1:
        x = x.expand(-1, -1, -1, 3)
    elif x.shape[-1] == 4:
        x = x[..., :3]
    return x.permute(0, 3, 1, 2).clamp(0.0, 1.0).contiguous()


def to_bhwc(x: torch.Tensor) -> torch.Tensor:
    """(B, C, H, W) -> (B, H, W, C), contiguous."""
    return x.permute(0, 2, 3, 1).contiguous()


def pad_to_multiple(x: torch.Tensor, multiple: int, mode: str = "replicate") -> tuple[torch.Tensor, tuple[int, int]]:
    """Pad (B, C, H, W) on the bottom and right to the next multiple of ``multiple``.

    Args:
        x: (B, C, H, W) float.
        multiple: >= 1.
        mode: ``"replicate"`` (edge, AdaptBIR's choice) or ``"reflect"``/``"constant"``. ``reflect`` falls back
            to ``replicate`` when the pad is not smaller than the side it mirrors.

    Returns:
        ``(padded, (pad_bottom, pad_right))``; :func:`crop_bhwc` undoes it exactly.
    """
    if multiple < 1:
        raise ValueError(f"multiple: expected >= 1, found {multiple}")
    h, w = x.shape[-2:]
    pb = (-h) % multiple
    pr = (-w) % multiple
    if pb == 0 and pr == 0:
        return x, (0, 0)
    if mode == "reflect" and (pb >= h or pr >= w):
        mode = "replicate"
    return F.pad(x, (0, pr, 0, pb), mode=mode), (pb, pr)


def crop_bhwc(image: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """Crop a (B, H, W, C) image to its top-left ``height`` x ``width`` (undoes :func:`pad_to_multiple`)."""
    if height > image.shape[1] or width > image.shape[2]:
        raise ValueError(f"crop size: expected at most {tuple(image.shape[1:3])}, found {(height, width)}")
    return image[:, :height, :width, :].contiguous()


def upscale_min_side(x: torch.Tensor, min_side: int) -> torch.Tensor:
    """Bicubically upscale (B, C, H, W) so that min(H, W) >= ``min_side`` (aspect kept); no-op if already so."""
    h, w = x.shape[-2:]
    if min(h, w) >= min_side:
        return x
    scale = min_side / min(h, w)
    size = (max(min_side, round(h * scale)), max(min_side, round(w * scale)))
    return F.interpolate(x, size=size, mode="bicubic", align_corners=False).clamp(0.0, 1.0)


def downscale_max_side(x: torch.Tensor, max_side: int) -> torch.Tensor:
    """Area-downscale (B, C, H, W) so that max(H, W) <= ``max_side`` (aspect kept); no-op if ``max_side`` <= 0."""
    h, w = x.shape[-2:]
    if max_side <= 0 or max(h, w) <= max_side:
        return x
    scale = max_side / max(h, w)
    size = (max(1, round(h * scale)), max(1, round(w * scale)))
    return F.interpolate(x, size=size, mode="area")
