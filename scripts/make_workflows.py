"""Build the example workflows in ``workflows/`` *in the real ComfyUI page* (so each file is exactly what the page
saves: widget order, converted widgets, links, node properties), from the compact specs below.

    .venv/bin/python scripts/make_workflows.py            # all workflows
    .venv/bin/python scripts/make_workflows.py supir_lora  # one

Needs the development setup (scripts/setup.sh) and Chromium (``apt-get install chromium``).
"""

from __future__ import annotations

import json
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "nodes"))
import manifest  # nodes/manifest.py: plain Python, no ComfyUI (imported after the path is set)


def model(name: str, folder: str) -> list[dict]:
    """The page's download record (name, url, directory) of a file, from the models manifest."""
    e = manifest.entry(folder, name)
    if e is None:
        raise SystemExit(f"{folder}/{name} is not in nodes/models.json")
    return [manifest.download_entry(e)]


SD21 = model("v2-1_512-ema-pruned.safetensors", "checkpoints")
SD21_ZSNR = model("sd2.1-base-zsnr-laionaes5.ckpt", "checkpoints")
IRC_V2 = model("v2.pth", "diffbir")
IRC_V21 = model("DiffBIR_v2.1.pt", "diffbir")
SWINIR = model("realesrgan_s4_swinir_100k.pth", "diffbir")
MUSIQ = model("musiq_koniq_ckpt-e95806b9.pth", "iqa")
SDXL = model("sd_xl_base_1.0_0.9vae.safetensors", "checkpoints")
SUPIR_Q = model("SUPIR-v0Q_fp16.safetensors", "supir")
RVAE = model("adaptbir_restoration_vae.safetensors", "vae")
CSFT = model("adaptbir_csft.safetensors", "diffbir")
LORA_FACE = model("your_sdxl_face_lora.safetensors", "loras")
LORA_LAND = model("your_sdxl_landscape_lora.safetensors", "loras")
FACE_SWINIR = model("face_swinir_v1.ckpt", "diffbir")
DETECTOR = model("detection_Resnet50_Final.pth", "facedetection")
PARSER = model("parsing_parsenet.pth", "facedetection")
HYPIR = model("HYPIR_sd2.pth", "hypir")
IQA_WIDGETS = {"weights": MUSIQ[0]["name"]}  # the real file name, so the page's missing-models dialog offers it
NEGATIVE = "low quality, blurry, low-resolution, noisy, unsharp, weird textures"  # DiffBIR v2's default


def diffbir_nodes(ckpt, irc, guidance_scale, steps=50, zsnr=False):
    """Stage 1 (SwinIR) -> padded encode -> IRControlNet -> Restoration Guidance Sampler -> decode/crop/colour fix.
    ``zsnr``: the checkpoint is sampled through ModelSamplingDiscrete (v_prediction, zsnr on), as DiffBIR v2.1's
    zero-terminal-SNR v-prediction base needs (ComfyUI never turns zsnr on for an SD2 checkpoint by itself)."""
    nodes = [
        ("load", "LoadImage", {"image": "example.png"}),
        ("restorer", "AdaptBIR_RestorerLoader", {"restorer_name": SWINIR[0]["name"]}),
        ("stage1", "AdaptBIR_Stage1Restore", {"output_scale": 4.0}),
        ("ckpt", "CheckpointLoaderSimple", {"ckpt_name": ckpt[0]["name"]}),
        ("encode", "AdaptBIR_DualEncoderInterpolate", {"k": 1.0}, "Encode (padded to 64)"),
        ("pos", "CLIPTextEncode", {"text": ""}, "Positive (empty)"),
        ("neg", "CLIPTextEncode", {"text": NEGATIVE}, "Negative"),
        ("irc", "AdaptBIR_IRControlNetLoader", {"control_net_name": irc[0]["name"]}),
        ("apply", "AdaptBIR_ApplyIRControlNet", {}),
        ("sampler", "AdaptBIR_RestorationGuidanceSampler", {"steps": steps, "guidance_scale": guidance_scale}),
        ("decode", "VAEDecode", {}),
        ("crop", "AdaptBIR_CropToOriginal", {}),
        ("fix", "AdaptBIR_ColorFix", {"method": "wavelet"}),
        ("save", "SaveImage", {"filename_prefix": "diffbir"}),
    ]
    links = [
        ("load", 0, "stage1", "image"), ("restorer", 0, "stage1", "restorer"),
        ("stage1", 0, "encode", "image"), ("ckpt", 2, "encode", "restoration_vae"),
        ("ckpt", 2, "encode", "internal_vae"), ("ckpt", 1, "pos", "clip"), ("ckpt", 1, "neg", "clip"),
        ("pos", 0, "apply", "positive"), ("neg", 0, "apply", "negative"), ("irc", 0, "apply", "control_net"),
        ("encode", 1, "apply", "condition"), ("ckpt", 0, "sampler", "model"), ("apply", 0, "sampler", "positive"),
        ("apply", 1, "sampler", "negative"), ("ckpt", 2, "sampler", "vae"), ("encode", 0, "sampler", "latent_image"),
        ("apply", 2, "sampler", "condition"), ("sampler", 0, "decode", "samples"), ("ckpt", 2, "decode", "vae"),
        ("decode", 0, "crop", "image"), ("sampler", 0, "crop", "latent"), ("crop", 0, "fix", "image"),
        ("stage1", 0, "fix", "reference"), ("fix", 0, "save", "images"),
    ]
    if zsnr:
        nodes.insert(4, ("msd", "ModelSamplingDiscrete", {"sampling": "v_prediction", "zsnr": True},
                         "Zero-SNR v-prediction sampling (v2.1)"))
        links = [x if x != ("ckpt", 0, "sampler", "model") else ("msd", 0, "sampler", "model") for x in links]
        links.append(("ckpt", 0, "msd", "model"))
    models = {"ckpt": ckpt, "irc": irc, "restorer": SWINIR}
    return nodes, links, models


def adaptbir_sd21():
    nodes = [
        ("load", "LoadImage", {"image": "example.png"}),
        ("resize", "ImageScaleBy", {"upscale_method": "lanczos", "scale_by": 2.0}),
        ("iqa", "AdaptBIR_IQAClassifier", IQA_WIDGETS),
        ("ckpt", "CheckpointLoaderSimple", {"ckpt_name": SD21[0]["name"]}),
        ("rvae", "VAELoader", {"vae_name": "adaptbir_restoration_vae.safetensors"}, "Restoration VAE (train: stage I)"),
        ("dual", "AdaptBIR_DualEncoderInterpolate", {}),
        ("pos", "CLIPTextEncode", {"text": ""}, "Positive (empty)"),
        ("neg", "CLIPTextEncode", {"text": NEGATIVE}, "Negative"),
        ("irc", "AdaptBIR_IRControlNetLoader", {"control_net_name": IRC_V2[0]["name"]}),
        ("apply", "AdaptBIR_ApplyIRControlNet", {}),
        ("csft_file", "AdaptBIR_CSFTLoader", {"csft_name": "adaptbir_csft.safetensors"}, "CSFT (train: stage III)"),
        ("csft", "AdaptBIR_CSFTApply", {}),
        ("sampler", "AdaptBIR_RestorationGuidanceSampler", {"steps": 50, "guidance_scale": 0.5}),
        ("decode", "VAEDecode", {}),
        ("crop", "AdaptBIR_CropToOriginal", {}),
        ("fix", "AdaptBIR_ColorFix", {"method": "wavelet"}),
        ("save", "SaveImage", {"filename_prefix": "adaptbir"}),
    ]
    links = [
        ("load", 0, "resize", "image"), ("resize", 0, "iqa", "image"), ("resize", 0, "dual", "image"),
        ("rvae", 0, "dual", "restoration_vae"), ("ckpt", 2, "dual", "internal_vae"), ("iqa", 0, "dual", "params"),
        ("ckpt", 1, "pos", "clip"), ("ckpt", 1, "neg", "clip"), ("pos", 0, "apply", "positive"),
        ("neg", 0, "apply", "negative"), ("irc", 0, "apply", "control_net"), ("dual", 1, "apply", "condition"),
        ("ckpt", 0, "csft", "model"), ("csft_file", 0, "csft", "csft"), ("irc", 0, "csft", "control_net"),
        ("iqa", 0, "csft", "params"), ("csft", 0, "sampler", "model"), ("apply", 0, "sampler", "positive"),
        ("apply", 1, "sampler", "negative"), ("ckpt", 2, "sampler", "vae"), ("dual", 0, "sampler", "latent_image"),
        ("apply", 2, "sampler", "condition"), ("sampler", 0, "decode", "samples"), ("ckpt", 2, "decode", "vae"),
        ("decode", 0, "crop", "image"), ("sampler", 0, "crop", "latent"), ("crop", 0, "fix", "image"),
        ("resize", 0, "fix", "reference"), ("fix", 0, "save", "images"),
    ]
    return nodes, links, {"ckpt": SD21, "irc": IRC_V2, "iqa": MUSIQ}


def supir_lora():
    nodes = [
        ("load", "LoadImage", {"image": "example.png"}),
        ("resize", "ImageScaleBy", {"upscale_method": "lanczos", "scale_by": 2.0}),
        ("iqa", "AdaptBIR_IQAClassifier", IQA_WIDGETS),
        ("ckpt", "CheckpointLoaderSimple", {"ckpt_name": SDXL[0]["name"]}),
        ("lora1", "AdaptBIR_SUPIRLoRA", {"lora_name": "your_sdxl_face_lora.safetensors", "strength_model": 0.8,
                                         "strength_clip": 0.8}, "Face LoRA (your file)"),
        ("lora2", "AdaptBIR_SUPIRLoRA", {"lora_name": "your_sdxl_landscape_lora.safetensors",
                                         "strength_model": 0.6, "strength_clip": 0.6}, "Landscape LoRA (your file)"),
        ("loader", "AdaptBIR_LoRASUPIRLoader", {"supir_name": SUPIR_Q[0]["name"]}),
        ("dual", "AdaptBIR_DualEncoderInterpolate", {}),
        ("prompt", "AdaptBIR_SUPIRConditioning", {}),
        ("apply", "AdaptBIR_SUPIRApply", {}),
        ("edm", "AdaptBIR_SUPIRSampler", {}),
        ("sched", "BasicScheduler", {"scheduler": "normal", "steps": 50}),
        ("sample", "SamplerCustom", {"cfg": 4.0}),
        ("decode", "VAEDecode", {}),
        ("crop", "AdaptBIR_CropToOriginal", {}),
        ("fix", "AdaptBIR_ColorFix", {"method": "wavelet"}),
        ("save", "SaveImage", {"filename_prefix": "supir"}),
    ]
    links = [
        ("load", 0, "resize", "image"), ("resize", 0, "iqa", "image"), ("lora1", 0, "lora2", "loras"),
        ("ckpt", 0, "loader", "model"), ("ckpt", 2, "loader", "vae"), ("ckpt", 1, "loader", "clip"),
        ("lora2", 0, "loader", "loras"), ("resize", 0, "dual", "image"), ("loader", 4, "dual", "restoration_vae"),
        ("loader", 2, "dual", "internal_vae"), ("iqa", 0, "dual", "params"), ("loader", 1, "prompt", "clip"),
        ("loader", 0, "apply", "model"), ("loader", 3, "apply", "supir"), ("dual", 1, "apply", "condition"),
        ("iqa", 0, "apply", "params"), ("apply", 0, "sched", "model"), ("apply", 0, "sample", "model"),
        ("prompt", 0, "sample", "positive"), ("prompt", 1, "sample", "negative"), ("edm", 0, "sample", "sampler"),
        ("sched", 0, "sample", "sigmas"), ("apply", 1, "sample", "latent_image"), ("sample", 0, "decode", "samples"),
        ("loader", 2, "decode", "vae"), ("decode", 0, "crop", "image"), ("apply", 2, "crop", "condition"),
        ("crop", 0, "fix", "image"), ("resize", 0, "fix", "reference"), ("fix", 0, "save", "images"),
    ]
    return nodes, links, {"ckpt": SDXL, "loader": SUPIR_Q, "iqa": MUSIQ}


def quality_triage():
    """Runs on a fresh install with only the MUSIQ file: ComfyUI's own example.png, plus a mildly and a strongly
    degraded copy of it (Degrade Image, fixed seeds), scored and routed by class."""
    nodes = [
        ("load1", "LoadImage", {"image": "example.png"}),
        ("mild_copy", "AdaptBIR_DegradeImage", {"pipeline": "mild_adaptbir", "seed": 1,
                                                "control_after_generate": "fixed"}, "A mildly degraded copy"),
        ("severe_copy", "AdaptBIR_DegradeImage", {"pipeline": "realesrgan", "seed": 2, "scale": 4.0,
                                                  "control_after_generate": "fixed"}, "A strongly degraded copy"),
        ("batch12", "ImageBatch", {}),
        ("batch", "ImageBatch", {}),
        ("iqa", "AdaptBIR_IQAClassifier", IQA_WIDGETS, "IQA Classifier (shows the scores)"),
        ("route", "AdaptBIR_RouteByQuality", {}),
        ("severe", "SaveImage", {"filename_prefix": "triage/severe"}, "Severe: restore with k = 0, w = 0"),
        ("medium", "SaveImage", {"filename_prefix": "triage/medium"}, "Medium"),
        ("mild", "SaveImage", {"filename_prefix": "triage/mild"}, "Mild: little restoration needed"),
    ]
    links = [
        ("load1", 0, "mild_copy", "image"), ("load1", 0, "severe_copy", "image"),
        ("load1", 0, "batch12", "image1"), ("mild_copy", 0, "batch12", "image2"), ("batch12", 0, "batch", "image1"),
        ("severe_copy", 0, "batch", "image2"), ("batch", 0, "iqa", "image"), ("batch", 0, "route", "image"),
        ("iqa", 0, "route", "params"), ("route", 0, "severe", "images"), ("route", 1, "medium", "images"),
        ("route", 2, "mild", "images"),
    ]
    return nodes, links, {"iqa": MUSIQ}


def diffbir_faces():
    """An old photo with faces (x2): the background through DiffBIR v2 (general SwinIR, IRControlNet, guidance);
    the faces found on the photo at x2, aligned to 512, scored per face, restored as one batch through their own
    chain (face_swinir_v1.ckpt) and pasted back over the parsed face."""
    sampler = {"steps": 50, "cfg": 4.0, "guidance_scale": 0.5}
    nodes = [
        ("load", "LoadImage", {"image": "example.png"}),
        ("restorer", "AdaptBIR_RestorerLoader", {"restorer_name": SWINIR[0]["name"]}, "Background restorer"),
        ("stage1", "AdaptBIR_Stage1Restore", {"output_scale": 2.0}, "Background stage 1 (x2)"),
        ("ckpt", "CheckpointLoaderSimple", {"ckpt_name": SD21[0]["name"]}),
        ("pos", "CLIPTextEncode", {"text": ""}, "Positive (empty)"),
        ("neg", "CLIPTextEncode", {"text": NEGATIVE}, "Negative"),
        ("irc", "AdaptBIR_IRControlNetLoader", {"control_net_name": IRC_V2[0]["name"]}),
        ("encode", "AdaptBIR_DualEncoderInterpolate", {"k": 1.0}, "Background encode"),
        ("apply", "AdaptBIR_ApplyIRControlNet", {}, "Background control"),
        ("sampler", "AdaptBIR_RestorationGuidanceSampler", sampler, "Background sampler"),
        ("decode", "VAEDecode", {}),
        ("crop", "AdaptBIR_CropToOriginal", {}),
        ("fix", "AdaptBIR_ColorFix", {"method": "wavelet"}, "Background colour fix"),
        ("up", "ImageScaleBy", {"upscale_method": "bicubic", "scale_by": 2.0}, "Photo x2 (for detection)"),
        ("detector", "AdaptBIR_FaceDetectorLoader", {"detector_name": DETECTOR[0]["name"]}),
        ("detect", "AdaptBIR_DetectFaces", {}),
        ("preview", "PreviewImage", {}, "Face crops"),
        ("face_restorer", "AdaptBIR_RestorerLoader", {"restorer_name": FACE_SWINIR[0]["name"]}, "Face restorer"),
        ("face_stage1", "AdaptBIR_Stage1Restore", {"output_scale": 1.0}, "Face stage 1"),
        ("iqa", "AdaptBIR_IQAClassifier", IQA_WIDGETS, "Score each face"),
        ("face_encode", "AdaptBIR_DualEncoderInterpolate", {"k": 1.0}, "Face encode (k per face)"),
        ("face_apply", "AdaptBIR_ApplyIRControlNet", {}, "Face control"),
        ("face_sampler", "AdaptBIR_RestorationGuidanceSampler", sampler, "Face sampler"),
        ("face_decode", "VAEDecode", {}),
        ("face_crop", "AdaptBIR_CropToOriginal", {}),
        ("face_fix", "AdaptBIR_ColorFix", {"method": "wavelet"}, "Face colour fix"),
        ("parser", "AdaptBIR_FaceParserLoader", {"parser_name": PARSER[0]["name"]}),
        ("paste", "AdaptBIR_PasteFaces", {}),
        ("save", "SaveImage", {"filename_prefix": "diffbir_faces"}),
    ]
    links = [
        ("load", 0, "stage1", "image"), ("restorer", 0, "stage1", "restorer"),
        ("stage1", 0, "encode", "image"), ("ckpt", 2, "encode", "restoration_vae"),
        ("ckpt", 2, "encode", "internal_vae"), ("ckpt", 1, "pos", "clip"), ("ckpt", 1, "neg", "clip"),
        ("pos", 0, "apply", "positive"), ("neg", 0, "apply", "negative"), ("irc", 0, "apply", "control_net"),
        ("encode", 1, "apply", "condition"),
        ("ckpt", 0, "sampler", "model"), ("apply", 0, "sampler", "positive"), ("apply", 1, "sampler", "negative"),
        ("ckpt", 2, "sampler", "vae"), ("encode", 0, "sampler", "latent_image"), ("apply", 2, "sampler", "condition"),
        ("sampler", 0, "decode", "samples"), ("ckpt", 2, "decode", "vae"),
        ("decode", 0, "crop", "image"), ("sampler", 0, "crop", "latent"),
        ("crop", 0, "fix", "image"), ("stage1", 0, "fix", "reference"),
        ("load", 0, "up", "image"), ("up", 0, "detect", "image"), ("detector", 0, "detect", "face_detector"),
        ("detect", 0, "preview", "images"),
        ("detect", 0, "face_stage1", "image"), ("face_restorer", 0, "face_stage1", "restorer"),
        ("detect", 0, "iqa", "image"),
        ("face_stage1", 0, "face_encode", "image"), ("ckpt", 2, "face_encode", "restoration_vae"),
        ("ckpt", 2, "face_encode", "internal_vae"), ("iqa", 0, "face_encode", "params"),
        ("pos", 0, "face_apply", "positive"), ("neg", 0, "face_apply", "negative"),
        ("irc", 0, "face_apply", "control_net"), ("face_encode", 1, "face_apply", "condition"),
        ("ckpt", 0, "face_sampler", "model"), ("face_apply", 0, "face_sampler", "positive"),
        ("face_apply", 1, "face_sampler", "negative"), ("ckpt", 2, "face_sampler", "vae"),
        ("face_encode", 0, "face_sampler", "latent_image"), ("face_apply", 2, "face_sampler", "condition"),
        ("face_sampler", 0, "face_decode", "samples"), ("ckpt", 2, "face_decode", "vae"),
        ("face_decode", 0, "face_crop", "image"), ("face_sampler", 0, "face_crop", "latent"),
        ("face_crop", 0, "face_fix", "image"), ("face_stage1", 0, "face_fix", "reference"),
        ("fix", 0, "paste", "background"), ("detect", 1, "paste", "faces"), ("face_fix", 0, "paste", "restored_faces"),
        ("parser", 0, "paste", "face_parser"), ("paste", 0, "save", "images"),
    ]
    return nodes, links, {"restorer": SWINIR, "ckpt": SD21, "irc": IRC_V2, "detector": DETECTOR,
                          "face_restorer": FACE_SWINIR, "iqa": MUSIQ, "parser": PARSER}


LORA_SIZE = 512  # LoRA-SUPIR: "All images are preprocessed to a resolution of 512x512"


def supir_lora_training():
    """LoRA-SUPIR's LoRA training (Zhao, "Efficient Image Restoration through Low-Rank Adaptation and SDXL") on
    ComfyUI's own nodes: SDXL + photos with caption .txt files -> 512x512 -> VAE/CLIP encode -> Train LoRA (AdamW,
    lr 1e-4) -> Save LoRA + loss graph."""
    nodes = [
        ("ckpt", "CheckpointLoaderSimple", {"ckpt_name": SDXL[0]["name"]}),
        ("data", "LoadImageTextDataSetFromFolder", {"folder": "lora_photos"},
         "Photos + captions (ComfyUI/input/lora_photos: a.png + a.txt)"),
        ("resize", "ResizeImagesByShorterEdge", {"shorter_edge": LORA_SIZE}),
        ("crop", "CenterCropImages", {"width": LORA_SIZE, "height": LORA_SIZE}),
        ("encode", "MakeTrainingDataset", {}),
        ("train", "TrainLoraNode", {
            "batch_size": 1, "grad_accumulation_steps": 1, "steps": 2000, "learning_rate": 0.0001, "rank": 8,
            "optimizer": "AdamW", "loss_function": "MSE", "seed": 0, "control_after_generate": "fixed",
            "training_dtype": "bf16", "lora_dtype": "bf16", "algorithm": "LoRA", "gradient_checkpointing": True},
         "Train LoRA (paper: AdamW, lr 1e-4)"),
        ("save", "SaveLoRA", {"prefix": "loras/supir_lora"}, "Save LoRA (output/loras -> move to models/loras)"),
        ("loss", "LossGraphNode", {"filename_prefix": "supir_lora_loss"}),
    ]
    links = [
        ("data", 0, "resize", "images"), ("resize", 0, "crop", "images"), ("crop", 0, "encode", "images"),
        ("ckpt", 2, "encode", "vae"), ("ckpt", 1, "encode", "clip"), ("data", 1, "encode", "texts"),
        ("ckpt", 0, "train", "model"), ("encode", 0, "train", "latents"), ("encode", 1, "train", "positive"),
        ("train", 1, "save", "lora"), ("train", 3, "save", "steps"), ("train", 2, "loss", "loss"),
    ]
    return nodes, links, {"ckpt": SDXL}


def supir_lora_metrics():
    """supir_lora's chain on a degraded copy of the loaded photo, measured against the photo (LoRA-SUPIR's
    evaluation of one photo)."""
    nodes, links, models = supir_lora()
    nodes = [("degrade", "AdaptBIR_DegradeImage", {"pipeline": "realesrgan", "seed": 0,
                                                   "control_after_generate": "fixed", "scale": 4.0},
              "Degrade Image (the ground truth's low-quality copy)")] + nodes
    nodes[1] = ("load", "LoadImage", {"image": "example.png"}, "Ground truth (a clean photo)")
    nodes += [("down", "ImageScaleBy", {"upscale_method": "area", "scale_by": 0.5}, "Back to the ground truth's size"),
              ("metrics", "AdaptBIR_RestorationMetrics", {})]
    links = [link for link in links if link[:3] != ("load", 0, "resize")]
    links += [("load", 0, "degrade", "image"), ("degrade", 0, "resize", "image"), ("fix", 0, "down", "image"),
              ("down", 0, "metrics", "restored"), ("load", 0, "metrics", "reference")]
    return nodes, links, models


def hypir_one_step():
    """HYPIR (one UNet pass): SD 2.1 base + HYPIR's LoRA, an empty prompt, the IQA Classifier's params connected
    (adapt off by default: HYPIR as published) -> HYPIR Restore -> Save."""
    nodes = [
        ("load", "LoadImage", {"image": "example.png"}),
        ("ckpt", "CheckpointLoaderSimple", {"ckpt_name": SD21[0]["name"]}),
        ("hypir", "AdaptBIR_HYPIRLoader", {"hypir_name": HYPIR[0]["name"], "strength": 1.0}),
        ("pos", "CLIPTextEncode", {"text": ""}, "Prompt (empty, as HYPIR)"),
        ("iqa", "AdaptBIR_IQAClassifier", IQA_WIDGETS),
        ("restore", "AdaptBIR_HYPIRRestore", {"model_t": 200, "coeff_t": 200, "upscale": 1.0,
                                              "color_fix": "wavelet", "tile_size": 512, "tile_stride": 256,
                                              "adapt": "off", "mild_factor": 0.5}),
        ("save", "SaveImage", {"filename_prefix": "hypir"}),
    ]
    links = [
        ("ckpt", 0, "hypir", "model"), ("ckpt", 1, "pos", "clip"), ("load", 0, "iqa", "image"),
        ("hypir", 0, "restore", "model"), ("ckpt", 2, "restore", "vae"), ("pos", 0, "restore", "positive"),
        ("load", 0, "restore", "image"), ("iqa", 0, "restore", "params"), ("restore", 0, "save", "images"),
    ]
    return nodes, links, {"ckpt": SD21, "hypir": HYPIR, "iqa": MUSIQ}


# What each workflow does and what to change first; the files, folders, links and licences come from the manifest.
ABOUT = {
    "adaptbir_sd21": (
        "AdaptBIR on SD 2.1",
        "Restores a photo as much as it needs: the IQA Classifier scores it, and the score sets how much of the "
        "photo's own detail is kept (k: Dual Encoder Interpolate) and how strongly CSFT adds fidelity (w).",
        ["**Load Image**: your photo. **Upscale Image By**: the restoration size (x2).",
         "**Restoration Guidance Sampler**: `guidance_scale` (0.5; 0 = off) and `steps`.",
         "AdaptBIR's restoration VAE and CSFT weights are not published: train them first (README: Training)."]),
    "diffbir_v2_guidance": (
        "DiffBIR v2 with restoration guidance",
        "Cleans the photo with SwinIR (x4), then lets SD 2.1 with DiffBIR's IRControlNet add detail; restoration "
        "guidance keeps colours and shapes faithful; Colour Fix removes colour shifts.",
        ["**Stage-1 Restore**: `output_scale` (4 = x4 super-resolution; 1 = same size).",
         "**Restoration Guidance Sampler**: `guidance_scale` (0.5 smoother and more faithful, 0 = off), `steps`.",
         "**Negative** prompt: DiffBIR's default."]),
    "diffbir_v21_zsnr": (
        "DiffBIR v2.1 (zero-terminal-SNR v-prediction)",
        "DiffBIR v2.1: SwinIR (x4), then the v2.1 IRControlNet on its zero-terminal-SNR v-prediction SD 2.1 base. "
        "**ModelSamplingDiscrete** (v_prediction, zsnr on) is required: without it ComfyUI samples this base on the "
        "wrong schedule.",
        ["**Stage-1 Restore**: `output_scale` (4 = x4).",
         "**Restoration Guidance Sampler**: `steps`, `cfg`; guidance is off (0), as in DiffBIR v2.1.",
         "Keep ModelSamplingDiscrete between the checkpoint and the sampler."]),
    "supir_lora": (
        "SUPIR with LoRAs and IQA-driven settings",
        "Restores with SDXL and SUPIR's adapter; two SDXL LoRAs of your own steer the style; the IQA Classifier's "
        "score sets k (Dual Encoder Interpolate) and the control scale of each photo.",
        ["**Face LoRA / Landscape LoRA**: pick SDXL LoRAs you have (or delete the two nodes).",
         "**SUPIR Apply**: `control_scale_end` (1.0; ~0.93 for more generated detail).",
         "**SamplerCustom**: `cfg` (4-7.5); **BasicScheduler**: `steps` (50)."]),
    "quality_triage": (
        "Quality triage",
        "Scores a batch of images with MUSIQ and sorts them by class into three output folders (triage/severe, "
        "medium, mild); the scores are shown on the IQA Classifier. Runs on a fresh install with only the MUSIQ "
        "file: the batch is ComfyUI's example.png and two degraded copies of it.",
        ["Replace the **Load Image** and the two **Degrade Image** nodes with your own images.",
         "**IQA Classifier**: `low_threshold` (40) and `high_threshold` (70) set the classes."]),
    "diffbir_faces": (
        "DiffBIR for an old photo with faces",
        "Restores the whole photo at x2 with DiffBIR (SwinIR stage 1, IRControlNet, restoration guidance), and the "
        "faces on their own: **Detect & Align Faces** finds them and cuts each to an aligned 512 crop, each face is "
        "scored (k per face) and restored with the face SwinIR and its own sampler, and **Paste Faces** blends them "
        "back over the face the parser finds.",
        ["**Detect & Align Faces**: `threshold` (0.97; lower it for blurred or small faces).",
         "**Face sampler** / **Background sampler**: `guidance_scale` (0.5) and `steps`, set apart.",
         "**Background stage 1** `output_scale` and **Photo x2** `scale_by` must stay equal."]),
    "supir_lora_training": (
        "Train a LoRA for SUPIR (LoRA-SUPIR)",
        "Trains an SDXL LoRA on your photos with ComfyUI's own training nodes, as LoRA-SUPIR does: photos and one "
        "caption .txt per photo, resized and cropped to 512 x 512, AdamW at lr 1e-4. The LoRA is saved in "
        "output/loras (move it to models/loras) with a loss graph; use it in the SUPIR workflows' LoRA nodes.",
        ["Put `a.png` + `a.txt` pairs in `ComfyUI/input/lora_photos` (or set **folder**).",
         "**Train LoRA**: `steps` (2000), `rank` (8), `learning_rate` (1e-4); bf16 needs a recent GPU.",
         "**Save LoRA**: `prefix` names the file."]),
    "supir_lora_metrics": (
        "SUPIR with LoRAs, measured against the ground truth",
        "LoRA-SUPIR's evaluation of one photo: the clean photo is degraded (fixed seed), restored with SUPIR and "
        "your LoRAs (the supir_lora chain), brought back to the photo's size and compared with it by **Restoration "
        "Metrics** (PSNR, SSIM, LPIPS when its files are there, MUSIQ), shown on the node.",
        ["**Ground truth**: a clean photo of your own; **Degrade Image**: `pipeline` and `seed`.",
         "**Face LoRA / Landscape LoRA**: your SDXL LoRAs (or delete the two nodes).",
         "LPIPS (optional): `LPIPS_v0.1_alex-df73285e.pth` and `alexnet-owt-7be5be79.pth` in `models/iqa` (see "
         "the README's models table)."]),
    "hypir_one_step": (
        "HYPIR: restoration in one step",
        "Restores a photo with a single pass of SD 2.1 base carrying HYPIR's LoRA (**Load HYPIR LoRA**), many times "
        "faster than DiffBIR's 50 steps: **HYPIR Restore** encodes the photo, makes one UNet call, decodes and "
        "fixes the colours. The IQA Classifier is connected but `adapt` is off (HYPIR as published). **HYPIR's "
        "weights are for non-commercial use only.**",
        ["**HYPIR Restore**: `upscale` (1 = same size; 4 for x4 super-resolution, as HYPIR's examples).",
         "**HYPIR Restore**: `adapt` (strength / timestep / both) lowers the change for mildly degraded photos, "
         "by `mild_factor`.",
         "**HYPIR Restore**: `tile_size` / `tile_stride` (512 / 256) for large photos; **Load HYPIR LoRA**: "
         "`strength` (1)."]),
}


def note_text(name: str) -> str:
    """The Markdown of a workflow's note: what it does, its files (folder, link, licence), what to tweak first."""
    title, what, tweaks = ABOUT[name]
    lines = [f"## {title}", "", what, "", "### Files", ""]
    for e in manifest.for_workflow(name):
        source = f"[download]({e['url']})" if e["url"] else e.get("how", "")
        if e.get("unofficial"):
            source += " (unofficial mirror: the official repository was withdrawn)"
        lines.append(f"- `{e['name']}` in `models/{e['folder']}`: {source}. Licence: {e['licence']}.")
    lines += ["", "### Tweak first", ""] + [f"- {t}" for t in tweaks]
    lines += ["", "Every input has a tooltip: hover over it. The pack downloads nothing."]
    return "\n".join(lines)


WORKFLOWS = {
    "adaptbir_sd21": adaptbir_sd21,
    "diffbir_v2_guidance": lambda: diffbir_nodes(SD21, IRC_V2, 0.5),
    "diffbir_v21_zsnr": lambda: diffbir_nodes(SD21_ZSNR, IRC_V21, 0.0, zsnr=True),
    "supir_lora": supir_lora,
    "quality_triage": quality_triage,
    "diffbir_faces": diffbir_faces,
    "supir_lora_training": supir_lora_training,
    "supir_lora_metrics": supir_lora_metrics,
    "hypir_one_step": hypir_one_step,
}


NOTE_SIZE = [460, 620]
# nodes whose widgets show file names: wide enough that the page does not cut the names off (height: the page's)
WIDE = {key: [400, None] for key in ("iqa", "ckpt", "restorer", "irc", "csft_file", "rvae", "loader", "lora1",
                                     "lora2", "detector", "parser", "face_restorer", "hypir")}


def spec(name: str) -> dict:
    nodes, links, models = WORKFLOWS[name]()
    nodes = [("note", "MarkdownNote", {"text": note_text(name)}, "About this workflow"), *nodes]
    # Load Image grows when it shows its picture: put it at the bottom of the first column, where it overlaps nothing
    if nodes[1][1] == "LoadImage":
        nodes[1], nodes[2] = nodes[2], nodes[1]
    rows = [[key, type_, widgets, rest[0] if rest else None] for key, type_, widgets, *rest in nodes]
    models = {k: [m for m in v if m["url"]] for k, v in models.items()}
    return {"nodes": rows, "links": [list(x) for x in links], "models": {k: v for k, v in models.items() if v},
            "per_column": 3, "sizes": {"note": NOTE_SIZE, **WIDE}}


def build(page, name: str) -> dict:
    """The workflow ``name`` as the page serialises it."""
    from tests.support.browser import BUILD_JS

    return json.loads(page.evaluate(BUILD_JS, spec(name)))


def main(names: list[str]) -> None:
    sys.path.insert(0, str(REPO))
    from tests.support.browser import close_dialogs, comfy_page, comfy_server

    out, shots = REPO / "workflows", REPO / "docs" / "workflows"
    out.mkdir(exist_ok=True)
    shots.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp, comfy_server(Path(tmp)) as base, comfy_page(base) as page:
        for name in names or list(WORKFLOWS):
            wf = build(page, name)
            (out / f"{name}.json").write_text(json.dumps(wf, indent=1) + "\n")
            print(f"wrote workflows/{name}.json ({len(wf['nodes'])} nodes, {len(wf['links'])} links)")
            # the README's picture: the file loaded back into the page, fitted to the view
            page.evaluate("(wf) => app.loadGraphData(wf)", wf)
            close_dialogs(page, settle_ms=400)
            page.mouse.click(760, 975)  # empty canvas (focus for the "." fit-view shortcut)
            page.keyboard.press(".")
            page.wait_for_timeout(500)
            page.screenshot(path=str(shots / f"{name}.png"), clip={"x": 60, "y": 80, "width": 1540, "height": 920})
            print(f"wrote docs/workflows/{name}.png")
            # the template browser's card picture: frontend 1.32.9 loads <workflow stem>.jpg from the same folder
            page.screenshot(path=str(out / f"{name}.jpg"), type="jpeg", quality=70,
                            clip={"x": 60, "y": 80, "width": 1540, "height": 920})
            print(f"wrote workflows/{name}.jpg")


if __name__ == "__main__":
    main(sys.argv[1:])
