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
HF = "https://huggingface.co"


def model(name: str, url: str, directory: str) -> list[dict]:
    return [{"name": name, "url": url, "directory": directory}]


SD21 = model("v2-1_512-ema-pruned.safetensors",
             f"{HF}/stabilityai/stable-diffusion-2-1-base/resolve/main/v2-1_512-ema-pruned.safetensors", "checkpoints")
SD21_ZSNR = model("sd2.1-base-zsnr-laionaes5.ckpt", f"{HF}/lxq007/DiffBIR-v2/resolve/main/sd2.1-base-zsnr-laionaes5.ckpt",
                  "checkpoints")
IRC_V2 = model("v2.pth", f"{HF}/lxq007/DiffBIR-v2/resolve/main/v2.pth", "diffbir")
IRC_V21 = model("DiffBIR_v2.1.pt", f"{HF}/lxq007/DiffBIR-v2/resolve/main/DiffBIR_v2.1.pt", "diffbir")
SWINIR = model("realesrgan_s4_swinir_100k.pth", f"{HF}/lxq007/DiffBIR-v2/resolve/main/realesrgan_s4_swinir_100k.pth",
               "diffbir")
MUSIQ = model("musiq_koniq_ckpt-e95806b9.pth",
              f"{HF}/chaofengc/IQA-PyTorch-Weights/resolve/main/musiq_koniq_ckpt-e95806b9.pth", "iqa")
SDXL = model("sd_xl_base_1.0_0.9vae.safetensors",
             f"{HF}/stabilityai/stable-diffusion-xl-base-1.0/resolve/main/sd_xl_base_1.0_0.9vae.safetensors",
             "checkpoints")
SUPIR_Q = model("SUPIR-v0Q_fp16.safetensors", f"{HF}/Kijai/SUPIR_pruned/resolve/main/SUPIR-v0Q_fp16.safetensors",
                "supir")
NEGATIVE = "low quality, blurry, low-resolution, noisy, unsharp, weird textures"  # DiffBIR v2's default


def diffbir_nodes(ckpt, irc, guidance_scale, steps=50):
    """Stage 1 (SwinIR) -> padded encode -> IRControlNet -> Restoration Guidance Sampler -> decode/crop/colour fix."""
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
    models = {"ckpt": ckpt, "irc": irc, "restorer": SWINIR}
    return nodes, links, models


def adaptbir_sd21():
    nodes = [
        ("load", "LoadImage", {"image": "example.png"}),
        ("resize", "ImageScaleBy", {"upscale_method": "lanczos", "scale_by": 2.0}),
        ("iqa", "AdaptBIR_IQAClassifier", {}),
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
        ("iqa", "AdaptBIR_IQAClassifier", {}),
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
    nodes = [
        ("load1", "LoadImage", {"image": "example.png"}),
        ("load2", "LoadImage", {"image": "example2.png"}),
        ("load3", "LoadImage", {"image": "example3.png"}),
        ("batch12", "ImageBatch", {}),
        ("batch", "ImageBatch", {}),
        ("iqa", "AdaptBIR_IQAClassifier", {}, "IQA Classifier (shows the scores)"),
        ("route", "AdaptBIR_RouteByQuality", {}),
        ("severe", "SaveImage", {"filename_prefix": "triage/severe"}, "Severe: restore with k = 0, w = 0"),
        ("medium", "SaveImage", {"filename_prefix": "triage/medium"}, "Medium"),
        ("mild", "SaveImage", {"filename_prefix": "triage/mild"}, "Mild: little restoration needed"),
    ]
    links = [
        ("load1", 0, "batch12", "image1"), ("load2", 0, "batch12", "image2"), ("batch12", 0, "batch", "image1"),
        ("load3", 0, "batch", "image2"), ("batch", 0, "iqa", "image"), ("batch", 0, "route", "image"),
        ("iqa", 0, "route", "params"), ("route", 0, "severe", "images"), ("route", 1, "medium", "images"),
        ("route", 2, "mild", "images"),
    ]
    return nodes, links, {"iqa": MUSIQ}


WORKFLOWS = {
    "adaptbir_sd21": adaptbir_sd21,
    "diffbir_v2_guidance": lambda: diffbir_nodes(SD21, IRC_V2, 0.5),
    "diffbir_v21_zsnr": lambda: diffbir_nodes(SD21_ZSNR, IRC_V21, 0.0),
    "supir_lora": supir_lora,
    "quality_triage": quality_triage,
}


def spec(name: str) -> dict:
    nodes, links, models = WORKFLOWS[name]()
    rows = [[key, type_, widgets, rest[0] if rest else None] for key, type_, widgets, *rest in nodes]
    return {"nodes": rows, "links": [list(x) for x in links], "models": models, "per_column": 3}


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


if __name__ == "__main__":
    main(sys.argv[1:])
