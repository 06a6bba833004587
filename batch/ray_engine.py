"""The batch runner's Ray engine (``batch.py --ray [ADDRESS]``): the same workflow on the workers of a Ray cluster.

One long-lived Ray actor per GPU (on a machine or cluster without GPUs: per ``cpus_per_worker`` CPUs) starts
ComfyUI with its custom nodes once and keeps one executor, so the models load once per worker, not per image.
This process (the driver) hands each worker one image at a time (the input file's bytes; backpressure: never more
images in flight than workers, so memory stays flat on any folder size) and writes each result itself,
atomically, under the deterministic name ``<input stem>.png``. The workers need ComfyUI, this pack and the model
files at the same paths on every node; the input and output folders only on the driver's machine.

Nothing lost, nothing done twice: an image whose output exists is skipped (a rerun resumes); the manifest
(``batch-manifest.jsonl``) records each input's state; a worker that dies (killed, out of memory, its node lost)
is restarted by Ray (``max_restarts``) and its image goes to the next free worker, at most ``max_attempts`` times:
an image that kills every worker that takes it is reported failed, not retried forever. An image whose workflow
fails (a corrupt file) is reported failed with the node's message and the others go on. A lock refuses a second
run on the same output folder. Ray is imported only here, only when this engine runs.
"""

from __future__ import annotations

import collections
import json
import os
import sys
import time

from .manifest import Manifest, OutputLock, write_atomically
from .runner import input_images, job_of, output_name
from .workflow import WorkflowError


def _worker_class():
    """The actor class. It is made inside a function so that Ray ships its code by value: the worker processes
    need not import this pack under this process's module name; each worker imports the pack from ``pack_dir``."""

    class BatchWorker:
        def __init__(self, pack_dir: str, comfy_dir: str, cpu: bool, extra_model_paths_config: list,
                     workflow: dict, threads: int):
            import importlib
            import socket
            import tempfile

            self.host, self.error, self.device, self.tmp = socket.gethostname(), None, "?", None
            try:
                import torch

                if threads:
                    torch.set_num_threads(threads)
                if pack_dir not in sys.path:
                    sys.path.insert(0, pack_dir)
                from _launcher import package

                package(pack_dir, run_init=False)
                host = importlib.import_module("adaptbir_restoration.batch.host")
                host.start_comfyui(comfy_dir, cpu=cpu, extra_model_paths_config=extra_model_paths_config)
                import comfy.model_management as mm
                import folder_paths

                self.runner = importlib.import_module("adaptbir_restoration.batch.runner")
                self.job = self.runner.job_of(workflow)
                self.device = str(mm.get_torch_device())
                self.tmp = tmp = tempfile.mkdtemp(prefix="adaptbir-batch-")
                self.input_dir, self.work = os.path.join(tmp, "input"), os.path.join(tmp, "output")
                os.makedirs(self.input_dir)
                os.makedirs(self.work)
                folder_paths.set_input_directory(self.input_dir)
                folder_paths.set_output_directory(self.work)
                self.server = self.runner._Server()
                self.executor = self.runner.new_executor(self.server)
            except Exception as e:  # noqa: BLE001  (reported by ready(): the driver stops the run with it)
                self.error = str(e) if type(e).__name__ == "WorkflowError" else f"{type(e).__name__}: {e}"

        def ready(self) -> dict:
            return {"pid": os.getpid(), "host": self.host, "device": self.device, "error": self.error}

        def close(self) -> None:
            """Remove this worker's temporary folder (the one it made; a killed worker's stays in the temp dir)."""
            import shutil

            if self.tmp:
                shutil.rmtree(self.tmp, ignore_errors=True)
                self.tmp = None

        def restore(self, name: str, data: bytes) -> dict:
            """Restore the image ``name`` (its file's bytes); ``{"ok": True, "png": bytes, "seconds"}`` or
            ``{"ok": False, "error": message, "seconds"}``."""
            t0 = time.perf_counter()
            src, saved = os.path.join(self.input_dir, name), None
            try:
                with open(src, "wb") as f:
                    f.write(data)
                saved = self.runner.restore_image(self.executor, self.server, self.job, name, self.work)
                with open(saved, "rb") as f:
                    png = f.read()
                return {"ok": True, "png": png, "seconds": time.perf_counter() - t0}
            except Exception as e:  # noqa: BLE001  (any failure is this image's; named by the input's own name)
                return {"ok": False, "error": str(e).replace(os.path.join(self.input_dir, ""), ""),
                        "seconds": time.perf_counter() - t0}
            finally:
                for path in (src, saved):
                    if path and os.path.exists(path):
                        os.remove(path)

    return BatchWorker


def _worker_resources(ray, cpu: bool, workers: int | None, cpus_per_worker: int) -> tuple[int, dict]:
    """``(number of workers, resources of one)``: one per GPU, else one per ``cpus_per_worker`` CPUs."""
    res = ray.cluster_resources()
    gpus = int(res.get("GPU", 0))
    if gpus and not cpu:
        return workers or gpus, {"num_gpus": 1, "num_cpus": 1}
    return workers or max(1, int(res.get("CPU", 1)) // cpus_per_worker), {"num_cpus": cpus_per_worker}


def run_ray(workflow_path: str, input_dir: str, output_dir: str, *, pack_dir: str, comfy_dir: str,
            address: str | None = None, workers: int | None = None, cpus_per_worker: int = 1, cpu: bool = False,
            extra_model_paths_config=(), overwrite: bool = False, progress: bool = True, max_attempts: int = 3,
            max_restarts: int = 3, on_event=None) -> dict:
    """Run ``workflow_path`` on each image of ``input_dir`` on Ray workers; returns the summary ``{"done": [...],
    "failed": {name: message}, "skipped": [...], "workers": [per-worker rows], "seconds", "images_per_s"}``.

    ``address``: a Ray cluster (``auto``, ``ray://host:10001``, ...); None or ``local`` starts one on this machine
    unless this process is already connected. ``pack_dir``/``comfy_dir``: this pack's and ComfyUI's folders, the
    same on every node. ComfyUI must be loaded in this process too (the workflow and its model files are checked
    here before any worker starts). ``on_event(kind, info)`` is called with ``("worker", {"worker", "pid", ...})``
    when a worker is (again) ready, ``("start", {"name", "worker"})`` when an image is handed to a worker and
    ``("image", {"name", "state", "worker"})`` when an image ends (tests use it).
    Raises WorkflowError like the in-process runner, and when a worker cannot start (its message) or the output
    folder is in use; RuntimeError when every worker is gone with images left (finished outputs are kept)."""
    with open(workflow_path, encoding="utf-8") as f:
        workflow = json.load(f)
    job_of(workflow)  # checked here, before any worker starts; each worker builds its own
    files = input_images(input_dir, output_dir)
    os.makedirs(output_dir, exist_ok=True)
    with OutputLock(output_dir):
        manifest = Manifest(output_dir)
        try:
            return _run(workflow, files, input_dir, output_dir, manifest, pack_dir=pack_dir, comfy_dir=comfy_dir,
                        address=address, workers=workers, cpus_per_worker=cpus_per_worker, cpu=cpu,
                        extra_model_paths_config=list(extra_model_paths_config), overwrite=overwrite,
                        progress=progress, max_attempts=max_attempts, max_restarts=max_restarts,
                        on_event=on_event or (lambda kind, info: None))
        finally:
            manifest.close(files)


def _run(workflow, files, input_dir, output_dir, manifest, *, pack_dir, comfy_dir, address, workers,
         cpus_per_worker, cpu, extra_model_paths_config, overwrite, progress, max_attempts, max_restarts,
         on_event) -> dict:
    t_start = time.perf_counter()
    summary = {"done": [], "failed": {}, "skipped": [], "workers": [], "seconds": 0.0, "images_per_s": 0.0}
    todo = []
    for name in files:
        if os.path.exists(os.path.join(output_dir, output_name(name))) and not overwrite:
            summary["skipped"].append(name)
            manifest.record(name, "skipped", output=output_name(name), durable=False)  # written at the end
        else:
            todo.append(name)
    if not todo:
        return summary
    import ray
    from ray.exceptions import (
        ActorUnavailableError,
        NodeDiedError,
        OutOfMemoryError,
        RayActorError,
        WorkerCrashedError,
    )
    from tqdm import tqdm

    DIED = (RayActorError, WorkerCrashedError, NodeDiedError, OutOfMemoryError)  # the worker process is gone
    started_here = not ray.is_initialized()
    if started_here:
        ctx = ray.init(address=None if address in (None, "local") else address, log_to_driver=False)
        url = getattr(ctx, "dashboard_url", None)
        if url and progress:
            print(f"batch.py: Ray dashboard: http://{url}", file=sys.stderr)
    n, resources = _worker_resources(ray, cpu, workers, cpus_per_worker)
    n = min(n, len(todo))
    threads = resources.get("num_cpus", 1) if "num_gpus" not in resources else 0
    Worker = ray.remote(_worker_class()).options(max_restarts=max_restarts, max_task_retries=0, **resources)
    actors = [Worker.remote(pack_dir, comfy_dir, cpu, extra_model_paths_config, workflow, threads)
              for _ in range(n)]
    rows = [{"worker": i, "host": "?", "device": "?", "pid": None, "done": 0, "failed": 0, "deaths": 0,
             "busy_s": 0.0, "status": "starting"} for i in range(n)]
    busy = [None] * n  # the image each worker is restoring
    refs = {a.ready.remote(): ("ready", i, None) for i, a in enumerate(actors)}
    pending, attempts = collections.deque(todo), collections.Counter()
    bar = tqdm(total=len(todo), desc="restoring", unit="image", disable=not progress, dynamic_ncols=True)

    def status():
        bar.set_postfix_str("  ".join(f"w{r['worker']}: {busy[r['worker']] or r['status']}" for r in rows),
                            refresh=True)

    def finish(name, state, worker, **fields):
        manifest.record(name, state, worker=worker, worker_deaths=attempts[name] or None, **fields)
        bar.update(1)
        on_event("image", {"name": name, "state": state, "worker": worker})

    try:
        while pending or refs:
            for i, a in enumerate(actors):
                if pending and busy[i] is None and rows[i]["status"] == "ready":
                    name = pending.popleft()
                    with open(os.path.join(input_dir, name), "rb") as f:
                        data = f.read()
                    busy[i] = name
                    refs[a.restore.remote(name, data)] = ("image", i, name)
                    on_event("start", {"name": name, "worker": i})
            status()
            if not refs:
                break
            done_refs, _ = ray.wait(list(refs), num_returns=1, timeout=1.0)
            for ref in done_refs:
                kind, i, name = refs.pop(ref)
                row = rows[i]
                try:
                    result = ray.get(ref)
                except DIED as e:
                    busy[i] = None
                    if kind == "ready" and isinstance(e, ActorUnavailableError):  # still restarting: ask again
                        time.sleep(0.2)
                        refs[actors[i].ready.remote()] = ("ready", i, None)
                        continue
                    if kind == "ready":  # it did not come back (restarts used up, or its node is gone)
                        row["status"] = "gone"
                        continue
                    row["deaths"] += 1
                    attempts[name] += 1
                    if attempts[name] >= max_attempts:
                        message = (f"{name}: the worker died while restoring it ({attempts[name]} times; out of "
                                   f"memory, or a crash in a node): not tried again")
                        summary["failed"][name] = message
                        finish(name, "failed", i, message=message)
                    else:
                        pending.appendleft(name)
                    row["status"] = "restarting"
                    refs[actors[i].ready.remote()] = ("ready", i, None)  # answers once Ray has restarted it
                    continue
                if kind == "ready":
                    if result["error"]:
                        raise WorkflowError(f"batch worker {i} on {result['host']}: {result['error']}")
                    row.update(host=result["host"], device=result["device"], pid=result["pid"], status="ready")
                    on_event("worker", {"worker": i, **result})
                    continue
                busy[i] = None
                row["busy_s"] += result["seconds"]
                if result["ok"]:
                    write_atomically(os.path.join(output_dir, output_name(name)), result["png"])
                    row["done"] += 1
                    summary["done"].append(name)
                    finish(name, "done", i, output=output_name(name), seconds=round(result["seconds"], 3))
                else:
                    row["failed"] += 1
                    summary["failed"][name] = result["error"]
                    finish(name, "failed", i, message=result["error"], seconds=round(result["seconds"], 3))
        if pending:
            raise RuntimeError(f"batch workers: every worker is gone with {len(pending)} image(s) left "
                               f"({len(summary['done'])} done); run the same command again to resume")
    finally:
        bar.close()
        try:
            ray.wait([a.close.remote() for a in actors], num_returns=len(actors), timeout=10)
        except Exception:  # noqa: BLE001, S110  (a dead worker: nothing to remove)
            pass
        for a in actors:
            ray.kill(a)
        if started_here:
            ray.shutdown()
        summary["seconds"] = time.perf_counter() - t_start
        finished = len(summary["done"])
        summary["images_per_s"] = finished / summary["seconds"] if summary["seconds"] else 0.0
        for row in rows:
            row["images_per_s"] = row["done"] / row["busy_s"] if row["busy_s"] else 0.0
            row.pop("status")
        summary["workers"] = rows
    return summary


def format_summary(summary: dict) -> str:
    """The end-of-run table: one row per worker (done, failed, deaths, images/s while busy) and the totals."""
    lines = [f"{'worker':<8}{'host':<20}{'device':<10}{'done':>6}{'failed':>8}{'deaths':>8}{'images/s':>10}"]
    for r in summary["workers"]:
        lines.append(f"{r['worker']:<8}{str(r['host'])[:19]:<20}{str(r['device'])[:9]:<10}{r['done']:>6}"
                     f"{r['failed']:>8}{r['deaths']:>8}{r['images_per_s']:>10.3f}")
    lines.append(f"total: {len(summary['done'])} done, {len(summary['failed'])} failed, {len(summary['skipped'])} "
                 f"skipped in {summary['seconds']:.1f} s ({summary['images_per_s']:.3f} images/s)")
    for name, message in summary["failed"].items():
        lines.append(f"failed: {message if message.startswith(name) else f'{name}: {message}'}")
    return "\n".join(lines)
