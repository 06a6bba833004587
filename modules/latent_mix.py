"""AdaptBIR's dual-encoder latent interpolation.

``z = (1 - k) * z_R + k * z_I`` where ``z_R`` is the restoration encoder's latent and ``z_I`` the SD (internal)
VAE encoder's latent, both the posterior mode after ``quant_conv`` (ComfyUI's raw LATENT space). AdaptBIR mixes
after ``post_quant_conv``; since that layer is affine (a 1x1 convolution) and the weights sum to 1, mixing before
or after it gives the same result, so the raw-space mix is what a ComfyUI sampler or VAE Decode takes.
"""

from __future__ import annotations

import torch


def mix_latents(z_restoration: torch.Tensor, z_internal: torch.Tensor, k) -> torch.Tensor:
    """Interpolate two latents of the same shape with per-image weights.

    Args:
        z_restoration: (B, C, h, w) float latent of the restoration encoder (``k = 0`` returns it exactly).
        z_internal: (B, C, h, w) float latent of the internal SD encoder (``k = 1`` returns it exactly).
        k: a float, or a (B,) / (1,) tensor or sequence of floats, each in [0, 1].

    Returns:
        (B, C, h, w) in the dtype of ``z_restoration``: ``(1 - k) * z_R + k * z_I`` per image.
    """
    if z_restoration.shape != z_internal.shape:
        raise ValueError(f"latents: expected the restoration and internal latents to have the same shape, found "
                         f"{tuple(z_restoration.shape)} and {tuple(z_internal.shape)}")
    b = z_restoration.shape[0]
    k = torch.as_tensor(k, dtype=torch.float32).reshape(-1)
    if k.numel() == 1:
        k = k.expand(b)
    if k.numel() != b:
        raise ValueError(f"k: expected 1 or {b} values (one per image), found {k.numel()}")
    if not bool(torch.isfinite(k).all()) or bool((k < 0).any()) or bool((k > 1).any()):
        raise ValueError(f"k: expected values in [0, 1], found {k.tolist()}")
    k = k.to(device=z_restoration.device, dtype=z_restoration.dtype).view(b, *([1] * (z_restoration.ndim - 1)))
    z_internal = z_internal.to(device=z_restoration.device, dtype=z_restoration.dtype)
    return (1 - k) * z_restoration + k * z_internal
