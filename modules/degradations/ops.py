"""Batched degradation building blocks on (B, 3, H, W) float images in [0, 1], on any device.

Randomness only comes from the ``torch.Generator`` passed in; noise is drawn on the generator's device and moved
to the images' device (pass a generator on the images' device to avoid the copy). All functions return float32.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F

from .kernels import KERNEL_TYPES, check_generator

RESIZE_MODES = ("area", "bilinear", "bicubic")
GREY_WEIGHTS = (0.2989, 0.587, 0.114)  # ITU-R 601 luma, as torchvision's rgb_to_grayscale used by the reference


def check_images(images, name: str = "images") -> torch.Tensor:
    """Validate a batch (B, 3, H, W), B, H, W >= 1, floating dtype, finite values in [0, 1].

    Returns ``images`` as float32 (a no-op for float32 input); raises ValueError naming ``name`` otherwise.
    """
    if not isinstance(images, torch.Tensor):
        raise ValueError(f"{name}: expected a torch.Tensor (B, 3, H, W), found {type(images).__name__}")
    if images.ndim != 4:
        raise ValueError(f"{name}: expected rank 4 (B, 3, H, W), found shape {tuple(images.shape)}")
    if images.shape[1] != 3:
        raise ValueError(f"{name}: expected 3 (RGB) channels in dim 1, found {images.shape[1]}")
    if min(images.shape) < 1:
        raise ValueError(f"{name}: expected a non-empty batch, found shape {tuple(images.shape)}")
    if not images.is_floating_point():
        raise ValueError(f"{name}: expected a floating-point tensor in [0, 1], found dtype {images.dtype}")
    if not bool(torch.isfinite(images).all()):
        raise ValueError(f"{name}: expected finite values in [0, 1], found NaN or inf")
    lo, hi = float(images.min()), float(images.max())
    if lo < 0.0 or hi > 1.0:
        raise ValueError(f"{name}: expected values in [0, 1], found [{lo:.6g}, {hi:.6g}]")
    return images.to(torch.float32)


def per_sample(value, batch: int, name: str, device=None) -> torch.Tensor:
    """Broadcast a scalar or a (B,) sequence/tensor to a float32 (B,) tensor; ValueError naming ``name`` otherwise."""
    t = torch.as_tensor(value, dtype=torch.float32).reshape(-1)
    if t.numel() == 1:
        t = t.expand(batch)
    if t.numel() != batch:
        raise ValueError(f"{name}: expected a scalar or {batch} per-sample values, found {t.numel()}")
    if not bool(torch.isfinite(t).all()):
        raise ValueError(f"{name}: expected finite values, found {t.tolist()}")
    return t.to(device)


def reflect_pad(images: torch.Tensor, pad: int) -> torch.Tensor:
    """Pad H and W by ``pad`` on each side with mirror-without-edge-repeat (cv2 BORDER_REFLECT_101, torch
    ``"reflect"``), for any ``pad`` >= 0, also when ``pad`` >= the side (the mirror then repeats periodically,
    period 2 (n - 1)); a side of 1 pixel is replicated. (B, C, H, W) -> (B, C, H + 2 pad, W + 2 pad)."""
    if pad < 0:
        raise ValueError(f"pad: expected >= 0, found {pad}")

    def index(n: int) -> torch.Tensor:
        i = torch.arange(-pad, n + pad, device=images.device)
        if n == 1:
            return torch.zeros_like(i)
        period = 2 * (n - 1)
        m = torch.remainder(i, period)
        return torch.where(m < n, m, period - m)

    h, w = images.shape[-2:]
    return images.index_select(-2, index(h)).index_select(-1, index(w))


def filter2d(images: torch.Tensor, kernels: torch.Tensor) -> torch.Tensor:
    """Per-sample 2-D correlation with reflect (BORDER_REFLECT_101) padding, output the size of the input.

    Args:
        images: (B, C, H, W) float.
        kernels: (B, k, k) or (1, k, k) (one kernel for all samples), k odd; applied to every channel.

    Returns:
        float32 (B, C, H, W). Values may leave [0, 1] for kernels with negative taps (sinc); callers clamp.
    """
    if kernels.ndim != 3 or kernels.shape[-1] != kernels.shape[-2] or kernels.shape[-1] % 2 == 0:
        raise ValueError(f"kernels: expected (B, k, k) with k odd, found shape {tuple(kernels.shape)}")
    b, c, h, w = images.shape
    if kernels.shape[0] not in (1, b):
        raise ValueError(f"kernels: expected batch 1 or {b}, found {kernels.shape[0]}")
    k = kernels.shape[-1]
    x = reflect_pad(images.to(torch.float32), k // 2)
    weight = kernels.to(device=images.device, dtype=torch.float32).expand(b, k, k)
    weight = weight.unsqueeze(1).repeat_interleave(c, dim=0)  # (B*C, 1, k, k), sample-major like the channels
    out = F.conv2d(x.reshape(1, b * c, h + 2 * (k // 2), w + 2 * (k // 2)), weight, groups=b * c)
    return out.view(b, c, h, w)


def resize(images: torch.Tensor, size: Sequence[int], mode: str, scale_factor: float | None = None) -> torch.Tensor:
    """Resize the whole batch to one ``size`` with one ``mode`` (PyTorch ``F.interpolate`` conventions).

    Args:
        images: (B, C, H, W) float.
        size: target (h, w); each side is clamped to >= 1 (a downsample below one pixel gives one pixel).
        mode: ``"area"`` (adaptive average pooling), ``"bilinear"`` or ``"bicubic"`` (half-pixel centres,
            ``align_corners=False``, no anti-aliasing -- like cv2 INTER_LINEAR and the reference's interpolate).
        scale_factor: if given and it yields exactly ``size``, it is passed to interpolate instead of ``size``
            so the sampling grid matches the reference's ``interpolate(scale_factor=...)`` call.

    Returns:
        float32 (B, C, h, w). Bicubic can overshoot [0, 1]; callers clamp.

    Per-sample sizes cannot share one tensor; use :func:`resize_each` (loops over samples).
    """
    if mode not in RESIZE_MODES:
        raise ValueError(f"mode: expected one of {RESIZE_MODES}, found {mode!r}")
    h, w = max(1, int(size[0])), max(1, int(size[1]))
    x = images.to(torch.float32)
    if (h, w) == tuple(x.shape[-2:]):
        return x
    kw = {} if mode == "area" else {"align_corners": False}
    H, W = x.shape[-2:]
    if scale_factor is not None and (int(H * scale_factor), int(W * scale_factor)) == (h, w):
        return F.interpolate(x, scale_factor=float(scale_factor), mode=mode, **kw)
    return F.interpolate(x, size=(h, w), mode=mode, **kw)


def resize_each(images: torch.Tensor, sizes: Sequence[Sequence[int]], modes: Sequence[str]) -> list[torch.Tensor]:
    """Resize sample ``i`` to ``sizes[i]`` with ``modes[i]`` (see :func:`resize`); returns a list of B float32
    tensors (1, C, h_i, w_i), because the sizes generally differ. One call per sample."""
    if len(sizes) != images.shape[0] or len(modes) != images.shape[0]:
        raise ValueError(f"sizes/modes: expected {images.shape[0]} entries each, found {len(sizes)}/{len(modes)}")
    return [resize(images[i:i + 1], sizes[i], modes[i]) for i in range(images.shape[0])]


def _noise_like(shape, generator: torch.Generator, device) -> torch.Tensor:
    return torch.randn(shape, generator=generator, device=generator.device, dtype=torch.float32).to(device)


def add_gaussian_noise(images: torch.Tensor, sigma, gray, generator: torch.Generator, clip: bool = True):
    """Add zero-mean Gaussian noise of per-sample std ``sigma / 255``, colour or grey per sample.

    Args:
        images: (B, 3, H, W) float in [0, 1].
        sigma: scalar or (B,) std in 8-bit units (e.g. 15 means 15/255), >= 0.
        gray: scalar or (B,) bools; a grey sample gets one noise plane shared by its 3 channels.
        generator: source of the noise. Colour noise (B, 3, H, W) is always drawn; grey noise (B, 1, H, W) is
            drawn after it only if some sample is grey -- each sample its own field (the reference shares one).
        clip: clamp the result to [0, 1].

    Returns:
        float32 (B, 3, H, W), in [0, 1] when ``clip``.
    """
    check_generator(generator)
    b = images.shape[0]
    s = per_sample(sigma, b, "sigma", images.device).view(b, 1, 1, 1) / 255.0
    g = per_sample(gray, b, "gray", images.device).view(b, 1, 1, 1) > 0.5
    noise = _noise_like(images.shape, generator, images.device)
    if bool(g.any()):
        noise = torch.where(g, _noise_like((b, 1, *images.shape[2:]), generator, images.device), noise)
    out = images.to(torch.float32) + noise * s
    return out.clamp(0.0, 1.0) if clip else out


def _poisson_noise(x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    q = quantize_8bit(x)
    levels = torch.tensor([float(torch.unique(q[i]).numel()) for i in range(q.shape[0])], dtype=torch.float64)
    vals = torch.exp2(torch.ceil(torch.log2(levels))).to(torch.float32).to(x.device).view(-1, 1, 1, 1)
    rate = (q * vals).to(generator.device)
    return torch.poisson(rate, generator=generator).to(x.device) / vals - q


def add_poisson_noise(images: torch.Tensor, scale, gray, generator: torch.Generator, clip: bool = True):
    """Add Poisson (shot) noise, colour or grey per sample, scaled by ``scale`` (reference semantics).

    The image is rounded to 8-bit levels; with ``n`` = number of distinct levels of a sample rounded up to a power
    of two, the noise is ``Poisson(x8 * n) / n - x8`` (per channel, or on the luma
    ``0.2989 R + 0.587 G + 0.114 B`` for grey samples, then repeated over the channels), times ``scale``, added to
    the unrounded image.

    Args:
        images: (B, 3, H, W) float in [0, 1]; scale: scalar or (B,) >= 0; gray: scalar or (B,) bools;
        generator: source of the noise (colour field always drawn, grey after it if some sample is grey);
        clip: clamp the result to [0, 1].

    Returns:
        float32 (B, 3, H, W), in [0, 1] when ``clip``.
    """
    check_generator(generator)
    b = images.shape[0]
    x = images.to(torch.float32)
    sc = per_sample(scale, b, "scale", x.device).view(b, 1, 1, 1)
    g = per_sample(gray, b, "gray", x.device).view(b, 1, 1, 1) > 0.5
    noise = _poisson_noise(x, generator)
    if bool(g.any()):
        wts = torch.tensor(GREY_WEIGHTS, dtype=torch.float32, device=x.device).view(1, 3, 1, 1)
        noise = torch.where(g, _poisson_noise((x * wts).sum(1, keepdim=True), generator), noise)
    out = x + noise * sc
    return out.clamp(0.0, 1.0) if clip else out


def jpeg(images: torch.Tensor, quality) -> torch.Tensor:
    """JPEG encode-decode with a per-sample quality via ``kornia.enhance.jpeg_codec_differentiable``.

    Kornia's codec uses the standard IJG tables scaled by quality, 4:2:0 chroma subsampling and a differentiable
    (polynomial) rounding; it is not bit-exact with libjpeg/cv2 nor with BasicSR's DiffJPEG. The input is clamped to
    [0, 1] and padded to a multiple of 16 by edge replication (kornia 0.9 does the same internally; doing it here
    also covers releases that do not), the output cropped back and clamped to [0, 1]. No fallback codec exists: if the installed kornia lacks
    the function a RuntimeError says so.

    Args:
        images: (B, 3, H, W) float; quality: scalar or (B,) in [0, 100] (float qualities are used as given).

    Returns:
        float32 (B, 3, H, W) in [0, 1] (not rounded to 8-bit levels; use :func:`quantize_8bit`).
    """
    import kornia.enhance as ke  # local: keeps ``import modules.degradations`` light

    codec = getattr(ke, "jpeg_codec_differentiable", None)
    if codec is None:
        raise RuntimeError("kornia.enhance.jpeg_codec_differentiable is not available in the installed kornia; "
                           "install a kornia release that provides it (0.9.0 does)")
    b, _, h, w = images.shape
    q = per_sample(quality, b, "quality", images.device)
    if bool((q < 0).any()) or bool((q > 100).any()):
        raise ValueError(f"quality: expected values in [0, 100], found {q.tolist()}")
    x = images.to(torch.float32).clamp(0.0, 1.0)
    ph, pw = (-h) % 16, (-w) % 16
    if ph or pw:
        x = F.pad(x, (0, pw, 0, ph), mode="replicate")
    out = codec(x, q.contiguous())
    return out[..., :h, :w].clamp(0.0, 1.0)


def quantize_8bit(images: torch.Tensor) -> torch.Tensor:
    """Round to 8-bit levels and clamp: ``clamp(round(255 x), 0, 255) / 255`` (round half to even), float32."""
    return torch.clamp(torch.round(images.to(torch.float32) * 255.0), 0.0, 255.0) / 255.0


def resolve_options(defaults, overrides: dict, where: str) -> dict:
    """Merge ``overrides`` into a pipeline's read-only range dict, validating each by its key's kind.

    Kinds (by key name): ``*_types`` / ``*_modes``: non-empty subset of the known names; ``*_sizes`` and int
    entries: odd ints >= 1 (``*_below``: any int >= 1); ``*_probs``: as many non-negative weights as the default,
    positive sum; ``*_prob``: probability in [0, 1]; anything else: ``(lo, hi)``, lo <= hi, with lo > 0 for
    blur/beta/resize/downsample/omega ranges, lo <= 1 <= hi for beta and resize factor ranges, lo >= 0 for noise,
    0 <= lo <= hi <= 100 for JPEG. Raises ValueError naming the key; returns a new plain dict.
    """
    cfg = dict(defaults)
    for key, val in overrides.items():
        if key not in defaults:
            raise ValueError(f"{key}: unknown option of {where}; expected one of {sorted(defaults)}")
        d = defaults[key]
        if key.endswith(("_types", "_modes")):
            allowed = KERNEL_TYPES if key.endswith("_types") else RESIZE_MODES
            ok = isinstance(val, (tuple, list)) and len(val) > 0 and all(v in allowed for v in val)
            want = f"a non-empty sequence of names from {allowed}"
        elif key.endswith("_sizes") or isinstance(d, int):
            seq = val if key.endswith("_sizes") else [val]
            ok = isinstance(seq, (tuple, list)) and len(seq) > 0 and all(
                isinstance(v, int) and not isinstance(v, bool) and v >= 1 and (v % 2 == 1 or key.endswith("below"))
                for v in seq)
            want = "an int >= 1" if key.endswith("below") else "odd int(s) >= 1"
        elif key.endswith("_probs"):  # kernel weights are matched against kernel_types below
            n = len(val) if key.startswith("kernel") and isinstance(val, (tuple, list)) else len(d)
            ok = (isinstance(val, (tuple, list)) and len(val) == n and all(
                isinstance(v, (int, float)) and math.isfinite(v) and v >= 0 for v in val) and sum(val) > 0)
            want = f"{n} non-negative weights with a positive sum"
        elif key.endswith("_prob"):
            ok = isinstance(val, (int, float)) and not isinstance(val, bool) and 0.0 <= val <= 1.0
            want = "a probability in [0, 1]"
        else:  # (lo, hi) range
            ok = (isinstance(val, (tuple, list)) and len(val) == 2 and all(
                isinstance(v, (int, float)) and math.isfinite(v) for v in val) and val[0] <= val[1])
            want = "(lo, hi) with lo <= hi"
            if ok and any(s in key for s in ("blur", "beta", "resize", "downsample", "omega")):
                ok, want = val[0] > 0, "(lo, hi) with 0 < lo <= hi"
            if ok and ("beta" in key or key.startswith("resize")):
                ok, want = val[0] <= 1 <= val[1], "(lo, hi) with 0 < lo <= 1 <= hi"
            if ok and ("noise" in key or "poisson" in key):
                ok, want = val[0] >= 0, "(lo, hi) with 0 <= lo <= hi"
            if ok and "jpeg" in key:
                ok, want = 0 <= val[0] and val[1] <= 100, "(lo, hi) with 0 <= lo <= hi <= 100"
        if not ok:
            raise ValueError(f"{key}: expected {want}, found {val!r}")
        cfg[key] = tuple(val) if isinstance(val, list) else val
    for p in ("kernel_probs", "kernel1_probs", "kernel2_probs"):
        n = len(cfg["kernel_types"])
        if p in cfg and len(cfg[p]) != n:
            raise ValueError(f"{p}: expected {n} weights (one per kernel_types entry), found {len(cfg[p])}")
    return cfg
