"""Registration of the pack's model folders with ComfyUI's folder_paths, and file lookup that re-checks it.

Written for any host's ``folder_paths``: upstream ComfyUI keeps one global ``folder_names_and_paths`` dict of
``key -> (list of dirs, set of extensions)``; a pip-installable fork keeps one registry per execution context and
hands out live views of it, so an entry read there must be copied before it is written back (assigning a live
list to its own entry empties it), and a folder registered at import may be missing in a later context. So the
registration copies what it reads, writes only when something is missing (idempotent), and every lookup below
registers again (cheap) before it asks ``folder_paths``.
"""

from __future__ import annotations

import os

WEIGHT_EXTENSIONS = {".safetensors", ".sft", ".pth", ".pt", ".bin", ".ckpt"}

# folder key -> sub-folder of ComfyUI/models. Keys are part of the public interface (extra_model_paths.yaml).
PACK_FOLDERS = {
    "iqa": "iqa",  # MUSIQ weights published by pyiqa
    "diffbir": "diffbir",  # DiffBIR IRControlNet weights and stage-1 restorers (SwinIR)
    "supir": "supir",  # SUPIR-v0Q / v0F adapters (original .ckpt or fp16 pruned .safetensors)
    "facedetection": "facedetection",  # RetinaFace-R50 (facexlib's detection_Resnet50_Final.pth), as other packs
    "hypir": "hypir",  # HYPIR_sd2.pth (HYPIR's one-step LoRA for SD 2.1 base; non-commercial licence)
}


def _folder_paths():
    try:
        import folder_paths
    except ImportError:
        return None
    return folder_paths


def _register(fp, key: str, default: str) -> None:
    table = fp.folder_names_and_paths
    if key not in table:
        table[key] = ([default], set(WEIGHT_EXTENSIONS))
        return
    entry = table[key]
    paths, exts = list(entry[0]), set(entry[1])  # copies: never write a host's live list back into itself
    if default in paths and WEIGHT_EXTENSIONS <= exts:
        return  # already registered: nothing is written
    if default not in paths:
        paths.append(default)
    table[key] = (paths, exts | WEIGHT_EXTENSIONS)


def register_model_folders(keys=None) -> None:
    """Add each pack folder (or those in ``keys``) under ``models/`` without dropping paths users added in
    extra_model_paths.yaml.

    An existing entry keeps its paths (ours is appended if missing) and gets our weight extensions added to its
    extension set, so a folder created earlier by a YAML file with an empty set does not list every file. An
    entry that already has both is left untouched. Creates no directories. Outside ComfyUI (no ``folder_paths``
    module, e.g. a test runner importing the package) there is nothing to register and it returns.
    """
    fp = _folder_paths()
    if fp is None:
        return
    for key, sub in PACK_FOLDERS.items():
        if keys is None or key in keys:
            _register(fp, key, os.path.join(fp.models_dir, sub))


def _ensure(folder: str):
    import folder_paths

    if folder in PACK_FOLDERS:
        register_model_folders((folder,))
    return folder_paths


def full_path(folder: str, filename: str) -> str | None:
    """``folder_paths.get_full_path`` after making sure the pack's ``folder`` is registered in this context."""
    return _ensure(folder).get_full_path(folder, filename)


def folder_dirs(folder: str) -> list[str]:
    """The directories searched for ``folder`` (empty when the host knows no such folder)."""
    fp = _ensure(folder)
    return list(fp.get_folder_paths(folder)) if folder in fp.folder_names_and_paths else []


def filename_list(folder: str) -> list[str]:
    """The files of ``folder`` as ``folder_paths.get_filename_list`` lists them; empty for an unknown folder."""
    fp = _ensure(folder)
    try:
        return list(fp.get_filename_list(folder))
    except KeyError:
        return []
