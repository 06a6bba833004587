"""The pack in the real ComfyUI server: main.py --cpu on loopback, a prompt posted to /prompt, read from /history."""

import json
import time
import uuid

import numpy as np
import pytest
from PIL import Image
from safetensors.torch import save_file

from tests.conftest import musiq_with_level
from tests.support.browser import comfy_server, http_json
from tests.support.comfy_host import PACK_DIR_NAME

pytestmark = pytest.mark.server




@pytest.fixture(scope="module")
def server(tmp_path_factory, musiq_random_state):
    root = tmp_path_factory.mktemp("server")
    (root / "models" / "iqa").mkdir(parents=True)
    save_file(musiq_with_level(musiq_random_state, 80.0), str(root / "models" / "iqa" / "level80.safetensors"))
    (root / "input").mkdir()
    img = (np.random.default_rng(0).random((48, 40, 3)) * 255).astype(np.uint8)
    Image.fromarray(img).save(root / "input" / "photo.png")
    with comfy_server(root, {"iqa": "models/iqa"}) as base:
        yield base, root


def test_pack_nodes_are_listed_by_object_info(server):
    base, root = server
    info = http_json(f"{base}/object_info/AdaptBIR_IQAClassifier")["AdaptBIR_IQAClassifier"]
    assert info["category"].startswith("restoration")
    assert "level80.safetensors" in info["input"]["required"]["weights"][1]["options"] \
        or "level80.safetensors" in info["input"]["required"]["weights"][0]
    lines = [ln for ln in (root / "server.log").read_text().splitlines() if ln.endswith(f"custom_nodes/{PACK_DIR_NAME}")]
    assert lines and not any("IMPORT FAILED" in ln for ln in lines), lines


def test_prompt_through_the_server(server):
    base, root = server
    prompt = {
        "1": {"class_type": "LoadImage", "inputs": {"image": "photo.png"}},
        "2": {"class_type": "AdaptBIR_IQAClassifier", "inputs": {
            "image": ["1", 0], "metric": "musiq", "weights": "level80.safetensors", "mode": "adaptbir",
            "low_threshold": 40.0, "high_threshold": 70.0, "k_max": 0.7, "w_max": 1.0, "score_max_side": 0}},
    }
    resp = http_json(f"{base}/prompt", {"prompt": prompt, "client_id": str(uuid.uuid4())})
    pid = resp["prompt_id"]
    deadline = time.time() + 120
    while time.time() < deadline:
        hist = http_json(f"{base}/history/{pid}")
        if pid in hist and hist[pid].get("status", {}).get("completed") is not None:
            break
        time.sleep(0.5)
    entry = hist[pid]
    assert entry["status"]["status_str"] == "success", entry["status"]
    text = entry["outputs"]["2"]["text"][0]
    assert "musiq=80.00 mild k=0.700 w=1.000" in text


def test_help_pages_are_served_where_the_page_fetches_them(server):
    """The node library's help panel (frontend 1.32.9) takes the pack folder from the node's python_module
    (``custom_nodes.<folder>``), fetches ``/extensions/<folder>/docs/<node id>.md`` and shows pictures from
    ``/extensions/<folder>/docs/<relative path>``."""
    import re
    import urllib.request
    from pathlib import Path

    base, _ = server
    docs = Path(__file__).resolve().parents[2] / "web" / "docs"
    info = http_json(f"{base}/object_info")
    pack_nodes = sorted(n for n in info if n.startswith("AdaptBIR_"))
    assert pack_nodes
    for node_id in pack_nodes:
        module = info[node_id]["python_module"].split(".")
        assert module[0] == "custom_nodes" and len(module) >= 2, info[node_id]["python_module"]
        folder = module[1].split("@")[0]
        with urllib.request.urlopen(f"{base}/extensions/{folder}/docs/{node_id}.md", timeout=10) as r:
            assert r.read().decode() == (docs / f"{node_id}.md").read_text()
    pictures = sorted({ref for p in docs.glob("*.md") for ref in re.findall(r"!\[[^\]]*\]\(([^)\s]+)", p.read_text())})
    for ref in pictures:
        with urllib.request.urlopen(f"{base}/extensions/{folder}/docs/{ref}", timeout=10) as r:
            assert r.headers["Content-Type"] == "image/png" and r.read() == (docs / ref).read_bytes()


def test_every_missing_pack_file_is_named_before_anything_runs(server):
    """ComfyUI 0.3.75 does not check V3 combo values, so the pack's loaders check their files when the prompt is
    validated: /prompt answers with one node error per missing file of the whole graph, each naming the file, its
    folder and where to get it (from the models manifest), and nothing runs. A core loader in the same graph keeps
    ComfyUI's own "value not in list" error."""
    import urllib.error

    base, root = server
    history_before = http_json(f"{base}/history")
    prompt = {
        "1": {"class_type": "LoadImage", "inputs": {"image": "photo.png"}},
        # 1: the IQA Classifier's auto weights for musiq-spaq (only a file of another name is installed)
        "2": {"class_type": "AdaptBIR_IQAClassifier", "inputs": {
            "image": ["1", 0], "metric": "musiq-spaq", "weights": "auto", "mode": "adaptbir",
            "low_threshold": 40.0, "high_threshold": 70.0, "k_max": 0.7, "w_max": 1.0, "score_max_side": 0}},
        # 2: a stage-1 restorer
        "3": {"class_type": "AdaptBIR_RestorerLoader", "inputs": {
            "restorer_name": "realesrgan_s4_swinir_100k.pth", "precision": "auto"}},
        "4": {"class_type": "AdaptBIR_Stage1Restore", "inputs": {
            "image": ["1", 0], "restorer": ["3", 0], "output_scale": 1.0, "tile_size": 512, "tile_stride": 256}},
        "5": {"class_type": "SaveImage", "inputs": {"images": ["4", 0], "filename_prefix": "never"}},
        # core: ComfyUI's own check
        "6": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": "sd_xl_base_1.0_0.9vae.safetensors"}},
        # 3: a LoRA (user's own file) and 4: the SUPIR adapter
        "7": {"class_type": "AdaptBIR_SUPIRLoRA", "inputs": {
            "lora_name": "your_sdxl_face_lora.safetensors", "strength_model": 1.0, "strength_clip": 1.0,
            "strength_adapter": 0.0}},
        "8": {"class_type": "AdaptBIR_LoRASUPIRLoader", "inputs": {
            "model": ["6", 0], "vae": ["6", 2], "supir_name": "SUPIR-v0Q_fp16.safetensors", "clip": ["6", 1],
            "loras": ["7", 0]}},
        "9": {"class_type": "VAEEncode", "inputs": {"pixels": ["1", 0], "vae": ["8", 4]}},
        "10": {"class_type": "VAEDecode", "inputs": {"samples": ["9", 0], "vae": ["8", 2]}},
        "11": {"class_type": "SaveImage", "inputs": {"images": ["10", 0], "filename_prefix": "never"}},
    }
    with pytest.raises(urllib.error.HTTPError) as e:
        http_json(f"{base}/prompt", {"prompt": prompt, "client_id": str(uuid.uuid4())})
    assert e.value.code == 400
    body = json.loads(e.value.read())
    errors = body["node_errors"]
    pack = {nid: err for nid, err in errors.items() if err["class_type"].startswith("AdaptBIR_")}
    assert sorted(pack) == ["2", "3", "7", "8"], errors
    expect = {
        "2": ("musiq_spaq_ckpt-358bb6af.pth", "iqa",
              "https://huggingface.co/chaofengc/IQA-PyTorch-Weights/resolve/main/musiq_spaq_ckpt-358bb6af.pth"),
        "3": ("realesrgan_s4_swinir_100k.pth", "diffbir",
              "https://huggingface.co/lxq007/DiffBIR-v2/resolve/main/realesrgan_s4_swinir_100k.pth"),
        "7": ("your_sdxl_face_lora.safetensors", "loras", "pick any SDXL LoRA you have"),
        "8": ("SUPIR-v0Q_fp16.safetensors", "supir",
              "https://huggingface.co/Kijai/SUPIR_pruned/resolve/main/SUPIR-v0Q_fp16.safetensors"),
    }
    for nid, (name, folder, source) in expect.items():
        # ComfyUI repeats a node's validation message once per input its validate_inputs reads (the IQA
        # Classifier reads all its widgets): one message per node
        texts = {(r["type"], r["details"].split(" - ", 1)[-1]) for r in pack[nid]["errors"]}
        ((kind, text),) = texts
        assert kind == "custom_validation_failed", texts
        assert name in text and f"'{folder}' model folder" in text and source in text, text
    # the core loader keeps ComfyUI's own check
    assert [r["type"] for r in errors["6"]["errors"]] == ["value_not_in_list"], errors["6"]
    # nothing ran: no history entry, no output file
    time.sleep(1.0)
    assert http_json(f"{base}/history") == history_before
    assert not list((root / "output").glob("never*"))
