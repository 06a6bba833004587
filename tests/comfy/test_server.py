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
