"""Run a workflow on a folder of images: ``python batch.py workflows/diffbir_v2_guidance.json in/ out/``.

Run it with the Python of your ComfyUI (``python custom_nodes/<this pack>/batch.py --help``). It finds ComfyUI from
``--comfyui``, ``$COMFYUI_PATH`` or the folder above ``custom_nodes``, loads ComfyUI's nodes and custom nodes like
ComfyUI's main.py, and runs the workflow in-process. This file is a script: ComfyUI never imports it.
"""

import asyncio
import importlib.util
import os
import sys

PACKAGE = "adaptbir_restoration"


def comfyui_folder(argv: list[str], pack_dir: str) -> str:
    for i, a in enumerate(argv):
        if a == "--comfyui" and i + 1 < len(argv):
            return os.path.abspath(argv[i + 1])
        if a.startswith("--comfyui="):
            return os.path.abspath(a.split("=", 1)[1])
    if os.environ.get("COMFYUI_PATH"):
        return os.path.abspath(os.environ["COMFYUI_PATH"])
    return os.path.dirname(os.path.dirname(pack_dir))


def main() -> int:
    pack_dir = os.path.dirname(os.path.abspath(__file__))
    spec = importlib.util.spec_from_file_location(PACKAGE, os.path.join(pack_dir, "__init__.py"),
                                                  submodule_search_locations=[pack_dir])
    package = importlib.util.module_from_spec(spec)
    sys.modules[PACKAGE] = package  # the package's modules only; its __init__ (ComfyUI registration) is not run
    from adaptbir_restoration.batch.runner import parser

    args = parser().parse_args(sys.argv[1:])
    comfy_dir = comfyui_folder(sys.argv[1:], pack_dir)
    if not os.path.isfile(os.path.join(comfy_dir, "comfy", "model_management.py")):
        print(f"batch.py: expected a ComfyUI folder (with comfy/model_management.py), found none at {comfy_dir}; "
              f"pass --comfyui or set COMFYUI_PATH", file=sys.stderr)
        return 2
    sys.path.insert(0, comfy_dir)
    import comfy.options

    comfy.options.enable_args_parsing(False)
    import comfy.cli_args

    comfy.cli_args.args.cpu = args.cpu or comfy.cli_args.args.cpu
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
