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


# Sizes below which an image cannot be sampled meaningfully: it is always brought to SMALL_IMAGE_SHORT_SIDE on its
# short side (DiffBIR's rule); no resize may make a side longer than MAX_RESIZED_SIDE.
SMALL_IMAGE_SIDE = 64
SMALL_IMAGE_SHORT_SIDE = 512
MAX_RESIZED_SIDE = 8192


def short_side_size(height: int, width: int, min_side: int, small_side: int = SMALL_IMAGE_SIDE,
                    small_short_side: int = SMALL_IMAGE_SHORT_SIDE) -> tuple[int, int]:
    """The (height, width) an image of ``height`` x ``width`` px is resized to before encoding.

    The short side is brought up to ``min_side`` (0 = off) and, whatever ``min_side`` is, to ``small_short_side``
    when it is below ``small_side``; the long side keeps the aspect ratio, rounded to the nearest pixel (halves
    up). Sizes already large enough are returned unchanged; nothing is ever made smaller.
    """
    if height < 1 or width < 1:
        raise ValueError(f"size: expected positive height and width, found {height}x{width}")
    short, long = min(height, width), max(height, width)
    target = max(int(min_side), small_short_side if short < small_side else 0)
    if short >= target:
        return height, width
    new_long = max(target, (2 * long * target + short) // (2 * short))  # round(long * target / short), halves up
    return (target, new_long) if height <= width else (new_long, target)


def check_resized_size(height: int, width: int, new_height: int, new_width: int, name: str = "image",
                       max_side: int = MAX_RESIZED_SIDE) -> None:
    """Raise ValueError naming ``name`` when resizing ``height`` x ``width`` to ``new_height`` x ``new_width``
    would make a side longer than ``max_side`` px (a very thin image brought up to the minimum short side)."""
    if max(new_height, new_width) > max_side:
        raise ValueError(
            f"{name}: expected an image whose long side stays at most {max_side} px once its short side is "
            f"brought up to {min(new_height, new_width)} px, found {width}x{height} (width x height), which would "
            f"become {new_width}x{new_height}; crop it to a less extreme aspect ratio first")


def resize_bchw(x: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """Resize (B, C, H, W) float to ``height`` x ``width``: bicubic, antialiased, clamped to [0, 1].

    Any channel count (RGB, grey, RGBA). Computed in float32 and returned in ``x``'s dtype; returns ``x`` itself
    when the size is already right (no resampling, bit-identical).
    """
    if tuple(x.shape[-2:]) == (height, width):
        return x
    y = F.interpolate(x.to(torch.float32), size=(int(height), int(width)), mode="bicubic", align_corners=False,
                      antialias=True)
    return y.clamp(0.0, 1.0).to(x.dtype)


def restore_size_bhwc(image: torch.Tensor, height: int, width: int, resized_height: int | None = None,
                      resized_width: int | None = None) -> torch.Tensor:
    """Undo padding and an optional resize: crop a (B, H, W, C) image to its top-left ``resized_height`` x
    ``resized_width`` (the size before padding), then resize it back to ``height`` x ``width`` with
    :func:`resize_bchw` (bicubic, antialiased, clamped to [0, 1]) when the two sizes differ.

    ``resized_*`` None means the image was not resized (crop only, bit-exact). Any channel count survives, and the
    batch. Raises ValueError when the image is smaller than the crop.
    """
    rh = height if resized_height is None else int(resized_height)
    rw = width if resized_width is None else int(resized_width)
    out = crop_bhwc(image, rh, rw)
    if (rh, rw) == (height, width):
        return out
    return to_bhwc(resize_bchw(out.permute(0, 3, 1, 2), height, width))
