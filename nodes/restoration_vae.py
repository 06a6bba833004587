"""Load Restoration VAE: AdaptBIR's stage-1 restoration encoder or SUPIR's denoise encoder as a ComfyUI VAE."""

from __future__ import annotations

from comfy_api.latest import io

from ..modules.vae_layout import kl_vae_config, restoration_vae_state_dict
from .common import (
    CAT_LATENT,
    PackError,
    file_fingerprint,
    load_weights,
    model_file_path,
    show_text_on_node,
)

# The KL-f8 VAE that comfy.sd.VAE builds when it detects an SD/SDXL VAE from its keys alone.
SD_KL_CONFIG = {"embed_dim": 4, "ddconfig": {
    "double_z": True, "z_channels": 4, "resolution": 256, "in_channels": 3, "out_ch": 3, "ch": 128,
    "ch_mult": [1, 2, 4, 4], "num_res_blocks": 2, "attn_resolutions": [], "dropout": 0.0}}


def build_vae(vae_sd: dict):
    """A comfy.sd.VAE from an LDM-layout KL VAE state dict.

    The SD/SDXL architecture goes through ComfyUI's own detection (the same VAE that Load VAE gives); other KL
    VAE sizes get their config read from the shapes.
    """
    import comfy.sd

    cfg = kl_vae_config(vae_sd)
    if cfg == SD_KL_CONFIG:
        return comfy.sd.VAE(sd=vae_sd)
    vae = comfy.sd.VAE(sd=vae_sd, config={"params": cfg})
    vae.latent_channels = cfg["ddconfig"]["z_channels"]
    vae.downscale_ratio = vae.upscale_ratio = 2 ** (len(cfg["ddconfig"]["ch_mult"]) - 1)
    return vae


class RestorationVAELoader(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        from .paths import filename_list

        return io.Schema(
            node_id="AdaptBIR_RestorationVAELoader",
            display_name="Load Restoration VAE (AdaptBIR/SUPIR)",
            category=CAT_LATENT,
            description=(
                "Takes the restoration encoder (an SD/SDXL VAE encoder fine-tuned to remove degradations) out of an "
                "AdaptBIR checkpoint (preprocess_model.encoder or denoise_encoder) or a SUPIR checkpoint "
                "(first_stage_model.denoise_encoder) in models/diffbir, and returns it as a VAE whose quant convs "
                "and decoder are the checkpoint's own VAE, for Dual Encoder Interpolate's restoration_vae. The "
                "kind is recognised from the weights; only tensors are read, no code runs."),
            inputs=[
                io.Combo.Input("ckpt_name", options=filename_list("diffbir"), tooltip=(
                    "AdaptBIR or SUPIR checkpoint (or a denoise_encoder-only file) in ComfyUI/models/diffbir.")),
                io.Vae.Input("vae", optional=True, tooltip=(
                    "The checkpoint's own SD/SDXL VAE, needed when the file has only the restoration encoder "
                    "(its quant convs and decoder are used). Parts the file has take precedence.")),
            ],
            outputs=[io.Vae.Output("restoration_vae", tooltip=(
                "A VAE that encodes with the restoration encoder and decodes like the checkpoint's VAE; connect "
                "it to restoration_vae of Dual Encoder Interpolate."))],
            hidden=[io.Hidden.unique_id],
        )

    @classmethod
    def fingerprint_inputs(cls, ckpt_name, vae=None):
        return file_fingerprint("diffbir", ckpt_name)

    @classmethod
    def execute(cls, ckpt_name, vae=None) -> io.NodeOutput:
        path = model_file_path("diffbir", ckpt_name)
        sd, _metadata = load_weights(path, "an AdaptBIR/SUPIR checkpoint with a restoration encoder",
                                     with_metadata=True)
        base = None
        if vae is not None:
            if getattr(vae, "first_stage_model", None) is None:
                raise PackError("vae: expected a loaded VAE, found an invalid VAE (its loader found no VAE weights)")
            base = vae.get_sd()
        try:
            vae_sd, found = restoration_vae_state_dict(sd, base)
        except ValueError as e:
            raise PackError(f"ckpt_name '{ckpt_name}': {e}") from None
        del sd, base
        try:
            restoration_vae = build_vae(vae_sd)
        except (RuntimeError, ValueError, KeyError) as e:
            reason = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            raise PackError(f"ckpt_name '{ckpt_name}': found the {found}, but its weights do not build a KL VAE "
                            f"({type(e).__name__}: {reason})") from None
        if getattr(restoration_vae, "first_stage_model", None) is None:
            raise PackError(f"ckpt_name '{ckpt_name}': found the {found}, but ComfyUI did not recognise the "
                            f"assembled weights as a VAE")
        show_text_on_node(cls.hidden.unique_id, found)
        return io.NodeOutput(restoration_vae)


NODES = [RestorationVAELoader]
