"""Shared start-up of the pack's scripts (train.py, batch.py): find ComfyUI and import this pack as a package.

A script module, never imported by ComfyUI (the pack's ``__init__`` does not import it).
"""

import importlib.util
import os
import sys

PACKAGE = "adaptbir_restoration"


def comfyui_folder(argv: list[str], pack_dir: str) -> str:
    """``--comfyui`` from argv, else ``$COMFYUI_PATH``, else the folder above ``custom_nodes``."""
    for i, a in enumerate(argv):
        if a == "--comfyui" and i + 1 < len(argv):
            return os.path.abspath(argv[i + 1])
        if a.startswith("--comfyui="):
            return os.path.abspath(a.split("=", 1)[1])
    if os.environ.get("COMFYUI_PATH"):
        return os.path.abspath(os.environ["COMFYUI_PATH"])
    return os.path.dirname(os.path.dirname(pack_dir))


def is_comfyui(folder: str) -> bool:
    return os.path.isfile(os.path.join(folder, "comfy", "model_management.py"))


def comfyui_on_path(prog: str, argv: list[str], pack_dir: str) -> str | None:
    """Find ComfyUI (:func:`comfyui_folder`) and put it first on ``sys.path``; returns its folder, or prints
    ``<prog>: expected a ComfyUI folder ...`` to stderr and returns None when the folder is not a ComfyUI."""
    comfy_dir = comfyui_folder(argv, pack_dir)
    if not is_comfyui(comfy_dir):
        print(f"{prog}: expected a ComfyUI folder (with comfy/model_management.py), found none at {comfy_dir}; "
              f"pass --comfyui or set COMFYUI_PATH", file=sys.stderr)
        return None
    sys.path.insert(0, comfy_dir)
    return comfy_dir


def package(pack_dir: str, run_init: bool):
    """This pack as the package ``adaptbir_restoration``; ``run_init`` runs its ``__init__`` (folder registration)."""
    spec = importlib.util.spec_from_file_location(PACKAGE, os.path.join(pack_dir, "__init__.py"),
                                                  submodule_search_locations=[pack_dir])
    module = importlib.util.module_from_spec(spec)
    sys.modules[PACKAGE] = module
    if run_init:
        spec.loader.exec_module(module)
    return module
