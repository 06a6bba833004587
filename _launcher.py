"""Shared start-up of the pack's scripts (train.py, batch.py): find ComfyUI and import this pack as a package.

A script module, never imported by ComfyUI (the pack's ``__init__`` does not import it). The scripts work from
wherever the pack lies: a git clone under any folder name, ComfyUI-Manager's ``ComfyUI/custom_nodes/<registry id>``,
or a link to a checkout elsewhere; the package is always imported as ``adaptbir_restoration``.
"""

import importlib.util
import os
import sys

PACKAGE = "adaptbir_restoration"


def _explicit(argv: list[str]) -> str | None:
    for i, a in enumerate(argv):
        if a == "--comfyui" and i + 1 < len(argv):
            return argv[i + 1]
        if a.startswith("--comfyui="):
            return a.split("=", 1)[1]
    return os.environ.get("COMFYUI_PATH") or None


def comfyui_candidates(argv: list[str], pack_dir: str) -> list[str]:
    """``--comfyui`` from argv, else ``$COMFYUI_PATH``; else the folder above the ``custom_nodes`` folder that holds
    the pack (as the script was started, then with links resolved), then the current folder."""
    given = _explicit(argv)
    if given:
        return [os.path.abspath(given)]
    found = [os.path.dirname(os.path.dirname(pack_dir)),
             os.path.dirname(os.path.dirname(os.path.realpath(pack_dir))), os.getcwd()]
    return list(dict.fromkeys(os.path.abspath(f) for f in found))


def comfyui_folder(argv: list[str], pack_dir: str) -> str:
    """The first of :func:`comfyui_candidates` that is a ComfyUI, else the first candidate."""
    candidates = comfyui_candidates(argv, pack_dir)
    return next((c for c in candidates if is_comfyui(c)), candidates[0])


def is_comfyui(folder: str) -> bool:
    return os.path.isfile(os.path.join(folder, "comfy", "model_management.py"))


def comfyui_on_path(prog: str, argv: list[str], pack_dir: str) -> str | None:
    """Find ComfyUI (:func:`comfyui_folder`) and put it first on ``sys.path``; returns its folder, or prints
    ``<prog>: expected a ComfyUI folder ...`` to stderr and returns None when none of the candidates is one."""
    comfy_dir = comfyui_folder(argv, pack_dir)
    if not is_comfyui(comfy_dir):
        tried = ", ".join(comfyui_candidates(argv, pack_dir))
        print(f"{prog}: expected a ComfyUI folder (with comfy/model_management.py), found none at {tried}; "
              f"pass --comfyui or set COMFYUI_PATH", file=sys.stderr)
        return None
    sys.path.insert(0, comfy_dir)
    return comfy_dir


def no_accelerator() -> bool:
    """True when torch can reach none of the devices ComfyUI would pick before the CPU (CUDA or ROCm, Apple MPS,
    Intel XPU, or the add-on backends torch_npu, torch_mlu, torch_directml). ComfyUI itself would then fail at
    import (``Found no NVIDIA driver``) unless told ``--cpu``. Safe to call without a driver."""
    import torch

    if torch.cuda.is_available():
        return False
    for backend in (getattr(torch.backends, "mps", None), getattr(torch, "xpu", None)):
        if backend is not None and backend.is_available():
            return False
    return not any(importlib.util.find_spec(m) for m in ("torch_npu", "torch_mlu", "torch_directml"))


def cpu_unless_accelerated(prog: str, force_cpu: bool) -> bool:
    """Tell ComfyUI (before ``comfy.model_management`` is imported) to run on the CPU when asked to or when there is
    no accelerator; the latter is said on stderr. Returns whether ComfyUI runs on the CPU."""
    import comfy.cli_args

    if force_cpu or comfy.cli_args.args.cpu:
        comfy.cli_args.args.cpu = True
    elif no_accelerator():
        print(f"{prog}: no GPU found (torch sees no CUDA, ROCm, MPS or XPU device); running on the CPU",
              file=sys.stderr)
        comfy.cli_args.args.cpu = True
    return bool(comfy.cli_args.args.cpu)


def package(pack_dir: str, run_init: bool):
    """This pack as the package ``adaptbir_restoration``; ``run_init`` runs its ``__init__`` (folder registration).
    Called again with ``run_init`` on the package it already made, it runs that package's ``__init__`` in place
    (its imported submodules stay)."""
    module = sys.modules.get(PACKAGE)
    if module is None or getattr(module, "__path__", None) != [pack_dir]:
        spec = importlib.util.spec_from_file_location(PACKAGE, os.path.join(pack_dir, "__init__.py"),
                                                      submodule_search_locations=[pack_dir])
        module = importlib.util.module_from_spec(spec)
        sys.modules[PACKAGE] = module
    if run_init:
        module.__spec__.loader.exec_module(module)
    return module
