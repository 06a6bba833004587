"""Compare restoration pipelines as the LoRA-SUPIR paper does (degrade ground truth, restore, PSNR/SSIM/LPIPS/MUSIQ):

    python compare.py gt/ work/ "SUPIR+LoRA=workflows/supir_lora.json" \
        "SUPIR=workflows/supir_lora.json@AdaptBIR_SUPIRLoRA.strength_model=0"

Run it with the Python of your ComfyUI, like batch.py (it finds ComfyUI the same way). This file is a script:
ComfyUI never imports it. The protocol itself is batch/compare.py.
"""

import asyncio
import os
import sys

from _launcher import comfyui_on_path, package


def main() -> int:
    pack_dir = os.path.dirname(os.path.abspath(__file__))
    package(pack_dir, run_init=False)  # its modules only; __init__ (ComfyUI registration) is not run
    from adaptbir_restoration.batch.compare import parser

    args = parser().parse_args(sys.argv[1:])
    comfy_dir = comfyui_on_path("compare.py", sys.argv[1:], pack_dir)
    if comfy_dir is None:
        return 2
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
    from adaptbir_restoration.batch.compare import main as run_main
    from adaptbir_restoration.batch.runner import _Server

    import nodes

    server.PromptServer.instance = _Server()
    asyncio.run(nodes.init_extra_nodes(init_custom_nodes=True, init_api_nodes=False))
    return run_main(sys.argv[1:])


if __name__ == "__main__":
    sys.exit(main())
