"""Name what a state dict is from its keys alone, for loaders' "expected X, found Y" messages."""

from __future__ import annotations


def describe_weights(keys) -> str:
    """A short phrase naming what weights with these tensor names probably are, with a hint where they belong.

    Args:
        keys: tensor names (an iterable of str; a state dict works too). Only names are read, so a caller can pass
            the names from a safetensors header without loading the tensors.
    """
    keys = list(keys)
    ks = set(keys)
    if not ks:
        return "no tensors"
    if any("lora_" in k or ".lora." in k or "lora_A" in k or "lora_B" in k for k in keys):
        return "a LoRA (lora_* keys); load it with a LoRA loader"
    if any(k.startswith(("input_hint_block.", "control_model.input_hint_block.")) for k in keys):
        if any("label_emb" in k for k in keys):
            return "a standard SDXL ControlNet (with a hint block); load it with ComfyUI's Load ControlNet"
        return ("a standard ControlNet (with an image hint block), e.g. for SD 1.5/2.x; load it with ComfyUI's "
                "Load ControlNet")
    if any(k.startswith("model.diffusion_model.") for k in keys) and not any(k.startswith("control_model.")
                                                                             for k in keys):
        if any("label_emb" in k for k in keys):
            return "an SDXL checkpoint (UNet with label_emb, no control branch); it belongs in models/checkpoints"
        return ("a Stable Diffusion checkpoint (model.diffusion_model.* keys) without a control branch; it belongs "
                "in models/checkpoints")
    if any(k.startswith("control_model.") for k in keys):
        return ("a full DiffBIR/AdaptBIR checkpoint (control_model.* keys) without a stage-1 SwinIR inside; load "
                "its control branch with Load IRControlNet")
    if "middle_block_out.0.weight" in ks or any(k.startswith("zero_convs.") for k in keys):
        return "an IRControlNet (zero_convs / middle_block_out keys); load it with Load IRControlNet"
    if any(k.startswith(("RRDB_trunk.", "body.0.rdb1.", "model.1.sub.0.RDB1.")) for k in keys):
        return ("an RRDBNet/ESRGAN/BSRNet upscaler; put it in models/upscale_models, load it with Load Upscale "
                "Model and connect it to the upscale_model input of Stage-1 Restore")
    if "m_head.0.weight" in ks:
        return ("an SCUNet; put it in models/upscale_models, load it with Load Upscale Model and connect it to the "
                "upscale_model input of Stage-1 Restore")
    if "conv_first.weight" in ks and any(k.startswith("layers.0.residual_group.") for k in keys):
        return ("a standard SwinIR upscaler (conv_first.weight, no pixel-unshuffle input); load it with Load "
                "Upscale Model and connect it to the upscale_model input of Stage-1 Restore")
    if "conv_first.1.weight" in ks and any(k.startswith("layers.") for k in keys):
        return "a DiffBIR stage-1 SwinIR restorer; load it with Load Stage-1 Restorer"
    if any(k.startswith(("encoder.", "decoder.", "first_stage_model.")) for k in keys):
        return "a VAE (encoder/decoder keys)"
    sample = ", ".join(repr(k) for k in sorted(keys)[:3])
    return f"{len(keys)} tensors with other names (e.g. {sample})"
