"""SUPIR on ComfyUI's own SDXL UNet: the adapter network (ComfyUI's blocks and ops), its loading, and the patch.

How the patch hooks in (ComfyUI 0.3.75 and later; no weight-bearing module is replaced, so LoRA weight patches
on the UNet and on the adapter compose):

* a ``DIFFUSION_MODEL`` wrapper runs GLVControl on the UNet's input ``x_t`` (already scaled by c_in), the control
  latent, the timestep, the text context and SDXL's ``y``, then, for that one UNet call only, registers
* a forward hook on the middle block's last ResBlock (the middle ZeroSFT),
* a forward pre-hook on the first ResBlock of each output block, whose input is ComfyUI's ``cat(h, skip)``: it is
  split back into h and the skip and replaced by the ZeroSFT fusion (same channel count),
* a forward pre-hook on the Upsample of each output block that has one (the ZeroCrossAttn),

and removes them all in ``finally``. With control scale 0 at a step nothing runs (the UNet output is unchanged).
"""

from __future__ import annotations

import comfy.cldm.cldm
import torch
from comfy.ldm.modules.diffusionmodules.openaimodel import (
    TimestepEmbedSequential,
    Upsample,
)
from comfy.ldm.modules.diffusionmodules.util import timestep_embedding

from ..modules.supir import SUPIRConnectors, linear_in_sigma, supir_layout
from .common import PackError, check_interrupt
from .tiled_sampling import crop_condition, current_tile

WRAPPER_KEY = "adaptbir_supir"
ADDITIONAL_KEY = "adaptbir_supir"
ENCODER_PARTS = ("time_embed.", "label_emb.", "input_blocks.", "middle_block.")


class GLVControl(comfy.cldm.cldm.ControlNet):
    """SUPIR's GLVControl: an SDXL encoder copy fed x_t, with the control latent added after the first input block
    through the zero-initialised 3x3 ``input_hint_block`` (latent channels -> model_channels).

    ``forward(hint (B,4,h,w), x (B,4,h,w), timesteps (B,), context (B,T,D), y (B,adm))`` returns the N + 1
    features (input blocks 0..N-1, then the middle), in the network's dtype.
    """

    def __init__(self, **config):
        ops = config["operations"]
        super().__init__(hint_channels=config["in_channels"], **config)
        del self.zero_convs, self.middle_block_out
        self.input_hint_block = TimestepEmbedSequential(ops.conv_nd(
            self.dims, config["in_channels"], self.model_channels, 3, padding=1, dtype=self.dtype,
            device=config.get("device")))

    def forward(self, hint, x, timesteps, context, y=None, **kwargs):
        emb = self.time_embed(timestep_embedding(timesteps, self.model_channels, repeat_only=False).to(x.dtype))
        if self.num_classes is not None:
            emb = emb + self.label_emb(y)
        guided = self.input_hint_block(hint, emb, context)
        features, h = [], x
        for i, module in enumerate(self.input_blocks):
            h = module(h, emb, context)
            if i == 0:
                h = h + guided
            features.append(h)
            check_interrupt()
        features.append(self.middle_block(h, emb, context))
        return features


class SUPIRAdapterModule(SUPIRConnectors):
    """GLVControl (``control_model.*``) and the connectors (``project_modules.*``) in one module, so that one
    ModelPatcher carries (and LoRA-patches) the whole adapter. Keys = the bare SUPIR layout."""

    def __init__(self, control_config: dict, layout, device, dtype, operations):
        from comfy.ldm.modules import attention

        super().__init__(layout, device=device, dtype=dtype, operations=operations,
                         attention_cls=attention.CrossAttention)
        self.control_model = GLVControl(**control_config, dtype=dtype, device=device, operations=operations)


def unet_signature(unet_config: dict) -> tuple:
    """What an adapter must match in the UNet: channels, levels, res blocks, context and adm widths."""
    nrb = unet_config.get("num_res_blocks")
    return (unet_config.get("model_channels"), tuple(unet_config.get("channel_mult") or ()),
            tuple(nrb) if isinstance(nrb, (list, tuple)) else nrb, unet_config.get("context_dim"),
            unet_config.get("adm_in_channels"))


def build_adapter(unet_config: dict, adapter_sd: dict, dtype, device=None):
    """Build a :class:`SUPIRAdapterModule` for an SDXL UNet config and load ``adapter_sd`` into it (strict).

    ``device="meta"`` builds without allocating (layout checks; the tensors are assigned). Otherwise the tensors are
    copied into modules built on ``device`` with ComfyUI's manual-cast ops in ``dtype``. Raises ValueError when the
    weights do not fit the config (the message counts missing/unexpected/mis-shaped tensors).
    """
    import comfy.ops

    if not unet_config.get("adm_in_channels") or not unet_config.get("num_classes"):
        raise ValueError("expected an SDXL model (a UNet with SDXL's size/pooled-text embedding), found a UNet "
                         f"without one (model_channels {unet_config.get('model_channels')}, context "
                         f"{unet_config.get('context_dim')}: SD 1.x/2.x?)")
    cfg = {k: v for k, v in unet_config.items() if k not in ("out_channels", "dtype", "device", "operations")}
    layout = supir_layout(cfg["model_channels"], cfg["channel_mult"], cfg["num_res_blocks"])
    net = SUPIRAdapterModule(cfg, layout, device, dtype, comfy.ops.manual_cast)
    own = net.state_dict()
    missing = sorted(set(own) - set(adapter_sd))
    unexpected = sorted(set(adapter_sd) - set(own))
    wrong = [k for k in own if k in adapter_sd and tuple(own[k].shape) != tuple(adapter_sd[k].shape)]
    if missing or unexpected or wrong:
        detail = [f"{len(missing)} missing (e.g. {missing[:2]})" if missing else "",
                  f"{len(unexpected)} unexpected (e.g. {unexpected[:2]})" if unexpected else "",
                  f"{len(wrong)} with other shapes (e.g. {wrong[0]}: expected {tuple(own[wrong[0]].shape)} for "
                  f"this UNet, found {tuple(adapter_sd[wrong[0]].shape)} in the file)" if wrong else ""]
        raise ValueError("the SUPIR weights do not fit this SDXL UNet (model_channels "
                         f"{cfg['model_channels']}, levels {list(cfg['channel_mult'])}): "
                         + ", ".join(d for d in detail if d))
    if device == "meta":
        net.load_state_dict(adapter_sd, strict=True, assign=True)
    else:
        net.load_state_dict(adapter_sd, strict=True)
    return net.eval().requires_grad_(False)


def adapter_lora_key_map(base_model) -> dict:
    """LoRA key -> adapter weight name, for the UNet encoder weights GLVControl copies (time and label embeddings,
    input and middle blocks), from ComfyUI's own UNet key map (every LoRA format ComfyUI reads)."""
    import comfy.lora

    out = {}
    for lora_key, target in comfy.lora.model_lora_keys_unet(base_model, {}).items():
        name = target[0] if isinstance(target, tuple) else target
        if not isinstance(name, str) or not name.startswith("diffusion_model."):
            continue
        rest = name[len("diffusion_model."):]
        if rest.startswith(ENCODER_PARTS):
            out[lora_key] = ("control_model." + rest) if not isinstance(target, tuple) else \
                ("control_model." + rest,) + tuple(target[1:])
    return out


def _per_call(t: torch.Tensor, n: int, chunks: int, what: str) -> torch.Tensor:
    """Fit a per-image tensor (Bt, ...) to a UNet call's batch n (``chunks`` cond/uncond chunks of n // chunks)."""
    bt = t.shape[0]
    if bt == n:
        return t
    if bt == 1:
        return t.expand(n, *t.shape[1:])
    if chunks and n % chunks == 0 and bt == n // chunks:
        return t.repeat(chunks, *([1] * (t.ndim - 1)))
    raise PackError(f"{what}: expected 1 or {n // max(chunks, 1)} images (the sampled batch), found {bt}; encode "
                    f"the same batch you sample")


class SUPIRPatch:
    """The SUPIR ``DIFFUSION_MODEL`` wrapper.

    ``patcher``: ModelPatcher of a :class:`SUPIRAdapterModule` (loaded with the UNet by ComfyUI).
    ``hint``: (B,4,h,w) float32 control latent in the model's scaled latent space (0.13025 x VAE latent for SDXL).
    ``scale_start`` / ``scale_end``: control scale at sigma_max and as sigma -> 0; ``scale_end`` is a number or a
    (B,) float tensor (one per image). ``sigma_max``: the model's largest sigma (SDXL 14.6146).
    Its settings never change; ``__deepcopy__`` returns itself so model clones share it (and its one cached copy
    of the hint on the sampling device).
    """

    def __init__(self, patcher, hint: torch.Tensor, scale_start: float, scale_end, sigma_max: float):
        self.patcher = patcher
        self.hint = hint
        self.scale_start = float(scale_start)
        self.scale_end = scale_end if isinstance(scale_end, torch.Tensor) else torch.tensor([float(scale_end)])
        self.sigma_max = float(sigma_max)
        self._hint_on = (None, None)  # ((n, chunks, device, dtype), hint fitted to that call)

    def hint_for(self, n: int, chunks: int, device, dtype) -> torch.Tensor:
        """The hint fitted to a UNet call's batch on its device: copied once, not at every step."""
        key = (n, chunks, device, dtype)
        if self._hint_on[0] != key:
            self._hint_on = (key, _per_call(self.hint, n, chunks, "image").to(device=device, dtype=dtype))
        return self._hint_on[1]

    def __deepcopy__(self, memo):
        return self

    def scales(self, sigmas: torch.Tensor, n: int, chunks: int) -> torch.Tensor:
        """Control scale per sample of a UNet call: (n,) float32."""
        end = _per_call(self.scale_end.float().reshape(-1), n, chunks, "params")
        sig = sigmas.detach().float().cpu().reshape(-1)
        if sig.numel() == 1:
            sig = sig.expand(n)
        elif sig.numel() != n and n % sig.numel() == 0:  # ComfyUI's sigmas are per image; cond/uncond repeat them
            sig = sig.repeat(n // sig.numel())
        return linear_in_sigma(sig, self.sigma_max, self.scale_start, end)

    def __call__(self, executor, *args, **kwargs):
        x, timesteps, context = args[0], args[1], args[2]
        y = args[3] if len(args) > 3 else kwargs.get("y")
        opts = args[5] if len(args) > 5 else kwargs.get("transformer_options", {})
        n = x.shape[0]
        chunks = len(opts.get("cond_or_uncond") or [0])
        sigmas = opts.get("sigmas")
        scale = self.scales(sigmas, n, chunks) if sigmas is not None else \
            torch.full((n,), self.scale_start)  # no sigma known: a direct UNet call
        if not bool(scale.ne(0).any()):
            return executor(*args, **kwargs)
        net = self.patcher.model
        dtype = net.control_model.dtype
        tile = current_tile(opts)  # one tile of Tiled Diffusion: the hint's crop for it
        full = (tile.full_height, tile.full_width) if tile is not None else tuple(x.shape[-2:])
        if tuple(self.hint.shape[-2:]) != full:
            raise PackError(f"SUPIR Apply: expected the sampled latent to have the control latent's size "
                            f"{tuple(self.hint.shape[-2:])}, found {full}; sample the latent that "
                            f"SUPIR Apply outputs (or one of its size)")
        hint = crop_condition(self.hint_for(n, chunks, x.device, dtype), x, tile, "SUPIR Apply hint")
        features = net.control_model(hint, x.to(dtype), timesteps, context.to(dtype),
                                     None if y is None else y.to(dtype))
        s = scale.to(device=x.device).view(-1, 1, 1, 1)
        unet = executor.class_obj
        layout = net.layout
        handles = []

        def middle_hook(module, inputs, output):
            return net.middle(features, output, s)

        def fuse_hook(j):
            split = layout.decoder_channels[j]

            def hook(module, inputs):
                both = inputs[0]
                return (net.fuse_skip(j, features, both[:, :split], both[:, split:], s),) + tuple(inputs[1:])
            return hook

        def upsample_hook(j):
            def hook(module, inputs):
                return (net.before_upsample(j, features, inputs[0], s),) + tuple(inputs[1:])
            return hook

        try:
            handles.append(unet.middle_block[-1].register_forward_hook(middle_hook))
            for j, block in enumerate(unet.output_blocks):
                handles.append(block[0].register_forward_pre_hook(fuse_hook(j)))
                if j in layout.upsample_blocks:
                    handles.append(block[-1].register_forward_pre_hook(upsample_hook(j)))
            return executor(*args, **kwargs)
        finally:
            for handle in handles:
                handle.remove()


def check_unet_fits(model, layout) -> None:
    """PackError unless the MODEL's UNet has the blocks the adapter layout hooks (same decoder plan, Upsamples)."""
    unet = model.get_model_object("diffusion_model")
    blocks = getattr(unet, "output_blocks", None)
    if blocks is None or len(blocks) != layout.num_blocks or not all(
            isinstance(blocks[j][-1], Upsample) for j in layout.upsample_blocks):
        raise PackError(f"model: expected an SDXL UNet with {layout.num_blocks} output blocks like the one the SUPIR "
                        f"adapter was built for, found {type(unet).__name__}")
