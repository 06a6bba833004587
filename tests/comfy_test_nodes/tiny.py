"""Tiny, seeded ComfyUI models for graph tests: SD2-style (eps / v) and SDXL-style UNets, and a KL VAE.

They are real ComfyUI objects (BaseModel/SDXL inside a ModelPatcher, comfy.sd.VAE) built from small configs that
keep the real block layout (SD 2.1: 4 levels x 2 res blocks, 12 input blocks + middle; SDXL: 3 levels), so
ComfyUI's samplers, LoRA key maps and model management treat them like the real thing. Weights are drawn from a
seeded generator, so the same seed gives the same model on every machine.
"""

from __future__ import annotations

import functools
import hashlib

import torch

IMAGES: dict = {}  # name -> IMAGE tensor, filled by tests for the AdaptBIRTest_Image node

CONTEXT_DIM = 64
POOLED_DIM = 64

SD2_UNET = {
    "use_checkpoint": False, "image_size": 32, "out_channels": 4, "use_spatial_transformer": True, "legacy": False,
    "adm_in_channels": None, "in_channels": 4, "model_channels": 64, "num_res_blocks": [2, 2, 2, 2],
    "transformer_depth": [1, 1, 1, 1, 1, 1, 0, 0], "channel_mult": [1, 1, 2, 2], "transformer_depth_middle": 1,
    "use_linear_in_transformer": True, "context_dim": CONTEXT_DIM, "num_head_channels": 64,
    "transformer_depth_output": [1, 1, 1, 1, 1, 1, 1, 1, 1, 0, 0, 0], "use_temporal_attention": False,
    "use_temporal_resblock": False,
}

SDXL_UNET = {
    "use_checkpoint": False, "image_size": 32, "out_channels": 4, "use_spatial_transformer": True, "legacy": False,
    "num_classes": "sequential", "adm_in_channels": POOLED_DIM + 6 * 256, "in_channels": 4, "model_channels": 32,
    "num_res_blocks": [2, 2, 2], "transformer_depth": [0, 0, 1, 1, 1, 1], "channel_mult": [1, 2, 2],
    "transformer_depth_middle": 1, "use_linear_in_transformer": True, "context_dim": CONTEXT_DIM,
    "num_head_channels": 16, "transformer_depth_output": [0, 0, 0, 1, 1, 1, 1, 1, 1],
    "use_temporal_attention": False, "use_temporal_resblock": False,
}

VAE_CONFIG = {"embed_dim": 4, "ddconfig": {
    "double_z": True, "z_channels": 4, "resolution": 256, "in_channels": 3, "out_ch": 3, "ch": 32,
    "ch_mult": [1, 1, 1, 1], "num_res_blocks": 1, "attn_resolutions": [], "dropout": 0.0}}


def seeded_state_dict(module: torch.nn.Module, seed: int, std: float = 1.0) -> dict:
    """Deterministic weights for ``module``'s state dict: fan-in scaled normals for weights, ones for norm
    scales, small values for biases."""
    g = torch.Generator().manual_seed(seed)
    out = {}
    for key, t in module.state_dict().items():
        if not t.is_floating_point() or t.numel() == 0:
            out[key] = t.clone()
            continue
        if t.ndim >= 2:
            fan_in = t[0].numel()
            v = torch.randn(t.shape, generator=g) * (std / fan_in ** 0.5)
        elif "norm" in key and key.endswith("weight"):
            v = 1.0 + 0.1 * torch.randn(t.shape, generator=g)
        else:
            v = 0.02 * torch.randn(t.shape, generator=g)
        out[key] = v.to(t.dtype)
    return out


def _patcher(base_model):
    import comfy.model_management as mm
    import comfy.model_patcher

    return comfy.model_patcher.ModelPatcher(base_model, load_device=mm.get_torch_device(),
                                            offload_device=mm.unet_offload_device())


@functools.lru_cache(maxsize=8)
def _unet_weights(kind: str, seed: int):
    base = _base_model(kind)
    return seeded_state_dict(base.diffusion_model, seed)


def _base_model(kind: str):
    import comfy.model_base
    import comfy.supported_models

    if kind in ("sd2-eps", "sd2-v", "sd2-v-zsnr"):
        mc = comfy.supported_models.SD20(dict(SD2_UNET))
        mc.set_inference_dtype(torch.float32, None)
        mtype = comfy.model_base.ModelType.EPS if kind == "sd2-eps" else comfy.model_base.ModelType.V_PREDICTION
        if kind == "sd2-v-zsnr":
            mc.sampling_settings["zsnr"] = True
        return comfy.model_base.BaseModel(mc, model_type=mtype)
    if kind == "sdxl":
        mc = comfy.supported_models.SDXL(dict(SDXL_UNET))
        mc.unet_config["num_head_channels"] = SDXL_UNET["num_head_channels"]
        mc.set_inference_dtype(torch.float32, None)
        return comfy.model_base.SDXL(mc, model_type=comfy.model_base.ModelType.EPS)
    raise ValueError(f"kind: expected sd2-eps, sd2-v, sd2-v-zsnr or sdxl, found {kind!r}")


def tiny_model(kind: str = "sd2-eps", seed: int = 0):
    """A ModelPatcher around a tiny ComfyUI BaseModel of ``kind`` with seeded weights (fresh object per call)."""
    base = _base_model(kind)
    base.diffusion_model.load_state_dict(_unet_weights(kind, seed))
    base.eval()
    return _patcher(base)


def vae_config(latent_channels: int = 4) -> dict:
    cfg = {"embed_dim": latent_channels, "ddconfig": dict(VAE_CONFIG["ddconfig"])}
    cfg["ddconfig"]["z_channels"] = latent_channels
    return cfg


@functools.lru_cache(maxsize=8)
def _vae_weights(seed: int, latent_channels: int):
    from comfy.ldm.models.autoencoder import AutoencoderKL

    return seeded_state_dict(AutoencoderKL(**vae_config(latent_channels)), seed)


def tiny_vae(seed: int = 0, latent_channels: int = 4):
    """A comfy.sd.VAE (KL-f8, 32 base channels) with seeded weights, float32."""
    import comfy.sd

    vae = comfy.sd.VAE(sd=dict(_vae_weights(seed, latent_channels)), config={"params": vae_config(latent_channels)},
                       dtype=torch.float32)
    vae.latent_channels = latent_channels
    return vae


def tiny_conditioning(text: str, seed: int = 0, tokens: int = 4, sdxl: bool = False, size: int = 64):
    """CONDITIONING derived deterministically from (text, seed): [[cond (1, tokens, 64), options]]."""
    digest = hashlib.sha256(f"{seed}:{text}".encode()).digest()
    g = torch.Generator().manual_seed(int.from_bytes(digest[:8], "little"))
    cond = torch.randn(1, tokens, CONTEXT_DIM, generator=g)
    opts = {}
    if sdxl:
        opts = {"pooled_output": torch.randn(1, POOLED_DIM, generator=g), "width": size, "height": size,
                "crop_w": 0, "crop_h": 0, "target_width": size, "target_height": size}
    return [[cond, opts]]


@functools.lru_cache(maxsize=4)
def tiny_ircontrolnet_state_dict(seed: int = 0) -> dict:
    """Seeded weights with DiffBIR's IRControlNet key layout for the tiny SD2 UNet (8 input channels, 12 input
    blocks, 13 zero convolutions, no hint block)."""
    import comfy.cldm.cldm

    cfg = {k: v for k, v in SD2_UNET.items() if k not in ("out_channels",)}
    cfg["in_channels"] = 8
    net = comfy.cldm.cldm.ControlNet(hint_channels=4, **cfg, device="cpu")
    sd = seeded_state_dict(net, seed)
    return {k: v for k, v in sd.items() if not k.startswith("input_hint_block.")}


TINY_CSFT = {"model_channels": SD2_UNET["model_channels"], "channel_mult": tuple(SD2_UNET["channel_mult"]),
             "num_res_blocks": 2, "sft_channels": 32}


@functools.lru_cache(maxsize=4)
def tiny_csft_state_dict(seed: int = 0, std: float = 1.0) -> dict:
    """Seeded CSFT weights (AdaptBIR key names, flat) for the tiny SD2 UNet and its IRControlNet."""
    from modules.csft import (
        CSFT,  # the pure module, importable from the repository root in tests
    )

    return seeded_state_dict(CSFT(**TINY_CSFT), seed, std)


TINY_CLIP_CONFIG = {
    "hidden_act": "quick_gelu", "hidden_size": CONTEXT_DIM, "intermediate_size": 2 * CONTEXT_DIM,
    "num_attention_heads": 2, "num_hidden_layers": 2, "max_position_embeddings": 77, "projection_dim": POOLED_DIM,
    "vocab_size": 49408, "layer_norm_eps": 1e-5, "bos_token_id": 0, "eos_token_id": 49407, "pad_token_id": 1}


@functools.lru_cache(maxsize=2)
def _clip_weights(seed: int):
    return seeded_state_dict(_tiny_clip_class()(device="cpu", dtype=torch.float32), seed, std=0.5)


def _tiny_clip_class():
    import comfy.sd1_clip

    class TinyClipModel(comfy.sd1_clip.SD1ClipModel):
        """ComfyUI's SD1 CLIP-L wrapper (real tokenizer, real text model) at 2 layers x 64 wide."""

        def __init__(self, device="cpu", dtype=None, model_options=None):
            super().__init__(device=device, dtype=dtype, model_options=model_options or {},
                             clip_model=comfy.sd1_clip.SDClipModel, textmodel_json_config=dict(TINY_CLIP_CONFIG))
    return TinyClipModel


def tiny_clip(seed: int = 0):
    """A comfy.sd.CLIP with ComfyUI's CLIP tokenizer and a tiny seeded text model (context 64, pooled 32, float32),
    whose conditioning fits the tiny SDXL UNet."""
    import comfy.sd
    import comfy.sd1_clip
    import comfy.supported_models_base

    target = comfy.supported_models_base.ClipTarget(comfy.sd1_clip.SD1Tokenizer, _tiny_clip_class())
    clip = comfy.sd.CLIP(target, model_options={"dtype": torch.float32})
    clip.cond_stage_model.load_state_dict(dict(_clip_weights(seed)), strict=True)
    return clip
