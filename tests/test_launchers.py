"""train.py and batch.py started as a user starts them: from the pack's folder wherever it lies, without a GPU.

Layouts: a ComfyUI folder (links to the test host's code, its own empty models/) whose ``custom_nodes`` holds the
pack as ComfyUI-Manager installs it (a copy under the registry id) or as a developer links it (a link under another
name); the scripts get no ``--comfyui`` and no ``COMFYUI_PATH`` and run from an unrelated folder. The GPU is hidden
(``CUDA_VISIBLE_DEVICES=""``; this CI machine has none anyway), which used to make ``train.py --help`` die in
ComfyUI's device set-up ("Found no NVIDIA driver").
"""

import os
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

from tests.support.comfy_host import comfyui_path

REPO = Path(__file__).resolve().parents[1]
REGISTRY_ID = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["name"]
HOST_OWN = {"models", "custom_nodes", "input", "output", "user", "temp", "extra_model_paths.yaml"}


def run(script: Path, *args, cwd: Path):
    env = {k: v for k, v in os.environ.items() if k != "COMFYUI_PATH"}
    env["CUDA_VISIBLE_DEVICES"] = ""
    return subprocess.run([sys.executable, str(script), *map(str, args)], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=600)


def copy_pack(dest: Path) -> Path:
    """The pack's files as a release has them (no tests, no environment, no git)."""
    shutil.copytree(REPO, dest, symlinks=True, ignore=shutil.ignore_patterns(
        ".git", ".venv", ".cache", "tests", "docs", "__pycache__", "*.pyc"))
    return dest


@pytest.fixture(scope="module")
def comfy_root(tmp_path_factory):
    """A ComfyUI folder with the test host's code (top-level files copied: folder_paths finds the models folder
    from its own resolved location; code folders linked), its own models/ and custom_nodes/."""
    root = tmp_path_factory.mktemp("layout") / "ComfyUI"
    root.mkdir()
    for entry in comfyui_path().iterdir():
        if entry.name not in HOST_OWN and not entry.name.startswith("extra_model_paths"):
            if entry.is_dir():
                (root / entry.name).symlink_to(entry)
            else:
                shutil.copy2(entry, root / entry.name)
    (root / "models").mkdir()
    (root / "custom_nodes").mkdir()
    return root


@pytest.mark.parametrize("script", ["train.py", "batch.py"])
def test_help_without_comfyui_or_gpu(script, tmp_path):
    pack = copy_pack(tmp_path / "any folder name")
    r = run(pack / script, "--help", cwd=tmp_path)
    assert r.returncode == 0, r.stderr[-3000:]
    assert r.stdout.startswith(f"usage: {script}") and "--comfyui" in r.stdout
    if script == "train.py":
        r = run(pack / script, "stage3", "--help", cwd=tmp_path)
        assert r.returncode == 0 and "--restoration-vae" in r.stdout, r.stderr[-3000:]


def test_train_py_in_a_manager_install_finds_comfyui_and_runs_without_gpu(comfy_root, tmp_path):
    """The pack copied to custom_nodes/<registry id>: --help with ComfyUI found, then a real start on the CPU
    (ComfyUI imported, the pack's folders registered) that stops at the missing checkpoint in *this* ComfyUI."""
    pack = copy_pack(comfy_root / "custom_nodes" / REGISTRY_ID)
    r = run(pack / "train.py", "--help", cwd=tmp_path)
    assert r.returncode == 0 and r.stdout.startswith("usage: train.py"), r.stderr[-3000:]
    from PIL import Image

    (tmp_path / "data").mkdir()
    Image.new("RGB", (64, 64), (90, 120, 150)).save(tmp_path / "data" / "a.png")
    r = run(pack / "train.py", "stage3", "--checkpoint", "no_such_sd21.safetensors", "--control", "x.pth",
            "--restoration-vae", "y.safetensors", "--data", tmp_path / "data", "--out", tmp_path / "out", "--steps", 1,
            cwd=tmp_path)
    assert r.returncode == 2, r.stderr[-3000:]
    assert "--checkpoint: expected a file path or a name in ComfyUI's 'checkpoints' model folder" in r.stderr
    assert str(comfy_root / "models" / "checkpoints") in r.stderr
    if "no GPU found" not in r.stderr:  # a machine whose torch has another accelerator (MPS, XPU, ...)
        assert "running on the CPU" not in r.stderr


def test_batch_py_from_a_linked_checkout_under_another_name(comfy_root, tmp_path):
    """A link custom_nodes/'AdaptBIR pack' -> the checkout: batch.py finds that ComfyUI, loads its nodes and the
    pack's, and reports the missing workflow file (not a missing ComfyUI or GPU)."""
    link = comfy_root / "custom_nodes" / "AdaptBIR pack"
    link.symlink_to(REPO, target_is_directory=True)
    (tmp_path / "in").mkdir()
    r = run(link / "batch.py", tmp_path / "missing.json", tmp_path / "in", tmp_path / "out", cwd=tmp_path)
    assert r.returncode == 2, r.stderr[-3000:]
    assert "batch.py: " in r.stderr and "missing.json" in r.stderr and "expected a ComfyUI folder" not in r.stderr


def test_the_launcher_says_where_it_looked(tmp_path):
    pack = copy_pack(tmp_path / "pack")
    r = run(pack / "train.py", "stage1", "--vae", "v", "--data", tmp_path, "--out", tmp_path, "--steps", 1,
            cwd=tmp_path)
    assert r.returncode == 2
    assert "expected a ComfyUI folder" in r.stderr and str(tmp_path) in r.stderr and "COMFYUI_PATH" in r.stderr
