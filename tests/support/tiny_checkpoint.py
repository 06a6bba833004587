"""A tiny SD 2.x checkpoint FILE that ComfyUI's own ``load_checkpoint_guess_config`` loads, for the training
commands (which take file names, like the user's real SD 2.1).

ComfyUI recognises model families by UNet config, so the tiny UNet (64 channels, context 64) gets its own entry
in ``comfy.supported_models.models``: ComfyUI's SD20 class with the tiny sizes and the tiny CLIP as text encoder.
Everything else is ComfyUI's path: model detection, BaseModel, ModelPatcher, CLIP and VAE loading from the
checkpoint's ``model.diffusion_model.*``, ``first_stage_model.*`` and ``cond_stage_model.tiny.*`` keys.
ComfyUI's VAE loader only knows the real KL-f8 sizes, so the checkpoint holds a full-size (seeded random) VAE.
"""

from __future__ import annotations

import functools

import torch


@functools.lru_cache(maxsize=1)
def tiny_sd2_config_class(tiny):
    """The supported-model class for the tiny SD2 UNet (registered by :func:`register`)."""
    import comfy.sd1_clip
    import comfy.supported_models
    import comfy.supported_models_base
    import comfy.utils

    class TinySD2(comfy.supported_models.SD20):
        unet_config = {"context_dim": tiny.CONTEXT_DIM, "model_channels": tiny.SD2_UNET["model_channels"],
                       "use_linear_in_transformer": True, "adm_in_channels": None, "use_temporal_attention": False}

        def process_clip_state_dict(self, state_dict):
            return comfy.utils.state_dict_prefix_replace(state_dict, {"cond_stage_model.tiny.": ""},
                                                         filter_keys=True)

        def clip_target(self, state_dict={}):  # noqa: B006 - ComfyUI's signature
            return comfy.supported_models_base.ClipTarget(comfy.sd1_clip.SD1Tokenizer, tiny._tiny_clip_class())

    return TinySD2


def register(tiny) -> None:
    """Put the tiny SD2 family first in ComfyUI's model list (idempotent); real SD files never match it."""
    import comfy.supported_models

    cls = tiny_sd2_config_class(tiny)
    if cls not in comfy.supported_models.models:
        comfy.supported_models.models.insert(0, cls)


@functools.lru_cache(maxsize=2)
def full_size_vae_state_dict(tiny, seed: int = 0) -> dict:
    from comfy.ldm.models.autoencoder import AutoencoderKL

    ddconfig = dict(tiny.VAE_CONFIG["ddconfig"], ch=128, ch_mult=[1, 2, 4, 4], num_res_blocks=2)
    return tiny.seeded_state_dict(AutoencoderKL(ddconfig=ddconfig, embed_dim=4), seed)


def write_checkpoint(tiny, path, seed: int = 0) -> str:
    """Save the tiny SD2 UNet (seed ``seed``), the tiny CLIP and a full-size seeded VAE as one safetensors
    checkpoint in LDM key layout at ``path``; returns ``str(path)``."""
    from safetensors.torch import save_file

    sd = {"model.diffusion_model." + k: v for k, v in tiny._unet_weights("sd2-eps", seed).items()}
    sd.update({"first_stage_model." + k: v for k, v in full_size_vae_state_dict(tiny, seed).items()})
    sd.update({"cond_stage_model.tiny." + k: v for k, v in tiny._clip_weights(seed).items()})
    save_file({k: v.contiguous() for k, v in sd.items() if isinstance(v, torch.Tensor)}, str(path))
    return str(path)


def write_vae(tiny, path, seed: int = 0) -> str:
    """Save a full-size seeded KL-f8 VAE (what ComfyUI's Load VAE reads) at ``path``; returns ``str(path)``."""
    from safetensors.torch import save_file

    save_file({k: v.contiguous() for k, v in full_size_vae_state_dict(tiny, seed).items()}, str(path))
    return str(path)
