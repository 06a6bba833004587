"""Run a workflow on a folder of images: ``python batch.py workflows/diffbir_v2_guidance.json in/ out/``.

Run it with the Python of your ComfyUI (``python custom_nodes/<this pack>/batch.py --help``). It finds ComfyUI from
``--comfyui``, ``$COMFYUI_PATH`` or the folder above ``custom_nodes`` (whatever the pack's folder is called), loads ComfyUI's nodes and custom nodes like
ComfyUI's main.py, and runs the workflow in-process. This file is a script: ComfyUI never imports it.
"""

import asyncio
import os
import sys

from _launcher import comfyui_on_path, cpu_unless_accelerated, package


def main() -> int:
    pack_dir = os.path.dirname(os.path.abspath(__file__))
    package(pack_dir, run_init=False)  # its modules only; __init__ (ComfyUI registration) is not run
    from adaptbir_restoration.batch.runner import parser

    args = parser().parse_args(sys.argv[1:])
    comfy_dir = comfyui_on_path("batch.py", sys.argv[1:], pack_dir)
    if comfy_dir is None:
        return 2
    import comfy.options

    comfy.options.enable_args_parsing(False)
    import comfy.cli_args

    cpu_unless_accelerated("batch.py", args.cpu)  # --cpu, or no GPU: ComfyUI would fail without a driver
    comfy.cli_args.args.preview_method = comfy.cli_args.LatentPreviewMethod.NoPreviews
    from utils.extra_config import load_extra_path_config

    for cfg in [os.path.join(comfy_dir, "extra_model_paths.yaml"), *args.extra_model_paths_config]:
        if os.path.isfile(cfg):
            load_extra_path_config(cfg)
    import server
    from adaptbir_restoration.batch.runner import _Server
    from adaptbir_restoration.batch.runner import main as run_main

    import nodes

    server.PromptServer.instance = _Server()
    asyncio.run(nodes.init_extra_nodes(init_custom_nodes=True, init_api_nodes=False))
    return run_main(sys.argv[1:])


if __name__ == "__main__":
    sys.exit(main())
