"""`bash scripts/serve.sh`: the README's third command starts ComfyUI with the pack, a models folder and the page.

The script runs as an artist runs it (bash, the setup's venv, the real main.py), with its models and state
folders moved into tmp_path so the checkout stays clean. It must print what each shipped workflow still needs,
choose the device from what torch sees, load the pack under the checkout's own folder name, and serve the page,
/object_info and the help pages under that name.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import time
import urllib.request
from pathlib import Path

import pytest

from tests.support.browser import http_json

pytestmark = pytest.mark.server
ROOT = Path(__file__).resolve().parents[2]
MUSIQ = "musiq_koniq_ckpt-e95806b9.pth"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _get(url: str) -> tuple[int, str, bytes]:
    with urllib.request.urlopen(url, timeout=10) as r:
        return r.status, r.headers.get("Content-Type", ""), r.read()


def _options(info: dict, node: str, name: str) -> list:
    spec = info[node]["input"]["required"][name]
    return spec[0] if isinstance(spec[0], list) else spec[1]["options"]


def test_check_lists_each_workflows_missing_files(tmp_path):
    models = tmp_path / "models"
    (models / "iqa").mkdir(parents=True)
    (models / "iqa" / MUSIQ).write_bytes(b"x")
    out = subprocess.run(["bash", str(ROOT / "scripts" / "serve.sh"), "--check", "--models", str(models)],
                         capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    assert "quality_triage.json: ready" in out.stdout, out.stdout
    assert "diffbir_v2_guidance.json: missing 3 of 3" in out.stdout, out.stdout
    assert "diffbir/v2.pth  (download: https://huggingface.co/" in out.stdout
    assert MUSIQ not in out.stdout, "a file that is in the models folder is not missing"
    for sub in ("iqa", "diffbir", "supir", "checkpoints", "vae", "loras", "upscale_models"):
        assert (models / sub).is_dir(), sub


def test_serve_starts_the_page_with_the_pack_and_stops(tmp_path):
    import torch

    port = _free_port()
    models, state = tmp_path / "models", tmp_path / "state"
    for sub, name in (("iqa", "mine.safetensors"), ("checkpoints", "my_sd21.safetensors")):
        (models / sub).mkdir(parents=True)
        (models / sub / name).write_bytes(b"x")
    log = open(tmp_path / "serve.log", "w")  # noqa: SIM115 - closed below
    proc = subprocess.Popen(["bash", str(ROOT / "scripts" / "serve.sh"), "--port", str(port), "--models",
                             str(models), "--state", str(state), "--", "--preview-method", "none"],
                            cwd=tmp_path, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.time() + 240
        while True:
            try:
                http_json(f"{base}/system_stats", timeout=2)
                break
            except OSError:
                assert proc.poll() is None and time.time() < deadline, (tmp_path / "serve.log").read_text()[-3000:]
                time.sleep(0.5)
        status, ctype, body = _get(f"{base}/")
        assert status == 200 and "text/html" in ctype and b"<html" in body.lower()
        info = http_json(f"{base}/object_info")
        assert "AdaptBIR_IQAClassifier" in info and "KSampler" in info
        folder = ROOT.name  # the pack is loaded under the checkout's own folder name, whatever it is
        assert info["AdaptBIR_IQAClassifier"]["python_module"] == f"custom_nodes.{folder}"
        status, _, body = _get(f"{base}/extensions/{folder}/docs/AdaptBIR_IQAClassifier.md")
        assert body.decode() == (ROOT / "web" / "docs" / "AdaptBIR_IQAClassifier.md").read_text()
        # files in the models folder are offered by the pack's and by ComfyUI's loaders
        assert "mine.safetensors" in _options(info, "AdaptBIR_IQAClassifier", "weights")
        assert "my_sd21.safetensors" in _options(info, "CheckpointLoaderSimple", "ckpt_name")
        text = (tmp_path / "serve.log").read_text()
        assert "quality_triage.json: missing 1 of 1" in text
        gpu = torch.cuda.is_available() or torch.backends.mps.is_available()
        command = next(ln for ln in text.splitlines() if ln.startswith("Command: "))
        assert (" --cpu" in command) == (not gpu), command
        assert f"--listen 127.0.0.1 --port {port}" in command
        stats = http_json(f"{base}/system_stats")
        assert (stats["devices"][0]["type"] == "cpu") == (not gpu), stats["devices"]
    finally:
        os.killpg(proc.pid, signal.SIGINT)  # Ctrl-C, as in a terminal
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        log.close()
    assert proc.returncode is not None
    with pytest.raises(OSError):
        http_json(f"{base}/system_stats", timeout=2)
    assert os.path.realpath(state / "custom_nodes" / ROOT.name) == str(ROOT)
    for sub in ("iqa", "diffbir", "supir", "checkpoints"):
        assert (models / sub).is_dir(), sub
