"""Write ``workflows/diffbir_faces.json`` ("old photo with faces") in the page's UI format.

    .venv/bin/python scripts/make_faces_workflow.py

The node entries (inputs with their widget entries, outputs, widget values in the page's order) are built from the
nodes' own INPUT_TYPES in an in-process ComfyUI with the pack, the way the page saves them; tests/comfy/
test_workflows.py checks the file against the real page (it loads without errors and converts to the same prompt
as the batch runner) and runs it with tiny models. Kept apart from scripts/make_workflows.py (which drives the page
itself) so the two can change independently; the lead may fold it in.
"""

from __future__ import annotations

import json
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
HF = "https://huggingface.co"
NEGATIVE = "low quality, blurry, low-resolution, noisy, unsharp, weird textures"  # DiffBIR v2's default

MODELS = {
    "realesrgan_s4_swinir_100k.pth": (f"{HF}/lxq007/DiffBIR-v2/resolve/main/realesrgan_s4_swinir_100k.pth",
                                      "diffbir"),
    "face_swinir_v1.ckpt": (f"{HF}/lxq007/DiffBIR/resolve/main/face_swinir_v1.ckpt", "diffbir"),
    "v2.pth": (f"{HF}/lxq007/DiffBIR-v2/resolve/main/v2.pth", "diffbir"),
    "v2-1_512-ema-pruned.safetensors": (
        f"{HF}/stabilityai/stable-diffusion-2-1-base/resolve/main/v2-1_512-ema-pruned.safetensors", "checkpoints"),
    "detection_Resnet50_Final.pth": (
        "https://github.com/xinntao/facexlib/releases/download/v0.1.0/detection_Resnet50_Final.pth", "facedetection"),
    "parsing_parsenet.pth": (
        "https://github.com/xinntao/facexlib/releases/download/v0.2.2/parsing_parsenet.pth", "facedetection"),
    "musiq_koniq_ckpt-e95806b9.pth": (
        f"{HF}/chaofengc/IQA-PyTorch-Weights/resolve/main/musiq_koniq_ckpt-e95806b9.pth", "iqa"),
}


def graph():
    """(nodes [(key, type, widgets, title, column, row)], links [(from key, slot, to key, input name)])."""
    sampler = {"steps": 50, "cfg": 4.0, "guidance_scale": 0.5}
    nodes = [
        # background: DiffBIR v2.1's stage 1 at x2, DiffBIR v2 control with restoration guidance
        ("load", "LoadImage", {"image": "example.png"}, None, 0, 0),
        ("restorer", "AdaptBIR_RestorerLoader", {"restorer_name": "realesrgan_s4_swinir_100k.pth"},
         "Background restorer", 0, 1),
        ("stage1", "AdaptBIR_Stage1Restore", {"output_scale": 2.0}, "Background stage 1 (x2)", 0, 2),
        ("ckpt", "CheckpointLoaderSimple", {"ckpt_name": "v2-1_512-ema-pruned.safetensors"}, None, 1, 0),
        ("pos", "CLIPTextEncode", {"text": ""}, "Positive (empty)", 1, 1),
        ("neg", "CLIPTextEncode", {"text": NEGATIVE}, "Negative", 1, 2),
        ("irc", "AdaptBIR_IRControlNetLoader", {"control_net_name": "v2.pth"}, None, 1, 3),
        ("encode", "AdaptBIR_DualEncoderInterpolate", {"k": 1.0}, "Background encode", 2, 0),
        ("apply", "AdaptBIR_ApplyIRControlNet", {}, "Background control", 2, 1),
        ("sampler", "AdaptBIR_RestorationGuidanceSampler", sampler, "Background sampler", 2, 2),
        ("decode", "VAEDecode", {}, None, 3, 0),
        ("crop", "AdaptBIR_CropToOriginal", {}, None, 3, 1),
        ("fix", "AdaptBIR_ColorFix", {"method": "wavelet"}, "Background colour fix", 3, 2),
        # faces: found on the photo at the background's scale, aligned to 512, restored as one batch
        ("up", "ImageScaleBy", {"upscale_method": "bicubic", "scale_by": 2.0}, "Photo x2 (for detection)", 0, 4),
        ("detector", "AdaptBIR_FaceDetectorLoader", {"detector_name": "detection_Resnet50_Final.pth"}, None, 0, 5),
        ("detect", "AdaptBIR_DetectFaces", {}, None, 1, 4),
        ("preview", "PreviewImage", {}, "Face crops", 1, 5),
        ("face_restorer", "AdaptBIR_RestorerLoader", {"restorer_name": "face_swinir_v1.ckpt"}, "Face restorer", 2, 4),
        ("face_stage1", "AdaptBIR_Stage1Restore", {"output_scale": 1.0}, "Face stage 1", 2, 5),
        ("iqa", "AdaptBIR_IQAClassifier", {}, "Score each face", 3, 4),
        ("face_encode", "AdaptBIR_DualEncoderInterpolate", {"k": 1.0}, "Face encode (k per face)", 3, 5),
        ("face_apply", "AdaptBIR_ApplyIRControlNet", {}, "Face control", 4, 4),
        ("face_sampler", "AdaptBIR_RestorationGuidanceSampler", sampler, "Face sampler", 4, 5),
        ("face_decode", "VAEDecode", {}, None, 5, 4),
        ("face_crop", "AdaptBIR_CropToOriginal", {}, None, 5, 5),
        ("face_fix", "AdaptBIR_ColorFix", {"method": "wavelet"}, "Face colour fix", 5, 6),
        ("parser", "AdaptBIR_FaceParserLoader", {"parser_name": "parsing_parsenet.pth"}, None, 3, 3),
        ("paste", "AdaptBIR_PasteFaces", {}, None, 4, 0),
        ("save", "SaveImage", {"filename_prefix": "diffbir_faces"}, None, 5, 0),
    ]
    links = [
        ("load", 0, "stage1", "image"), ("restorer", 0, "stage1", "restorer"),
        ("stage1", 0, "encode", "image"), ("ckpt", 2, "encode", "restoration_vae"),
        ("ckpt", 2, "encode", "internal_vae"), ("ckpt", 1, "pos", "clip"), ("ckpt", 1, "neg", "clip"),
        ("pos", 0, "apply", "positive"), ("neg", 0, "apply", "negative"), ("irc", 0, "apply", "control_net"),
        ("encode", 1, "apply", "condition"),
        ("ckpt", 0, "sampler", "model"), ("apply", 0, "sampler", "positive"), ("apply", 1, "sampler", "negative"),
        ("ckpt", 2, "sampler", "vae"), ("encode", 0, "sampler", "latent_image"), ("apply", 2, "sampler", "condition"),
        ("sampler", 0, "decode", "samples"), ("ckpt", 2, "decode", "vae"),
        ("decode", 0, "crop", "image"), ("sampler", 0, "crop", "latent"),
        ("crop", 0, "fix", "image"), ("stage1", 0, "fix", "reference"),
        ("load", 0, "up", "image"), ("up", 0, "detect", "image"), ("detector", 0, "detect", "face_detector"),
        ("detect", 0, "preview", "images"),
        ("detect", 0, "face_stage1", "image"), ("face_restorer", 0, "face_stage1", "restorer"),
        ("detect", 0, "iqa", "image"),
        ("face_stage1", 0, "face_encode", "image"), ("ckpt", 2, "face_encode", "restoration_vae"),
        ("ckpt", 2, "face_encode", "internal_vae"), ("iqa", 0, "face_encode", "params"),
        ("pos", 0, "face_apply", "positive"), ("neg", 0, "face_apply", "negative"),
        ("irc", 0, "face_apply", "control_net"), ("face_encode", 1, "face_apply", "condition"),
        ("ckpt", 0, "face_sampler", "model"), ("face_apply", 0, "face_sampler", "positive"),
        ("face_apply", 1, "face_sampler", "negative"), ("ckpt", 2, "face_sampler", "vae"),
        ("face_encode", 0, "face_sampler", "latent_image"), ("face_apply", 2, "face_sampler", "condition"),
        ("face_sampler", 0, "face_decode", "samples"), ("ckpt", 2, "face_decode", "vae"),
        ("face_decode", 0, "face_crop", "image"), ("face_sampler", 0, "face_crop", "latent"),
        ("face_crop", 0, "face_fix", "image"), ("face_stage1", 0, "face_fix", "reference"),
        ("fix", 0, "paste", "background"), ("detect", 1, "paste", "faces"), ("face_fix", 0, "paste", "restored_faces"),
        ("parser", 0, "paste", "face_parser"),
        ("paste", 0, "save", "images"),
    ]
    return nodes, links


def _inputs(cls):
    """[(name, type, is_widget, optional, spec)] in the page's order."""
    out = []
    types = cls.INPUT_TYPES()
    for section in ("required", "optional"):
        for name, spec in (types.get(section) or {}).items():
            kind = spec[0]
            widget = isinstance(kind, list) or kind in ("INT", "FLOAT", "STRING", "BOOLEAN", "COMBO")
            out.append((name, "COMBO" if isinstance(kind, list) else kind, widget, section == "optional", spec))
    return out


def build(mapping) -> dict:
    nodes, links = graph()
    ids = {key: i + 1 for i, (key, *_rest) in enumerate(nodes)}
    link_rows, by_target, by_source = [], {}, {}
    for n, (src, slot, dst, name) in enumerate(links, start=1):
        by_target[(dst, name)] = n
        by_source.setdefault((src, slot), []).append(n)
    entries = []
    load_template = next(n for n in json.loads((REPO / "workflows" / "diffbir_v2_guidance.json").read_text())["nodes"]
                         if n["type"] == "LoadImage")
    for order, (key, type_, widgets, title, col, row) in enumerate(nodes):
        cls = mapping[type_]
        node = {"id": ids[key], "type": type_, "pos": [40 + col * 420, 60 + row * 330], "size": [380, 260],
                "flags": {}, "order": order, "mode": 0, "inputs": [], "outputs": [],
                "properties": {"Node name for S&R": type_}, "widgets_values": []}
        if type_ == "LoadImage":
            node.update(inputs=json.loads(json.dumps(load_template["inputs"])),
                        widgets_values=[widgets["image"], "image"], size=load_template["size"])
        else:
            for name, kind, is_widget, optional, spec in _inputs(cls):
                entry = {"localized_name": name, "name": name}
                if optional and not is_widget:
                    entry["shape"] = 7
                entry["type"] = kind
                if is_widget:
                    entry["widget"] = {"name": name}
                    opts = spec[1] if len(spec) > 1 else {}
                    value = widgets.get(name, opts.get("default"))
                    if value is None:
                        value = (spec[0][0] if isinstance(spec[0], list) else (opts.get("options") or [""])[0])
                    node["widgets_values"].append(value)
                    if opts.get("control_after_generate"):
                        node["widgets_values"].append("randomize")
                entry["link"] = by_target.get((key, name))
                node["inputs"].append(entry)
        for slot, out_type in enumerate(cls.RETURN_TYPES):
            node["outputs"].append({"localized_name": out_type, "name": out_type, "type": out_type,
                                    "links": by_source.get((key, slot)) or None})
        for name, model_ in ((v, MODELS[v]) for v in widgets.values() if v in MODELS):
            node["properties"]["models"] = [{"name": name, "url": model_[0], "directory": model_[1]}]
        if type_ == "AdaptBIR_IQAClassifier":
            name = "musiq_koniq_ckpt-e95806b9.pth"
            node["properties"]["models"] = [{"name": name, "url": MODELS[name][0], "directory": MODELS[name][1]}]
        if title:
            node["title"] = title
        entries.append(node)
    for n, (src, slot, dst, name) in enumerate(links, start=1):
        out_type = mapping[next(t for k, t, *_ in nodes if k == src)].RETURN_TYPES[slot]
        dst_inputs = [e["name"] for e in next(e for e in entries if e["id"] == ids[dst])["inputs"]]
        link_rows.append([n, ids[src], slot, ids[dst], dst_inputs.index(name), out_type])
    return {"id": "00000000-0000-0000-0000-000000000000", "revision": 0, "last_node_id": len(nodes),
            "last_link_id": len(links), "nodes": entries, "links": link_rows, "groups": [], "config": {},
            "extra": {"ds": {"scale": 0.45, "offset": [60, 60]}}, "version": 0.4}


def main() -> None:
    sys.path.insert(0, str(REPO))
    from tests.support.comfy_host import InProcessHost

    with tempfile.TemporaryDirectory() as tmp:
        host = InProcessHost(Path(tmp))
        wf = build(host.nodes.NODE_CLASS_MAPPINGS)
    path = REPO / "workflows" / "diffbir_faces.json"
    path.write_text(json.dumps(wf, indent=2) + "\n")
    print(f"wrote {path.relative_to(REPO)} ({len(wf['nodes'])} nodes, {len(wf['links'])} links)")


if __name__ == "__main__":
    main()
