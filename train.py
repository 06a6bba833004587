"""Train AdaptBIR's missing weights with ComfyUI's models: ``python train.py stage1 ...`` / ``stage3 ...``.

Run it with the Python of your ComfyUI (``python custom_nodes/<this pack>/train.py --help``). It finds ComfyUI
from ``--comfyui``, ``$COMFYUI_PATH`` or the folder above ``custom_nodes``, then imports this pack as a package.
This file is a script: ComfyUI never imports it.
"""

import os
import sys

from _launcher import comfyui_on_path, package


def main() -> int:
    pack_dir = os.path.dirname(os.path.abspath(__file__))
    comfy_dir = comfyui_on_path("train.py", sys.argv[1:], pack_dir)
    if comfy_dir is None:
        return 2
    argv = sys.argv[1:]
    if "--device=cpu" in argv or any(a == "--device" and b == "cpu" for a, b in zip(argv, argv[1:])):
        import comfy.cli_args

        comfy.cli_args.args.cpu = True  # before comfy.model_management is imported: ComfyUI stays on the CPU
    extra = os.path.join(comfy_dir, "extra_model_paths.yaml")
    if os.path.isfile(extra):  # the same extra model folders ComfyUI's main.py reads
        from utils.extra_config import load_extra_path_config

        load_extra_path_config(extra)
    package(pack_dir, run_init=True)
    from adaptbir_restoration.training.cli import main as cli_main

    return cli_main(sys.argv[1:])


if __name__ == "__main__":
    sys.exit(main())
