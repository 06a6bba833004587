"""HYPIR one-step restoration on ComfyUI's SD 2.1: Load HYPIR LoRA and HYPIR Restore.

Load HYPIR LoRA converts HYPIR's peft LoRA file (diffusers UNet names) to ComfyUI's LoRA layout and adds it with
``ModelPatcher.add_patches`` (scale alpha / rank = 1, as HYPIR), so it stacks with other LoRAs. HYPIR Restore runs
HYPIR's enhancer (modules/hypir.py) with ComfyUI's VAE, sampler machinery and the pack's latent tiles.
"""

from __future__ import annotations

import copy
import math

import torch
from comfy_api.latest import io

from ..modules import hypir as hy
from ..modules.weights_kind import describe_weights
from .aliases import aliases_for
from .common import (
    CATEGORY_ROOT,
    PackError,
    RestoreParams,
    choice_error,
    file_fingerprint,
    input_image,
    load_weights,
    missing_file_error,
    model_file_path,
    widget_bounds_error,
)
from .file_lists import loader_options
from .tiled_sampling import set_tiling

CAT_HYPIR = f"{CATEGORY_ROOT}/hypir"
ATTACHMENT = "adaptbir_hypir"
COLOR_FIXES = ("wavelet", "adain", "none")


class HypirLoRA:
    """What Load HYPIR LoRA attaches to the model: the ComfyUI patches and the strength they were added with, so
    HYPIR Restore can set a per-image strength (adding ``(s_i - strength)`` x the same patches)."""

    def __init__(self, patches: dict, strength: float, name: str):
        self.patches, self.strength, self.name = patches, float(strength), name


def load_hypir_lora(model, sd: dict, name: str, strength: float):
    """A clone of ``model`` with HYPIR's LoRA ``sd`` added at ``strength``; PackError for a wrong file/model."""
    import comfy.lora
    import comfy.utils

    if not hy.is_hypir_lora(sd.keys()):
        raise PackError(f"{name}: expected HYPIR weights (peft LoRA keys '<layer>.lora_A.default.weight' on SD 2.1's "
                        f"diffusers UNet), found {describe_weights(sd.keys())}")
    unet_config = model.model.model_config.unet_config
    if unet_config.get("context_dim") is None or unet_config.get("adm_in_channels") is not None:
        raise PackError(f"model: expected an SD 2.x model (HYPIR is a LoRA of SD 2.1 base), found "
                        f"{type(model.model).__name__} with context_dim {unet_config.get('context_dim')}")
    try:
        converted, _rank = hy.hypir_lora_to_comfy(sd, comfy.utils.unet_to_diffusers(unet_config))
    except ValueError as e:
        raise PackError(f"{name}: HYPIR weights for SD 2.1's UNet: {e}") from None
    weights = model.model.state_dict()
    for key, t in converted.items():
        if key.endswith(".lora_A.weight"):
            target = weights[key[:-len(".lora_A.weight")] + ".weight"]
            b = converted[key.replace(".lora_A.", ".lora_B.")]
            if b.shape[0] != target.shape[0] or t.shape[1] != target.shape[1]:
                raise PackError(f"{name}: HYPIR weights for SD 2.1's UNet: layer {key[:-len('.lora_A.weight')]} "
                                f"expects {tuple(target.shape)}, the file has lora_B {tuple(b.shape)} and lora_A "
                                f"{tuple(t.shape)}; the model is not the SD 2.1 this LoRA was trained on")
    patches = comfy.lora.load_lora(converted, comfy.lora.model_lora_keys_unet(model.model, {}), log_missing=False)
    m = model.clone()
    m.add_patches(patches, float(strength))
    m.attachments[ATTACHMENT] = HypirLoRA(patches, strength, name)
    return m


class HYPIRLoader(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="AdaptBIR_HYPIRLoader",
            **aliases_for("AdaptBIR_HYPIRLoader"),
            display_name="Load HYPIR LoRA",
            category=CAT_HYPIR,
            description=(
                "Makes a fast photo restorer out of SD 2.1: one step instead of fifty, for blurry, noisy or "
                "low-resolution photos. "
                "Adds HYPIR's one-step restoration LoRA (HYPIR_sd2.pth, rank 256 on SD 2.1 base's attention, "
                "feed-forward and convolution layers) to an SD 2.1 base model with ComfyUI's LoRA machinery, so it "
                "stacks with other LoRAs. Only tensors are read, no code runs. HYPIR's weights are for "
                "non-commercial use only."),
            inputs=[
                io.Model.Input("model", tooltip="SD 2.1 base (v2-1_512-ema-pruned), from Load Checkpoint."),
                io.Combo.Input("hypir_name", options=loader_options("hypir", "hypir"), tooltip=(
                    "HYPIR's weight file in ComfyUI/models/hypir (HYPIR_sd2.pth from huggingface.co/lxq007/HYPIR; "
                    "recognised by its weights or that name).")),
                io.Float.Input("strength", default=1.0, min=0.0, max=2.0, step=0.01, tooltip=(
                    "LoRA strength (HYPIR: 1). HYPIR Restore can lower it per image from IQA params.")),
            ],
            outputs=[io.Model.Output("model_out", display_name="model", tooltip=(
                "A copy of the model with HYPIR's LoRA; the input model is not changed."))],
        )

    @classmethod
    def validate_inputs(cls, hypir_name=None, **kwargs):
        # checked when the prompt is queued: every missing file of a graph is named at once, with where to get it
        return missing_file_error("hypir", hypir_name) or widget_bounds_error(cls, kwargs) or True

    @classmethod
    def fingerprint_inputs(cls, hypir_name, **kwargs):
        return file_fingerprint("hypir", hypir_name)

    @classmethod
    def execute(cls, model, hypir_name, strength=1.0) -> io.NodeOutput:
        sd = load_weights(model_file_path("hypir", hypir_name), "HYPIR weights (HYPIR_sd2.pth)")
        return io.NodeOutput(load_hypir_lora(model, sd, hypir_name, strength))


def _one_step_sampler(sigma_c: float):
    """A ComfyUI KSAMPLER that makes HYPIR's single model call and returns its x0 (see modules/hypir.py)."""
    import comfy.samplers

    def one_step(model, x, sigmas, extra_args=None, callback=None, disable=None):
        sigma_m = float(sigmas[0])
        denoised = model(x * math.sqrt(sigma_m ** 2 + 1.0), sigmas[0] * x.new_ones([x.shape[0]]),
                         **(extra_args or {}))
        out = hy.x0_from_denoised(x, denoised, sigma_m, sigma_c)
        if callback is not None:
            callback({"x": out, "i": 0, "sigma": sigmas[0], "sigma_hat": sigmas[0], "denoised": denoised})
        return out

    return comfy.samplers.KSAMPLER(one_step)


def one_step(model, positive, latent: torch.Tensor, model_t: int, coeff_t: int) -> torch.Tensor:
    """HYPIR's generator on a raw VAE latent (B, 4, h, w) -> raw latent x0, through ComfyUI's sampling (LoRA
    patches, wrappers, latent tiles, model management)."""
    import comfy.model_sampling
    import comfy.sample

    ms = model.get_model_object("model_sampling")
    if not isinstance(ms, comfy.model_sampling.EPS) or isinstance(ms, comfy.model_sampling.V_PREDICTION) \
            or not hasattr(ms, "sigmas"):
        raise PackError(f"model: expected SD 2.1 base (a discrete epsilon-prediction model, as HYPIR), found "
                        f"{type(ms).__name__}; load v2-1_512-ema-pruned, not the 768 v-prediction model")
    sigma_m = float(ms.sigma(torch.tensor(float(model_t))))
    sigma_c = float(ms.sigma(torch.tensor(float(coeff_t))))
    sigmas = torch.tensor([sigma_m, 0.0])
    return comfy.sample.sample_custom(model, torch.zeros_like(latent), 1.0, _one_step_sampler(sigma_c), sigmas,
                                      positive, positive, latent, disable_pbar=True, seed=0)


def _vae_raw_output(vae):
    """A shallow copy of ComfyUI's VAE whose decode returns (x + 1) / 2 unclamped (HYPIR clamps only at the end)."""
    v = copy.copy(vae)
    v.process_output = lambda image: (image + 1.0) / 2.0
    return v


class HYPIRRestore(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="AdaptBIR_HYPIRRestore",
            **aliases_for("AdaptBIR_HYPIRRestore"),
            display_name="HYPIR Restore (one step)",
            category=CAT_HYPIR,
            description=(
                "Restores a blurry, noisy or low-resolution photo in a single step, many times faster than "
                "DiffBIR or SUPIR. "
                "HYPIR's one-step restoration: encodes the image with the VAE, makes one UNet call at model_t on "
                "its latent, takes x0 at coeff_t, decodes and fixes colours against the input, exactly as HYPIR's "
                "enhancer. Large images run in Gaussian-blended latent tiles and a tiled VAE. Optional IQA params "
                "lower the strength / timestep for mildly degraded images."),
            inputs=[
                io.Model.Input("model", tooltip="SD 2.1 base with HYPIR's LoRA (Load HYPIR LoRA)."),
                io.Vae.Input("vae", tooltip="The SD 2.1 checkpoint's VAE."),
                io.Conditioning.Input("positive", tooltip=(
                    "Text conditioning of the UNet call; HYPIR's default is an empty prompt (CLIP Text Encode with "
                    "no text).")),
                io.Image.Input("image", tooltip="The degraded image(s)."),
                io.Int.Input("model_t", default=hy.MODEL_T, min=1, max=999, tooltip=(
                    "Timestep of the single UNet call (HYPIR: 200).")),
                io.Int.Input("coeff_t", default=hy.COEFF_T, min=1, max=999, tooltip=(
                    "Timestep whose noise level turns the prediction into x0 (HYPIR: 200).")),
                io.Float.Input("upscale", default=1.0, min=1.0, max=8.0, step=0.05, tooltip=(
                    "Bicubic upscale before restoring (HYPIR's --upscale).")),
                io.Combo.Input("color_fix", options=list(COLOR_FIXES), default="wavelet", tooltip=(
                    "Colour correction against the (upscaled) input: wavelet (HYPIR), adain or none.")),
                io.Int.Input("tile_size", default=hy.PATCH_SIZE, min=64, max=8192, step=64, tooltip=(
                    "Tile side in pixels for the UNet and the VAE (HYPIR's patch_size 512). Images whose short side "
                    "is at most this are first resized up to it, as HYPIR does.")),
                io.Int.Input("tile_stride", default=256, min=32, max=8192, step=32, tooltip=(
                    "Distance between tiles in pixels (HYPIR: 256); tile_size - tile_stride is the blended "
                    "overlap.")),
                io.Combo.Input("adapt", options=list(hy.ADAPT_MODES), default="off", tooltip=(
                    "With params: what the IQA class changes per image: strength (LoRA strength x factor), "
                    "timestep (model_t and coeff_t x factor), both, or off (default: HYPIR as published).")),
                io.Float.Input("mild_factor", default=0.5, min=0.0, max=1.0, step=0.05, tooltip=(
                    "Factor for mild images (severe 1, medium halfway); mild inputs need less change.")),
                RestoreParams.Input("params", optional=True, tooltip=(
                    "Per-image quality classes from the IQA Classifier (same batch as image); used when adapt is "
                    "not off.")),
            ],
            outputs=[io.Image.Output("restored", display_name="image", tooltip=(
                "The restored image(s), upscale x the input size, in [0, 1]."))],
        )

    @classmethod
    def validate_inputs(cls, tile_size=512, tile_stride=256, **kwargs):
        values = {"tile_size": tile_size, "tile_stride": tile_stride, **kwargs}
        bad = widget_bounds_error(cls, values) or choice_error(cls, values)
        if bad:
            return bad
        if isinstance(tile_size, int) and isinstance(tile_stride, int) and tile_stride > tile_size:
            return f"tile_stride: expected 32 .. tile_size ({tile_size}) pixels, found {tile_stride}"
        return True

    @classmethod
    def execute(cls, model, vae, positive, image, model_t=hy.MODEL_T, coeff_t=hy.COEFF_T, upscale=1.0,
                color_fix="wavelet", tile_size=hy.PATCH_SIZE, tile_stride=256, adapt="off", mild_factor=0.5,
                params=None) -> io.NodeOutput:
        if tile_stride > tile_size:
            raise PackError(f"tile_stride: expected 32 .. tile_size ({tile_size}) pixels, found {tile_stride}")
        x = input_image(image)
        n = x.shape[0]
        groups = [(list(range(n)), 1.0)]
        if adapt != "off":
            if params is None:
                raise PackError(f"adapt: expected IQA params connected for adapt '{adapt}', found none; connect "
                                f"the IQA Classifier's params or set adapt to off")
            if len(params.classes) != n:
                raise PackError(f"params: expected one entry per image ({n}), found {len(params.classes)}; score "
                                f"the same batch you restore")
            factors = hy.adapt_factors(params.classes, mild_factor)
            groups = [([i for i in range(n) if factors[i] == f], f) for f in sorted(set(factors))]
        lora = model.attachments.get(ATTACHMENT)
        if adapt in ("strength", "both") and lora is None:
            raise PackError("model: expected a model from Load HYPIR LoRA for adapt 'strength', found a model "
                            "without HYPIR's LoRA")
        ref, padded, size = hy.prepare_lq(x, float(upscale), int(tile_size))
        pixels = padded.movedim(1, -1)
        if max(pixels.shape[1:3]) > tile_size:
            latent = vae.encode_tiled(pixels, tile_x=tile_size, tile_y=tile_size, overlap=tile_size // 4)
        else:
            latent = vae.encode(pixels)
        base = set_tiling(model.clone(), tile_size, tile_stride)
        out = torch.empty_like(latent)
        for idx, f in groups:
            m = base
            if adapt in ("strength", "both") and f != 1.0:
                m = base.clone()
                m.add_patches(lora.patches, lora.strength * f - lora.strength)
            mt, ct = model_t, coeff_t
            if adapt in ("timestep", "both"):
                mt, ct = max(1, round(model_t * f)), max(1, round(coeff_t * f))
            out[idx] = one_step(m, positive, latent[idx], mt, ct).to(out)
        raw = _vae_raw_output(vae)
        lt = tile_size // 8
        if max(out.shape[-2:]) > lt:
            dec = raw.decode_tiled(out, tile_x=lt, tile_y=lt, overlap=lt // 4)
        else:
            dec = raw.decode(out)
        dec = dec.reshape(-1, *dec.shape[-3:]).movedim(-1, 1).float()
        res = hy.finish(dec, ref.to(dec.device), size, color_fix)
        return io.NodeOutput(res.movedim(1, -1).cpu().contiguous())


NODES = [HYPIRLoader, HYPIRRestore]
