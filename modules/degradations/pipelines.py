"""Seeded degradation pipelines: Real-ESRGAN second order, DiffBIR/CodeFormer first order, AdaptBIR "mild".

Every pipeline is ``fn(images (B, 3, H, W) float [0, 1], generator, **overrides) -> (degraded, params)``:
``degraded`` is float32 (B, 3, H, W) in [0, 1], the size of the input; ``params`` maps names to per-sample CPU
tensors (first dim B) or lists of B strings, holding every sampled value. Overrides replace entries of the
pipeline's read-only range dict (same key, same kind of value). All randomness comes from ``generator``: the same
seed on the same device gives bit-identical output. Each ``*_sample_params(batch, generator, ...)`` draws the
parameters alone, exactly as the pipeline does first, so ranges can be checked without image work.

Sizes: every intermediate side is clamped to >= 1 pixel (a downsample below one pixel yields one pixel).
Choices and deviations from the references (BasicSR/Real-ESRGAN/DiffBIR/AdaptBIR code, read for facts only):

* JPEG is kornia's differentiable codec, not libjpeg (cv2) or BasicSR's DiffJPEG: similar, not bit-exact.
* Real-ESRGAN draws resize factor/mode, Gaussian-vs-Poisson, second-blur, order branch and final mode once per
  batch (kernels, noise levels, grey flags and JPEG qualities per sample); ``per_sample=True`` draws them per
  sample instead and then runs samples one by one when they differ. The 180/256-sample training-pair pool
  (queue) that restores batch diversity in the references is a training-loop concern and is not done here.
  AdaptBIR's datasets run the chain inside ``__getitem__`` on one image at a time, i.e. ``per_sample=True``.
* No USM sharpening: Real-ESRGAN and DiffBIR v2.1 degrade a USM-sharpened GT (AdaptBIR does not); sharpen
  ``images`` first to reproduce them.
* Real-ESRGAN noise: each sample of a grey-noise batch gets its own noise field (BasicSR shares one field).
* Real-ESRGAN resize back: bicubic without anti-aliasing (DiffBIR; AdaptBIR's code passes ``antialias=True``).
* Second-stage size is ``int(H / scale * f)`` (Real-ESRGAN/AdaptBIR form; DiffBIR floors ``H / scale`` first).
* CodeFormer/mild: cv2 converts to 8-bit before encoding and decodes to 8-bit, so the image is rounded to 8-bit
  levels before and after the JPEG step; the final bilinear resize back is not re-quantised (as in the
  reference, whose output is float).
* Mild: blur happens with probability exactly ``blur_prob`` (upstream tests ``round(U, 1) <= 0.5``, about 55 %)
  and the kernel size is drawn per sample (upstream draws it once and then keeps it for the worker). Neither
  upstream bug is reproduced.
"""

from __future__ import annotations

import math
from types import MappingProxyType

import torch

from .kernels import (
    KERNEL_TYPES,
    build_kernels,
    check_generator,
    choose_index,
    pulse_kernels,
    rand_uniform,
    sample_kernel_params,
    uniform_in,
)
from .ops import (
    RESIZE_MODES,
    add_gaussian_noise,
    add_poisson_noise,
    check_images,
    filter2d,
    jpeg,
    quantize_8bit,
    resize,
    resolve_options,
)

_PI = math.pi
_RE_PROBS = (0.45, 0.25, 0.12, 0.03, 0.12, 0.03)

REALESRGAN_RANGES = MappingProxyType({
    "kernel_types": KERNEL_TYPES, "kernel_sizes": (7, 9, 11, 13, 15, 17, 19, 21), "rotation_range": (-_PI, _PI),
    "sinc_omega_small_range": (_PI / 3, _PI), "sinc_omega_large_range": (_PI / 5, _PI),
    "sinc_small_kernel_below": 13, "resize_modes": RESIZE_MODES,
    # first degradation
    "kernel1_probs": _RE_PROBS, "sinc1_prob": 0.1, "blur1_sigma_range": (0.2, 3.0), "betag1_range": (0.5, 4.0),
    "betap1_range": (1.0, 2.0), "resize1_probs": (0.2, 0.7, 0.1), "resize1_range": (0.15, 1.5),
    "gaussian_noise1_prob": 0.5, "noise1_sigma_range": (1.0, 30.0), "poisson1_scale_range": (0.05, 3.0),
    "gray_noise1_prob": 0.4, "jpeg1_range": (30.0, 95.0),
    # second degradation
    "blur2_prob": 0.8, "kernel2_probs": _RE_PROBS, "sinc2_prob": 0.1, "blur2_sigma_range": (0.2, 1.5),
    "betag2_range": (0.5, 4.0), "betap2_range": (1.0, 2.0), "resize2_probs": (0.3, 0.4, 0.3),
    "resize2_range": (0.3, 1.2), "gaussian_noise2_prob": 0.5, "noise2_sigma_range": (1.0, 25.0),
    "poisson2_scale_range": (0.05, 2.5), "gray_noise2_prob": 0.4, "jpeg2_range": (30.0, 95.0),
    # final sinc + JPEG (order branch: P(resize back + sinc, then JPEG) = sinc_first_prob)
    "final_sinc_prob": 0.8, "final_sinc_omega_range": (_PI / 3, _PI), "sinc_first_prob": 0.5,
})
"""Real-ESRGAN x4plus / DiffBIR v2.1 / AdaptBIR stage I-II settings. Noise sigma in 8-bit units, JPEG quality in
[0, 100] (float), resize ranges are factors (down U(lo, 1), up U(1, hi), keep 1 with ``resize*_probs``).
``kernel_sizes`` serves both blurs and the final sinc; kernels are zero-padded to max(kernel_sizes) = 21."""


def _first_order(sigma, down, noise, jpeg_range, kernel_size=41):
    return MappingProxyType({
        "kernel_types": ("iso", "aniso"), "kernel_probs": (0.5, 0.5), "kernel_size": kernel_size,
        "blur_sigma_range": sigma, "rotation_range": (-_PI, _PI), "betag_range": (0.5, 8.0),
        "betap_range": (0.5, 8.0), "downsample_range": down, "noise_sigma_range": noise, "jpeg_range": jpeg_range})


CODEFORMER_PRESETS = MappingProxyType({
    "diffbir": _first_order((0.1, 12.0), (1.0, 12.0), (0.0, 15.0), (30.0, 100.0)),
    "diffbir_face": _first_order((0.1, 10.0), (0.8, 8.0), (0.0, 20.0), (60.0, 100.0)),
    "codeformer_large": _first_order((1.0, 15.0), (4.0, 30.0), (0.0, 20.0), (30.0, 80.0)),
    "codeformer_small": _first_order((0.1, 10.0), (1.0, 12.0), (0.0, 15.0), (60.0, 100.0)),
})
"""First-order CodeFormer-style ranges: DiffBIR stage 1 / stage 2 v2 (``diffbir``), DiffBIR v1 face configs
(``diffbir_face``), CodeFormer stage II (``codeformer_large``) and stage III (``codeformer_small``). The blur is
always applied; ``betag_range``/``betap_range`` (BasicSR defaults) only matter if ``kernel_types`` is overridden."""

CODEFORMER_RANGES = CODEFORMER_PRESETS["diffbir"]

MILD_RANGES = MappingProxyType({
    **{k: v for k, v in _first_order((0.1, 5.0), (0.8, 4.0), (0.0, 25.0), (60.0, 100.0)).items()
       if k != "kernel_size"},
    "blur_prob": 0.5, "kernel_sizes": (3, 5, 7, 9, 11)})
"""AdaptBIR stage III "mild CodeFormer" ranges (blur with probability ``blur_prob``; down < 1 upsamples)."""

_BATCH_LEVEL = ("resize1_scale", "resize1_mode", "noise1_type", "blur2_applied", "scale", "resize2_scale",
                "resize2_mode", "noise2_type", "sinc_first", "final_resize_mode")


def _check_batch(batch) -> int:
    if not isinstance(batch, int) or isinstance(batch, bool) or batch < 1:
        raise ValueError(f"batch: expected an int >= 1, found {batch!r}")
    return batch


def _kernel_params(batch, generator, cfg, stage: str, sizes, sinc_prob=0.0) -> dict:
    kp = sample_kernel_params(
        batch, generator, kernel_types=cfg["kernel_types"], kernel_probs=cfg[f"kernel{stage}_probs"],
        kernel_sizes=sizes, sigma_range=cfg[f"blur{stage}_sigma_range"], rotation_range=cfg["rotation_range"],
        betag_range=cfg[f"betag{stage}_range"], betap_range=cfg[f"betap{stage}_range"], sinc_prob=sinc_prob,
        sinc_omega_small_range=cfg.get("sinc_omega_small_range", (_PI / 3, _PI)),
        sinc_omega_large_range=cfg.get("sinc_omega_large_range", (_PI / 5, _PI)),
        sinc_small_kernel_below=cfg.get("sinc_small_kernel_below", 13))
    out = {f"kernel{stage}_{k}": v for k, v in kp.items()}
    out[f"kernel{stage}"] = build_kernels(kp, max(sizes))
    return out


def realesrgan_sample_params(batch: int, generator: torch.Generator, scale=4, per_sample: bool = False,
                             **overrides) -> dict:
    """Draw every parameter of :func:`realesrgan_degrade` for ``batch`` samples (see there for the arguments).

    Returns a dict of per-sample CPU values: for stage ``s`` in (1, 2) ``kernel{s}`` (float64 (B, K, K), K =
    max(kernel_sizes) = 21) and its fields ``kernel{s}_type/size/sigma_x/sigma_y/rotation/beta/omega/sinc``;
    ``final_sinc_applied`` (bool), ``final_sinc_size``, ``final_sinc_omega``, ``final_sinc_kernel`` (a pulse where
    not applied); ``resize{s}_direction`` ("up"/"down"/"keep"), ``resize{s}_scale``, ``resize{s}_mode``;
    ``noise{s}_type`` ("gaussian"/"poisson"), ``noise{s}_gaussian_sigma`` (8-bit units), ``noise{s}_poisson_scale``
    (both drawn, the type says which is used), ``noise{s}_gray`` (bool), ``jpeg{s}_quality`` (float);
    ``blur2_applied`` (bool), ``scale`` (float), ``sinc_first`` (bool), ``final_resize_mode``.
    """
    _check_batch(batch)
    check_generator(generator)
    cfg = resolve_options(REALESRGAN_RANGES, overrides, "realesrgan_degrade")
    if not isinstance(per_sample, bool):
        raise ValueError(f"per_sample: expected a bool, found {per_sample!r}")
    scale_t = scale if isinstance(scale, (tuple, list)) else (scale, scale)
    if (len(scale_t) != 2 or not all(isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)
                                     for v in scale_t) or not 0 < scale_t[0] <= scale_t[1]):
        raise ValueError(f"scale: expected a number > 0 or a range (lo, hi) with 0 < lo <= hi, found {scale!r}")
    sizes, modes = cfg["kernel_sizes"], cfg["resize_modes"]
    p = _kernel_params(batch, generator, cfg, "1", sizes, cfg["sinc1_prob"])
    p.update(_kernel_params(batch, generator, cfg, "2", sizes, cfg["sinc2_prob"]))
    u = rand_uniform((3, batch), generator)
    applied = u[0] < cfg["final_sinc_prob"]
    fs = torch.tensor(sizes)[(u[1] * len(sizes)).long().clamp_max(len(sizes) - 1)]
    omega = uniform_in(u[2], *cfg["final_sinc_omega_range"])
    ones = torch.ones(batch, dtype=torch.float64)
    sinc = build_kernels({"type": ["sinc"] * batch, "size": fs, "sigma_x": ones, "sigma_y": ones,
                          "rotation": 0 * ones, "beta": ones, "omega": omega}, max(sizes))
    p.update(final_sinc_applied=applied, final_sinc_size=fs, final_sinc_omega=omega,
             final_sinc_kernel=torch.where(applied.view(-1, 1, 1), sinc, pulse_kernels(batch, max(sizes))))
    n = batch if per_sample else 1
    ub = rand_uniform((12, n), generator).expand(12, batch).clone()  # batch-level draws
    us = rand_uniform((8, batch), generator)  # per-sample draws
    for s, (i, j) in (("1", (0, 0)), ("2", (6, 4))):
        lo, hi = cfg[f"resize{s}_range"]
        d = choose_index(ub[i], cfg[f"resize{s}_probs"])
        p[f"resize{s}_direction"] = [("up", "down", "keep")[k] for k in d.tolist()]
        p[f"resize{s}_scale"] = torch.where(d == 0, uniform_in(ub[i + 1], 1.0, hi),
                                            torch.where(d == 1, uniform_in(ub[i + 1], lo, 1.0), torch.ones(batch)))
        p[f"resize{s}_mode"] = [modes[k] for k in choose_index(ub[i + 2], [1] * len(modes)).tolist()]
        gauss = ub[i + 3] < cfg[f"gaussian_noise{s}_prob"]
        p[f"noise{s}_type"] = ["gaussian" if g else "poisson" for g in gauss.tolist()]
        p[f"noise{s}_gaussian_sigma"] = uniform_in(us[j], *cfg[f"noise{s}_sigma_range"])
        p[f"noise{s}_poisson_scale"] = uniform_in(us[j + 1], *cfg[f"poisson{s}_scale_range"])
        p[f"noise{s}_gray"] = us[j + 2] < cfg[f"gray_noise{s}_prob"]
        p[f"jpeg{s}_quality"] = uniform_in(us[j + 3], *cfg[f"jpeg{s}_range"])
    p["blur2_applied"] = ub[4] < cfg["blur2_prob"]
    p["scale"] = uniform_in(ub[5], *scale_t)
    p["sinc_first"] = ub[10] < cfg["sinc_first_prob"]
    p["final_resize_mode"] = [modes[k] for k in choose_index(ub[11], [1] * len(modes)).tolist()]
    return p


def _noise(x, p, s: str, i: slice, generator):
    if p[f"noise{s}_type"][i.start] == "gaussian":
        return add_gaussian_noise(x, p[f"noise{s}_gaussian_sigma"][i], p[f"noise{s}_gray"][i], generator)
    return add_poisson_noise(x, p[f"noise{s}_poisson_scale"][i], p[f"noise{s}_gray"][i], generator)


def _realesrgan_apply(x, p, i: slice, generator):
    H, W = x.shape[-2:]
    out = filter2d(x, p["kernel1"][i])
    f = float(p["resize1_scale"][i.start])
    out = resize(out, (int(H * f), int(W * f)), p["resize1_mode"][i.start], scale_factor=f)
    out = jpeg(_noise(out, p, "1", i, generator), p["jpeg1_quality"][i])
    if bool(p["blur2_applied"][i.start]):
        out = filter2d(out, p["kernel2"][i])
    sc, f = float(p["scale"][i.start]), float(p["resize2_scale"][i.start])
    out = resize(out, (int(H / sc * f), int(W / sc * f)), p["resize2_mode"][i.start])
    out = _noise(out, p, "2", i, generator)
    lq_size, mode = (max(1, int(H / sc)), max(1, int(W / sc))), p["final_resize_mode"][i.start]
    if bool(p["sinc_first"][i.start]):
        out = jpeg(filter2d(resize(out, lq_size, mode), p["final_sinc_kernel"][i]).clamp(0, 1), p["jpeg2_quality"][i])
    else:
        out = filter2d(resize(jpeg(out, p["jpeg2_quality"][i]), lq_size, mode), p["final_sinc_kernel"][i])
    if lq_size != (H, W):
        out = resize(out, (H, W), "bicubic")
    return quantize_8bit(out)


def realesrgan_degrade(images: torch.Tensor, generator: torch.Generator, scale=4, per_sample: bool = False,
                       **overrides):
    """Real-ESRGAN second-order degradation (as used by DiffBIR v2.1 and AdaptBIR stages I-II), resized back.

    Order: blur (kernel1) -> resize (factor from ``resize1_*``, random mode) -> Gaussian or Poisson noise ->
    JPEG -> [blur (kernel2) with ``blur2_prob``] -> resize to ``(H / scale, W / scale) * f2`` -> noise -> either
    (resize to ``(H / scale, W / scale)`` + final sinc, then JPEG) or (JPEG, then resize + final sinc) ->
    bicubic resize back to (H, W) when that LQ size differs -> round/clamp to 8-bit levels.

    ``scale`` is the super-resolution factor of the reference: it sets the size (H/scale, W/scale) at which the
    second stage ends (the LQ an x``scale`` network would get). AdaptBIR stage I uses ``scale=1`` (the whole
    chain ends at the input size, no resize back); DiffBIR v2.1 and AdaptBIR stage II use 4, then resize back.
    A ``(lo, hi)`` range draws it per batch (per sample with ``per_sample``), as DiffBIR's ``stage2_scale`` can.

    Args:
        images: (B, 3, H, W) float in [0, 1] (any float dtype, any device; computed in float32).
        generator: ``torch.Generator``, the only randomness source.
        scale: number > 0, or a (lo, hi) range.
        per_sample: draw the batch-level choices (resize factors/modes, noise type, second blur, order branch)
            per sample instead of once per batch as the reference does; differing samples then run one by one.
        **overrides: replacements for entries of :data:`REALESRGAN_RANGES`.

    Returns:
        ``(degraded, params)``: float32 (B, 3, H, W) on the images' device, values in {0, 1/255, ..., 1}; params
        as in :func:`realesrgan_sample_params`.
    """
    x = check_images(images)
    p = realesrgan_sample_params(x.shape[0], generator, scale, per_sample, **overrides)
    uniform = all(len({v.item() if isinstance(v, torch.Tensor) else v for v in p[k]}) == 1 for k in _BATCH_LEVEL)
    with torch.no_grad():
        if uniform:
            out = _realesrgan_apply(x, p, slice(0, x.shape[0]), generator)
        else:
            out = torch.cat([_realesrgan_apply(x[i:i + 1], p, slice(i, i + 1), generator) for i in range(len(x))])
    return out, p


def _first_order_params(batch, generator, cfg, sizes, blur_prob) -> dict:
    p = _kernel_params(batch, generator, cfg, "", sizes)
    u = rand_uniform((4, batch), generator)
    p["blur_applied"] = u[0] < blur_prob
    p["downsample"] = uniform_in(u[1], *cfg["downsample_range"])
    p["noise_sigma"] = uniform_in(u[2], *cfg["noise_sigma_range"])
    p["jpeg_quality"] = torch.floor(uniform_in(u[3], *cfg["jpeg_range"])).to(torch.int64)
    return p


def _first_order_apply(x, p, generator):
    H, W = x.shape[-2:]
    blurred = torch.where(p["blur_applied"].to(x.device).view(-1, 1, 1, 1), filter2d(x, p["kernel"]), x)
    outs = []
    for i in range(x.shape[0]):
        s = float(p["downsample"][i])
        y = resize(blurred[i:i + 1], (int(H // s), int(W // s)), "bilinear")
        y = add_gaussian_noise(y, p["noise_sigma"][i], False, generator)
        y = quantize_8bit(jpeg(quantize_8bit(y), float(p["jpeg_quality"][i])))
        outs.append(resize(y, (H, W), "bilinear"))
    return torch.cat(outs)



def codeformer_sample_params(batch: int, generator: torch.Generator, preset: str = "diffbir", **overrides) -> dict:
    """Draw every parameter of :func:`codeformer_degrade` for ``batch`` samples (arguments as there).

    Returns a dict of per-sample CPU values: ``kernel`` (float64 (B, K, K), K = ``kernel_size``) and its fields
    ``kernel_type/size/sigma_x/sigma_y/rotation/beta/omega/sinc``; ``blur_applied`` (bool, always True here),
    ``downsample`` (float factor), ``noise_sigma`` (8-bit units), ``jpeg_quality`` (int64, ``int(U(jpeg_range))``).
    """
    _check_batch(batch)
    check_generator(generator)
    if preset not in CODEFORMER_PRESETS:
        raise ValueError(f"preset: expected one of {tuple(CODEFORMER_PRESETS)}, found {preset!r}")
    cfg = resolve_options(CODEFORMER_PRESETS[preset], overrides, "codeformer_degrade")
    return _first_order_params(batch, generator, cfg, (cfg["kernel_size"],), 1.0)


def codeformer_degrade(images: torch.Tensor, generator: torch.Generator, preset: str = "diffbir", **overrides):
    """DiffBIR's first-order CodeFormer-style degradation (DiffBIR stage 1 and stage 2 v2 training data).

    Per sample: blur with a ``kernel_size`` (41) iso/aniso Gaussian (reflect borders) -> bilinear resize to
    ``(int(H // d), int(W // d))``, d ~ U(downsample_range) -> colour Gaussian noise, std U(noise_sigma_range)/255,
    clipped -> 8-bit -> JPEG with quality ``int(U(jpeg_range))`` -> 8-bit -> bilinear resize back to (H, W).
    Samples have different intermediate sizes, so everything after the (batched) blur runs one sample at a time.

    Args:
        images: (B, 3, H, W) float in [0, 1] (any float dtype/device; computed in float32).
        generator: ``torch.Generator``, the only randomness source.
        preset: ``"diffbir"`` (default), ``"diffbir_face"``, ``"codeformer_large"`` or ``"codeformer_small"``
            (:data:`CODEFORMER_PRESETS`); only the ranges differ.
        **overrides: replacements for entries of the preset's range dict.

    Returns:
        ``(degraded, params)``: float32 (B, 3, H, W) in [0, 1] (not on 8-bit levels: the last bilinear resize is
        done in float, as in the reference); params as in :func:`codeformer_sample_params`.
    """
    x = check_images(images)
    p = codeformer_sample_params(x.shape[0], generator, preset, **overrides)
    with torch.no_grad():
        return _first_order_apply(x, p, generator), p


def mild_sample_params(batch: int, generator: torch.Generator, **overrides) -> dict:
    """Draw every parameter of :func:`mild_degrade` for ``batch`` samples (arguments as there).

    Returns the fields of :func:`codeformer_sample_params`, with ``kernel`` padded to K = max(kernel_sizes) = 11,
    ``kernel_size`` drawn per sample from ``kernel_sizes`` and ``blur_applied`` true with probability ``blur_prob``
    (kernel fields are drawn for every sample and ignored where ``blur_applied`` is False).
    """
    _check_batch(batch)
    check_generator(generator)
    cfg = resolve_options(MILD_RANGES, overrides, "mild_degrade")
    return _first_order_params(batch, generator, cfg, cfg["kernel_sizes"], cfg["blur_prob"])


def mild_degrade(images: torch.Tensor, generator: torch.Generator, **overrides):
    """AdaptBIR stage III "mild CodeFormer" degradation (training data of the CSFT stage).

    As :func:`codeformer_degrade` with :data:`MILD_RANGES`: blur only with probability ``blur_prob`` (exactly 0.5;
    upstream's ``round(U, 1) <= 0.5`` gives about 55 %), kernel size per sample from {3, 5, 7, 9, 11} (upstream
    draws it once and keeps it), sigma U(0.1, 5), iso/aniso 1:1; down factor U(0.8, 4) (< 1 enlarges); noise
    std U(0, 25)/255; JPEG ``int(U(60, 100))``; bilinear resize back. The 512 centre crop is a dataset concern.

    Args:
        images: (B, 3, H, W) float in [0, 1]; generator: ``torch.Generator``;
        **overrides: replacements for entries of :data:`MILD_RANGES`.

    Returns:
        ``(degraded, params)``: float32 (B, 3, H, W) in [0, 1]; params as in :func:`mild_sample_params`.
    """
    x = check_images(images)
    p = mild_sample_params(x.shape[0], generator, **overrides)
    with torch.no_grad():
        return _first_order_apply(x, p, generator), p
