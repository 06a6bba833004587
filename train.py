"""Train AdaptBIR's missing weights with ComfyUI's models: ``python train.py stage1 ...`` / ``stage3 ...``.

Run it with the Python of your ComfyUI (``python custom_nodes/<this pack>/train.py --help``). It finds ComfyUI
from ``--comfyui``, ``$COMFYUI_PATH`` or the folder above ``custom_nodes`` (whatever the pack's folder is called),
then imports this pack as a package. ``--help`` needs neither ComfyUI nor a GPU; without a GPU it trains on the CPU.
This file is a script: ComfyUI never imports it.
"""

import os
import sys

from _launcher import comfyui_on_path, cpu_unless_accelerated, package


def main() -> int:
    pack_dir = os.path.dirname(os.path.abspath(__file__))
    argv = sys.argv[1:]
    pack = package(pack_dir, run_init=False)  # its modules only, until ComfyUI is importable
    from adaptbir_restoration.training.cli import parser

    args = parser().parse_args(argv)  # --help and usage errors end here: no ComfyUI, no device touched
    comfy_dir = comfyui_on_path("train.py", argv, pack_dir)
    if comfy_dir is None:
        return 2
    # before comfy.model_management is imported: ComfyUI stays on the CPU when asked or when there is no GPU
    cpu_unless_accelerated("train.py", args.device == "cpu")
    extra = os.path.join(comfy_dir, "extra_model_paths.yaml")
    if os.path.isfile(extra):  # the same extra model folders ComfyUI's main.py reads
        from utils.extra_config import load_extra_path_config

        load_extra_path_config(extra)
    package(pack_dir, run_init=True)  # now registers the pack's model folders
    assert sys.modules["adaptbir_restoration"] is pack
    from adaptbir_restoration.training.cli import main as cli_main

    return cli_main(argv)


if __name__ == "__main__":
    sys.exit(main())
