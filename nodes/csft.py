"""AdaptBIR's CSFT on ComfyUI: a loader and CSFT Apply, a MODEL patch that modulates the UNet decoder.

How it hooks in (ComfyUI 0.3.75 and later, no weight-bearing module is replaced, so LoRA weight patches compose):

* CSFT Apply sets ``WANT_FEATURES`` in the clone's transformer options. The IRControlNet control sees it in the
  same per-call options at each step and stores its 13 raw features (times its strength) under ``FEATURES``.
* CSFT steps 0..11 run in ``output_block_patch`` (on h right before output block j concatenates its skip, which
  is right after the middle block + its control residual for j = 0 and right after output block j - 1 otherwise).
* Step 12 (after the last output block) runs in a forward pre-hook on the UNet's ``out`` layers, registered by a
  ``DIFFUSION_MODEL`` wrapper for the duration of that one call and removed in ``finally``.
"""

from __future__ import annotations

import torch
from comfy_api.latest import io

from ..modules.controlnet_layout import unwrap_state_dict
from ..modules.csft import (
    CSFT,
    csft_config_from_state_dict,
    csft_state_dict_from_checkpoint,
)
from ..modules.weights_kind import identify_weights
from .common import (
    PackError,
    RestoreParams,
    file_fingerprint,
    load_weights,
    model_file_path,
)
from .ircontrolnet import CAT_CONTROL, FEATURES, WANT_FEATURES, IRControlNetType
from .tiled_sampling import set_tiling

CSFTType = io.Custom("ADAPTBIR_CSFT")
WRAPPER_KEY = "adaptbir_csft"
FORMAT_KIND = "csft"  # metadata "adaptbir_kind" of the files our trainer writes


class CSFTWeights:
    """CSFT weights as loaded (CPU tensors) with their config; builds the module for a UNet's dtype on demand.

    ``config``: :class:`modules.csft.CSFT` arguments (``model_channels``, ``channel_mult``, ``num_res_blocks``,
    ``sft_channels``). ``source``: the file name, for messages. ``metadata``: the safetensors header, or {}.
    """

    def __init__(self, state_dict: dict, config: dict, source: str, metadata: dict | None = None):
        self.state_dict = state_dict
        self.config = config
        self.source = source
        self.metadata = dict(metadata or {})
        self._patchers = {}

    def patcher_for(self, dtype: torch.dtype):
        """A ModelPatcher around a :class:`CSFT` in ``dtype`` built with ComfyUI's manual-cast ops (cached)."""
        if dtype not in self._patchers:
            import comfy.model_management as mm
            import comfy.model_patcher
            import comfy.ops

            net = CSFT(**self.config, dtype=dtype, device=mm.unet_offload_device(), operations=comfy.ops.manual_cast)
            net.load_state_dict(self.state_dict, strict=True)
            net.eval().requires_grad_(False)
            self._patchers[dtype] = comfy.model_patcher.ModelPatcher(
                net, load_device=mm.get_torch_device(), offload_device=mm.unet_offload_device())
        return self._patchers[dtype]


def load_csft(sd: dict, metadata: dict, source: str) -> CSFTWeights:
    """Recognise CSFT weights (AdaptBIR stage-3 checkpoint or our own file) and return them, or raise PackError."""
    kind = metadata.get("adaptbir_kind")
    if kind is not None and kind != FORMAT_KIND:
        raise PackError(f"{source}: expected CSFT weights, found a file made by this pack for '{kind}'")
    try:
        csft_sd = csft_state_dict_from_checkpoint(sd)
        config = csft_config_from_state_dict(csft_sd)
    except ValueError as e:
        keys = [str(k) for k in unwrap_state_dict(sd)] if isinstance(sd, dict) else []
        # the CSFT reader itself names control-net files (no CSFT layers inside); name any other known kind here
        control = any("cft_blocks." in k for k in keys) or (
            any(k.startswith(("control_model.", "zero_convs.")) for k in keys)
            and not any("project_modules." in k for k in keys))  # SUPIR: control_model.* + project_modules.*
        other = None if control else identify_weights(keys)
        if other is not None:
            raise PackError(f"{source}: expected AdaptBIR CSFT weights (cft_blocks.* and upsample_layers.*, from an "
                            f"AdaptBIR stage-3 checkpoint or this pack's stage-III training), found {other}") from None
        raise PackError(f"{source}: {e}") from None
    return CSFTWeights(csft_sd, config, source, metadata)


def _unet_of(model):
    unet = model.get_model_object("diffusion_model")
    if not all(hasattr(unet, a) for a in ("output_blocks", "out", "model_channels", "channel_mult")):
        raise PackError(f"model: expected a Stable Diffusion UNet (SD 2.1 for AdaptBIR), found "
                        f"{type(unet).__name__}, which has no SD-style decoder blocks for CSFT")
    return unet


def check_compatible(csft: CSFTWeights, model, control_net) -> None:
    """Raise PackError unless the CSFT layers fit both the UNet and the IRControlNet (channel layout)."""
    cfg = csft.config
    want = (cfg["model_channels"], tuple(cfg["channel_mult"]))
    unet = _unet_of(model)
    for name, net in (("model", unet), ("control_net", control_net.patcher.model)):
        found = (net.model_channels, tuple(net.channel_mult))
        if found != want or len(net.input_blocks) != len(cfg["channel_mult"]) * (cfg["num_res_blocks"] + 1):
            raise PackError(f"{name}: expected a network with {want[0]} base channels and levels {list(want[1])} "
                            f"as the CSFT weights {csft.source} were made for, found {found[0]} channels, levels "
                            f"{list(found[1])} and {len(net.input_blocks)} input blocks")


class CSFTPatch:
    """The CSFT model patch: ``output_block_patch`` callable plus a ``DIFFUSION_MODEL`` wrapper.

    ``module``: a :class:`modules.csft.CSFT`. ``w``: (B,) or (1,) float64 CPU tensor, one CSFT weight per image
    of the sampled batch (or one for all). ``patcher``: the ModelPatcher that owns ``module`` (ComfyUI loads it
    with the UNet), or None where the caller places the module itself (training).
    Immutable once made; ``__deepcopy__`` returns itself so model clones do not copy the weights.
    """

    def __init__(self, module, w: torch.Tensor, patcher=None):
        self.module = module
        self.w = w
        self.patcher = patcher

    def __deepcopy__(self, memo):
        return self

    def models(self):
        return [self.patcher] if self.patcher is not None else []

    def to(self, device_or_dtype):
        return self  # the weights move with self.patcher (loaded by ComfyUI's model management)

    def _weights(self, n: int, transformer_options) -> torch.Tensor:
        if self.w.numel() == 1:
            return self.w
        chunks = max(1, len(transformer_options.get("cond_or_uncond") or [0]))
        per_chunk = n // chunks
        if per_chunk * chunks != n or self.w.numel() != per_chunk:
            raise PackError(f"params: expected one CSFT weight w per image of the sampled batch ({per_chunk}), found "
                            f"{self.w.numel()}; score the same batch you sample, or use the w widget")
        return self.w.repeat(chunks)

    def apply(self, index: int, h: torch.Tensor, transformer_options) -> torch.Tensor:
        """CSFT step ``index`` on h (B,C,H,W) of the current UNet call; h itself when CSFT is off at this step."""
        if FEATURES not in transformer_options:
            raise PackError("CSFT Apply: no IRControlNet ran in this UNet call. Connect the positive and negative "
                            "outputs of Apply IRControlNet (with an AdaptBIR control net) to the sampler that uses "
                            "this model")
        features = transformer_options[FEATURES]
        if features is None:  # the control is off at this step (strength 0 or outside its percent range)
            return h
        w = self._weights(h.shape[0], transformer_options)
        try:
            return self.module.modulate(index, h, features, w)
        except ValueError as e:
            raise PackError(f"CSFT Apply: the control features do not fit the UNet ({e})") from None

    def __call__(self, h, hsp, transformer_options):
        block = transformer_options.get("block")
        return self.apply(block[1], h, transformer_options), hsp

    def wrap_unet(self, executor, *args, **kwargs):
        """DIFFUSION_MODEL wrapper: the last CSFT step, on h right before the UNet's ``out`` layers."""
        opts = kwargs["transformer_options"] if "transformer_options" in kwargs else args[5]
        last = len(self.module.plan) - 1

        def before_out(module, inputs):
            return (self.apply(last, inputs[0], opts),) + tuple(inputs[1:])

        handle = executor.class_obj.out.register_forward_pre_hook(before_out)
        try:
            return executor(*args, **kwargs)
        finally:
            handle.remove()


def patch_model(model, csft: CSFTWeights, w: torch.Tensor):
    """A clone of ``model`` with CSFT (replacing any CSFT this pack added before); ``model`` is not modified."""
    import comfy.patcher_extension

    unet_model = model.model
    dtype = unet_model.manual_cast_dtype or unet_model.get_dtype()
    patcher = csft.patcher_for(dtype)
    patch = CSFTPatch(patcher.model, w, patcher)
    m = model.clone()
    to = m.model_options["transformer_options"]
    patches = to.setdefault("patches", {})
    patches["output_block_patch"] = [p for p in patches.get("output_block_patch", []) if not isinstance(p, CSFTPatch)]
    m.remove_wrappers_with_key(comfy.patcher_extension.WrappersMP.DIFFUSION_MODEL, WRAPPER_KEY)
    m.set_model_output_block_patch(patch)
    m.add_wrapper_with_key(comfy.patcher_extension.WrappersMP.DIFFUSION_MODEL, WRAPPER_KEY, patch.wrap_unet)
    to[WANT_FEATURES] = True
    return set_tiling(m, replace=False)  # out-of-memory falls back to latent tiles (unless already tiled)


class CSFTLoader(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        from .paths import filename_list

        return io.Schema(
            node_id="AdaptBIR_CSFTLoader",
            display_name="Load CSFT (AdaptBIR)",
            category=CAT_CONTROL,
            description=(
                "Loads AdaptBIR's CSFT layers (13 cft_blocks + 3 upsample_layers) from models/diffbir: an AdaptBIR "
                "stage-3 checkpoint (model.diffusion_model.cft_blocks.*) or a file trained with this pack's "
                "stage-III command. Recognised from the weights; only tensors are read, no code runs."),
            inputs=[io.Combo.Input("csft_name", options=filename_list("diffbir"), tooltip=(
                "File in ComfyUI/models/diffbir holding CSFT weights (a whole AdaptBIR checkpoint works; only the "
                "CSFT part is kept)."))],
            outputs=[CSFTType.Output("csft", tooltip="The CSFT layers; connect them to CSFT Apply.")],
        )

    @classmethod
    def fingerprint_inputs(cls, csft_name):
        return file_fingerprint("diffbir", csft_name)

    @classmethod
    def execute(cls, csft_name) -> io.NodeOutput:
        sd, metadata = load_weights(model_file_path("diffbir", csft_name), "AdaptBIR CSFT weights",
                                    with_metadata=True)
        return io.NodeOutput(load_csft(sd, metadata, csft_name))


class CSFTApply(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="AdaptBIR_CSFTApply",
            display_name="CSFT Apply",
            category=CAT_CONTROL,
            description=(
                "AdaptBIR's second control phase: at every step, scales and shifts the UNet decoder features "
                "with the IRControlNet's features of the same step, F' = F + w * (GroupNorm(F) * alpha + beta). "
                "Higher w keeps more of a mildly degraded input; w = 0 is exactly no CSFT. Returns a patched copy "
                "of the model for any sampler; LoRAs on the same model still apply."),
            inputs=[
                io.Model.Input("model", tooltip="The SD 2.1 model that AdaptBIR's CSFT and IRControlNet belong to."),
                CSFTType.Input("csft", tooltip="From Load CSFT."),
                IRControlNetType.Input("control_net", tooltip=(
                    "The IRControlNet that Apply IRControlNet attaches to the sampled conditioning; its features "
                    "drive CSFT (checked here to fit the CSFT layers).")),
                io.Float.Input("w", default=1.0, min=0.0, max=2.0, step=0.01, tooltip=(
                    "CSFT strength when no params are connected. AdaptBIR: 0 for severe, musiq/70 for medium, 1 "
                    "for mild degradation.")),
                RestoreParams.Input("params", optional=True, tooltip=(
                    "Per-image w from the IQA Classifier (overrides the w widget); the batch must be the sampled "
                    "batch.")),
            ],
            outputs=[io.Model.Output("model_out", tooltip="A patched copy of the model with CSFT.")],
        )

    @classmethod
    def execute(cls, model, csft, control_net, w=1.0, params=None) -> io.NodeOutput:
        check_compatible(csft, model, control_net)
        if params is not None:
            ws = torch.tensor([float(v) for v in params.w], dtype=torch.float64)
        else:
            ws = torch.tensor([float(w)], dtype=torch.float64)
        if not bool(torch.isfinite(ws).all()) or bool((ws < 0).any()):
            raise PackError(f"w: expected finite values >= 0, found {ws.tolist()}")
        return io.NodeOutput(patch_model(model, csft, ws))


NODES = [CSFTLoader, CSFTApply]
