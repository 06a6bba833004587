"""SUPIR nodes: LoRA SUPIR Loader (+ its LoRA list), SUPIR Apply, SUPIR Conditioning and the EDM sampler.

SUPIR weights are loaded once per file and kept (the last file only) so that changing a LoRA or a strength
re-runs the loader without reading the SUPIR file again; LoRAs are applied with ComfyUI's own LoRA machinery.
"""

from __future__ import annotations

import os

import torch
from comfy_api.latest import io

from ..modules.supir import restore_toward_center, split_supir_state_dict
from ..modules.vae_layout import restoration_vae_state_dict
from ..modules.weights_kind import describe_weights
from .aliases import aliases_for
from .common import (
    CATEGORY_ROOT,
    PackError,
    RestoreCondition,
    RestoreParams,
    file_fingerprint,
    load_weights,
    missing_file_error,
    model_file_path,
)
from .file_lists import loader_options
from .latent import CROP_KEY, encode, encode_condition_image
from .restoration_vae import build_vae
from .supir_model import (
    ADDITIONAL_KEY,
    WRAPPER_KEY,
    SUPIRPatch,
    adapter_lora_key_map,
    build_adapter,
    check_unet_fits,
    unet_signature,
)
from .tiled_sampling import set_tiling

CAT_SUPIR = f"{CATEGORY_ROOT}/supir"
SUPIRType = io.Custom("ADAPTBIR_SUPIR")
LoRAListType = io.Custom("ADAPTBIR_LORA_LIST")

# SUPIR's default prompts (test.py / gradio_demo.py a_prompt and n_prompt)
DEFAULT_POSITIVE = (
    "Cinematic, High Contrast, highly detailed, taken using a Canon EOS R camera, hyper detailed photo - realistic "
    "maximum detail, 32k, Color Grading, ultra HD, extreme meticulous detailing, skin pore detailing, hyper "
    "sharpness, perfect without deformations.")
DEFAULT_NEGATIVE = (
    "painting, oil painting, illustration, drawing, art, sketch, oil painting, cartoon, CG Style, 3D render, "
    "unreal engine, blurring, dirty, messy, worst quality, low quality, frames, watermark, signature, jpeg "
    "artifacts, deformed, lowres, over-smooth")
SUPIR_SIZE = 1024  # SUPIR feeds original_size = target_size = (1024, 1024), crop (0, 0) to SDXL


class SUPIRAdapter:
    """What LoRA SUPIR Loader hands to SUPIR Apply: the adapter's ModelPatcher (possibly LoRA-patched), the SDXL
    VAE it was loaded with, the stage-1 VAE (SUPIR's denoise encoder + that VAE's decoder) and the file name."""

    def __init__(self, patcher, vae, stage1_vae, source: str, signature: tuple):
        self.patcher = patcher
        self.vae = vae
        self.stage1_vae = stage1_vae
        self.source = source
        self.signature = signature


class _AdapterCache:
    """The last SUPIR file's adapter (ModelPatcher) and denoise-encoder tensors, keyed by file identity, UNet
    config and dtype. One entry: loading another file (or the same file for another model) replaces it."""

    def __init__(self):
        self.key = None
        self.value = None

    def get(self, key, load):
        if self.key != key:
            self.key, self.value = None, None  # drop the old adapter before reading the next one
            self.value = load()
            self.key = key
        return self.value


_ADAPTERS = _AdapterCache()


def _load_adapter(path: str, name: str, model):
    """(base adapter ModelPatcher, denoise-encoder state dict) for ``model``'s UNet; PackError on a wrong file."""
    import comfy.model_management as mm
    import comfy.model_patcher

    sd = load_weights(path, "SUPIR weights (SUPIR-v0Q/v0F)")
    try:
        adapter_sd, denoise_sd = split_supir_state_dict(sd)
    except ValueError as e:
        raise PackError(f"supir_name '{name}': {e}, found {describe_weights(sd)}") from None
    del sd
    base = model.model
    dtype = base.manual_cast_dtype or base.get_dtype()
    try:
        net = build_adapter(base.model_config.unet_config, adapter_sd, dtype, device=mm.unet_offload_device())
    except ValueError as e:
        raise PackError(f"model / supir_name '{name}': {e}") from None
    patcher = comfy.model_patcher.ModelPatcher(net, load_device=mm.get_torch_device(),
                                               offload_device=mm.unet_offload_device())
    return patcher, {k: v.clone() for k, v in denoise_sd.items()}


def _stage1_vae(denoise_sd: dict, vae, name: str):
    if not denoise_sd:
        return None
    sd = {"first_stage_model.denoise_encoder." + k: v for k, v in denoise_sd.items()}
    try:
        vae_sd, _ = restoration_vae_state_dict(sd, vae.get_sd())
        return build_vae(vae_sd)
    except (ValueError, RuntimeError, KeyError) as e:
        raise PackError(f"supir_name '{name}': its denoise encoder does not fit the connected VAE ({e})") from None


def _read_lora(name: str) -> dict:
    return load_weights(model_file_path("loras", name), "LoRA weights")


def _check_lora_matches(name: str, lora: dict, model, clip) -> None:
    """PackError unless some tensor of ``lora`` patches a layer of ``model``'s UNet or ``clip``'s text encoders
    (ComfyUI's own key maps); without this a LoRA for another model family would silently do nothing."""
    import comfy.lora
    import comfy.lora_convert

    targets = "UNet or text encoders" if clip is not None else "UNet (no clip connected)"
    kind = describe_weights(lora)
    key_map = comfy.lora.model_lora_keys_unet(model.model, {})
    if clip is not None:
        key_map = comfy.lora.model_lora_keys_clip(clip.cond_stage_model, key_map)
    # HYPIR's SD 2.1 LoRA uses diffusers names that ComfyUI's SDXL key map also has: refuse it by its layout
    if not kind.startswith("HYPIR") and \
            comfy.lora.load_lora(comfy.lora_convert.convert_lora(lora), key_map, log_missing=False):
        return
    found = (f"a LoRA whose {len(lora)} tensors match no layer of it (a LoRA for another model family?)"
             if kind.startswith("a LoRA") else kind)
    raise PackError(f"lora '{name}': expected a LoRA for the connected SDXL model's {targets}, found {found}")


def apply_loras(model, clip, adapter_patcher, loras):
    """Apply ``loras`` (list of dicts: name, strength_model, strength_clip, strength_adapter) in order with
    ComfyUI's LoRA loading, to clones; the adapter gets each LoRA's encoder weights at ``strength_adapter``.
    Returns ``(model, clip, adapter_patcher)``."""
    import comfy.lora
    import comfy.lora_convert
    import comfy.sd

    key_map = None
    for entry in loras:
        sm, sc, sa = entry["strength_model"], entry["strength_clip"], entry["strength_adapter"]
        if sm == 0 and sc == 0 and sa == 0:
            continue
        lora = _read_lora(entry["name"])
        if sm != 0 or sc != 0:  # exactly what ComfyUI's LoraLoader does
            _check_lora_matches(entry["name"], lora, model, clip)
            model, clip = comfy.sd.load_lora_for_models(model, clip, lora, sm, sc)
        if sa != 0:
            if key_map is None:
                key_map = adapter_lora_key_map(model.model)
            patches = comfy.lora.load_lora(comfy.lora_convert.convert_lora(lora), key_map, log_missing=False)
            if not patches:
                raise PackError(f"lora '{entry['name']}': strength_adapter is set, but the LoRA has no weights for "
                                f"the UNet encoder that SUPIR's adapter copies (a text-encoder-only LoRA?)")
            adapter_patcher = adapter_patcher.clone()
            adapter_patcher.add_patches(patches, sa)
    return model, clip, adapter_patcher


class SUPIRLoRA(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        import folder_paths

        return io.Schema(
            node_id="AdaptBIR_SUPIRLoRA",
            **aliases_for("AdaptBIR_SUPIRLoRA"),
            display_name="SUPIR LoRA",
            category=CAT_SUPIR,
            description=(
                "Adds a LoRA (a face or landscape style...) to SUPIR's photo restoration. "
                "Adds one LoRA (a usual ComfyUI LoRA file) to the list that LoRA SUPIR Loader applies. Chain several "
                "to stack them (e.g. a face and a landscape LoRA); they are applied in chain order."),
            inputs=[
                io.Combo.Input("lora_name", options=folder_paths.get_filename_list("loras"), tooltip=(
                    "LoRA file in ComfyUI/models/loras (kohya, diffusers/PEFT and the other formats ComfyUI reads).")),
                io.Float.Input("strength_model", default=1.0, min=-10.0, max=10.0, step=0.01, tooltip=(
                    "LoRA strength on the SDXL UNet, as in ComfyUI's Load LoRA.")),
                io.Float.Input("strength_clip", default=1.0, min=-10.0, max=10.0, step=0.01, tooltip=(
                    "LoRA strength on the text encoders, as in ComfyUI's Load LoRA.")),
                io.Float.Input("strength_adapter", default=0.0, min=-10.0, max=10.0, step=0.01, tooltip=(
                    "Also apply the LoRA's UNet-encoder weights to SUPIR's adapter (its trained copy of the SDXL "
                    "encoder), so adapter and UNet stay consistent. 0 = adapter untouched (SUPIR as released).")),
                LoRAListType.Input("loras", optional=True, tooltip="LoRAs added before this one."),
            ],
            outputs=[LoRAListType.Output("loras_out", display_name="loras",
                tooltip="The list with this LoRA appended.")],
        )

    @classmethod
    def validate_inputs(cls, lora_name=None):
        # the file is checked when the prompt is queued, so every missing file of a graph is named at once
        return missing_file_error("loras", lora_name) or True

    @classmethod
    def fingerprint_inputs(cls, lora_name, **kwargs):
        # LoRA SUPIR Loader reads the file: a changed file re-runs this node and so everything after it
        return file_fingerprint("loras", lora_name)

    @classmethod
    def execute(cls, lora_name, strength_model=1.0, strength_clip=1.0, strength_adapter=0.0,
                loras=None) -> io.NodeOutput:
        entry = {"name": lora_name, "strength_model": float(strength_model), "strength_clip": float(strength_clip),
                 "strength_adapter": float(strength_adapter)}
        return io.NodeOutput(list(loras or []) + [entry])


class LoRASUPIRLoader(io.ComfyNode):
    @classmethod
    def define_schema(cls):

        return io.Schema(
            node_id="AdaptBIR_LoRASUPIRLoader",
            **aliases_for("AdaptBIR_LoRASUPIRLoader"),
            display_name="LoRA SUPIR Loader",
            category=CAT_SUPIR,
            description=(
                "Loads SUPIR, the SDXL photo restorer and upscaler, onto your SDXL checkpoint. "
                "Loads SUPIR (v0Q or v0F; original .ckpt or fp16 pruned .safetensors) from models/supir on top of "
                "the SDXL model, CLIP and VAE of your checkpoint loader, and applies a list of LoRAs with ComfyUI's "
                "own LoRA loading. The SDXL weights are never replaced: SUPIR's adapter runs beside the UNet as a "
                "patch, so samplers, LoRAs and memory management work as usual. Changing a LoRA does not re-read "
                "the SUPIR file."),
            inputs=[
                io.Model.Input("model", tooltip="SDXL model from your checkpoint loader (SUPIR recommends "
                               "Juggernaut-XL or SDXL base 1.0). LoRAs applied before this node are kept."),
                io.Vae.Input("vae", tooltip="The SDXL VAE; its quant convs and decoder complete SUPIR's denoise "
                             "encoder."),
                io.Combo.Input("supir_name", options=loader_options("supir", "supir"), tooltip=(
                    "SUPIR file in ComfyUI/models/supir: SUPIR-v0Q (general, default) or SUPIR-v0F (light "
                    "degradations, keeps more detail).")),
                io.Clip.Input("clip", optional=True, tooltip="The SDXL CLIP, for the LoRAs' strength_clip."),
                LoRAListType.Input("loras", optional=True, tooltip="LoRAs from a chain of SUPIR LoRA nodes."),
            ],
            outputs=[
                io.Model.Output("model_out", display_name="model",
                    tooltip="The SDXL model with the LoRAs (connect to SUPIR Apply)."),
                io.Clip.Output("clip_out", display_name="clip",
                    tooltip="The CLIP with the LoRAs (None if no CLIP was connected)."),
                io.Vae.Output("vae_out", display_name="vae", tooltip="The SDXL VAE, unchanged, for decoding."),
                SUPIRType.Output("supir", display_name="supir",
                    tooltip="SUPIR's adapter (with the LoRAs' adapter strengths) and its "
                                 "stage-1 encoder, for SUPIR Apply."),
                io.Vae.Output("stage1_vae", display_name="stage1_vae", tooltip=(
                    "SUPIR's denoise encoder as a VAE (decoder = the SDXL VAE's): restoration_vae of Dual "
                    "Encoder Interpolate, or decode its latent to see SUPIR's stage-1 result.")),
            ],
        )

    @classmethod
    def validate_inputs(cls, supir_name=None):
        # the file is checked when the prompt is queued, so every missing file of a graph is named at once
        return missing_file_error("supir", supir_name) or True

    @classmethod
    def fingerprint_inputs(cls, supir_name, **kwargs):
        return file_fingerprint("supir", supir_name)

    @classmethod
    def execute(cls, model, vae, supir_name, clip=None, loras=None) -> io.NodeOutput:
        if getattr(vae, "first_stage_model", None) is None:
            raise PackError("vae: expected a loaded VAE, found an invalid VAE (its loader found no VAE weights)")
        path = model_file_path("supir", supir_name)
        st = os.stat(path)
        base = model.model
        unet_config = getattr(getattr(base, "model_config", None), "unet_config", None)
        if not isinstance(unet_config, dict):
            raise PackError("model: expected a Stable Diffusion XL model, found one without a UNet config")
        signature = unet_signature(unet_config)
        dtype = base.manual_cast_dtype or base.get_dtype()
        key = (os.path.realpath(path), st.st_size, st.st_mtime_ns, signature, str(dtype))
        adapter_patcher, denoise_sd = _ADAPTERS.get(key, lambda: _load_adapter(path, supir_name, model))
        check_unet_fits(model, adapter_patcher.model.layout)
        stage1 = _stage1_vae(denoise_sd, vae, supir_name)
        model, clip, adapter_patcher = apply_loras(model, clip, adapter_patcher, loras or [])
        supir = SUPIRAdapter(adapter_patcher, vae, stage1, supir_name, signature)
        return io.NodeOutput(model, clip, vae, supir, stage1)


def _cfg_function(start: float, sigma_max: float):
    def linear_cfg(args):
        cond, uncond = args["cond"], args["uncond"]
        sigma = args["sigma"].to(device=cond.device, dtype=torch.float32).reshape(-1, 1, 1, 1)
        scale = args["cond_scale"] + (start - args["cond_scale"]) * sigma / sigma_max
        return uncond + (cond - uncond) * scale.to(cond.dtype)
    return linear_cfg


class RestoreCFG:
    """Post-CFG function: SUPIR's restore_cfg pull of the denoised latent toward ``x_center`` (scaled latent space),
    only while the *next* sigma of the schedule is above ``s_tmin``; sigma = the schedule's un-churned value."""

    def __init__(self, x_center: torch.Tensor, strength: float, s_tmin: float, sigma_max: float):
        self.x_center = x_center
        self.strength = strength
        self.s_tmin = s_tmin
        self.sigma_max = sigma_max
        self._centre_on = None  # x_center on the sampling device

    def __deepcopy__(self, memo):
        return self

    def __call__(self, args):
        d = args["denoised"]
        sigma = float(args["sigma"].max())
        schedule = (args.get("model_options") or {}).get("transformer_options", {}).get("sample_sigmas")
        nxt = 0.0
        if schedule is not None and len(schedule):
            sch = schedule.detach().float().cpu()
            i = int((sch - sigma).abs().argmin())
            sigma = float(sch[i])
            nxt = float(sch[i + 1]) if i + 1 < len(sch) else 0.0
        if nxt <= self.s_tmin:
            return d
        if self._centre_on is None or self._centre_on.device != d.device:
            self._centre_on = self.x_center.to(d.device)  # once per device, not at every step
        centre = self._centre_on
        if centre.shape[0] not in (1, d.shape[0]):
            centre = centre.repeat(d.shape[0] // centre.shape[0], 1, 1, 1)
        return restore_toward_center(d, centre, torch.tensor([sigma]), self.sigma_max, self.strength)


def patch_model(model, supir: SUPIRAdapter, hint: torch.Tensor, scale_start: float, scale_end,
                cfg_start: float, restore_cfg: float, s_tmin: float, x_center: torch.Tensor | None):
    """A clone of ``model`` with SUPIR (replacing an earlier SUPIR patch of this pack); ``model`` is untouched."""
    import comfy.patcher_extension

    sigma_max = float(model.get_model_object("model_sampling").sigma_max)
    m = model.clone()
    m.remove_wrappers_with_key(comfy.patcher_extension.WrappersMP.DIFFUSION_MODEL, WRAPPER_KEY)
    m.add_wrapper_with_key(comfy.patcher_extension.WrappersMP.DIFFUSION_MODEL, WRAPPER_KEY,
                           SUPIRPatch(supir.patcher, hint, scale_start, scale_end, sigma_max))
    m.set_additional_models(ADDITIONAL_KEY, [supir.patcher])
    post = [f for f in m.model_options.get("sampler_post_cfg_function", []) if not isinstance(f, RestoreCFG)]
    m.model_options["sampler_post_cfg_function"] = post
    if restore_cfg > 0:
        m.set_model_sampler_post_cfg_function(RestoreCFG(x_center, restore_cfg, s_tmin, sigma_max))
    if cfg_start > 0:
        m.set_model_sampler_cfg_function(_cfg_function(cfg_start, sigma_max), disable_cfg1_optimization=True)
    return set_tiling(m, replace=False)  # out-of-memory falls back to latent tiles (unless already tiled)


class SUPIRApply(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="AdaptBIR_SUPIRApply",
            **aliases_for("AdaptBIR_SUPIRApply"),
            display_name="SUPIR Apply",
            category=CAT_SUPIR,
            description=(
                "Restores and upscales a damaged photo with SUPIR on your SDXL model. "
                "Encodes the low-quality image with SUPIR's denoise encoder (or takes a Dual Encoder Interpolate "
                "condition) and patches the model so that every sampling step runs SUPIR's adapter on it. Sample "
                "the returned latent with the stock KSampler (denoise 1.0; SUPIR: 'SUPIR EDM Sampler' + scheduler "
                "'normal', cfg 4-7.5) and decode with the SDXL VAE; Crop To Original removes the padding."),
            inputs=[
                io.Model.Input("model", tooltip="The SDXL model from LoRA SUPIR Loader."),
                SUPIRType.Input("supir", tooltip="From LoRA SUPIR Loader."),
                io.Float.Input("control_scale_start", default=1.0, min=0.0, max=2.0, step=0.01, tooltip=(
                    "Control scale at the first (noisiest) step; it changes linearly over sigma to control_scale_end"
                    ". SUPIR's linear_s_stage2 uses 0 here; equal values = constant.")),
                io.Float.Input("control_scale_end", default=1.0, min=0.0, max=2.0, step=0.01, tooltip=(
                    "Control scale at the last step (SUPIR's s_stage2; 1 = faithful, ~0.93 = more generated "
                    "detail). 0 at both ends = plain SDXL.")),
                io.Float.Input("cfg_start", default=1.0, min=0.0, max=30.0, step=0.1, tooltip=(
                    "Linear CFG: the CFG at the first step, going linearly over sigma to the sampler's cfg at the "
                    "last (SUPIR: 1 -> cfg). 0 = off: the sampler's cfg throughout.")),
                io.Float.Input("restore_cfg", default=-1.0, min=-1.0, max=20.0, step=0.05, tooltip=(
                    "SUPIR's restoration guidance: pulls each step's prediction toward the stage-1 latent by "
                    "(sigma/sigma_max)^restore_cfg. Only against hallucinations; -1 = off (SUPIR's default), 4 is "
                    "a typical value.")),
                io.Float.Input("restore_cfg_s_tmin", default=0.05, min=0.0, max=10.0, step=0.01, tooltip=(
                    "restore_cfg acts only while the next sigma is above this (SUPIR: 0.05).")),
                io.Int.Input("pad_multiple", default=64, min=8, max=512, step=8, tooltip=(
                    "The image is edge-padded to a multiple of this many pixels (SUPIR: 64).")),
                io.Int.Input("tile_size", default=0, min=0, max=4096, step=64, tooltip=(
                    "0 = encode in one go (ComfyUI falls back to tiles when memory runs out); > 0 = tiles of this "
                    "many pixels.")),
                io.Image.Input("image", optional=True, tooltip=(
                    "The low-quality image, already at the output size (SUPIR works from 1024 px on the short "
                    "side).")),
                RestoreCondition.Input("condition", optional=True, tooltip=(
                    "Or a condition from Dual Encoder Interpolate (restoration_vae = stage1_vae, internal_vae = the "
                    "SDXL VAE), e.g. with the IQA Classifier's k.")),
                RestoreParams.Input("params", optional=True, tooltip=(
                    "Per-image parameters from the IQA Classifier: its w sets each image's end control scale "
                    "between params_scale_min (w = 0, severe) and control_scale_end (w = 1, mild).")),
                io.Float.Input("params_scale_min", default=0.9, min=0.0, max=2.0, step=0.01, tooltip=(
                    "End control scale for w = 0 when params are connected.")),
            ],
            outputs=[
                io.Model.Output("model_out", display_name="model",
                    tooltip="A patched copy of the model running SUPIR at each step."),
                io.Latent.Output("latent", display_name="latent", tooltip=(
                    "The stage-1 latent (padded size): the latent_image for KSampler at denoise 1.0.")),
                RestoreCondition.Output("condition_out", display_name="condition",
                    tooltip="The condition used (crop-back, colour fix)."),
            ],
        )

    @classmethod
    def execute(cls, model, supir, control_scale_start=1.0, control_scale_end=1.0, cfg_start=1.0, restore_cfg=-1.0,
                restore_cfg_s_tmin=0.05, pad_multiple=64, tile_size=0, image=None, condition=None, params=None,
                params_scale_min=0.9) -> io.NodeOutput:
        unet_config = getattr(getattr(model.model, "model_config", None), "unet_config", None) or {}
        if unet_signature(unet_config) != supir.signature:
            raise PackError("model: expected the SDXL model the SUPIR adapter was loaded for (connect model_out of "
                            "the same LoRA SUPIR Loader), found a model with another UNet")
        check_unet_fits(model, supir.patcher.model.layout)
        if (condition is None) == (image is None):
            raise PackError("image/condition: expected exactly one of them to be connected, found "
                            f"{'both' if condition is not None else 'neither'}")
        if image is not None:
            if supir.stage1_vae is None:
                raise PackError(f"image: the SUPIR file {supir.source} has no denoise encoder; encode the image "
                                f"with Dual Encoder Interpolate and connect its condition instead")
            condition = encode_condition_image(image, supir.stage1_vae, pad_multiple, tile_size, k=0.0)
        z = condition["samples"].float()
        if z.ndim != 4 or z.shape[1] != model.model.latent_format.latent_channels:
            raise PackError(f"condition: expected an SDXL latent with {model.model.latent_format.latent_channels} "
                            f"channels, found shape {tuple(z.shape)}")
        if not bool(torch.isfinite(z).all()):
            raise PackError("condition: expected finite latent values, found NaN or inf")
        hint = model.model.latent_format.process_in(z)
        scale_end = torch.tensor([float(control_scale_end)])
        if params is not None:
            try:
                w = params.w_tensor(len(params), dtype=torch.float32)
            except ValueError as e:
                raise PackError(str(e)) from None
            if len(params) not in (1, z.shape[0]):
                raise PackError(f"params: expected 1 or {z.shape[0]} entries (one per image of the "
                                f"{z.shape[0]}-image batch), found {len(params)}; score the same batch you restore")
            lo = float(params_scale_min)
            scale_end = lo + (float(control_scale_end) - lo) * w.clamp(0.0, 1.0)
        x_center = None
        if restore_cfg > 0:
            image_1 = supir.vae.decode(z)  # SUPIR: the stage-1 image re-encoded with the normal encoder
            x_center = model.model.latent_format.process_in(
                encode(supir.vae, image_1.movedim(-1, 1).float(), tile_size))
        patched = patch_model(model, supir, hint, control_scale_start, scale_end, cfg_start, restore_cfg,
                              restore_cfg_s_tmin, x_center)
        latent = {"samples": z.clone(), CROP_KEY: condition["crop"]}
        return io.NodeOutput(patched, latent, condition)


class SUPIRConditioning(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="AdaptBIR_SUPIRConditioning",
            **aliases_for("AdaptBIR_SUPIRConditioning"),
            display_name="SUPIR Conditioning",
            category=CAT_SUPIR,
            description=(
                "Writes the prompts SUPIR restores photos with. "
                "Encodes SUPIR's prompts with the SDXL CLIP: positive = caption followed directly by the quality "
                "prompt (as SUPIR does), negative = the negative prompt; SDXL size conditioning 1024 x 1024, crop "
                "0 (what SUPIR feeds). Defaults are SUPIR's own prompts."),
            inputs=[
                io.Clip.Input("clip", tooltip="The SDXL CLIP (from LoRA SUPIR Loader to include LoRAs)."),
                io.String.Input("caption", multiline=True, default="", tooltip=(
                    "What the image shows (e.g. from a captioning node); may be empty.")),
                io.String.Input("positive_prompt", multiline=True, default=DEFAULT_POSITIVE, tooltip=(
                    "Quality prompt appended to the caption (SUPIR's a_prompt).")),
                io.String.Input("negative_prompt", multiline=True, default=DEFAULT_NEGATIVE, tooltip=(
                    "Negative prompt (SUPIR's n_prompt).")),
            ],
            outputs=[
                io.Conditioning.Output("positive", display_name="positive",
                    tooltip="Positive conditioning for the sampler."),
                io.Conditioning.Output("negative", display_name="negative",
                    tooltip="Negative conditioning for the sampler."),
            ],
        )

    @classmethod
    def execute(cls, clip, caption="", positive_prompt=DEFAULT_POSITIVE,
                negative_prompt=DEFAULT_NEGATIVE) -> io.NodeOutput:
        if clip is None:
            raise PackError("clip: expected a CLIP model, found None (the checkpoint loader found no text encoder)")
        size = {"width": SUPIR_SIZE, "height": SUPIR_SIZE, "crop_w": 0, "crop_h": 0, "target_width": SUPIR_SIZE,
                "target_height": SUPIR_SIZE}
        out = []
        for text in (caption + positive_prompt, negative_prompt):
            tokens = clip.tokenize(text)
            out.append(clip.encode_from_tokens_scheduled(tokens, add_dict=dict(size)))
        return io.NodeOutput(out[0], out[1])


class SUPIRSampler(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="AdaptBIR_SUPIRSampler",
            **aliases_for("AdaptBIR_SUPIRSampler"),
            display_name="SUPIR EDM Sampler",
            category=CAT_SUPIR,
            description=(
                "The sampler SUPIR restores photos with. "
                "SUPIR's restoration EDM sampler as a ComfyUI SAMPLER for SamplerCustom: Euler with churn "
                "(gamma = min(s_churn / steps, sqrt(2) - 1) extra noise of scale s_noise at every step). Use it "
                "with the 'normal' scheduler (SUPIR's evenly spaced DDPM steps), 50 steps."),
            inputs=[
                io.Float.Input("s_churn", default=5.0, min=0.0, max=100.0, step=0.1, tooltip=(
                    "Stochasticity (SUPIR: 5). 0 = plain Euler.")),
                io.Float.Input("s_noise", default=1.01, min=0.9, max=1.2, step=0.001, tooltip=(
                    "Scale of the added noise (SUPIR: 1.01; its quality preset 1.02, the wrapper 1.003).")),
            ],
            outputs=[io.Sampler.Output("sampler", display_name="sampler",
                tooltip="Connect to SamplerCustom's sampler input.")],
        )

    @classmethod
    def execute(cls, s_churn=5.0, s_noise=1.01) -> io.NodeOutput:
        import comfy.samplers

        return io.NodeOutput(comfy.samplers.ksampler("euler", {"s_churn": float(s_churn), "s_tmin": 0.0,
                                                               "s_tmax": float("inf"), "s_noise": float(s_noise)}))


NODES = [SUPIRLoRA, LoRASUPIRLoader, SUPIRApply, SUPIRConditioning, SUPIRSampler]
