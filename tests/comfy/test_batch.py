"""The batch runner: a workflow of workflows/ on a folder of three images through ComfyUI's executor, resume after
an interruption, missing-model and bad-workflow errors, and the command line end to end."""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tests.comfy.test_workflows import REPO, write_tiny_files
from tests.support.comfy_host import comfyui_path, make_custom_nodes_dir


def tiny_workflow(tmp_path, name="diffbir_v2_guidance", steps=2):
    """The workflow file with the checkpoint loader swapped for the tiny one (same outputs) and fewer steps."""
    wf = json.loads((REPO / "workflows" / f"{name}.json").read_text())
    for node in wf["nodes"]:
        if node["type"] == "CheckpointLoaderSimple":
            node["type"] = "AdaptBIRTest_TinyCheckpointLoader"
            node["widgets_values"] = ["sd2-eps", 0]
            node["properties"].pop("models", None)
        if node["type"] == "AdaptBIR_RestorationGuidanceSampler":
            node["widgets_values"][3] = steps  # start, seed, control, steps, cfg, sampler, scheduler, scale
            node["widgets_values"][7] = 0.0  # no guidance: keeps the tiny runs fast
    path = tmp_path / f"{name}_tiny.json"
    path.write_text(json.dumps(wf))
    return path


def images(folder: Path, n=3):
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(1)
    for i in range(n):
        Image.fromarray((rng.random((16 + 4 * i, 20, 3)) * 255).astype(np.uint8)).save(folder / f"img{i}.png")
    return folder


@pytest.fixture(scope="module")
def runner(pack, host, tiny):
    write_tiny_files(host.models_dir, host.workdir / "input", tiny)
    return pack("batch.runner")


def test_three_images_and_resume_after_an_interruption(runner, tmp_path, monkeypatch):
    import comfy.model_management

    wf, src, out = tiny_workflow(tmp_path), images(tmp_path / "in"), tmp_path / "out"
    real = comfy.model_management.throw_exception_if_processing_interrupted

    runner_state = {"image": 0}  # images finished so far

    def cancel_in_second_image():
        real()
        if runner_state["image"] == 1:
            raise comfy.model_management.InterruptProcessingException()

    original_replace = os.replace

    def counting_replace(a, b):
        original_replace(a, b)
        runner_state["image"] += 1

    monkeypatch.setattr(runner.os, "replace", counting_replace)
    monkeypatch.setattr(comfy.model_management, "throw_exception_if_processing_interrupted", cancel_in_second_image)
    with pytest.raises(RuntimeError, match="img1.png: execution was interrupted"):
        runner.run_batch(str(wf), str(src), str(out), progress=False)
    assert sorted(os.listdir(out)) == ["img0.png"]  # the finished image only, no partial file or work folder
    monkeypatch.setattr(comfy.model_management, "throw_exception_if_processing_interrupted", real)
    summary = runner.run_batch(str(wf), str(src), str(out), progress=False)
    assert summary == {"done": ["img1.png", "img2.png"], "skipped": ["img0.png"]}
    for i in range(3):
        with Image.open(out / f"img{i}.png") as im:  # one output per input, at 4x (Stage-1 Restore) and cropped
            assert im.size == (20 * 4, (16 + 4 * i) * 4)
    again = runner.run_batch(str(wf), str(src), str(out), progress=False, overwrite=True)
    assert again["done"] == ["img0.png", "img1.png", "img2.png"]


def test_missing_models_are_listed_with_folder_and_source(runner, tmp_path):
    wf = json.loads((REPO / "workflows" / "supir_lora.json").read_text())
    for node in wf["nodes"]:  # a SUPIR file name no test writes
        for m in node["properties"].get("models", []):
            m["name"] = m["name"].replace("SUPIR-v0Q", "SUPIR-v0F")
            m["url"] = m["url"].replace("SUPIR-v0Q", "SUPIR-v0F")
    path = tmp_path / "supir.json"
    path.write_text(json.dumps(wf))
    with pytest.raises(runner.WorkflowError) as e:
        runner.run_batch(str(path), str(images(tmp_path / "in", 1)), str(tmp_path / "out"), progress=False)
    text = str(e.value)
    assert "sd_xl_base_1.0_0.9vae.safetensors  ->  ComfyUI/models/checkpoints/" in text
    assert "SUPIR-v0F_fp16.safetensors  ->  ComfyUI/models/supir/" in text
    assert "https://huggingface.co/Kijai/SUPIR_pruned/resolve/main/SUPIR-v0F_fp16.safetensors" in text


def test_bad_workflows_are_refused(runner, tmp_path):
    wf = json.loads(tiny_workflow(tmp_path).read_text())
    wf["nodes"][0]["type"] = "SomePackNode"
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps(wf))
    with pytest.raises(runner.WorkflowError, match="'SomePackNode'"):
        runner.run_batch(str(bad), str(images(tmp_path / "in", 1)), str(tmp_path / "out"), progress=False)
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(runner.WorkflowError, match="found none"):
        runner.run_batch(str(tiny_workflow(tmp_path)), str(empty), str(tmp_path / "out"), progress=False)


def test_command_line_end_to_end(tmp_path, tiny):
    """python batch.py with COMFYUI_PATH, the pack and the test nodes as custom nodes, CPU."""
    root = tmp_path / "comfy"
    make_custom_nodes_dir(root)
    (root / "input").mkdir(parents=True)
    write_tiny_files(root / "models", root / "input", tiny)
    images(tmp_path / "in", 1)
    cfg = root / "extra_model_paths.yaml"
    cfg.write_text(f"t:\n  base_path: {root}\n  custom_nodes: custom_nodes\n  diffbir: models/diffbir\n"
                   f"  iqa: models/iqa\n")
    env = dict(os.environ, COMFYUI_PATH=str(comfyui_path()))
    cmd = [sys.executable, str(REPO / "batch.py"), str(tiny_workflow(tmp_path)), str(tmp_path / "in"),
           str(tmp_path / "out"), "--cpu", "--extra-model-paths-config", str(cfg)]
    r = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600, check=False)
    assert r.returncode == 0, r.stderr[-3000:]
    assert "1 done, 0 skipped" in r.stdout and (tmp_path / "out" / "img0.png").is_file()
    r = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600, check=False)
    assert r.returncode == 0 and "0 done, 1 skipped" in r.stdout
