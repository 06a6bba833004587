"""Run a workflow of ``workflows/`` on every image of a folder, in-process through ComfyUI's executor.

One output per input (``<output>/<input name>.png``), written atomically: an interrupted run leaves only finished
files, and a re-run skips them (``--overwrite`` redoes them). The workflow must have one Load Image and one Save
Image node; model files named by its loaders are checked first. A lock (batch/manifest.py) refuses a second run on
the same output folder. ``--ray`` runs the same per-image work (:func:`restore_image`) on the workers of a Ray
cluster instead (batch/ray_engine.py, which also keeps a manifest of each input's state).
"""

from __future__ import annotations

import argparse
import asyncio
import copy
import json
import os
import shutil
import sys
import tempfile
import uuid

from .manifest import OutputLock
from .workflow import (
    WorkflowError,
    describe_missing,
    image_files,
    missing_models,
    to_prompt,
)


class _Server:
    """The parts of ComfyUI's PromptServer that the executor uses, headless (messages are kept for errors)."""

    def __init__(self):
        from aiohttp import web

        self.routes = web.RouteTableDef()  # node packs that add HTTP routes at import time find a table
        self.client_id = None
        self.last_node_id = None
        self.last_prompt_id = None
        self.sockets_metadata = {}
        self.messages = []

    def send_sync(self, event, data, sid=None):
        self.messages.append((event, data))

    def send_progress_text(self, text, node_id, sid=None):
        pass

    def queue_updated(self):
        pass


def _single(prompt: dict, class_type: str, what: str) -> str:
    ids = [k for k, v in prompt.items() if v["class_type"] == class_type]
    if len(ids) != 1:
        raise WorkflowError(f"workflow: expected exactly one {what} node ({class_type}) for the batch runner, found "
                            f"{len(ids)}")
    return ids[0]


def _error_text(messages) -> str:
    err = next((d for e, d in messages if e == "execution_error"), None)
    if err is None:
        return "execution was interrupted" if any(e == "execution_interrupted" for e, _ in messages) else "failed"
    return f"{err.get('node_type')}: {err.get('exception_message', '').strip()}"


def _check_no_input_is_lost(files: list, input_dir: str, output_dir: str) -> None:
    """WorkflowError when an output could replace an input (the same folder, or one folder inside the other) or two
    inputs would be saved under the same output name (``a.jpg`` and ``a.png`` -> ``a.png``)."""
    out_real, in_real = os.path.realpath(output_dir), os.path.realpath(input_dir)
    if out_real == in_real:
        raise WorkflowError(f"output folder: expected a folder other than the input folder (outputs named like the "
                            f"inputs would replace them), found the input folder itself ({output_dir}); choose "
                            f"another output folder")
    for inner, outer, how in ((out_real, in_real, "inside the input folder"),
                              (in_real, out_real, "that contains the input folder")):
        if os.path.commonpath([inner, outer]) == outer:
            raise WorkflowError(f"output folder: expected a folder apart from the input folder (neither inside the "
                                f"other), found one {how} ({output_dir} and {input_dir}); choose an output folder "
                                f"outside it")
    by_target: dict = {}
    for name in files:
        by_target.setdefault(os.path.splitext(name)[0] + ".png", []).append(name)
    clash = {t: names for t, names in by_target.items() if len(names) > 1}
    if clash:
        t, names = next(iter(clash.items()))
        raise WorkflowError(f"input folder: expected one image per output name, found {' and '.join(names)} that "
                            f"would both be saved as {t} ({len(clash)} such name(s)); rename or move one of them")


def load_workflow(workflow_path: str) -> tuple[dict, str, str]:
    """``(prompt, load_id, save_id)`` of a workflow file: its API prompt and the ids of its one Load Image and one
    Save Image node. ComfyUI's ``nodes`` must be imported with the node packs loaded. Raises WorkflowError for an
    unusable workflow or missing model files (each listed with its folder and URL)."""
    with open(workflow_path, encoding="utf-8") as f:
        return job_of(json.load(f))


def job_of(workflow: dict) -> tuple[dict, str, str]:
    """:func:`load_workflow` of a workflow already read from its file (the Ray workers get it this way)."""
    import nodes

    prompt = to_prompt(workflow, nodes.NODE_CLASS_MAPPINGS)
    missing = missing_models(workflow)
    if missing:
        raise WorkflowError(describe_missing(missing))
    return prompt, _single(prompt, "LoadImage", "Load Image"), _single(prompt, "SaveImage", "Save Image")


def input_images(input_dir: str, output_dir: str) -> list[str]:
    """The image file names of ``input_dir`` (sorted); WorkflowError when there are none, when ``output_dir`` is
    the input folder or when two inputs would be saved under the same output name."""
    files = image_files(input_dir)
    if not files:
        raise WorkflowError(f"input folder: expected images (png, jpg, webp, ...), found none in {input_dir}")
    _check_no_input_is_lost(files, input_dir, output_dir)
    return files


def output_name(name: str) -> str:
    """The output file name of input ``name``: ``a.jpg`` -> ``a.png``."""
    return os.path.splitext(name)[0] + ".png"


def new_executor(server):
    """A ComfyUI PromptExecutor for the batch runner (classic cache: loaders run once, not once per image)."""
    import execution

    return execution.PromptExecutor(server, cache_type=execution.CacheType.CLASSIC, cache_args={"lru": 0, "ram": 0})


def restore_image(executor, server, job: tuple[dict, str, str], name: str, work: str) -> str:
    """Run the workflow ``job`` (from :func:`load_workflow`) on input ``name`` (a file of ComfyUI's input folder)
    with ``executor``; returns the path of the one PNG its Save Image wrote (under ComfyUI's output folder, which
    is ``work``). The prompt differs between images only by the image name, so the same input gives the same
    bytes in any process. Raises WorkflowError when the prompt does not validate, RuntimeError when a node fails
    (the message names the image and the node) or the Save Image did not save one image."""
    import execution

    prompt, load_id, save_id = job
    p = copy.deepcopy(prompt)
    p[load_id]["inputs"]["image"] = name
    p[save_id]["inputs"]["filename_prefix"] = "batch"
    pid = str(uuid.uuid4())
    valid, error, _outputs, node_errors = asyncio.run(execution.validate_prompt(pid, p, None))
    if not valid:
        raise WorkflowError(f"{name}: the workflow does not validate: {error.get('message')} "
                            f"{json.dumps(node_errors)[:800]}")
    server.messages = []
    executor.execute(p, pid, {}, [save_id])
    if not executor.success:
        raise RuntimeError(f"{name}: {_error_text(executor.status_messages)}")
    images = executor.history_result["outputs"].get(save_id, {}).get("images") or []
    if len(images) != 1:
        raise RuntimeError(f"{name}: expected one saved image, found {len(images)}")
    return os.path.join(work, images[0].get("subfolder", ""), images[0]["filename"])


def run_batch(workflow_path: str, input_dir: str, output_dir: str, *, overwrite: bool = False,
              progress: bool = True, server=None) -> dict:
    """Run ``workflow_path`` on each image of ``input_dir``; returns ``{"done": [...], "skipped": [...]}`` (file
    names). ComfyUI (its ``nodes``, ``execution``, ``folder_paths``) must already be imported with the node packs
    loaded. Raises WorkflowError for an unusable workflow, missing model files, an output folder that is the input
    folder or two inputs with the same output name; RuntimeError when an image fails (the message names the image
    and the node) or when ComfyUI's interrupt flag is set between images (finished outputs are kept)."""
    import folder_paths
    from tqdm import tqdm

    job = load_workflow(workflow_path)
    files = input_images(input_dir, output_dir)
    os.makedirs(output_dir, exist_ok=True)
    lock = OutputLock(output_dir).acquire()  # one run per output folder
    # ComfyUI's Save Image writes here first; a new folder of this run, so removing it at the end can never remove
    # a folder (or files) that were there before
    work = tempfile.mkdtemp(prefix=".batch-work-", dir=output_dir)
    old_in, old_out = folder_paths.get_input_directory(), folder_paths.get_output_directory()
    folder_paths.set_input_directory(os.path.abspath(input_dir))
    folder_paths.set_output_directory(os.path.abspath(work))
    server = server or _Server()
    executor = new_executor(server)
    done, skipped = [], []
    import comfy.model_management as mm

    mm.interrupt_current_processing(False)  # like ComfyUI's executor at the start of a prompt
    try:
        for name in tqdm(files, desc=os.path.basename(workflow_path), unit="image", disable=not progress):
            if mm.processing_interrupted():  # cancelled after the last check inside the previous image
                mm.interrupt_current_processing(False)
                raise RuntimeError(f"{name}: the batch was interrupted before this image ({len(done)} done); run "
                                   f"the same command again to resume")
            target = os.path.join(output_dir, output_name(name))
            if os.path.exists(target) and not overwrite:
                skipped.append(name)
                continue
            saved = restore_image(executor, server, job, name, work)
            os.replace(saved, target)  # atomic: a target is either complete or absent
            done.append(name)
    finally:
        folder_paths.set_input_directory(old_in)
        folder_paths.set_output_directory(old_out)
        shutil.rmtree(work, ignore_errors=True)
        lock.release()
    return {"done": done, "skipped": skipped}


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="batch.py", description=(
        "Run one workflow (e.g. workflows/diffbir_v2_guidance.json) on every image of a folder through ComfyUI's "
        "executor, one PNG per input; re-running skips finished images."))
    p.add_argument("workflow", help="workflow file (the page's format), e.g. workflows/adaptbir_sd21.json")
    p.add_argument("input", help="folder of input images")
    p.add_argument("output", help="folder for the results (<input name>.png)")
    p.add_argument("--comfyui", help="ComfyUI folder (default: $COMFYUI_PATH, else the folder above custom_nodes)")
    p.add_argument("--extra-model-paths-config", action="append", default=[],
                   help="extra_model_paths.yaml files to read (ComfyUI's own is read when present)")
    p.add_argument("--cpu", action="store_true", help="run on the CPU")
    p.add_argument("--overwrite", action="store_true", help="redo images whose output exists")
    ray = p.add_argument_group("Ray (pip install ray; see the README's batch runner section)")
    ray.add_argument("--ray", nargs="?", const="local", metavar="ADDRESS",
                     help="run on a Ray cluster: one worker per GPU (or per --cpus-per-worker CPUs); without ADDRESS "
                          "(or 'local') on this machine, else e.g. 'auto' or ray://head:10001. Put it after the "
                          "folders")
    ray.add_argument("--workers", type=int, help="number of Ray workers (default: one per GPU, else per CPU slot)")
    ray.add_argument("--cpus-per-worker", type=int, default=1,
                     help="CPUs of one worker on a machine without GPUs (default 1)")
    ray.add_argument("--max-attempts", type=int, default=3,
                     help="times an image may be given to a worker that then dies before it is reported failed")
    p.add_argument("--metrics-gt", metavar="FOLDER", help=(
        "ground-truth folder (same file names as the inputs): after the batch, write <output>/metrics.csv with "
        "PSNR/SSIM (RGB and Y), LPIPS and MUSIQ per image and their mean (see the Restoration Metrics node)"))
    return p


def main(argv=None, *, pack_dir=None, comfy_dir=None) -> int:
    """The command line; ``pack_dir`` and ``comfy_dir`` (this pack's and ComfyUI's folders) are needed by --ray."""
    args = parser().parse_args(argv)
    if args.ray:
        return _main_ray(args, pack_dir, comfy_dir)
    try:
        summary = run_batch(args.workflow, args.input, args.output, overwrite=args.overwrite)
        if args.metrics_gt:
            from .metrics import write_metrics_csv

            write_metrics_csv(args.output, args.metrics_gt)
    except (WorkflowError, RuntimeError, OSError) as e:
        print(f"batch.py: {e}", file=sys.stderr)
        return 2
    print(f"batch.py: {len(summary['done'])} done, {len(summary['skipped'])} skipped (already in {args.output})")
    return 0


def _main_ray(args, pack_dir, comfy_dir) -> int:
    try:
        import ray  # noqa: F401  (the optional extra: a clear message when it is missing)
    except ImportError:
        print("batch.py: --ray: expected the Ray package, found none; install it with pip install "
              "\"ray>=2.40\" (or the pack's 'distributed' extra) into the Python that runs ComfyUI", file=sys.stderr)
        return 2
    from .ray_engine import format_summary, run_ray

    try:
        summary = run_ray(args.workflow, args.input, args.output, pack_dir=pack_dir, comfy_dir=comfy_dir,
                          address=args.ray, workers=args.workers, cpus_per_worker=args.cpus_per_worker, cpu=args.cpu,
                          extra_model_paths_config=[os.path.abspath(c) for c in args.extra_model_paths_config],
                          overwrite=args.overwrite, max_attempts=args.max_attempts)
        if args.metrics_gt:
            from .metrics import write_metrics_csv

            write_metrics_csv(args.output, args.metrics_gt)
    except (WorkflowError, RuntimeError, OSError) as e:
        print(f"batch.py: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:  # the workers are stopped, the finished outputs and the manifest are kept
        print("batch.py: interrupted; run the same command again to resume", file=sys.stderr)
        return 130
    print(format_summary(summary))
    print(f"batch.py: {len(summary['done'])} done, {len(summary['failed'])} failed, {len(summary['skipped'])} "
          f"skipped (already in {args.output}); states in {os.path.join(args.output, 'batch-manifest.jsonl')}")
    return 1 if summary["failed"] else 0
