"""Registration of the pack's model folders with ComfyUI's folder_paths (idempotent, merge-safe)."""

from __future__ import annotations

import os

WEIGHT_EXTENSIONS = {".safetensors", ".sft", ".pth", ".pt", ".bin", ".ckpt"}

# folder key -> sub-folder of ComfyUI/models. Keys are part of the public interface (extra_model_paths.yaml).
PACK_FOLDERS = {
    "iqa": "iqa",  # MUSIQ weights published by pyiqa
    "diffbir": "diffbir",  # DiffBIR IRControlNet weights and stage-1 restorers (SwinIR)
    "supir": "supir",  # SUPIR-v0Q / v0F adapters (original .ckpt or fp16 pruned .safetensors)
    "hypir": "hypir",  # HYPIR_sd2.pth (HYPIR's one-step LoRA for SD 2.1 base; non-commercial licence)
}


def register_model_folders() -> None:
    """Add each pack folder under ``models/`` without dropping paths users added in extra_model_paths.yaml.

    An existing entry keeps its paths (ours is appended if missing) and gets our weight extensions added to its
    extension set, so a folder created earlier by a YAML file with an empty set does not list every file.
    Creates no directories. Outside ComfyUI (no ``folder_paths`` module, e.g. a test runner importing the
    package) there is nothing to register and it returns.
    """
    try:
        import folder_paths
    except ImportError:
        return

    for key, sub in PACK_FOLDERS.items():
        default = os.path.join(folder_paths.models_dir, sub)
        if key in folder_paths.folder_names_and_paths:
            paths, exts = folder_paths.folder_names_and_paths[key]
            if default not in paths:
                paths.append(default)
            exts = set(exts) | WEIGHT_EXTENSIONS
            folder_paths.folder_names_and_paths[key] = (paths, exts)
        else:
            folder_paths.folder_names_and_paths[key] = ([default], set(WEIGHT_EXTENSIONS))
