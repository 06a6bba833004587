"""Name what a state dict is from its keys alone, for loaders' "expected X, found Y" messages."""

from __future__ import annotations


def describe_weights(keys) -> str:
    """A short phrase naming what weights with these tensor names probably are, with a hint where they belong.

    Args:
        keys: tensor names (an iterable of str; a state dict works too). Only names are read, so a caller can pass
            the names from a safetensors header without loading the tensors.

    Returns:
        The phrase of :func:`identify_weights`, ``"no tensors"``, or ``"N tensors with other names (e.g. ...)"``.
    """
    keys = [str(k) for k in keys]
    if not keys:
        return "no tensors"
    kind = identify_weights(keys)
    if kind is not None:
        return kind
    sample = ", ".join(repr(k) for k in sorted(keys)[:3])
    return f"{len(keys)} tensors with other names (e.g. {sample})"


def identify_weights(keys) -> str | None:
    """The phrase naming a kind of weights file this pack knows (e.g. ``"an SDXL checkpoint (...)"``), or None.

    Args:
        keys: tensor names (an iterable of str, or a state dict); only the names are read.
    """
    keys = [str(k) for k in keys]
    ks = set(keys)
    if not ks:
        return None

    def has(*prefixes):
        return any(k.startswith(prefixes) for k in keys)

    def contains(part):
        return any(part in k for k in keys)

    if all(k.endswith((".lora_A.default.weight", ".lora_B.default.weight")) for k in keys) and \
            any(k.startswith(("down_blocks.", "up_blocks.", "mid_block.")) for k in keys):
        return ("HYPIR's one-step LoRA for SD 2.1 (peft lora_A/lora_B.default keys on the diffusers UNet); put it "
                "in models/hypir and load it with Load HYPIR LoRA")
    if any("lora_" in k or ".lora." in k or "lora_A" in k or "lora_B" in k for k in keys):
        return "a LoRA (lora_* keys); load it with a LoRA loader"
    if has("body.conv1.", "module.body.conv1.") and contains("ClassHead.") and contains("LandmarkHead."):
        return ("RetinaFace face detector weights (body.*, ClassHead.*, LandmarkHead.* keys); they belong in "
                "models/facedetection for Load Face Detector")
    if has("encoder.0.conv2d.", "module.encoder.0.conv2d.") and contains("out_mask_conv."):
        return ("ParseNet face parsing weights (encoder.*, out_mask_conv.* keys); they belong in "
                "models/facedetection for Load Face Parser")
    if has("input_hint_block.", "control_model.input_hint_block.") and not contains("project_modules."):
        if contains("label_emb"):
            return "a standard SDXL ControlNet (with a hint block); load it with ComfyUI's Load ControlNet"
        return ("a standard ControlNet (with an image hint block), e.g. for SD 1.5/2.x; load it with ComfyUI's "
                "Load ControlNet")
    if contains("control_model.") and contains("project_modules."):
        return ("SUPIR weights (control_model.* and project_modules.* keys); put them in models/supir and load them "
                "with LoRA SUPIR Loader")
    if contains("cft_blocks.") and not has("control_model."):
        return "AdaptBIR CSFT weights (cft_blocks.* keys); load them with Load CSFT"
    if has("model.diffusion_model.") and not has("control_model."):
        if contains("label_emb"):
            return "an SDXL checkpoint (UNet with label_emb, no control branch); it belongs in models/checkpoints"
        if has("cond_stage_model.model.", "conditioner.embedders.0.model."):
            version = "SD 2.x: model.diffusion_model.* keys, OpenCLIP text encoder"
        elif has("cond_stage_model.transformer."):
            version = "SD 1.x: model.diffusion_model.* keys, CLIP-L text encoder"
        else:
            version = "model.diffusion_model.* keys"
        return f"a Stable Diffusion checkpoint ({version}) without a control branch; it belongs in models/checkpoints"
    if has("control_model."):
        return ("a full DiffBIR/AdaptBIR checkpoint (control_model.* keys) without a stage-1 SwinIR inside; load "
                "its control branch with Load IRControlNet")
    if "middle_block_out.0.weight" in ks or has("zero_convs."):
        return ("an IRControlNet alone (zero_convs / middle_block_out keys, no UNet); load it with Load "
                "IRControlNet")
    if has("RRDB_trunk.", "body.0.rdb1.", "model.1.sub.0.RDB1."):
        return ("an RRDBNet/ESRGAN/BSRNet upscaler; put it in models/upscale_models, load it with Load Upscale "
                "Model and connect it to the upscale_model input of Stage-1 Restore")
    if "m_head.0.weight" in ks:
        return ("an SCUNet; put it in models/upscale_models, load it with Load Upscale Model and connect it to the "
                "upscale_model input of Stage-1 Restore")
    if "conv_first.weight" in ks and has("layers.0.residual_group."):
        return ("a standard SwinIR upscaler (conv_first.weight, no pixel-unshuffle input); load it with Load "
                "Upscale Model and connect it to the upscale_model input of Stage-1 Restore")
    if "conv_first.1.weight" in ks and has("layers."):
        return "a DiffBIR stage-1 SwinIR restorer; load it with Load Stage-1 Restorer"
    if has("denoise_encoder.", "first_stage_model.denoise_encoder.", "preprocess_model.encoder."):
        return ("a restoration encoder alone (AdaptBIR/SUPIR denoise_encoder.* keys); load it with Load "
                "Restoration VAE")
    if any(k.endswith("conv_root.weight") for k in keys) and contains("transformer_encoder."):
        return "pyiqa MUSIQ weights (image quality); they belong in models/iqa for the IQA Classifier"
    if has("encoder.", "decoder.", "first_stage_model."):
        return "a VAE (encoder/decoder keys)"
    return None
