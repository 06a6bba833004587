"""Try the pack without a ComfyUI of your own: start the ComfyUI that scripts/setup.sh installed, with this pack.

    bash scripts/serve.sh                 # http://127.0.0.1:8188
    bash scripts/serve.sh --port 8190     # another port
    bash scripts/serve.sh --check         # only list the model files each shipped workflow still needs

- ComfyUI: ``$COMFYUI_PATH``, else ``.cache/comfyui-0.3.75`` (made by setup.sh).
- The pack is loaded from a ``custom_nodes`` folder under ``--state`` (default ``.cache/serve/``) that links to this
  checkout under the checkout's own folder name; ComfyUI's settings, inputs and outputs live there too.
- Models: ``--models`` (default ``models/`` in this checkout, git-ignored) is created with ComfyUI's usual
  sub-folders and the pack's (``iqa``, ``diffbir``, ``supir``) and registered first, through an
  ``extra_model_paths.yaml``, so files downloaded into it are found and the page's downloads land there.
- Before starting, it prints each shipped workflow (``workflows/*.json``) with the model files it names (its
  loaders' ``properties.models`` entries: file, folder, source) that are in neither that folder nor ComfyUI's own.
- Device: a GPU when torch sees one (CUDA, or Apple's MPS), else ``--cpu``; ``--cpu`` forces the CPU.
- Arguments after ``--`` go to ComfyUI's main.py unchanged.

A script: ComfyUI never imports it. It replaces itself with ComfyUI's process (same process id), so stopping it
(Ctrl-C, or a signal to that id) stops ComfyUI.
"""

from __future__ import annotations

import argparse
import glob
import importlib.util
import json
import os
import sys

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
COMFY_FOLDERS = ("checkpoints", "vae", "loras", "upscale_models", "controlnet", "text_encoders", "clip_vision",
                 "diffusion_models", "embeddings")


def pack_folders() -> dict[str, str]:
    """The pack's model folder keys -> sub-folders (nodes/paths.py, read without importing the pack or ComfyUI)."""
    spec = importlib.util.spec_from_file_location("adaptbir_paths", os.path.join(REPO, "nodes", "paths.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return dict(module.PACK_FOLDERS)


def comfyui_path() -> str:
    return os.path.abspath(os.environ.get("COMFYUI_PATH") or os.path.join(REPO, ".cache", "comfyui-0.3.75"))


def make_models_dir(models: str) -> dict[str, str]:
    """Create ``models`` with every folder this script registers; returns folder key -> sub-folder."""
    folders = {key: key for key in COMFY_FOLDERS}
    folders.update(pack_folders())
    for sub in folders.values():
        os.makedirs(os.path.join(models, sub), exist_ok=True)
    return folders


def write_extra_paths(state: str, models: str, folders: dict[str, str]) -> str:
    """An extra_model_paths.yaml: the models folder first for every key, and the state's custom_nodes folder."""
    lines = ["adaptbir_serve:", f"  base_path: {json.dumps(models)}", "  is_default: true"]
    lines += [f"  {key}: {json.dumps(sub)}" for key, sub in folders.items()]
    lines += [f"  custom_nodes: {json.dumps(os.path.join(state, 'custom_nodes'))}"]
    path = os.path.join(state, "extra_model_paths.yaml")
    with open(path, "w", encoding="utf-8") as f:
        f.write("\n".join(lines) + "\n")
    return path


def link_pack(state: str) -> str:
    """``state/custom_nodes/<this checkout's folder name>`` -> this checkout; other links there (an earlier
    checkout's) are removed, never real folders. Returns the folder name ComfyUI loads the pack under."""
    cn = os.path.join(state, "custom_nodes")
    os.makedirs(cn, exist_ok=True)
    name = os.path.basename(REPO)
    for entry in os.listdir(cn):
        path = os.path.join(cn, entry)
        if os.path.islink(path) and (entry != name or os.path.realpath(path) != REPO):
            os.unlink(path)
    link = os.path.join(cn, name)
    if not os.path.islink(link):
        os.symlink(REPO, link, target_is_directory=True)
    return name


def workflow_models(path: str) -> list[dict]:
    """The model entries (name, directory, url) of a workflow's active nodes, in node order, without repeats."""
    with open(path, encoding="utf-8") as f:
        workflow = json.load(f)
    seen, out = set(), []
    for node in workflow.get("nodes") or []:
        if node.get("mode", 0) in (2, 4):  # muted or bypassed: the node does not load its file
            continue
        for m in (node.get("properties") or {}).get("models") or []:
            key = (m.get("directory"), m.get("name"))
            if key not in seen:
                seen.add(key)
                out.append(m)
    return out


def missing_report(models: str, comfy: str) -> tuple[str, int]:
    """A text listing each shipped workflow's missing model files, and how many are missing in all."""
    roots = [models, os.path.join(comfy, "models")]
    lines, total = [f"Model files of the shipped workflows (put each into {models}/<folder>/):"], 0
    for path in sorted(glob.glob(os.path.join(REPO, "workflows", "*.json"))):
        entries = workflow_models(path)
        missing = [m for m in entries if not any(
            os.path.isfile(os.path.join(root, m.get("directory", ""), m.get("name", ""))) for root in roots)]
        total += len(missing)
        state = "ready" if not missing else f"missing {len(missing)} of {len(entries)}"
        lines.append(f"  {os.path.basename(path)}: {state}")
        lines += [f"    - {m.get('directory')}/{m.get('name')}  (download: {m.get('url')})" for m in missing]
    return "\n".join(lines), total


def accelerator() -> str | None:
    """The GPU torch can use here (its name), or None."""
    import torch

    if torch.cuda.is_available():
        return f"CUDA ({torch.cuda.get_device_name(0)})"
    if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
        return "Apple MPS"
    return None


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="serve.sh", description=(
        "Start the ComfyUI that scripts/setup.sh installed, with this pack loaded and models/ in this checkout. "
        "Arguments after -- go to ComfyUI's main.py."))
    p.add_argument("--port", type=int, default=8188, help="port of the page (default 8188)")
    p.add_argument("--listen", default="127.0.0.1", help="address to listen on (default 127.0.0.1: this machine only)")
    p.add_argument("--models", default=os.path.join(REPO, "models"),
                   help="models folder (default: models/ in this checkout; created with its sub-folders)")
    p.add_argument("--state", default=os.path.join(REPO, ".cache", "serve"),
                   help="folder for custom_nodes, settings, inputs and outputs (default .cache/serve)")
    p.add_argument("--cpu", action="store_true", help="run on the CPU even when a GPU is available")
    p.add_argument("--check", action="store_true", help="only print the missing model files, start nothing")
    return p


def main(argv: list[str]) -> int:
    own, extra = (argv[:argv.index("--")], argv[argv.index("--") + 1:]) if "--" in argv else (argv, [])
    args = parser().parse_args(own)
    comfy = comfyui_path()
    if not os.path.isfile(os.path.join(comfy, "main.py")):
        print(f"serve.sh: expected ComfyUI (main.py) at {comfy}, found none; run `bash scripts/setup.sh` first "
              f"or set COMFYUI_PATH", file=sys.stderr)
        return 2
    models, state = os.path.abspath(args.models), os.path.abspath(args.state)
    folders = make_models_dir(models)
    report, _ = missing_report(models, comfy)
    print(report, flush=True)
    if args.check:
        return 0
    for sub in ("input", "output", "user"):
        os.makedirs(os.path.join(state, sub), exist_ok=True)
    config = write_extra_paths(state, models, folders)
    name = link_pack(state)
    gpu = None if args.cpu else accelerator()
    cmd = [sys.executable, "main.py", "--listen", args.listen, "--port", str(args.port),
           "--extra-model-paths-config", config, "--input-directory", os.path.join(state, "input"),
           "--output-directory", os.path.join(state, "output"), "--user-directory", os.path.join(state, "user"),
           *([] if gpu else ["--cpu"]), *extra]
    print(f"Device: {gpu or 'CPU (no GPU found, or --cpu): restoring takes minutes per image'}", flush=True)
    print(f"Pack: custom_nodes/{name} -> {REPO}; outputs in {os.path.join(state, 'output')}", flush=True)
    print(f"Page: http://{args.listen}:{args.port}  (Ctrl-C stops ComfyUI)", flush=True)
    print("Command: " + " ".join(cmd), flush=True)
    os.chdir(comfy)
    os.execv(sys.executable, cmd)
    return 1  # not reached


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
