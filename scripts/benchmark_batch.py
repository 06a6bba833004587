"""Throughput of the batch runner's Ray engine with 1 and 2 CPU workers on the tiny test models (issue 22).

Run with the venv's Python from the repository root (needs ray)::

    python scripts/benchmark_batch.py                 # 8 images, 1 then 2 workers, one run each
    python scripts/benchmark_batch.py --images 16 --workers 1 2 4

This process is the driver, with ComfyUI and the pack loaded in-process as in the tests (tests/support/comfy_host);
a local Ray instance with as many CPUs as the most workers runs the workers, each a ComfyUI with the pack and the
test nodes (the tiny DiffBIR v2 workflow of tests/comfy/test_batch.py, 1 step, 16-60 x 20 px inputs). For each
worker count it prints one line: images per second over the whole run (start-up included) and over the images
that ended after the last worker was ready (the restoring itself). Each worker uses one thread.
"""

from __future__ import annotations

import argparse
import importlib
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--images", type=int, default=8, help="number of images (default 8)")
    ap.add_argument("--workers", type=int, nargs="+", default=[1, 2], help="worker counts to run (default 1 2)")
    ap.add_argument("--steps", type=int, default=1, help="sampling steps of the tiny workflow (default 1)")
    args = ap.parse_args(argv)
    if str(REPO) not in sys.path:
        sys.path.insert(0, str(REPO))
    import ray
    import torch

    from tests.comfy.test_batch import images, tiny_workflow
    from tests.comfy.test_workflows import write_tiny_files
    from tests.support.comfy_host import InProcessHost, comfyui_path

    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory(prefix="adaptbir-bench-batch-") as tmp:
        tmp = Path(tmp)
        host = InProcessHost(tmp / "comfy")
        tiny = sys.modules[next(m for m in sys.modules if m.endswith("adaptbir_test_nodes.tiny"))]
        write_tiny_files(host.models_dir, host.workdir / "input", tiny)
        cfg = tmp / "extra_model_paths.yaml"
        cfg.write_text(f"t:\n  base_path: {host.workdir}\n  custom_nodes: custom_nodes\n  diffbir: models/diffbir\n"
                       f"  iqa: models/iqa\n")
        engine = importlib.import_module(host.pack_module_name + ".batch.ray_engine")
        wf, src = tiny_workflow(tmp, steps=args.steps), images(tmp / "in", args.images)
        ray.init(num_cpus=max(args.workers), include_dashboard=False, log_to_driver=False,
                 object_store_memory=100 * 2**20)
        try:
            for n in args.workers:
                events = []
                t0 = time.perf_counter()
                summary = engine.run_ray(
                    str(wf), str(src), str(tmp / f"out{n}"), pack_dir=str(REPO), comfy_dir=str(comfyui_path()),
                    workers=n, cpu=True, extra_model_paths_config=[str(cfg)], progress=False,
                    on_event=lambda kind, info, events=events: events.append((kind, time.perf_counter())))
                t1 = time.perf_counter()
                done = len(summary["done"])
                up = max(t for k, t in events if k == "worker")  # the last worker is ready
                after = [t for k, t in events if k == "image" and t > up]
                print(f"batch --ray, {n} CPU worker(s), tiny DiffBIR v2, {args.steps} step(s): {done} images in "
                      f"{t1 - t0:.1f} s = {done / (t1 - t0):.3f} images/s with start-up ({up - t0:.1f} s); "
                      f"{len(after) / (t1 - up):.3f} images/s once all workers were up ({len(after)} images)",
                      flush=True)
        finally:
            ray.shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main())
