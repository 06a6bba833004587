"""Restoration metrics of a folder of results against a folder of ground truth, written as CSV.

Used by the batch runner's ``--metrics-gt`` option and by the comparison command (batch/compare.py). Results and
ground truth are matched by file name without extension (``out/a.png`` <-> ``gt/a.jpg``). A result whose size
differs from its ground truth (e.g. a x4 workflow on a same-size degraded input) is resized to the ground truth's
size (bicubic, antialiased) before measuring, and the notes say how many were.
"""

from __future__ import annotations

import csv
import os

import numpy as np
import torch
import torch.nn.functional as F

from ..modules import metrics as metrics_mod
from .workflow import WorkflowError, image_files

CSV_NAME = "metrics.csv"


def read_image(path: str) -> torch.Tensor:
    """An image file as (1, 3, H, W) float32 RGB in [0, 1]."""
    from PIL import Image

    with Image.open(path) as im:
        arr = np.asarray(im.convert("RGB"), dtype=np.float32) / 255.0
    return torch.from_numpy(arr).permute(2, 0, 1).unsqueeze(0).contiguous()


def measure_folder(results_dir: str, gt_dir: str, *, crop_border: int = 0, lpips_weights: str = "auto",
                   musiq_weights: str = "auto") -> tuple[list[dict], list[str]]:
    """(rows, notes): one row per result image (``image`` = its file name, then the metric columns of
    modules/metrics.py) in name order. WorkflowError when a result has no ground truth or there are no results."""
    from ..nodes.metrics import measure

    gts = {os.path.splitext(f)[0]: f for f in image_files(gt_dir)}
    results = [f for f in image_files(results_dir)]
    if not results:
        raise WorkflowError(f"metrics: expected restored images in {results_dir}, found none")
    rows, notes, resized = [], [], 0
    for name in results:
        stem = os.path.splitext(name)[0]
        if stem not in gts:
            raise WorkflowError(f"metrics: expected a ground-truth image named {stem}.* in {gt_dir} for {name}, "
                                f"found none; give the ground truth the same names as the inputs")
        restored, ref = read_image(os.path.join(results_dir, name)), read_image(os.path.join(gt_dir, gts[stem]))
        if restored.shape[-2:] != ref.shape[-2:]:
            restored = F.interpolate(restored, size=ref.shape[-2:], mode="bicubic", antialias=True,
                                     align_corners=False).clamp(0, 1)
            resized += 1
        (row,), row_notes = measure(restored, ref, crop_border, lpips_weights, musiq_weights)
        rows.append({"image": name, **row})
        notes += [n for n in row_notes if n not in notes]
    if resized:
        notes.append(f"{resized} of {len(rows)} results resized to their ground truth's size before measuring")
    return rows, notes


def write_csv(rows: list[dict], path: str) -> None:
    """``rows`` and their mean (last row, image = ``mean``) as CSV; empty cells for skipped metrics."""
    cols = ["image", *metrics_mod.METRIC_COLUMNS]
    with open(path, "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(cols)
        for row in [*rows, {"image": "mean", **metrics_mod.mean_row(rows)}]:
            w.writerow([row["image"]] + ["" if row.get(c) is None else f"{row[c]:.6f}" for c in cols[1:]])


def write_metrics_csv(results_dir: str, gt_dir: str, **kwargs) -> str:
    """Measure ``results_dir`` against ``gt_dir`` (see :func:`measure_folder`), write ``results_dir/metrics.csv``,
    print the table; returns the CSV path."""
    try:
        rows, notes = measure_folder(results_dir, gt_dir, **kwargs)
    except WorkflowError:
        raise
    except ValueError as e:  # the Restoration Metrics node's PackError (size, weights files)
        raise WorkflowError(f"metrics: {e}") from None
    path = os.path.join(results_dir, CSV_NAME)
    write_csv(rows, path)
    table = [*rows, {"image": "mean", **metrics_mod.mean_row(rows)}]
    print(metrics_mod.format_table(table, "image"))
    for n in notes:
        print(n)
    print(f"wrote {path}")
    return path
