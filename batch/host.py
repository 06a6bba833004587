"""Start ComfyUI headless in this process for the batch runner: the command line's process (batch.py) and each
Ray worker (batch/ray_engine.py) call :func:`start_comfyui` once."""

from __future__ import annotations

import asyncio
import os
import sys


def start_comfyui(comfy_dir: str, *, cpu: bool = False, extra_model_paths_config=()) -> None:
    """Import ComfyUI from ``comfy_dir`` (put first on ``sys.path``) without its argument parsing, read its
    ``extra_model_paths.yaml`` and the ``extra_model_paths_config`` files, and load its nodes and custom nodes like
    ComfyUI's main.py (a headless PromptServer stand-in takes their messages). ``cpu`` runs on the CPU."""
    if comfy_dir not in sys.path:
        sys.path.insert(0, comfy_dir)
    import comfy.options

    comfy.options.enable_args_parsing(False)
    import comfy.cli_args

    comfy.cli_args.args.cpu = cpu or comfy.cli_args.args.cpu
    comfy.cli_args.args.preview_method = comfy.cli_args.LatentPreviewMethod.NoPreviews
    from utils.extra_config import load_extra_path_config

    for cfg in [os.path.join(comfy_dir, "extra_model_paths.yaml"), *extra_model_paths_config]:
        if os.path.isfile(cfg):
            load_extra_path_config(cfg)
    import server

    import nodes

    from .runner import _Server

    server.PromptServer.instance = _Server()
    asyncio.run(nodes.init_extra_nodes(init_custom_nodes=True, init_api_nodes=False))
