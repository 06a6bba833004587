"""DiffBIR sampling nodes: the spaced DDPM schedule, the Restoration Guidance Sampler and the colour fix."""

from __future__ import annotations

import torch
from comfy_api.latest import io

from ..modules import colorfix
from ..modules.image_ops import check_image_bhwc
from ..modules.schedules import q_sample_start, rescaled_cfg_scale, spaced_sigmas
from .aliases import aliases_for
from .common import (
    CAT_IMAGE,
    PackError,
    RestoreCondition,
    choice_error,
    input_image,
    widget_bounds_error,
)
from .guidance import (
    LOSSES,
    MEMORY_MODES,
    MIN_TILE,
    PRECISIONS,
    SPACES,
    RestorationGuidance,
    apply_guidance,
    fit_guide,
)
from .tiled_sampling import set_tiling

CAT_SAMPLING = "restoration/sampling"
SPACED = "diffbir_spaced"


def model_alphas_cumprod(model) -> torch.Tensor:
    """ᾱ (1000,) float64 of the MODEL's discrete schedule (zero-terminal-SNR models included)."""
    ms = model.get_model_object("model_sampling")
    sigmas = getattr(ms, "sigmas", None)
    if sigmas is None or sigmas.numel() < 2:
        raise PackError("model: expected a discrete-time (DDPM-family) model such as SD 2.1, found a model "
                        f"without a discrete sigma table ({type(ms).__name__})")
    return 1.0 / (1.0 + sigmas.double().cpu() ** 2)


def diffbir_sigmas(model, steps: int) -> torch.Tensor:
    return spaced_sigmas(model_alphas_cumprod(model), steps)


def with_rescaled_cfg(model):
    """A copy of ``model`` whose CFG scale follows DiffBIR v2.1's rescaled schedule over the model timestep t of
    each step, cfg(t) = 1 + cfg * (1 - cos(pi * ((1000 - t) / 1000) ** 5)) / 2 (only when cfg > 1, as in DiffBIR)."""
    ms = model.get_model_object("model_sampling")
    total = int(getattr(ms, "sigmas", torch.zeros(1000)).numel())

    def cfg_function(args):
        t = float(ms.timestep(args["sigma"][:1].float().cpu())[0])
        scale = rescaled_cfg_scale(float(args["cond_scale"]), t, total)
        return args["uncond"] + (args["cond"] - args["uncond"]) * scale

    m = model.clone()
    m.set_model_sampler_cfg_function(cfg_function)
    return m


def guidance_inputs(default_scale: float, memory: bool = True) -> list:
    """The restoration-guidance widgets shared by the sampler and the model-patch node (ids are permanent).

    ``memory=False`` leaves out the three (optional) memory widgets of :func:`guidance_memory_inputs`, for a node
    that lists them after its other optional inputs; the page shows and stores them right after ``block_size``
    either way."""
    return [
        io.Float.Input("guidance_scale", default=default_scale, min=0.0, max=100.0, step=0.01, tooltip=(
            "Restoration guidance strength (DiffBIR g_scale; the step is scale x 3000 x the gradient). 0 = off "
            "(identical to plain sampling); DiffBIR suggests 0.5 for smoother, more faithful results.")),
        io.Int.Input("g_start", default=1001, min=-1, max=1001, tooltip=(
            "Guidance acts while g_stop < t + 1 < g_start, t the model timestep (999 = first step).")),
        io.Int.Input("g_stop", default=-1, min=-1, max=1001, tooltip="End of the guidance window (-1 = to the end)."),
        io.Int.Input("g_repeat", default=1, min=1, max=20, tooltip="Guidance updates per step."),
        io.Combo.Input("g_space", options=SPACES, default="rgb", tooltip=(
            "rgb = compare decoded images (backpropagates through the VAE decoder; exact, more memory); "
            "latent = compare latents (cheap).")),
        io.Combo.Input("g_loss", options=LOSSES, default="w_mse", tooltip=(
            "w_mse = Sobel-weighted MSE (region-adaptive, DiffBIR's default); mse = plain MSE.")),
        io.Int.Input("block_size", default=2, min=1, max=64, tooltip=(
            "Block size in pixels of the edge-strength map for w_mse (DiffBIR's code: 2).")),
        *(guidance_memory_inputs() if memory else []),
    ]


def guidance_memory_inputs() -> list:
    """The memory/precision widgets of rgb-space guidance (ids are permanent). They are optional inputs, so API
    prompts and scripts written before they existed still validate (the defaults apply); the page shows and stores
    them after the required widgets, i.e. right after ``block_size``."""
    return [
        io.Combo.Input("g_memory", options=MEMORY_MODES, default="auto", optional=True, tooltip=(
            "Memory use of rgb-space guidance (latent space ignores it). auto = checkpoint (full when it fits "
            "in half the free memory), tiles when even checkpointing would not fit or memory runs out. full = "
            "keep every activation of the VAE decoder (fastest, most memory: "
            "~22 GB at 1024 px in fp32). checkpoint = recompute each decoder block in the backward pass (a fifth "
            "of the memory or less, ~+50% guidance compute). tiled = decode and backpropagate tile by tile "
            "(g_tile_size, 64 px halo; ~1.56x decoder compute at 512 px tiles, gradient slightly approximate at "
            "tile borders). Every mode retries with smaller tiles (down to 128 px) when memory runs out.")),
        io.Combo.Input("g_precision", options=PRECISIONS, default="auto", optional=True, tooltip=(
            "Precision of the VAE decoder copy used by rgb-space guidance (latent space ignores it). auto = what "
            "ComfyUI uses for a VAE on this device (bf16 on recent GPUs, fp32 on CPU); bf16/fp16 halve decoder "
            "memory and time; fp32 = exact. The loss and the update always run in fp32. bf16/fp16 fall back to "
            "fp32 where the device does not support them.")),
        io.Int.Input("g_tile_size", default=512, min=MIN_TILE, max=4096, step=64, optional=True, tooltip=(
            "Tile size in pixels for g_memory 'tiled', and the first tile size tried when memory runs out (then "
            "halved down to 128). Smaller tiles use less memory and cost more compute.")),
    ]


def check_window(g_start: int, g_stop: int):
    if g_stop >= g_start:
        return f"g_stop ({g_stop}) must be below g_start ({g_start})"
    return True


class SpacedDDPMScheduler(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="AdaptBIR_SpacedDDPMScheduler",
            **aliases_for("AdaptBIR_SpacedDDPMScheduler"),
            display_name="Spaced DDPM Scheduler (DiffBIR)",
            category=CAT_SAMPLING,
            description=(
                "The step schedule DiffBIR restores photos with. "
                "DiffBIR's spaced schedule: N of the model's 1000 timesteps chosen by IDDPM's respacing. With "
                "ComfyUI's 'ddpm' sampler in SamplerCustom this is exactly DiffBIR's spaced sampler."),
            inputs=[
                io.Model.Input("model", tooltip="The SD 2.1 model (its noise schedule is used)."),
                io.Int.Input("steps", default=50, min=1, max=1000, tooltip="Number of sampling steps (DiffBIR: 50)."),
            ],
            outputs=[io.Sigmas.Output("sigmas", display_name="sigmas",
                tooltip="Descending sigmas ending in 0, for SamplerCustom.")],
        )

    @classmethod
    def execute(cls, model, steps=50) -> io.NodeOutput:
        return io.NodeOutput(diffbir_sigmas(model, steps))


def _guide_bchw(guide_image, condition) -> torch.Tensor | None:
    """Guide image as (B,3,H,W) [0,1]: the given image, else the condition's (padded) image, else None."""
    if guide_image is not None:
        return input_image(guide_image, "guide_image")
    return None if condition is None else input_image(condition["image"], "condition.image")


class RestorationGuidanceSampler(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        import comfy.samplers

        return io.Schema(
            node_id="AdaptBIR_RestorationGuidanceSampler",
            **aliases_for("AdaptBIR_RestorationGuidanceSampler"),
            display_name="Restoration Guidance Sampler (DiffBIR)",
            category=CAT_SAMPLING,
            description=(
                "Restores the photo step by step, keeping colours and shapes faithful to the cleaned image. "
                "Samples like KSampler, with DiffBIR's region-adaptive restoration guidance: at each step the "
                "predicted image is pulled toward the guide (the cleaned stage-1 image), strongly in flat regions "
                "and weakly on edges and texture, so the result stays faithful without losing generated detail. "
                "Defaults reproduce DiffBIR v2 (spaced DDPM, 50 steps, cfg 4). Guidance scale 0 = off."),
            inputs=[
                io.Model.Input("model", tooltip="SD 2.1 model (with Apply IRControlNet on the conditioning)."),
                io.Conditioning.Input("positive", tooltip="Positive conditioning from Apply IRControlNet."),
                io.Conditioning.Input("negative", tooltip="Negative conditioning from Apply IRControlNet."),
                io.Vae.Input("vae", tooltip="The SD VAE: decodes the prediction for rgb-space guidance."),
                io.Latent.Input("latent_image", tooltip=(
                    "Latent of the output size (e.g. from Dual Encoder Interpolate, or an empty latent).")),
                io.Combo.Input("start", options=["noise", "cond"], default="noise", tooltip=(
                    "noise = start from pure noise; cond = start from the condition latent diffused to t=999 "
                    "(DiffBIR's 'better start'; needs the condition input).")),
                io.Int.Input("seed", default=0, min=0, max=0xFFFFFFFFFFFFFFFF, control_after_generate=True,
                             tooltip="Noise seed."),
                io.Int.Input("steps", default=50, min=1, max=1000, tooltip="Sampling steps (DiffBIR: 50)."),
                io.Float.Input("cfg", default=4.0, min=0.0, max=30.0, step=0.1, round=0.01, tooltip=(
                    "Classifier-free guidance scale (DiffBIR v2: 4; AdaptBIR: 1).")),
                io.Combo.Input("sampler_name", options=comfy.samplers.KSampler.SAMPLERS, default="ddpm", tooltip=(
                    "ComfyUI sampler. ddpm + diffbir_spaced = DiffBIR's spaced sampler.")),
                io.Combo.Input("scheduler", options=[SPACED, *comfy.samplers.KSampler.SCHEDULERS], default=SPACED,
                               tooltip="diffbir_spaced = IDDPM respacing as in DiffBIR; or any ComfyUI scheduler."),
                *guidance_inputs(default_scale=0.0, memory=False),
                RestoreCondition.Input("condition", optional=True, tooltip=(
                    "Condition from Dual Encoder Interpolate / Apply IRControlNet: its image is the default guide "
                    "and its latent the 'cond' start.")),
                io.Image.Input("guide_image", optional=True, tooltip=(
                    "Guide image (the stage-1 result); overrides the condition's image. Same size as the output "
                    "(before or after padding to 64).")),
                # listed last so the existing inputs keep their positions; shown and stored after block_size
                *guidance_memory_inputs(),
                io.Boolean.Input("rescale_cfg", default=False, optional=True, tooltip=(
                    "DiffBIR v2.1's rescaled CFG: the scale grows over sampling from about 1 at the noisiest step "
                    "to about 1 + cfg at the last, cfg(t) = 1 + cfg * (1 - cos(pi * ((1000 - t) / 1000)^5)) / 2 "
                    "at model timestep t. Only when cfg > 1. Off = a constant cfg.")),
            ],
            outputs=[io.Latent.Output("latent", display_name="latent",
                tooltip="The sampled latent (raw VAE space) for VAE Decode.")],
        )

    @classmethod
    def validate_inputs(cls, g_start=1001, g_stop=-1, **kwargs):
        return widget_bounds_error(cls, {"g_start": g_start, "g_stop": g_stop, **kwargs}) \
            or choice_error(cls, kwargs) or check_window(g_start, g_stop)

    @classmethod
    def execute(cls, model, positive, negative, vae, latent_image, start="noise", seed=0, steps=50, cfg=4.0,
                sampler_name="ddpm", scheduler=SPACED, guidance_scale=0.0, g_start=1001, g_stop=-1, g_repeat=1,
                g_space="rgb", g_loss="w_mse", block_size=2, condition=None, guide_image=None, g_memory="auto",
                g_precision="auto", g_tile_size=512, rescale_cfg=False) -> io.NodeOutput:
        import comfy.sample
        import comfy.samplers
        import latent_preview

        latent = comfy.sample.fix_empty_latent_channels(model, latent_image["samples"])
        if latent.ndim != 4 or latent.shape[0] == 0 or latent.shape[-1] == 0 or latent.shape[-2] == 0:
            raise PackError(f"latent_image: expected a non-empty latent batch (B, C, h, w), found shape "
                            f"{tuple(latent.shape)}")
        if not bool(torch.isfinite(latent).all()):
            raise PackError("latent_image: expected finite values, found NaN or inf")
        if scheduler == SPACED:
            sigmas = diffbir_sigmas(model, steps)
        else:
            sigmas = comfy.samplers.calculate_sigmas(model.get_model_object("model_sampling"), scheduler, steps).cpu()

        m = model
        if guidance_scale > 0:
            guide = _guide_bchw(guide_image, condition)
            if guide is None:
                raise PackError("guide_image/condition: guidance_scale > 0 needs a guide image or a condition, "
                                "found neither")
            if guide.shape[0] not in (1, latent.shape[0]):
                raise PackError(f"guide_image: expected 1 or {latent.shape[0]} images (the latent batch), "
                                f"found {guide.shape[0]}")
            fit_guide(guide, latent.shape[-2] * 8, latent.shape[-1] * 8)  # size errors before sampling starts
            m = apply_guidance(model, RestorationGuidance(vae, guide, guidance_scale, g_start, g_stop, g_repeat,
                                                          g_space, g_loss, block_size, memory=g_memory,
                                                          precision=g_precision, tile_size=g_tile_size))

        batch_inds = latent_image.get("batch_index")
        noise = comfy.sample.prepare_noise(latent, seed, batch_inds)
        if start == "cond":
            if condition is None:
                raise PackError("condition: start 'cond' needs the condition input, found none")
            lf = model.get_model_object("latent_format")
            c = lf.process_in(condition["samples"].float())
            if c.shape != latent.shape:
                raise PackError(f"condition: expected a latent of shape {tuple(latent.shape)}, found {tuple(c.shape)}")
            x_t = q_sample_start(c, noise, model_alphas_cumprod(model), t=999)
            latent, noise = lf.process_out(x_t), torch.zeros_like(noise)

        if rescale_cfg:
            m = with_rescaled_cfg(m)
        m = set_tiling(m.clone(), replace=False)  # out-of-memory falls back to latent tiles (unless tiled)
        callback = latent_preview.prepare_callback(m, len(sigmas) - 1)
        samples = comfy.sample.sample_custom(
            m, noise, cfg, comfy.samplers.sampler_object(sampler_name), sigmas, positive, negative, latent,
            noise_mask=latent_image.get("noise_mask"), callback=callback, disable_pbar=True, seed=seed)
        out = latent_image.copy()
        out["samples"] = samples
        return io.NodeOutput(out)


class ApplyRestorationGuidance(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="AdaptBIR_ApplyRestorationGuidance",
            **aliases_for("AdaptBIR_ApplyRestorationGuidance"),
            display_name="Apply Restoration Guidance (model patch)",
            category=CAT_SAMPLING,
            description=(
                "Keeps a restoration's colours and shapes faithful to the cleaned photo, with any sampler. "
                "DiffBIR's region-adaptive restoration guidance as a model patch, for the stock KSampler, "
                "SamplerCustom or any other sampler: each step's predicted image is pulled toward the guide. "
                "Returns a patched copy of the model; the input model is not changed. The guide must have the "
                "sampled image's size (before or after padding to 64)."),
            inputs=[
                io.Model.Input("model", tooltip="The model to patch (SD 2.1 with IRControlNet conditioning)."),
                io.Vae.Input("vae", tooltip="The SD VAE, to decode predictions (rgb) or encode the guide (latent)."),
                io.Image.Input("guide_image", tooltip="The guide: the stage-1 (cleaned) image."),
                *guidance_inputs(default_scale=0.5),
            ],
            outputs=[io.Model.Output("patched_model", display_name="model",
                tooltip="A copy of the model with the guidance patch.")],
        )

    @classmethod
    def validate_inputs(cls, g_start=1001, g_stop=-1, **kwargs):
        return widget_bounds_error(cls, {"g_start": g_start, "g_stop": g_stop, **kwargs}) \
            or choice_error(cls, kwargs) or check_window(g_start, g_stop)

    @classmethod
    def execute(cls, model, vae, guide_image, guidance_scale=0.5, g_start=1001, g_stop=-1, g_repeat=1,
                g_space="rgb", g_loss="w_mse", block_size=2, g_memory="auto", g_precision="auto",
                g_tile_size=512) -> io.NodeOutput:
        if guidance_scale == 0:
            return io.NodeOutput(model.clone())
        guide = input_image(guide_image, "guide_image")
        patch = RestorationGuidance(vae, guide, guidance_scale, g_start, g_stop, g_repeat, g_space, g_loss,
                                    block_size, memory=g_memory, precision=g_precision, tile_size=g_tile_size)
        return io.NodeOutput(apply_guidance(model, patch))


class ColorFix(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="AdaptBIR_ColorFix",
            **aliases_for("AdaptBIR_ColorFix"),
            display_name="Colour Fix (wavelet / AdaIN)",
            category=CAT_IMAGE,
            description=(
                "Removes colour shifts from a restored photo. "
                "Corrects colour shifts of the diffusion result using the stage-1 image, as DiffBIR and SUPIR do: "
                "wavelet keeps the result's fine detail and takes the low-frequency colour from the reference; "
                "AdaIN matches each channel's mean and spread."),
            inputs=[
                io.Image.Input("image", tooltip="The decoded diffusion result."),
                io.Image.Input("reference", tooltip=(
                    "The stage-1 (cleaned) image; resized to the image's size if it differs.")),
                io.Combo.Input("method", options=["wavelet", "adain"], default="wavelet", tooltip=(
                    "wavelet (DiffBIR's default): 5-level low band from the reference; adain: per-channel "
                    "mean/std matching.")),
            ],
            outputs=[io.Image.Output("fixed", display_name="fixed",
                tooltip="The colour-corrected image, same size as the input.")],
        )

    @classmethod
    def validate_inputs(cls, method="wavelet"):
        return choice_error(cls, {"method": method}) or True

    @classmethod
    def execute(cls, image, reference, method="wavelet") -> io.NodeOutput:
        x = input_image(image, "image")
        r = input_image(reference, "reference")
        if r.shape[0] not in (1, x.shape[0]):
            raise PackError(f"reference: expected 1 or {x.shape[0]} images, found {r.shape[0]}")
        r = r.expand(x.shape[0], -1, -1, -1)
        if r.shape[-2:] != x.shape[-2:]:
            r = torch.nn.functional.interpolate(r, size=x.shape[-2:], mode="bicubic", antialias=True,
                                                align_corners=False).clamp(0, 1)
        if method == "adain" and x.shape[-2] * x.shape[-1] < 2:
            raise PackError(f"image: expected at least 2 pixels for method 'adain' (it matches each channel's "
                            f"spread), found {x.shape[-1]}x{x.shape[-2]}; use method 'wavelet'")
        fn = colorfix.wavelet_color_fix if method == "wavelet" else colorfix.adain_color_fix
        out = fn(x, r).permute(0, 2, 3, 1).contiguous()
        if image.shape[-1] == 4:  # keep the alpha channel
            out = torch.cat([out, image[..., 3:].to(out)], dim=-1)
        check_image_bhwc(out, "fixed")
        return io.NodeOutput(out)


NODES = [SpacedDDPMScheduler, RestorationGuidanceSampler, ApplyRestorationGuidance, ColorFix]
