"""Write workflows/hypir_one_step.json (ComfyUI's UI format, the same shape as the other example workflows).

Run from the repository root: ``python scripts/make_hypir_workflow.py``. No ComfyUI import: the graph is spelled
out here (Load Image, Load Checkpoint, Load HYPIR LoRA, CLIP Text Encode with an empty prompt, IQA Classifier,
HYPIR Restore, Save Image); the tests check it against the live node schemas and run it in the executor.
"""

from __future__ import annotations

import json
from pathlib import Path

OUT = Path(__file__).resolve().parents[1] / "workflows" / "hypir_one_step.json"
SD21 = "v2-1_512-ema-pruned.safetensors"
HYPIR = "HYPIR_sd2.pth"
KONIQ = "musiq_koniq_ckpt-e95806b9.pth"


def socket(name, type_, link=None, optional=False):
    s = {"localized_name": name, "name": name, "type": type_, "link": link}
    if optional:
        s["shape"] = 7
    return s


def widget(name, type_):
    return {"localized_name": name, "name": name, "type": type_, "widget": {"name": name}, "link": None}


def output(name, type_, links):
    return {"localized_name": name, "name": name, "type": type_, "links": links or None}


def node(id_, type_, pos, size, inputs, outputs, widgets, models=None):
    props = {"Node name for S&R": type_}
    if models:
        props["models"] = models
    return {"id": id_, "type": type_, "pos": pos, "size": size, "flags": {}, "order": id_ - 1, "mode": 0,
            "inputs": inputs, "outputs": outputs, "properties": props, "widgets_values": widgets}


def workflow() -> dict:
    # links: [id, from node, from slot, to node, to slot, type]
    links = [[1, 1, 0, 5, 0, "IMAGE"], [2, 1, 0, 6, 3, "IMAGE"], [3, 2, 0, 3, 0, "MODEL"], [4, 2, 1, 4, 0, "CLIP"],
             [5, 2, 2, 6, 1, "VAE"], [6, 3, 0, 6, 0, "MODEL"], [7, 4, 0, 6, 2, "CONDITIONING"],
             [8, 5, 0, 6, 4, "ADAPTBIR_RESTORE_PARAMS"], [9, 6, 0, 7, 0, "IMAGE"]]
    nodes = [
        node(1, "LoadImage", [40, 60], [274, 314], [widget("image", "COMBO"), widget("upload", "IMAGEUPLOAD")],
             [output("IMAGE", "IMAGE", [1, 2]), output("MASK", "MASK", None)], ["example.png", "image"]),
        node(2, "CheckpointLoaderSimple", [40, 420], [315, 98], [widget("ckpt_name", "COMBO")],
             [output("MODEL", "MODEL", [3]), output("CLIP", "CLIP", [4]), output("VAE", "VAE", [5])], [SD21],
             [{"name": SD21, "url": f"https://huggingface.co/stabilityai/stable-diffusion-2-1-base/resolve/main/{SD21}",
               "directory": "checkpoints"}]),
        node(3, "AdaptBIR_HYPIRLoader", [400, 420], [300, 82],
             [socket("model", "MODEL", 3), widget("hypir_name", "COMBO"), widget("strength", "FLOAT")],
             [output("model", "MODEL", [6])], [HYPIR, 1.0],
             [{"name": HYPIR, "url": f"https://huggingface.co/lxq007/HYPIR/resolve/main/{HYPIR}", "directory": "hypir"}]),
        node(4, "CLIPTextEncode", [400, 560], [300, 88], [socket("clip", "CLIP", 4), widget("text", "STRING")],
             [output("CONDITIONING", "CONDITIONING", [7])], [""]),
        node(5, "AdaptBIR_IQAClassifier", [400, 60], [318, 306],
             [socket("image", "IMAGE", 1), widget("metric", "COMBO"), widget("weights", "COMBO"),
              widget("mode", "COMBO"), widget("low_threshold", "FLOAT"), widget("high_threshold", "FLOAT"),
              widget("k_max", "FLOAT"), widget("w_max", "FLOAT"), widget("score_max_side", "INT")],
             [output("params", "ADAPTBIR_RESTORE_PARAMS", [8]), output("k", "FLOAT", None),
              output("w", "FLOAT", None), output("score", "FLOAT", None), output("class", "STRING", None)],
             ["musiq", "auto", "adaptbir", 40, 70, 0.7, 1, 0],
             [{"name": KONIQ, "url": f"https://huggingface.co/chaofengc/IQA-PyTorch-Weights/resolve/main/{KONIQ}",
               "directory": "iqa"}]),
        node(6, "AdaptBIR_HYPIRRestore", [780, 60], [320, 400],
             [socket("model", "MODEL", 6), socket("vae", "VAE", 5), socket("positive", "CONDITIONING", 7),
              socket("image", "IMAGE", 2), socket("params", "ADAPTBIR_RESTORE_PARAMS", 8, optional=True),
              widget("model_t", "INT"), widget("coeff_t", "INT"), widget("upscale", "FLOAT"),
              widget("color_fix", "COMBO"), widget("tile_size", "INT"), widget("tile_stride", "INT"),
              widget("adapt", "COMBO"), widget("mild_factor", "FLOAT")],
             [output("image", "IMAGE", [9])], [200, 200, 1.0, "wavelet", 512, 256, "off", 0.5]),
        node(7, "SaveImage", [1160, 60], [270, 270], [socket("images", "IMAGE", 9), widget("filename_prefix", "STRING")],
             [], ["hypir"]),
    ]
    nodes[-1]["properties"] = {}
    return {"id": "00000000-0000-0000-0000-000000000021", "revision": 0, "last_node_id": 7, "last_link_id": 9,
            "nodes": nodes, "links": links, "groups": [], "config": {},
            "extra": {"ds": {"scale": 0.8, "offset": [0, 0]}}, "version": 0.4}


if __name__ == "__main__":
    OUT.write_text(json.dumps(workflow(), indent=1) + "\n")
    print(f"wrote {OUT}")
