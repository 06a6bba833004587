"""The pack in the real ComfyUI server: main.py --cpu on loopback, a prompt posted to /prompt, read from /history."""

import json
import socket
import subprocess
import sys
import time
import urllib.request
import uuid

import numpy as np
import pytest
from PIL import Image
from safetensors.torch import save_file

from tests.conftest import musiq_with_level
from tests.support.comfy_host import PACK_DIR_NAME, comfyui_path, make_custom_nodes_dir

pytestmark = pytest.mark.server


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def http(url, data=None, timeout=10):
    req = urllib.request.Request(url, data=None if data is None else json.dumps(data).encode(),
                                 headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=timeout) as r:
        return json.loads(r.read())


@pytest.fixture(scope="module")
def server(tmp_path_factory, musiq_random_state):
    root = tmp_path_factory.mktemp("server")
    make_custom_nodes_dir(root)
    (root / "models" / "iqa").mkdir(parents=True)
    save_file(musiq_with_level(musiq_random_state, 80.0), str(root / "models" / "iqa" / "level80.safetensors"))
    (root / "input").mkdir()
    img = (np.random.default_rng(0).random((48, 40, 3)) * 255).astype(np.uint8)
    Image.fromarray(img).save(root / "input" / "photo.png")
    cfg = root / "extra_model_paths.yaml"
    cfg.write_text(f"adaptbir_tests:\n  base_path: {root}\n  custom_nodes: custom_nodes\n  iqa: models/iqa\n")
    port = free_port()
    log = open(root / "server.log", "w")
    proc = subprocess.Popen(
        [sys.executable, "main.py", "--cpu", "--listen", "127.0.0.1", "--port", str(port),
         "--extra-model-paths-config", str(cfg), "--input-directory", str(root / "input"),
         "--output-directory", str(root / "output"), "--preview-method", "none"],
        cwd=comfyui_path(), stdout=log, stderr=subprocess.STDOUT)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.time() + 180
        while True:
            try:
                http(f"{base}/system_stats", timeout=2)
                break
            except OSError:
                if proc.poll() is not None or time.time() > deadline:
                    raise RuntimeError("ComfyUI server did not start:\n"
                                       + (root / "server.log").read_text()[-4000:]) from None
                time.sleep(1)
        yield base, root
    finally:
        proc.terminate()
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            proc.kill()
        log.close()


def test_pack_nodes_are_listed_by_object_info(server):
    base, root = server
    info = http(f"{base}/object_info/AdaptBIR_IQAClassifier")["AdaptBIR_IQAClassifier"]
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
    resp = http(f"{base}/prompt", {"prompt": prompt, "client_id": str(uuid.uuid4())})
    pid = resp["prompt_id"]
    deadline = time.time() + 120
    while time.time() < deadline:
        hist = http(f"{base}/history/{pid}")
        if pid in hist and hist[pid].get("status", {}).get("completed") is not None:
            break
        time.sleep(0.5)
    entry = hist[pid]
    assert entry["status"]["status_str"] == "success", entry["status"]
    text = entry["outputs"]["2"]["text"][0]
    assert "musiq=80.00 mild k=0.700 w=1.000" in text
