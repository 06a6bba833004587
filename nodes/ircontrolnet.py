"""DiffBIR's IRControlNet on ComfyUI: network (ComfyUI's own ControlNet blocks), loader, control and apply node."""

from __future__ import annotations

import comfy.cldm.cldm
import comfy.controlnet
import torch
from comfy.ldm.modules.diffusionmodules.util import timestep_embedding
from comfy_api.latest import io

from ..modules.controlnet_layout import LAYOUT_HINT, extract_ircontrolnet
from .common import (
    PackError,
    RestoreCondition,
    choice_error,
    file_fingerprint,
    load_weights,
    model_file_path,
    widget_bounds_error,
)
from .latent import encode_condition_image
from .tiled_sampling import crop_condition, current_tile

CAT_CONTROL = "restoration/control"
IRControlNetType = io.Custom("ADAPTBIR_IRCONTROLNET")
SD_LATENT_SCALE = 0.18215  # DiffBIR's hint: 0.18215 x the SD 2.1 VAE posterior mode
HINT_CONVENTIONS = ["auto", "diffbir", "adaptbir"]
# Keys in the per-call transformer_options that connect the control to CSFT Apply (nodes/csft.py): a patched model
# sets WANT_FEATURES; the control then stores its raw features (times its strength) under FEATURES, or None when
# it is inactive at that step.
WANT_FEATURES = "adaptbir_want_control_features"
FEATURES = "adaptbir_control_features"


class IRControlNetModel(comfy.cldm.cldm.ControlNet):
    """The SD UNet encoder + zero convolutions fed ``cat(x_t, c)`` (8 channels); no hint block.

    ``forward(x (B,8,h,w), timesteps (B,), context (B,T,D))`` returns ComfyUI's control dict
    ``{"middle": [m], "output": [12 skips in input-block order]}``; with ``return_features=True`` it returns
    ``(control_dict, features)``, ``features`` the 13 raw block outputs before the zero convolutions (input blocks
    0..11, then the middle block) that AdaptBIR's CSFT layers read.
    """

    def __init__(self, **config):
        super().__init__(hint_channels=4, **config)
        del self.input_hint_block

    def forward(self, x, timesteps, context, y=None, return_features=False, **kwargs):
        emb = self.time_embed(timestep_embedding(timesteps, self.model_channels, repeat_only=False).to(x.dtype))
        outputs, features = [], []
        h = x
        for module, zero_conv in zip(self.input_blocks, self.zero_convs):
            h = module(h, emb, context)
            features.append(h)
            outputs.append(zero_conv(h, emb, context))
        h = self.middle_block(h, emb, context)
        features.append(h)
        control = {"middle": [self.middle_block_out(h, emb, context)], "output": outputs}
        return (control, features) if return_features else control


def build_ircontrolnet(control_sd: dict, device=None, dtype=None):
    """Build an IRControlNet from its state dict with ComfyUI's blocks, ops and dtype policy.

    Returns ``(net, unet_config)``. ``device="meta"`` builds without allocating (layout checks).
    """
    import comfy.model_detection
    import comfy.model_management as mm
    import comfy.ops
    import comfy.utils

    cfg = comfy.model_detection.detect_unet_config(control_sd, "")
    if cfg is None or cfg.get("in_channels") != 8:
        raise ValueError(f"expected an 8-channel IRControlNet, found a UNet config {cfg}")
    if dtype is None:
        dtype = mm.unet_dtype(model_params=-1, supported_dtypes=[torch.float16, torch.bfloat16, torch.float32],
                              weight_dtype=comfy.utils.weight_dtype(control_sd))
    manual_cast = mm.unet_manual_cast(dtype, mm.get_torch_device())
    ops = comfy.ops.pick_operations(dtype, manual_cast, disable_fast_fp8=True)
    cfg = {k: v for k, v in cfg.items() if k not in ("out_channels", "dtype")}
    # attention heads are not in the weights: DiffBIR/AdaptBIR are SD 2.1 (ComfyUI's SD20 settings, 64-wide heads)
    import comfy.supported_models

    cfg.update(comfy.supported_models.SD20.unet_extra_config)
    net = IRControlNetModel(**cfg, dtype=dtype, device=device, operations=ops)
    missing, unexpected = net.load_state_dict(control_sd, strict=False, assign=device == "meta")
    if missing or unexpected:
        raise ValueError(f"IRControlNet weights do not fit the detected architecture: {len(missing)} missing "
                         f"(e.g. {missing[:3]}), {len(unexpected)} unexpected (e.g. {unexpected[:3]})")
    return net.eval().requires_grad_(False), cfg


def check_unet_fits(net, unet) -> None:
    """Raise PackError unless the sampled UNet has the IRControlNet's encoder layout (base channels, levels, input
    blocks), so that each control output lands on a skip connection of its size. ComfyUI skips a control whose
    shapes do not fit with only a log warning, which would sample as if no IRControlNet were connected."""
    if unet is None or not hasattr(unet, "input_blocks"):
        return
    want = (net.model_channels, [int(m) for m in net.channel_mult], len(net.input_blocks))
    found = (getattr(unet, "model_channels", None), [int(m) for m in getattr(unet, "channel_mult", ())],
             len(unet.input_blocks))
    if want != found:
        raise PackError(f"control_net: expected a model with the UNet the IRControlNet was made for ({want[0]} base "
                        f"channels, levels {want[1]}, {want[2]} input blocks: SD 2.1 for DiffBIR/AdaptBIR), found "
                        f"{found[0]} channels, levels {found[1]} and {found[2]} input blocks")


class IRControlNetControl(comfy.controlnet.ControlBase):
    """A ComfyUI control that runs the IRControlNet on ``cat(x_t, hint)`` each step.

    ``cond_hint_original`` is the condition latent (B or 1, 4, h, w) in the hint convention of the weights;
    it must match the sampled latent's size. Tile-aware: under Tiled Diffusion each call gets the tile's crop.
    """

    supports_latent_tiles = True

    def __init__(self, patcher, layout: str):
        super().__init__()
        self.patcher = patcher  # ModelPatcher around an IRControlNetModel
        self.layout = layout  # a key of LAYOUT_HINT
        self.model_sampling_current = None
        self.compression_ratio = 1

    def copy(self):
        c = IRControlNetControl(self.patcher, self.layout)
        self.copy_to(c)
        return c

    def get_models(self):
        return super().get_models() + [self.patcher]

    def pre_run(self, model, percent_to_timestep_function):
        check_unet_fits(self.patcher.model, getattr(model, "diffusion_model", None))  # before the first step
        super().pre_run(model, percent_to_timestep_function)
        self.model_sampling_current = model.model_sampling

    def cleanup(self):
        self.model_sampling_current = None
        super().cleanup()

    def get_control(self, x_noisy, t, cond, batched_number, transformer_options):
        prev = None
        if self.previous_controlnet is not None:
            prev = self.previous_controlnet.get_control(x_noisy, t, cond, batched_number, transformer_options)
        want = bool(transformer_options.get(WANT_FEATURES))
        if (self.timestep_range is not None and (t[0] > self.timestep_range[0] or t[0] < self.timestep_range[1])) \
                or self.strength == 0:
            if want:
                transformer_options.setdefault(FEATURES, None)
            return prev
        net = self.patcher.model
        hint = self.cond_hint_original
        tile = current_tile(transformer_options)  # one tile of Tiled Diffusion: crop the hint to it
        crop_condition(hint, x_noisy, tile, "condition")  # size check before any work
        per_chunk = x_noisy.shape[0] // max(1, int(batched_number))
        if hint.shape[0] not in (1, per_chunk):  # ComfyUI would silently repeat or drop condition images
            raise PackError(f"condition: expected 1 or {per_chunk} condition latents (one per image of the sampled "
                            f"batch), found {hint.shape[0]}; encode the same batch you sample")
        if self.cond_hint is None or self.cond_hint.shape[0] != x_noisy.shape[0] \
                or self.cond_hint.device != x_noisy.device:
            hint = comfy.controlnet.broadcast_image_to(hint, x_noisy.shape[0], batched_number)
            if hint.shape[0] != x_noisy.shape[0]:  # a single hint is returned as is: repeat it
                hint = hint.expand(x_noisy.shape[0], -1, -1, -1)
            self.cond_hint = hint.to(device=x_noisy.device, dtype=net.dtype)
        ms = self.model_sampling_current
        x_in = ms.calculate_input(t, x_noisy).to(net.dtype)
        context = cond["c_crossattn"].to(net.dtype)
        hint = crop_condition(self.cond_hint, x_noisy, tile, "condition")
        out = net(torch.cat([x_in, hint], dim=1), ms.timestep(t).float(), context, return_features=want)
        if want:
            out, features = out
            # AdaptBIR scales the raw features by the control strength too (they are new tensors: no aliasing)
            transformer_options[FEATURES] = features if self.strength == 1 else [f * self.strength for f in features]
        return self.control_merge(out, prev, output_dtype=None)


class IRControlNetLoader(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        from .paths import filename_list

        return io.Schema(
            node_id="AdaptBIR_IRControlNetLoader",
            display_name="Load IRControlNet (DiffBIR/AdaptBIR)",
            category=CAT_CONTROL,
            description=(
                "Loads DiffBIR's IRControlNet (v1_general.pth, v1_face.pth, v2.pth, DiffBIR_v2.1.pt, the legacy "
                "full v1 checkpoints) or the control branch of an AdaptBIR checkpoint from models/diffbir. The "
                "kind is recognised from the weights, not the file name; only tensors are read, no code runs."),
            inputs=[io.Combo.Input("control_net_name", options=filename_list("diffbir"), tooltip=(
                "File in ComfyUI/models/diffbir. v2.pth works with SD 2.1-base; DiffBIR_v2.1.pt needs the "
                "zero-terminal-SNR v-prediction SD 2.1 base."))],
            outputs=[IRControlNetType.Output("control_net", tooltip=(
                "The IRControlNet; connect it to Apply IRControlNet."))],
        )

    @classmethod
    def fingerprint_inputs(cls, control_net_name):
        return file_fingerprint("diffbir", control_net_name)

    @classmethod
    def execute(cls, control_net_name) -> io.NodeOutput:
        return io.NodeOutput(load_ircontrolnet(model_file_path("diffbir", control_net_name), control_net_name))


def load_ircontrolnet(path: str, name: str) -> IRControlNetControl:
    """Load an IRControlNet file (any layout :func:`extract_ircontrolnet` knows) into a control; PackError naming
    ``name`` when the file is not one."""
    import comfy.model_management as mm
    import comfy.model_patcher

    sd, metadata = load_weights(path, "IRControlNet weights (DiffBIR/AdaptBIR)", with_metadata=True)
    try:
        layout, control_sd = extract_ircontrolnet(sd, metadata)
        net, _ = build_ircontrolnet(control_sd)
    except ValueError as e:
        raise PackError(f"{name}: {e}") from None
    patcher = comfy.model_patcher.ModelPatcher(net, load_device=mm.get_torch_device(),
                                               offload_device=mm.unet_offload_device())
    return IRControlNetControl(patcher, layout)


def hint_from_condition(condition: dict, convention: str) -> torch.Tensor:
    """The hint latent (B,4,h,w) float32 from a Dual Encoder Interpolate condition, in ``convention``."""
    if convention == "diffbir":
        return condition["samples"] * SD_LATENT_SCALE
    pq = condition.get("post_quant")
    if pq is None:
        raise PackError("condition: the AdaptBIR hint needs the VAE's post_quant_conv output, found a VAE without "
                        "post_quant_conv; use the diffbir hint convention")
    return pq


class ApplyIRControlNet(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="AdaptBIR_ApplyIRControlNet",
            display_name="Apply IRControlNet",
            category=CAT_CONTROL,
            description=(
                "Attaches DiffBIR's IRControlNet to the positive and negative conditioning, like ComfyUI's "
                "Apply ControlNet: at each step it reads the noisy latent together with the condition latent of "
                "the cleaned image and adds its outputs to the UNet's skips. Works with the stock KSampler and "
                "chains with other controls."),
            inputs=[
                io.Conditioning.Input("positive", tooltip="Positive conditioning (DiffBIR v2: an empty prompt)."),
                io.Conditioning.Input("negative", tooltip="Negative conditioning (the control is applied to it too)."),
                IRControlNetType.Input("control_net", tooltip="From Load IRControlNet."),
                io.Float.Input("strength", default=1.0, min=0.0, max=10.0, step=0.01, tooltip=(
                    "Scale of all 13 control outputs. 1 = DiffBIR; 0 = no control (exactly).")),
                io.Float.Input("start_percent", default=0.0, min=0.0, max=1.0, step=0.001, tooltip=(
                    "Fraction of sampling at which the control starts acting (0 = from the first step).")),
                io.Float.Input("end_percent", default=1.0, min=0.0, max=1.0, step=0.001, tooltip=(
                    "Fraction of sampling at which the control stops acting (1 = until the last step).")),
                io.Combo.Input("hint_convention", options=HINT_CONVENTIONS, default="auto", tooltip=(
                    "How the condition latent is fed: diffbir = 0.18215 x the VAE latent (DiffBIR weights); "
                    "adaptbir = the latent after post_quant_conv (AdaptBIR weights); auto = from the weights.")),
                RestoreCondition.Input("condition", optional=True, tooltip=(
                    "The condition from Dual Encoder Interpolate (preferred for AdaptBIR).")),
                io.Image.Input("image", optional=True, tooltip=(
                    "Or the cleaned (stage-1) image, encoded here with the VAE below. Padded to a multiple of 64 "
                    "like the sampled latent must be.")),
                io.Vae.Input("vae", optional=True, tooltip="The SD VAE, needed when an image is connected."),
            ],
            outputs=[
                io.Conditioning.Output("positive_out", tooltip="Positive conditioning carrying the control."),
                io.Conditioning.Output("negative_out", tooltip="Negative conditioning carrying the control."),
                RestoreCondition.Output("condition_out", tooltip=(
                    "The condition that was used (encoded here if an image was given), for the sampler's start "
                    "and guidance, colour fix and crop-back.")),
            ],
        )

    @classmethod
    def validate_inputs(cls, start_percent=0.0, end_percent=1.0, **kwargs):
        bad = widget_bounds_error(cls, {"start_percent": start_percent, "end_percent": end_percent, **kwargs}) \
            or choice_error(cls, kwargs)
        if bad:
            return bad
        if start_percent > end_percent:
            return f"start_percent ({start_percent}) must not be above end_percent ({end_percent})"
        return True

    @classmethod
    def execute(cls, positive, negative, control_net, strength=1.0, start_percent=0.0, end_percent=1.0,
                hint_convention="auto", condition=None, image=None, vae=None) -> io.NodeOutput:
        if (condition is None) == (image is None):
            raise PackError("condition/image: expected exactly one of them to be connected, found "
                            f"{'both' if condition is not None else 'neither'}")
        if image is not None:
            if vae is None:
                raise PackError("vae: expected the SD VAE to encode the connected image, found none")
            condition = encode_condition_image(image, vae)
        convention = LAYOUT_HINT[control_net.layout] if hint_convention == "auto" else hint_convention
        hint = hint_from_condition(condition, convention)
        if not bool(torch.isfinite(hint).all()):
            raise PackError("condition: expected finite latent values, found NaN or inf")
        cnets, out = {}, []
        for conditioning in (positive, negative):
            c = []
            for cond_tensor, opts in conditioning:
                d = opts.copy()
                prev = d.get("control", None)
                if prev not in cnets:
                    cnets[prev] = control_net.copy().set_cond_hint(hint, strength, (start_percent, end_percent))
                    cnets[prev].set_previous_controlnet(prev)
                d["control"] = cnets[prev]
                d["control_apply_to_uncond"] = False
                c.append([cond_tensor, d])
            out.append(c)
        return io.NodeOutput(out[0], out[1], condition)


NODES = [IRControlNetLoader, ApplyIRControlNet]
