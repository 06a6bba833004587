"""HYPIR (XPixelGroup/HYPIR, SD 2.1 one-step restoration): its LoRA file layout and its one-step formulas.

HYPIR's SD2 enhancer (``HYPIR/enhancer/sd2.py``, ``base.py``) restores in one UNet pass:

1. the image in [0, 1] (optionally bicubic-upscaled) is the colour reference; if its short side is at most
   ``patch_size`` (512) it is bicubic-resized (antialiased) so the short side is ``patch_size``;
2. mapped to [-1, 1], padded on the right/bottom with 0 (mid grey) to a multiple of 8, VAE-encoded;
3. ``z_in = z * scaling_factor`` (0.18215); ``eps = UNet(z_in, t=model_t, text)`` (empty prompt by default);
4. ``x0 = (z_in - sqrt(1 - a_c) * eps) / sqrt(a_c)`` with ``a_c = alphas_cumprod[coeff_t]`` (diffusers'
   ``DDPMScheduler.step(...).pred_original_sample``, epsilon prediction, no clipping); ``model_t = coeff_t = 200``;
5. ``x0 / scaling_factor`` decoded, cropped to the unpadded size, mapped to [0, 1], resized (bicubic, antialias)
   back to the reference size, then the wavelet colour fix against the reference.

Its weight file (``HYPIR_sd2.pth``) is the state dict of the LoRA parameters of a diffusers UNet2DConditionModel
after ``add_adapter(LoraConfig(r=256, lora_alpha=256, target_modules=LORA_MODULES))``: keys
``<diffusers module>.lora_A.default.weight`` (r, in[, kh, kw]) and ``...lora_B.default.weight`` (out, r[, 1, 1]),
so the LoRA scale is alpha / rank = 1.

In ComfyUI's k-diffusion terms (sigma = sqrt((1 - a) / a)), for an eps model called at sigma_m = sigma(model_t)
with input ``x = z_in * sqrt(sigma_m^2 + 1)`` the model sees exactly ``z_in`` at ``model_t`` and returns
``D = x - sigma_m * eps``; HYPIR's x0 is ``z_in * sqrt(sigma_c^2 + 1) - sigma_c * eps`` (:func:`x0_from_denoised`).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

MODEL_T = 200
COEFF_T = 200
LORA_RANK = 256
PATCH_SIZE = 512
LORA_MODULES = ("to_k", "to_q", "to_v", "to_out.0", "conv", "conv1", "conv2", "conv_shortcut", "conv_out",
                "proj_in", "proj_out", "ff.net.2", "ff.net.0.proj")
ADAPT_MODES = ("off", "strength", "timestep", "both")
_SUFFIXES = {".lora_A.default.weight": "A", ".lora_B.default.weight": "B", ".lora_A.weight": "A",
             ".lora_B.weight": "B"}
_PREFIXES = ("base_model.model.", "unet.")


def _split(key: str) -> tuple[str, str] | None:
    for suffix, part in _SUFFIXES.items():
        if key.endswith(suffix):
            base = key[:-len(suffix)]
            for p in _PREFIXES:
                if base.startswith(p):
                    base = base[len(p):]
            return base, part
    return None


def is_hypir_lora(keys) -> bool:
    """True when every tensor name is a peft LoRA name (``....lora_A/B[.default].weight``) and there is one."""
    keys = list(keys)
    return bool(keys) and all(_split(str(k)) is not None for k in keys)


def hypir_lora_to_comfy(sd: dict, diffusers_to_unet: dict) -> tuple[dict, int]:
    """HYPIR's LoRA state dict as ComfyUI's generic LoRA layout, and its rank.

    Args:
        sd: HYPIR's saved LoRA parameters (see the module docstring), float tensors.
        diffusers_to_unet: diffusers UNet weight name (``down_blocks.0.resnets.0.conv1.weight``) -> ComfyUI UNet
            weight name (``input_blocks.1.0.in_layers.2.weight``), i.e. ``comfy.utils.unet_to_diffusers``.

    Returns:
        ``({"diffusion_model.<name>.lora_A.weight": A, "...lora_B.weight": B, "...alpha": rank}, rank)``: a LoRA
        that ComfyUI's ``comfy.lora.load_lora`` applies with scale alpha / rank = 1, as HYPIR does.

    Raises:
        ValueError naming the first key that is not a HYPIR LoRA key, a layer missing its A or B half, a layer that
        the UNet does not have, or ranks that differ.
    """
    pairs: dict[str, dict[str, torch.Tensor]] = {}
    for key, t in sd.items():
        split = _split(str(key))
        if split is None:
            raise ValueError(f"found a tensor that is not a HYPIR LoRA weight ({key})")
        pairs.setdefault(split[0], {})[split[1]] = t
    out, ranks = {}, set()
    for base, ab in sorted(pairs.items()):
        if set(ab) != {"A", "B"}:
            raise ValueError(f"found layer {base} with only its lora_{''.join(ab)} half")
        target = diffusers_to_unet.get(base + ".weight")
        if target is None:
            raise ValueError(f"found layer {base}, which this SD 2.x UNet does not have")
        a, b = ab["A"], ab["B"]
        if a.ndim < 2 or b.ndim < 2 or a.shape[0] != b.shape[1]:
            raise ValueError(f"found layer {base} with lora_A {tuple(a.shape)} and lora_B {tuple(b.shape)}, "
                             f"whose ranks do not match")
        ranks.add(int(a.shape[0]))
        name = "diffusion_model." + target[:-len(".weight")]
        out[name + ".lora_A.weight"] = a
        out[name + ".lora_B.weight"] = b
        out[name + ".alpha"] = torch.tensor(float(a.shape[0]))
    if len(ranks) != 1:
        raise ValueError(f"found layers of different ranks {sorted(ranks)}")
    return out, ranks.pop()


def sigma_of(alphas_cumprod_t: float) -> float:
    """k-diffusion sigma of a DDPM timestep: sqrt((1 - a) / a)."""
    return math.sqrt((1.0 - alphas_cumprod_t) / alphas_cumprod_t)


def x0_from_denoised(z_in: torch.Tensor, denoised: torch.Tensor, sigma_m: float, sigma_c: float) -> torch.Tensor:
    """HYPIR's x0 from an eps model's k-diffusion output.

    Args:
        z_in: (B, 4, h, w) scaled latent the UNet saw; denoised: D = z_in * sqrt(sigma_m^2 + 1) - sigma_m * eps
            (same shape); sigma_m, sigma_c: sigmas of model_t and coeff_t (> 0).
    Returns:
        z_in * sqrt(sigma_c^2 + 1) - sigma_c * eps, i.e. (z_in - sqrt(1 - a_c) eps) / sqrt(a_c), in z_in's dtype.
    """
    x = z_in * math.sqrt(sigma_m ** 2 + 1.0)
    eps = (x - denoised) / sigma_m
    return z_in * math.sqrt(sigma_c ** 2 + 1.0) - sigma_c * eps


def resize_at_least(img: torch.Tensor, size: int) -> torch.Tensor:
    """HYPIR's ``resize_at_least``: (B, C, H, W) bicubic-resized (antialias) so the short side is ``size`` (the long
    side ``int(long * size / short)``); a square becomes size x size."""
    h, w = img.shape[-2:]
    if h == w:
        nh, nw = size, size
    elif h < w:
        nh, nw = size, int(w * (size / h))
    else:
        nh, nw = int(h * (size / w)), size
    return F.interpolate(img, size=(nh, nw), mode="bicubic", antialias=True)


def prepare_lq(image: torch.Tensor, upscale: float, patch_size: int) -> tuple[torch.Tensor, torch.Tensor, tuple]:
    """HYPIR's input steps 1-2 in [0, 1] space.

    Args: image (B, 3, H, W) float in [0, 1]; upscale >= 1 (bicubic factor, 1 = none); patch_size > 0.
    Returns: (reference (B, 3, H', W') in [0, 1], padded (B, 3, h1 + ph, w1 + pw) in [0, 1] where the padding is
        0.5 = HYPIR's 0 in [-1, 1], (h1, w1) the unpadded size of the encoded image).
    """
    lq = image if upscale == 1 else F.interpolate(image, scale_factor=upscale, mode="bicubic")
    ref = lq
    if min(lq.shape[-2:]) <= patch_size:
        lq = resize_at_least(lq, patch_size)
    h1, w1 = lq.shape[-2:]
    ph, pw = (-h1) % 8, (-w1) % 8
    padded = F.pad(lq * 2 - 1, (0, pw, 0, ph), mode="constant", value=0.0)
    return ref, (padded + 1) / 2, (h1, w1)


def finish(decoded: torch.Tensor, ref: torch.Tensor, size: tuple, color_fix: str) -> torch.Tensor:
    """HYPIR's step 5 after decoding: (B, 3, H, W) in [0, 1] (the decoder's (x + 1) / 2) cropped to ``size``,
    resized to ``ref``'s size (bicubic, antialias), colour-fixed ("wavelet", "adain" or "none"), clamped to [0, 1]."""
    from .colorfix import adain_color_fix, wavelet_color_fix

    x = decoded[..., :size[0], :size[1]]
    x = F.interpolate(x, size=tuple(ref.shape[-2:]), mode="bicubic", antialias=True)
    if color_fix == "wavelet":
        x = wavelet_color_fix(x, ref, clamp=False)
    elif color_fix == "adain":
        x = adain_color_fix(x, ref)
    return x.clamp(0.0, 1.0)


def adapt_factors(classes, mild_factor: float) -> list[float]:
    """Per-image factor from IQA classes: severe 1, medium (1 + mild_factor) / 2, mild ``mild_factor``."""
    table = {"severe": 1.0, "medium": (1.0 + mild_factor) / 2.0, "mild": float(mild_factor)}
    return [table[c] for c in classes]
