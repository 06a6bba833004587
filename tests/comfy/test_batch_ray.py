"""The batch runner's Ray engine (issue 22) on a local Ray cluster on the CPU with two workers, each a real ComfyUI
with the pack and the tiny test models: twelve images byte-identical to the in-process runner's although a worker is
killed mid-run, each written once; a rerun skips them all; a corrupt image and an image that kills its workers are
reported failed while the others finish; a second run on the same output folder is refused.

One Ray cluster serves the module (``ray.init(num_cpus=2)``, no dashboard); each run starts its two workers."""

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
import torch

from tests.comfy.test_batch import images, tiny_workflow
from tests.comfy.test_workflows import REPO, write_tiny_files
from tests.support.comfy_host import comfyui_path

ray = pytest.importorskip("ray", reason="the Ray engine's tests need ray (tests/requirements.txt)")

N = 12


@pytest.fixture(scope="module")
def setup(pack, host, tiny, tmp_path_factory):
    """The engine module, an extra_model_paths.yaml that gives the workers this host's custom nodes (the pack and
    the test nodes) and tiny model files, twelve images and the in-process runner's outputs for them."""
    runner = pack("batch.runner")
    write_tiny_files(host.models_dir, host.workdir / "input", tiny)  # this process checks the workflow's files
    base = tmp_path_factory.mktemp("ray")
    cfg = base / "extra_model_paths.yaml"  # the workers' ComfyUI: this host's custom nodes and model files
    cfg.write_text(f"t:\n  base_path: {host.workdir}\n  custom_nodes: custom_nodes\n  diffbir: models/diffbir\n"
                   f"  iqa: models/iqa\n")
    wf, src = tiny_workflow(base, steps=1), images(base / "in", N)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as each one-CPU worker (CPU results may differ in the last bit between thread counts)
    try:
        runner.run_batch(str(wf), str(src), str(base / "reference"), progress=False)
    finally:
        torch.set_num_threads(threads)
    reference = {p.name: p.read_bytes() for p in (base / "reference").iterdir()}
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, object_store_memory=100 * 2**20)
    yield {"engine": pack("batch.ray_engine"), "manifest": pack("batch.manifest"), "runner": runner, "wf": wf,
           "src": src, "base": base, "reference": reference,
           "kw": {"pack_dir": str(REPO), "comfy_dir": str(comfyui_path()), "cpu": True, "workers": 2,
                  "extra_model_paths_config": [str(cfg)], "progress": False}}
    ray.shutdown()


def test_two_workers_twelve_images_one_killed_worker_then_a_rerun_skips_all(setup, tmp_path, monkeypatch,
                                                                             capsys):
    engine, out = setup["engine"], tmp_path / "out"
    writes, pids, ended, killed = {}, {}, [], []
    real_replace = os.replace

    def counting_replace(a, b):
        real_replace(a, b)
        if os.path.dirname(os.path.abspath(b)) == str(out) and str(b).endswith(".png"):
            writes[os.path.basename(b)] = writes.get(os.path.basename(b), 0) + 1

    def on_event(kind, info):
        if kind == "worker":
            pids.setdefault(info["worker"], info["pid"])
        elif kind == "image":
            ended.append(info["name"])
            if len(ended) >= 3 and len(pids) == 2 and not killed:  # the other worker is in the middle of an image
                killed.append(pids[1 - info["worker"]])
                os.kill(killed[0], signal.SIGKILL)

    monkeypatch.setattr(engine.os, "replace", counting_replace)
    temp_before = set(Path(tempfile.gettempdir()).glob("adaptbir-batch-*"))
    summary = engine.run_ray(str(setup["wf"]), str(setup["src"]), str(out), on_event=on_event, **setup["kw"])
    left = set(Path(tempfile.gettempdir()).glob("adaptbir-batch-*")) - temp_before
    assert len(left) == 1  # the workers remove their temporary folders, except the killed one
    shutil.rmtree(left.pop())
    names = sorted(f"img{i}.png" for i in range(N))  # the runner's order
    assert sorted(summary["done"]) == sorted(names) and summary["failed"] == {} and summary["skipped"] == []
    assert sum(r["deaths"] for r in summary["workers"]) == 1 and len(killed) == 1  # its image went elsewhere
    assert writes == {n: 1 for n in names}  # each output written once
    differ = sorted(p.name for p in out.glob("*.png") if p.read_bytes() != setup["reference"][p.name])
    assert differ == [], f"not the in-process runner's bytes: {differ}"
    lines = [json.loads(x) for x in (out / "batch-manifest.jsonl").read_text().splitlines()]
    assert sorted(r["input"] for r in lines) == names and {r["state"] for r in lines} == {"done"}
    assert sorted(os.listdir(out)) == sorted(names + ["batch-manifest.jsonl"])  # no lock, partial or work file
    text = engine.format_summary(summary)
    assert f"total: {N} done, 0 failed, 0 skipped" in text and "images/s" in text

    # the command line (in this process; Ray is already up): nothing to do, so no worker starts
    argv = [str(setup["wf"]), str(setup["src"]), str(out), "--cpu", "--ray", "--workers", "2",
            "--extra-model-paths-config", setup["kw"]["extra_model_paths_config"][0]]
    assert setup["runner"].main(argv, pack_dir=setup["kw"]["pack_dir"], comfy_dir=setup["kw"]["comfy_dir"]) == 0
    assert f"0 done, 0 failed, {N} skipped" in capsys.readouterr().out
    assert {r["state"] for r in setup["manifest"].read_manifest(str(out)).values()} == {"skipped"}
    assert {p.name: p.read_bytes() for p in out.glob("*.png")} == setup["reference"]


def test_a_corrupt_image_and_a_worker_killing_image_fail_alone(setup, tmp_path):
    """``bad.png`` is not an image (the workflow fails: reported with LoadImage's message, not retried);
    ``poison.png`` kills each worker that takes it (the test kills the process): reported after two attempts."""
    engine, src, out = setup["engine"], images(tmp_path / "in", 3), tmp_path / "out"
    (src / "bad.png").write_bytes(b"\x89PNG\r\n\x1a\n not really a png")
    (src / "poison.png").write_bytes((setup["src"] / "img0.png").read_bytes())
    pids = {}

    def on_event(kind, info):
        if kind == "worker":
            pids[info["worker"]] = info["pid"]
        elif kind == "start" and info["name"] == "poison.png":
            os.kill(pids[info["worker"]], signal.SIGKILL)

    temp_before = set(Path(tempfile.gettempdir()).glob("adaptbir-batch-*"))
    summary = engine.run_ray(str(setup["wf"]), str(src), str(out), on_event=on_event, max_attempts=2, **setup["kw"])
    left = set(Path(tempfile.gettempdir()).glob("adaptbir-batch-*")) - temp_before
    assert len(left) == 2  # the temporary folders of the two killed workers (empty)
    for path in left:
        shutil.rmtree(path)
    assert sorted(summary["done"]) == ["img0.png", "img1.png", "img2.png"]
    assert sorted(summary["failed"]) == ["bad.png", "poison.png"]
    assert summary["failed"]["bad.png"].startswith("bad.png: LoadImage: ")
    assert "adaptbir-batch-" not in summary["failed"]["bad.png"]  # no path of the worker's copy of the input
    assert "the worker died while restoring it (2 times" in summary["failed"]["poison.png"]
    states = {k: r["state"] for k, r in setup["manifest"].read_manifest(str(out)).items()}
    assert states == {"bad.png": "failed", "img0.png": "done", "img1.png": "done", "img2.png": "done",
                      "poison.png": "failed"}
    assert not (out / "bad.png").exists() and not (out / "poison.png").exists()


def test_a_second_run_on_the_same_output_folder_is_refused(setup, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    with setup["manifest"].OutputLock(str(out)):
        for run in (lambda: setup["engine"].run_ray(str(setup["wf"]), str(setup["src"]), str(out), **setup["kw"]),
                    lambda: setup["runner"].run_batch(str(setup["wf"]), str(setup["src"]), str(out),
                                                      progress=False)):
            with pytest.raises(setup["runner"].WorkflowError,
                               match="output folder: another batch run is writing into .*pid"):
                run()
    assert os.listdir(out) == []  # the lock's file goes with the lock; nothing was written


def test_ray_is_not_imported_without_ray():
    """The runner, its command line and the engine's module import nothing of Ray until --ray runs."""
    code = ("import sys; sys.path.insert(0, sys.argv[1]); from _launcher import package; package(sys.argv[1], False); "
            "import adaptbir_restoration.batch.runner, adaptbir_restoration.batch.ray_engine; "
            "print(sorted(m for m in sys.modules if m == 'ray' or m.startswith('ray.')))")
    r = subprocess.run([sys.executable, "-c", code, str(REPO)], capture_output=True, text=True, timeout=120,
                       check=True)
    assert r.stdout.strip() == "[]"


def test_a_crashed_run_leaves_no_lock_and_its_manifest_is_read(pack, tmp_path):
    """A process that dies holding the lock (no clean-up) and leaves a manifest line cut short: the next run takes
    the lock, and the manifest gives the finished records."""
    out = tmp_path / "out"
    out.mkdir()
    code = ("import os, sys; sys.path.insert(0, sys.argv[1]); from _launcher import package; "
            "package(sys.argv[1], False); from adaptbir_restoration.batch.manifest import Manifest, OutputLock; "
            "OutputLock(sys.argv[2]).acquire(); m = Manifest(sys.argv[2]); m.record('a.png', 'done'); "
            "m.file.write('{\"input\": \"b.png\", \"sta'); m.file.flush(); os._exit(9)")
    r = subprocess.run([sys.executable, "-c", code, str(REPO), str(out)], capture_output=True, text=True, timeout=120,
                       check=False)
    assert r.returncode == 9, r.stderr
    assert (out / ".batch.lock").exists()  # its file is left, but no process holds it
    manifest = pack("batch.manifest")
    with manifest.OutputLock(str(out)):
        assert manifest.read_manifest(str(out)) == {"a.png": {"input": "a.png", "state": "done"}}
    assert not (out / ".batch.lock").exists()
