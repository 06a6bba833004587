"""Build the LoRA-SUPIR workflows in the real ComfyUI page with scripts/make_workflows.py's machinery:

    .venv/bin/python scripts/make_training_workflow.py            # both
    .venv/bin/python scripts/make_training_workflow.py supir_lora_metrics

``supir_lora_training.json``: LoRA-SUPIR's LoRA training (Zhao, "Efficient Image Restoration through Low-Rank
Adaptation and SDXL") on ComfyUI's own nodes only: SDXL checkpoint + a folder of photos with caption .txt files ->
resize/crop to 512x512 -> VAE/CLIP encode -> Train LoRA (AdamW, lr 1e-4) -> Save LoRA + loss graph.

``supir_lora_metrics.json``: the paper's evaluation of one photo: ground truth -> Degrade Image -> SUPIR with LoRAs
(supir_lora.json's chain) -> back to the ground truth's size -> Restoration Metrics against the ground truth.

Kept apart from make_workflows.py's list so both files can change independently; fold it in there when convenient.
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import make_workflows

NAME = "supir_lora_training"
SIZE = 512  # the paper: "All images are preprocessed to a resolution of 512x512"


def supir_lora_training():
    nodes = [
        ("ckpt", "CheckpointLoaderSimple", {"ckpt_name": make_workflows.SDXL[0]["name"]}),
        ("data", "LoadImageTextDataSetFromFolder", {"folder": "lora_photos"},
         "Photos + captions (ComfyUI/input/lora_photos: a.png + a.txt)"),
        ("resize", "ResizeImagesByShorterEdge", {"shorter_edge": SIZE}),
        ("crop", "CenterCropImages", {"width": SIZE, "height": SIZE}),
        ("encode", "MakeTrainingDataset", {}),
        ("train", "TrainLoraNode", {
            "batch_size": 1, "grad_accumulation_steps": 1, "steps": 2000, "learning_rate": 0.0001, "rank": 8,
            "optimizer": "AdamW", "loss_function": "MSE", "seed": 0, "control_after_generate": "fixed",
            "training_dtype": "bf16",
            "lora_dtype": "bf16", "algorithm": "LoRA", "gradient_checkpointing": True},
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
    return nodes, links, {"ckpt": make_workflows.SDXL}


def supir_lora_metrics():
    """supir_lora.json's chain on a degraded copy of the loaded photo, measured against the photo."""
    nodes, links, models = make_workflows.supir_lora()
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


BUILDERS = {NAME: supir_lora_training, "supir_lora_metrics": supir_lora_metrics}

if __name__ == "__main__":
    make_workflows.WORKFLOWS.update(BUILDERS)
    make_workflows.main(sys.argv[1:] or list(BUILDERS))
