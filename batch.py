"""Run a workflow on a folder of images: ``python batch.py workflows/diffbir_v2_guidance.json in/ out/``.

Run it with the Python of your ComfyUI (``python custom_nodes/<this pack>/batch.py --help``). It finds ComfyUI from
``--comfyui``, ``$COMFYUI_PATH`` or the folder above ``custom_nodes`` (whatever the pack's folder is called), loads
ComfyUI's nodes and custom nodes like ComfyUI's main.py, and runs the workflow in-process (or, with ``--ray``, on the
workers of a Ray cluster). This file is a script: ComfyUI never imports it.
"""

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
    from adaptbir_restoration.batch.host import start_comfyui
    from adaptbir_restoration.batch.runner import main as run_main

    argv = sys.argv[1:]
    cpu = cpu_unless_accelerated("batch.py", args.cpu)  # --cpu, or no GPU: ComfyUI would fail without a driver
    if cpu and not args.cpu:
        argv.append("--cpu")  # the Ray workers run on the CPU too
    start_comfyui(comfy_dir, cpu=cpu, extra_model_paths_config=args.extra_model_paths_config)
    return run_main(argv, pack_dir=pack_dir, comfy_dir=comfy_dir)


if __name__ == "__main__":
    sys.exit(main())
