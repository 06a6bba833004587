"""The pack in the real ComfyUI server: main.py --cpu on loopback, a prompt posted to /prompt, read from /history."""

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
