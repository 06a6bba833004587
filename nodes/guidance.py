"""DiffBIR's region-adaptive restoration guidance as a ComfyUI post-CFG model patch.

At every step inside the window the patch takes the predicted x0 (after CFG), measures the (Sobel-weighted) MSE
between the decoded x0 and the guide image, and moves x0 so that the DDPM posterior mean moves by
Δ = -(scale·3000)·∂L/∂x0 (DiffBIR v2.0.0). It works with any ComfyUI sampler; with DDPM over the spaced schedule it
is DiffBIR's spaced sampler with guidance.

rgb-space guidance back-propagates through a frozen copy of the VAE decoder; its memory is bounded by per-block
gradient checkpointing, tiled decode-and-backward (with an out-of-memory fallback to smaller tiles) and a reduced
decoder precision (see :class:`RestorationGuidance`).
"""

from __future__ import annotations

import copy
import itertools
import logging

import torch

from ..modules import guidance as g
from ..modules.schedules import posterior_mean_coef1
from .common import PackError, check_interrupt, is_oom

SPACES = ["rgb", "latent"]
LOSSES = ["w_mse", "mse"]
MEMORY_MODES = ["auto", "full", "checkpoint", "tiled"]
PRECISIONS = ["auto", "fp32", "bf16", "fp16"]
MIN_TILE = 128  # px: the smallest tile the out-of-memory fallback tries
HALO = 8  # latent px decoded around each tile's core (the core's pixels alone enter the loss)
_DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}

log = logging.getLogger(__name__)


class _FrozenDecoder(torch.nn.Module):
    """``post_quant_conv`` + decoder of a VAE: raw latent (B, C, h, w) -> (B, 3, 8h, 8w) in about [-1, 1]."""

    def __init__(self, post_quant_conv: torch.nn.Module, decoder: torch.nn.Module):
        super().__init__()
        self.post_quant_conv = post_quant_conv
        self.decoder = decoder

    def forward(self, z):
        return self.decoder(self.post_quant_conv(z))


def _decoder_block_classes() -> tuple:
    """The blocks of ComfyUI's VAE decoder that are checkpointed one by one."""
    from comfy.ldm.modules.diffusionmodules.model import (
        AttnBlock,
        ResnetBlock,
        Upsample,
    )

    return (ResnetBlock, AttnBlock, Upsample)


def checkpointed_copy(dec: torch.nn.Module) -> torch.nn.Module:
    """A structural copy of a frozen decoder copy whose ResnetBlock / AttnBlock / Upsample modules run under
    gradient checkpointing (:class:`modules.guidance.Checkpointed`). Weights are shared with ``dec`` (no second
    copy in memory); ``dec`` itself is not changed."""
    memo = {id(t): t for t in itertools.chain(dec.parameters(), dec.buffers())}
    out = copy.deepcopy(dec, memo)
    if g.checkpoint_blocks(out, _decoder_block_classes()) == 0:
        log.debug("Restoration guidance: this VAE decoder has no ResnetBlock/AttnBlock/Upsample to checkpoint")
    return out


def grad_capable_decoder(vae, device, dtype=torch.float32, checkpoint=False) -> torch.nn.Module:
    """A frozen copy of the VAE's ``post_quant_conv`` + decoder made of normal (non-inference) tensors, with its
    weights in ``dtype`` on ``device`` (``requires_grad`` False); ``checkpoint`` wraps its blocks in gradient
    checkpointing.

    ComfyUI runs prompts under ``torch.inference_mode()`` and loads weights there, so backpropagating through the
    VAE itself fails; this copy leaves the caller's VAE untouched. The weights come through ComfyUI's patcher API
    (the VAE's weight patches applied once) and the modules are a structural copy without patcher state, so it
    works whatever patcher class holds the VAE and however it is loaded (see :mod:`.host`); nothing is loaded.
    """
    from . import host

    fsm = vae.first_stage_model
    pq = getattr(fsm, "post_quant_conv", None)
    prefixes = ("post_quant_conv.", "decoder.") if pq is not None else ("decoder.",)
    with torch.inference_mode(False):
        dec = _FrozenDecoder(host.plain_module_copy(pq) if pq is not None else torch.nn.Identity(),
                             host.plain_module_copy(fsm.decoder))
        dec.load_state_dict(host.patched_weights(vae.patcher, prefixes, device, dtype), strict=True, assign=True)
        for name, buf in list(dec.named_buffers()):  # non-persistent buffers are in no state dict
            if buf.is_meta:
                owner, _, leaf = name.rpartition(".")
                src = fsm.get_buffer(name).detach()
                dec.get_submodule(owner)._buffers[leaf] = src.to(
                    device=device, dtype=dtype if src.is_floating_point() else src.dtype, copy=True)
    dec = dec.requires_grad_(False).eval()
    return checkpointed_copy(dec) if checkpoint else dec


def decoder_dtype(precision: str, device, vae=None) -> torch.dtype:
    """The dtype the guidance decoder copy computes in on ``device``.

    ``auto``: what ComfyUI picks for a VAE there (``model_management.vae_dtype`` over the VAE's working dtypes;
    float32 on a CPU). ``fp32``/``bf16``/``fp16``: that dtype. bf16/fp16 fall back to float32 where ComfyUI's
    model management says the device cannot compute in them (``supports_cast``); an explicit choice logs a warning.
    """
    import comfy.model_management as mm

    if precision == "auto":
        working = list(getattr(vae, "working_dtypes", None) or [torch.bfloat16, torch.float32])
        dtype = mm.vae_dtype(device, working)
    else:
        dtype = _DTYPES[precision]
    if dtype == torch.float32:
        return dtype
    if dtype not in (torch.bfloat16, torch.float16) or not mm.supports_cast(device, dtype):
        if precision != "auto":
            log.warning("Restoration guidance: g_precision %s is not supported on %s; decoding in fp32 instead",
                        precision, device)
        return torch.float32
    return dtype


FULL_BYTES_PER_PIXEL_ELEMENT = 5840  # activations the SD VAE decoder's backward keeps, per output pixel (elements)


def full_guidance_bytes(latent_shape, dtype) -> int:
    """Activation bytes of an un-checkpointed guidance gradient through the SD VAE decoder for a latent of
    ``latent_shape`` (B, C, h, w): about 5840 elements per output pixel (counted on the meta device with
    scripts/benchmark.py: 11.4 GiB at 1024² in bf16, 45.6 GiB at 2048²), times the dtype's size. An estimate for
    choosing ``auto``'s mode; smaller decoders need less."""
    b, _, h, w = latent_shape
    return int(b * h * 8 * w * 8 * FULL_BYTES_PER_PIXEL_ELEMENT * torch.empty((), dtype=dtype).element_size())


CHECKPOINT_BYTES_PER_PIXEL_ELEMENT = 2176  # the same with checkpointing (8.5 GiB at 1024², 34 GiB at 2048², fp32)


def auto_memory_mode(latent_shape, dtype, free_bytes: int) -> str:
    """The mode ``auto`` starts with: "full" when its estimate (:func:`full_guidance_bytes`) takes at most half of
    ``free_bytes``, else "checkpoint" when the checkpointed whole-image decode does, else "tiled" (so a large image
    never starts with an allocation the device cannot hold: on the CPU that error is not a clean out-of-memory)."""
    if full_guidance_bytes(latent_shape, dtype) <= free_bytes / 2:
        return "full"
    checkpointed = full_guidance_bytes(latent_shape, dtype) * CHECKPOINT_BYTES_PER_PIXEL_ELEMENT \
        // FULL_BYTES_PER_PIXEL_ELEMENT
    return "checkpoint" if checkpointed <= free_bytes / 2 else "tiled"


class RestorationGuidance:
    """Post-CFG function ``fn(args) -> denoised`` applying DiffBIR's guidance (see module docstring).

    Args:
        vae: ComfyUI VAE used to decode x0 (rgb space) or to encode the guide (latent space).
        guide: (B or 1, 3, H, W) float32 in [0, 1]: the sampled image's size, or that size before padding to 64
            (then edge-padded, see :func:`fit_guide`).
        scale: guidance scale (DiffBIR ``g_scale``; Δ uses scale × 3000). 0 = off.
        g_start, g_stop: active while g_stop < t + 1 < g_start, t the model timestep (DiffBIR's window).
        repeat: guidance updates per step. space: "rgb" or "latent". loss: "w_mse" or "mse".
        block_size: Sobel block size of the w_mse weight map.
        memory: rgb space only. "full" = whole image, every activation kept; "checkpoint" = whole image with
            per-block gradient checkpointing; "auto" = "full" while its activations (estimated, see
            :func:`full_guidance_bytes`) take at most half the device's free memory, else "checkpoint" while that
            does, else "tiled" (:func:`auto_memory_mode`); "tiled" = decode and back-propagate per
            ``tile_size`` tile (8 latent px halo), checkpointed. On out-of-memory every mode frees the cache and retries the
            same update tiled (``tile_size``, then halved down to 128 px); later steps keep the tile size that
            worked. PackError when 128 px tiles still run out of memory.
        precision: rgb space only. "auto" (ComfyUI's VAE dtype for the device), "fp32", "bf16", "fp16": the
            dtype of the decoder copy's weights, decode and backward; x0, loss and update stay float32.
        tile_size: tile size in pixels (>= 128) for "tiled" and for the out-of-memory fallback.
    """

    def __init__(self, vae, guide, scale, g_start=1001, g_stop=-1, repeat=1, space="rgb", loss="w_mse",
                 block_size=2, memory="auto", precision="auto", tile_size=512):
        if memory not in MEMORY_MODES:
            raise PackError(f"g_memory: expected one of {MEMORY_MODES}, found {memory!r}")
        if precision not in PRECISIONS:
            raise PackError(f"g_precision: expected one of {PRECISIONS}, found {precision!r}")
        if isinstance(tile_size, bool) or not isinstance(tile_size, int) or tile_size < MIN_TILE:
            raise PackError(f"g_tile_size: expected an int >= {MIN_TILE} (pixels), found {tile_size!r}")
        self.vae, self.raw_guide, self.scale = vae, guide, float(scale)
        self.g_start, self.g_stop, self.repeat = int(g_start), int(g_stop), int(repeat)
        self.space, self.loss, self.block_size = space, loss, int(block_size)
        self.memory, self.precision, self.tile_size = memory, precision, tile_size
        self.tile_px = tile_size if memory == "tiled" else None  # current tile size in px; None = untiled
        self._decoders = {}  # (device, dtype, checkpoint) -> frozen decoder copy (checkpointed ones share weights)
        self._dtypes = {}  # device -> dtype the decoder copy computes in
        self._prepared_for = None  # (latent h, w, device) the target and weight below were made for
        self._target = self._weight = None

    def _prepare(self, x0, latent_format):
        """Target and weight map for this latent size and device, made once (not at every step)."""
        h, w = x0.shape[-2:]
        key = (h, w, x0.device)
        if self._prepared_for == key:
            return
        guide = fit_guide(self.raw_guide, h * 8, w * 8)
        if guide.shape[0] not in (1, x0.shape[0]):
            raise PackError(f"guide_image: expected 1 or {x0.shape[0]} images (the latent batch), found "
                            f"{guide.shape[0]}")
        weight = g.sobel_weight_map(guide, self.block_size) if self.loss == "w_mse" else None
        if self.space == "rgb":
            target = guide * 2 - 1
        else:
            target = latent_format.process_in(self.vae.encode(guide.permute(0, 2, 3, 1)).float())
            weight = None if weight is None else g.resize_weight_map(weight, (h, w))
        self._target = target.to(x0.device)
        self._weight = None if weight is None else weight.to(x0.device)
        self._prepared_for = key

    def _dtype(self, device) -> torch.dtype:
        if device not in self._dtypes:
            self._dtypes[device] = decoder_dtype(self.precision, device, self.vae)
        return self._dtypes[device]

    def _decoder(self, device, dtype, checkpoint: bool) -> torch.nn.Module:
        key = (device, dtype, checkpoint)
        if key not in self._decoders:
            plain = self._decoders.get((device, dtype, False))
            if plain is None:
                plain = self._decoders[(device, dtype, False)] = grad_capable_decoder(self.vae, device, dtype)
            if checkpoint:
                self._decoders[key] = checkpointed_copy(plain)
        return self._decoders[key]

    def _decode_fn(self, latent_format, device, dtype, checkpoint):
        dec = self._decoder(device, dtype, checkpoint)

        def decode(x0_scaled):
            return dec(latent_format.process_out(x0_scaled).to(dtype)).float()
        return g.fp16_grad_scaling(decode) if dtype == torch.float16 else decode

    def _next_tile(self, tile_px, checkpointed: bool, h: int, w: int):
        """The tile size (px) to retry with after an out-of-memory error, or None when none is left."""
        if tile_px is None:
            nxt = self.tile_size
        elif tile_px <= MIN_TILE:
            return None
        else:
            nxt = max(MIN_TILE, tile_px // 2 // 8 * 8)
        # a tile covering the whole latent repeats the checkpointed whole-image decode that just failed
        while checkpointed and nxt > MIN_TILE and nxt // 8 >= h and nxt // 8 >= w:
            nxt = max(MIN_TILE, nxt // 2 // 8 * 8)
        return nxt

    def _rgb_grad(self, x0, target, weight, latent_format):
        import comfy.model_management as mm

        device = x0.device
        h, w = x0.shape[-2:]
        while True:
            tile_px, dtype = self.tile_px, self._dtype(device)
            auto = auto_memory_mode(x0.shape, dtype, mm.get_free_memory(device)) \
                if self.memory == "auto" and tile_px is None else None
            if auto == "tiled":
                tile_px = self.tile_px = self.tile_size
                log.info("Restoration guidance: a %dx%d px image does not fit the free memory even with "
                         "checkpointing; decoding in %d px tiles", w * 8, h * 8, tile_px)
            checkpointed = tile_px is not None or self.memory == "checkpoint" or auto == "checkpoint"
            failed = False
            try:
                decode = self._decode_fn(latent_format, device, dtype, checkpointed)
                loss, grad = g.guidance_grad(x0, target, decode, weight, tile=0 if tile_px is None else tile_px // 8,
                                             halo=HALO, check=check_interrupt)
            except Exception as e:  # only out-of-memory is handled here; everything else is re-raised
                if not is_oom(e):
                    raise
                failed = True
            if not failed:
                if (dtype != torch.float32 and grad.device.type != "meta" and not bool(torch.isfinite(grad).all())
                        and bool(torch.isfinite(x0).all())):
                    log.warning("Restoration guidance: the %s decoder gave a non-finite gradient; decoding in fp32 "
                                "from now on", str(dtype).replace("torch.", ""))
                    self._dtypes[device] = torch.float32
                    self._decoders = {k: v for k, v in self._decoders.items() if k[0] != device}
                    continue
                if (grad.device.type != "meta" and not bool(torch.isfinite(grad).all())
                        and bool(torch.isfinite(x0).all())):
                    raise PackError(f"vae: restoration guidance (rgb space) decoded the prediction to NaN or inf "
                                    f"even in fp32 ({w * 8}x{h * 8} px); the VAE's decoder weights are damaged or "
                                    f"not a VAE decoder: use another VAE file, or g_space latent")
                return loss, grad
            # out of memory: the exception (and the activations its traceback held) is gone here
            mm.soft_empty_cache()
            nxt = self._next_tile(tile_px, checkpointed, h, w)
            size = f"{w * 8}x{h * 8} px, batch {x0.shape[0]}, {str(dtype).replace('torch.', '')}"
            if nxt is None:
                raise PackError(f"g_memory: restoration guidance (rgb space) ran out of memory on {device} even "
                                f"with {MIN_TILE} px tiles ({size}). Free memory (close other programs, unload "
                                f"models), use a smaller image or batch, g_precision bf16/fp16, or g_space latent.")
            what = f"{tile_px} px tiles" if tile_px is not None else (
                "the whole image" + (" with checkpointing" if checkpointed else ""))
            log.warning("Restoration guidance: out of memory decoding %s (%s); freed the cache and retrying this "
                        "step with %d px tiles (g_tile_size %d); later steps start with %d px tiles.",
                        what, size, nxt, self.tile_size, nxt)
            self.tile_px = nxt

    def grad(self, x0, latent_format):
        """The guidance loss and its gradient for a predicted x0, exactly as a guided step computes them.

        Args: x0 (B, C, h, w) float latent in model space (``latent_format.process_in`` of the VAE latent);
            latent_format the model's ComfyUI latent format.
        Returns: (loss 0-D float32, grad (B, C, h, w) float32 = d loss / d x0), detached, on x0's device.
        """
        if not isinstance(x0, torch.Tensor) or x0.ndim != 4 or not x0.is_floating_point():
            raise PackError(f"x0: expected a (B, C, h, w) floating latent, found {tuple(getattr(x0, 'shape', ()))}")
        self._prepare(x0, latent_format)
        target, weight = self._target, self._weight
        if target.shape[0] == 1 and x0.shape[0] > 1:
            target = target.expand(x0.shape[0], -1, -1, -1)
            weight = None if weight is None else weight.expand(x0.shape[0], -1, -1, -1)
        x = x0.float()
        if self.space == "rgb":
            return self._rgb_grad(x, target.float(), weight, latent_format)
        return g.guidance_grad(x, target.float(), _identity, weight, check=check_interrupt)

    def __call__(self, args):
        x0 = args["denoised"]
        if self.scale == 0:
            return x0
        model = args["model"]
        sigma = args["sigma"]
        t = round(float(model.model_sampling.timestep(sigma[:1]).item()))
        if not g.guidance_active(t, self.g_start, self.g_stop):
            return x0
        check_interrupt()
        sigma_next = _next_sigma(args, float(sigma[0]))
        coef1 = posterior_mean_coef1(sigma.double().cpu(), torch.full_like(sigma.double().cpu(), sigma_next))
        coef1 = coef1.to(device=x0.device, dtype=torch.float32)
        cur = x0.float()
        for _ in range(self.repeat):
            _, grad = self.grad(cur, model.latent_format)
            cur = g.apply_guidance_step(cur, grad, self.scale, coef1)
        return cur.to(x0.dtype)


def _identity(x):
    return x


def fit_guide(guide: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """Fit a (B,3,h,w) guide to the sampled image size: equal, or smaller by less than 64 px per side (the
    unpadded image), then edge-padded at the bottom/right like Dual Encoder Interpolate pads what it encodes."""
    h, w = guide.shape[-2:]
    if h > height or w > width or height - h >= 64 or width - w >= 64:
        raise PackError(f"guide_image: expected the size of the sampled image ({width}x{height}, or that size "
                        f"before padding to a multiple of 64), found {w}x{h}")
    if (h, w) == (height, width):
        return guide
    return torch.nn.functional.pad(guide, (0, width - w, 0, height - h), mode="replicate")


def _next_sigma(args, sigma: float) -> float:
    """The sigma of the sampler's next step (0 after the last), from the schedule ComfyUI passes to the model."""
    sigmas = args["model_options"].get("transformer_options", {}).get("sample_sigmas")
    if sigmas is None:
        return 0.0
    sigmas = sigmas.detach().float().cpu()
    i = int(torch.argmin((sigmas - sigma).abs()))
    return float(sigmas[i + 1]) if i + 1 < len(sigmas) else 0.0


def apply_guidance(model, patch: RestorationGuidance):
    """A clone of ``model`` with the guidance as a post-CFG function (the input model is not modified)."""
    m = model.clone()
    m.set_model_sampler_post_cfg_function(patch)
    return m
