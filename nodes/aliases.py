"""The words artists search for, per node (node search matches them where the host supports search aliases)."""

from __future__ import annotations

from .host import search_aliases

RESTORE = ["restore", "restoration", "enhance", "repair", "fix photo"]
ALIASES = {
    "AdaptBIR_IQAClassifier": ["IQA", "image quality", "quality score", "MUSIQ", "AdaptBIR", "rate photo"],
    "AdaptBIR_RouteByQuality": ["IQA", "quality", "sort", "triage", "AdaptBIR"],
    "AdaptBIR_DualEncoderInterpolate": [*RESTORE, "AdaptBIR", "encode", "VAE"],
    "AdaptBIR_CropToOriginal": ["crop", "original size", "AdaptBIR", "DiffBIR", "SUPIR"],
    "AdaptBIR_RestorationVAELoader": [*RESTORE, "AdaptBIR", "SUPIR", "VAE", "denoise"],
    "AdaptBIR_RestorerLoader": [*RESTORE, "DiffBIR", "SwinIR", "upscale", "denoise", "face"],
    "AdaptBIR_Stage1Restore": [*RESTORE, "DiffBIR", "SwinIR", "upscale", "super resolution", "denoise", "deblur",
                               "face"],
    "AdaptBIR_DegradeImage": ["degrade", "blur", "noise", "JPEG", "test", "AdaptBIR", "DiffBIR"],
    "AdaptBIR_IRControlNetLoader": [*RESTORE, "DiffBIR", "controlnet", "upscale", "face"],
    "AdaptBIR_ApplyIRControlNet": [*RESTORE, "DiffBIR", "controlnet", "upscale", "denoise", "deblur", "face"],
    "AdaptBIR_CSFTLoader": [*RESTORE, "AdaptBIR", "CSFT", "fidelity"],
    "AdaptBIR_CSFTApply": [*RESTORE, "AdaptBIR", "CSFT", "fidelity"],
    "AdaptBIR_SpacedDDPMScheduler": ["DiffBIR", "scheduler", "sigmas"],
    "AdaptBIR_RestorationGuidanceSampler": [*RESTORE, "DiffBIR", "sampler", "KSampler", "upscale", "denoise",
                                            "deblur", "face"],
    "AdaptBIR_ApplyRestorationGuidance": [*RESTORE, "DiffBIR", "guidance", "fidelity"],
    "AdaptBIR_ColorFix": ["colour", "color", "color match", "wavelet", "DiffBIR", "SUPIR", "restore"],
    "AdaptBIR_SUPIRLoRA": ["SUPIR", "LoRA", *RESTORE, "upscale"],
    "AdaptBIR_LoRASUPIRLoader": ["SUPIR", "LoRA", *RESTORE, "upscale", "SDXL"],
    "AdaptBIR_SUPIRApply": ["SUPIR", *RESTORE, "upscale", "denoise", "deblur", "face", "SDXL"],
    "AdaptBIR_SUPIRConditioning": ["SUPIR", "prompt", "SDXL", "restore"],
    "AdaptBIR_SUPIRSampler": ["SUPIR", "sampler", "EDM", "restore"],
    "AdaptBIR_FaceDetectorLoader": ["face", "face detection", "detector", "RetinaFace", "restore face", "DiffBIR"],
    "AdaptBIR_FaceParserLoader": ["face", "face parsing", "face mask", "ParseNet", "restore face", "paste",
                                  "DiffBIR"],
    "AdaptBIR_DetectFaces": ["face", "face detection", "detect faces", "align", "crop", "restore face", "DiffBIR",
                             *RESTORE],
    "AdaptBIR_PasteFaces": ["face", "paste", "paste back", "restore face", "blend", "DiffBIR", *RESTORE],
    "AdaptBIR_RestorationMetrics": ["PSNR", "SSIM", "LPIPS", "MUSIQ", "metrics", "compare", "evaluate", "IQA",
                                    "image quality", "benchmark", "ground truth"],
    "AdaptBIR_HYPIRLoader": ["HYPIR", "LoRA", "one step", "fast restore", *RESTORE, "upscale", "SD 2.1"],
    "AdaptBIR_HYPIRRestore": ["HYPIR", "one step", "fast restore", *RESTORE, "upscale", "super resolution",
                              "denoise", "deblur", "LoRA"],
    "AdaptBIR_TiledDiffusion": ["tile", "tiled", "large image", "upscale", "DiffBIR", "SUPIR", "restore"],
}


def aliases_for(node_id: str) -> dict:
    """The schema keyword for ``node_id``'s search aliases, or ``{}`` where the host has no such field."""
    return search_aliases(ALIASES[node_id])
