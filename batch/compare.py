"""The LoRA-SUPIR paper's evaluation protocol as a command: degrade ground truth, restore it with several
workflows, print PSNR / SSIM / LPIPS / MUSIQ side by side.

1. Every ground-truth image ``gt/<name>`` is degraded with the pack's Degrade Image node (pipeline and scale as
   given; image ``i`` in name order gets seed ``seed + i``, so the degraded set is the same on every run) and saved
   as ``<work>/lq/<name stem>.png``, optionally shrunk by ``--lq-scale`` (e.g. 4 for a x4 workflow).
2. Each pipeline (a workflow file of ``workflows/``, optionally with widget overrides) runs on that folder through
   the batch runner into ``<work>/<label>/``.
3. Each result folder is measured against the ground truth (batch/metrics.py: results resized to the ground truth's
   size when they differ), written to ``<work>/<label>/metrics.csv``, and the means are printed as one table (and
   written to ``<work>/compare.csv``).

A pipeline is ``label=workflow.json`` or ``label=workflow.json@Type.widget=value,Type.widget=value``, e.g.
``"SUPIR=workflows/supir_lora.json@AdaptBIR_SUPIRLoRA.strength_model=0"``: every node of class ``Type`` gets the
widget value (numbers and true/false are parsed; the rest stays text).
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import sys

import torch.nn.functional as F

from ..modules import metrics as metrics_mod
from .metrics import measure_folder, read_image, write_csv
from .workflow import WorkflowError, image_files, widget_specs


def parse_pipeline(spec: str) -> tuple[str, str, list[tuple[str, str, object]]]:
    """``label=path[@Type.widget=value,...]`` -> (label, path, [(Type, widget, value)])."""
    label, sep, rest = spec.partition("=")
    if not sep or not label or not rest:
        raise WorkflowError(f"pipeline '{spec}': expected label=workflow.json[@Type.widget=value,...], found no "
                            f"label or no file")
    path, _, over = rest.partition("@")
    overrides = []
    for item in filter(None, over.split(",")):
        key, sep, value = item.partition("=")
        node_type, _, widget = key.rpartition(".")
        if not sep or not node_type or not widget:
            raise WorkflowError(f"pipeline '{label}': expected overrides as Type.widget=value, found '{item}'")
        overrides.append((node_type, widget, _parse_value(value)))
    return label, path, overrides


def _parse_value(text: str):
    if text.lower() in ("true", "false"):
        return text.lower() == "true"
    for kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            pass
    return text


def apply_overrides(workflow: dict, overrides, node_classes: dict, label: str) -> dict:
    """A copy of the UI-format ``workflow`` with each (Type, widget, value) set on every node of that type."""
    wf = json.loads(json.dumps(workflow))
    for node_type, widget, value in overrides:
        found = [n for n in wf.get("nodes", []) if n.get("type") == node_type]
        if not found or node_type not in node_classes:
            raise WorkflowError(f"pipeline '{label}': expected a {node_type} node in the workflow for the override "
                                f"{node_type}.{widget}, found none")
        names = [name for name, _ in widget_specs(node_classes[node_type])]
        if widget not in names:
            raise WorkflowError(f"pipeline '{label}': {node_type} has no widget '{widget}' (widgets: "
                                f"{', '.join(n for n in names if n)})")
        for node in found:
            values = list(node.get("widgets_values") or [])
            i = names.index(widget)
            if i >= len(values):
                raise WorkflowError(f"pipeline '{label}': node {node.get('id')} ({node_type}) stores no value for "
                                    f"'{widget}'; open and save the workflow in the page")
            values[i] = value
            node["widgets_values"] = values
    return wf


def degrade_folder(gt_dir: str, lq_dir: str, *, pipeline: str = "realesrgan", seed: int = 0, scale: float = 4.0,
                   lq_scale: float = 1.0) -> list[str]:
    """Degrade every image of ``gt_dir`` into ``lq_dir/<stem>.png`` with the pack's Degrade Image node (seed + i
    for the i-th image in name order), shrunk by ``lq_scale``; returns the written names."""
    from PIL import Image

    import nodes

    degrade = nodes.NODE_CLASS_MAPPINGS["AdaptBIR_DegradeImage"]
    files = image_files(gt_dir)
    if not files:
        raise WorkflowError(f"ground truth: expected images (png, jpg, webp, ...), found none in {gt_dir}")
    os.makedirs(lq_dir, exist_ok=True)
    written = []
    for i, name in enumerate(files):
        gt = read_image(os.path.join(gt_dir, name))
        out = degrade.execute(gt.permute(0, 2, 3, 1), pipeline=pipeline, seed=seed + i, scale=scale).args[0]
        x = out.permute(0, 3, 1, 2)
        if lq_scale != 1.0:
            h, w = (max(1, round(s / lq_scale)) for s in x.shape[-2:])
            x = F.interpolate(x, size=(h, w), mode="bicubic", antialias=True, align_corners=False)
        arr = (x[0].clamp(0, 1).permute(1, 2, 0).numpy() * 255.0).round().astype("uint8")
        target = os.path.splitext(name)[0] + ".png"
        Image.fromarray(arr).save(os.path.join(lq_dir, target))
        written.append(target)
    return written


def run_compare(gt_dir: str, work_dir: str, pipelines: list[str], *, degradation: str = "realesrgan", seed: int = 0,
                scale: float = 4.0, lq_scale: float = 1.0, crop_border: int = 0, lpips_weights: str = "auto",
                musiq_weights: str = "auto", overwrite: bool = False, progress: bool = True) -> tuple[list, str]:
    """Run the protocol (module docstring); returns (rows, table text): one row per pipeline with the mean of each
    metric (``pipeline`` = label, ``images`` = count)."""
    import nodes

    from .runner import run_batch

    parsed = [parse_pipeline(p) for p in pipelines]
    labels = [label for label, _, _ in parsed]
    if len(set(labels)) != len(labels) or "lq" in labels:
        raise WorkflowError(f"pipelines: expected distinct labels other than 'lq', found {labels}")
    lq_dir = os.path.join(work_dir, "lq")
    degrade_folder(gt_dir, lq_dir, pipeline=degradation, seed=seed, scale=scale, lq_scale=lq_scale)
    rows, notes = [], []
    for label, path, overrides in parsed:
        with open(path, encoding="utf-8") as f:
            wf = apply_overrides(json.load(f), overrides, nodes.NODE_CLASS_MAPPINGS, label)
        os.makedirs(work_dir, exist_ok=True)
        wf_path = os.path.join(work_dir, f"{label}.workflow.json")
        with open(wf_path, "w", encoding="utf-8") as f:
            json.dump(wf, f)
        out_dir = os.path.join(work_dir, label)
        run_batch(wf_path, lq_dir, out_dir, overwrite=overwrite, progress=progress)
        per_image, pipeline_notes = measure_folder(out_dir, gt_dir, crop_border=crop_border,
                                                   lpips_weights=lpips_weights, musiq_weights=musiq_weights)
        write_csv(per_image, os.path.join(out_dir, "metrics.csv"))
        rows.append({"pipeline": label, "images": len(per_image), **metrics_mod.mean_row(per_image)})
        notes += [f"{label}: {n}" if "resized" in n else n for n in pipeline_notes if n not in notes]
    with open(os.path.join(work_dir, "compare.csv"), "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(["pipeline", "images", *metrics_mod.METRIC_COLUMNS])
        for r in rows:
            w.writerow([r["pipeline"], r["images"]] + ["" if r[c] is None else f"{r[c]:.6f}"
                                                       for c in metrics_mod.METRIC_COLUMNS])
    header = (f"{len(image_files(gt_dir))} ground-truth images from {gt_dir}, degraded with {degradation} "
              f"(seed {seed}+i, scale {scale}, LQ shrunk x{lq_scale}); means per pipeline:")
    text = "\n".join([header, metrics_mod.format_table(rows, "pipeline"), *notes])
    return rows, text


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="compare.py", description=(
        "LoRA-SUPIR's protocol: degrade a folder of ground-truth photos with Degrade Image (fixed seeds), restore "
        "them with two or more workflows, and print PSNR/SSIM (RGB and Y), LPIPS and MUSIQ side by side."))
    p.add_argument("gt", help="folder of ground-truth images")
    p.add_argument("work", help="folder for the degraded set (lq/), each pipeline's results and the CSV files")
    p.add_argument("pipelines", nargs="+", help="label=workflow.json[@Type.widget=value,...] (two or more)")
    p.add_argument("--degradation", default="realesrgan", help="Degrade Image pipeline (default realesrgan)")
    p.add_argument("--seed", type=int, default=0, help="seed of the first image (image i gets seed + i)")
    p.add_argument("--scale", type=float, default=4.0, help="Degrade Image's scale (realesrgan only)")
    p.add_argument("--lq-scale", type=float, default=1.0,
                   help="save the degraded images this many times smaller (e.g. 4 for a x4 workflow)")
    p.add_argument("--crop-border", type=int, default=0, help="pixels cropped from each side before measuring")
    p.add_argument("--lpips-weights", default="auto", help="LPIPS file in models/iqa, auto or none")
    p.add_argument("--musiq-weights", default="auto", help="MUSIQ file in models/iqa, auto or none")
    p.add_argument("--overwrite", action="store_true", help="redo results that exist")
    p.add_argument("--comfyui", help="ComfyUI folder (default: $COMFYUI_PATH, else the folder above custom_nodes)")
    p.add_argument("--extra-model-paths-config", action="append", default=[],
                   help="extra_model_paths.yaml files to read (ComfyUI's own is read when present)")
    p.add_argument("--cpu", action="store_true", help="run on the CPU")
    return p


def main(argv=None) -> int:
    args = parser().parse_args(argv)
    try:
        _, text = run_compare(args.gt, args.work, args.pipelines, degradation=args.degradation, seed=args.seed,
                              scale=args.scale, lq_scale=args.lq_scale, crop_border=args.crop_border,
                              lpips_weights=args.lpips_weights, musiq_weights=args.musiq_weights,
                              overwrite=args.overwrite)
    except (WorkflowError, RuntimeError, OSError, ValueError) as e:
        print(f"compare.py: {e}", file=sys.stderr)
        return 2
    print(text)
    return 0

