"""Restoration Metrics node: PSNR / SSIM (RGB and Y), LPIPS and MUSIQ of restored images against ground truth.

:func:`measure` is the one entry point shared by the node, the batch runner's ``--metrics-gt`` option
(batch/metrics.py) and the comparison command (batch/compare.py).
"""

from __future__ import annotations

import os
import threading

import torch
from comfy_api.latest import io, ui

from ..modules import iqa as iqa_mod
from ..modules import metrics as metrics_mod
from ..modules.image_ops import upscale_min_side
from .aliases import aliases_for
from .common import (
    CAT_QUALITY,
    PackError,
    check_interrupt,
    check_model_file_name,
    input_image,
    load_weights,
    show_text_on_node,
)
from .iqa import IQA_FOLDER, MUSIQ_CACHE, MUSIQ_MIN_SIDE, resolve_musiq_weights

AUTO, NONE = "auto", "none"
# LPIPS v0.1 AlexNet heads: pyiqa's published copy, or the file shipped in the `lpips` package (weights/v0.1/).
LPIPS_HEADS = ("LPIPS_v0.1_alex-df73285e.pth", "alex.pth")
ALEXNET_TRUNK = "alexnet-owt-7be5be79.pth"  # torchvision's ImageNet AlexNet (download.pytorch.org/models/)
LPIPS_SOURCE = ("heads: https://github.com/richzhang/PerceptualSimilarity (BSD-2-Clause; also pyiqa's "
                "LPIPS_v0.1_alex-df73285e.pth), trunk: torchvision's https://download.pytorch.org/models/"
                f"{ALEXNET_TRUNK} (BSD-3-Clause)")
LPIPS_MIN_SIDE = 32  # AlexNet's stride-4 stem and two poolings need at least this much


def _iqa_files() -> list[str]:
    from .paths import filename_list

    return filename_list(IQA_FOLDER)


def _find(name: str):
    from .paths import full_path

    check_model_file_name(IQA_FOLDER, name)
    return full_path(IQA_FOLDER, name)


class _LPIPSCache:
    """The last LPIPS network, keyed by its files' paths, sizes and mtimes."""

    def __init__(self):
        self._lock = threading.Lock()
        self._key, self._net = None, None

    def get(self, heads_path: str):
        trunk_path = _find(ALEXNET_TRUNK)
        key = tuple((p, os.stat(p).st_size, os.stat(p).st_mtime_ns) for p in (heads_path, trunk_path) if p)
        with self._lock:
            if self._key != key:
                heads = load_weights(heads_path, "LPIPS weights (AlexNet v0.1 heads)")
                trunk = load_weights(trunk_path, "torchvision's AlexNet weights") if trunk_path else None
                try:
                    sd = metrics_mod.lpips_state_dict(heads, trunk)
                except ValueError as e:
                    raise PackError(f"lpips_weights '{os.path.basename(heads_path)}': expected {LPIPS_SOURCE}, "
                                    f"found {e} (looked for {ALEXNET_TRUNK} in ComfyUI/models/{IQA_FOLDER})") from None
                self._net, self._key = metrics_mod.build_lpips(sd), key
            return self._net


LPIPS_CACHE = _LPIPSCache()


def resolve_lpips(weights: str):
    """(heads path or None, note): ``none`` -> skipped; ``auto`` -> the first published name present, else skipped
    with a note; a file name -> that file (PackError when missing)."""
    if weights == NONE:
        return None, ""
    if weights == AUTO:
        for name in LPIPS_HEADS:
            path = _find(name)
            if path:
                return path, ""
        return None, (f"LPIPS skipped: no {LPIPS_HEADS[0]} in ComfyUI/models/{IQA_FOLDER} ({LPIPS_SOURCE})")
    path = _find(weights)
    if path is None:
        raise PackError(f"lpips_weights '{weights}' was not found in the '{IQA_FOLDER}' model folder; put the "
                        f"LPIPS file there ({LPIPS_SOURCE})")
    return path, ""


def resolve_musiq(weights: str):
    """(MUSIQ path or None, note), like :func:`resolve_lpips` for pyiqa's MUSIQ-KonIQ file."""
    if weights == NONE:
        return None, ""
    try:
        return resolve_musiq_weights("musiq", weights), ""
    except PackError:
        if weights != AUTO:
            raise
        return None, (f"MUSIQ skipped: no {iqa_mod.MUSIQ_VARIANTS['musiq'][1]} in ComfyUI/models/{IQA_FOLDER}")


def measure(restored: torch.Tensor, reference: torch.Tensor, crop_border: int = 0, lpips_weights: str = AUTO,
            musiq_weights: str = AUTO, done=None) -> tuple[list[dict], list[str]]:
    """Metrics of each restored image against its reference.

    ``restored`` and ``reference``: (B, 3, H, W) float in [0, 1] of the same size (a reference batch of 1 serves
    every restored image). Returns (rows, notes): one dict per image with psnr, ssim, psnr_y, ssim_y (BasicSR
    convention, see modules/metrics.py), lpips and musiq (None when skipped; MUSIQ scores the restored image),
    and a note per skipped metric. ``done()`` is called once per image."""
    import comfy.model_management as mm

    if reference.shape[0] == 1 and restored.shape[0] > 1:
        reference = reference.expand(restored.shape[0], -1, -1, -1)
    if restored.shape[0] != reference.shape[0] or restored.shape[-2:] != reference.shape[-2:]:
        raise PackError(f"restored and reference: expected the same number of images (or one reference) of the "
                        f"same size, found {restored.shape[0]} of {restored.shape[-1]}x{restored.shape[-2]} and "
                        f"{reference.shape[0]} of {reference.shape[-1]}x{reference.shape[-2]}; crop or resize the "
                        f"restored images to the ground truth first (e.g. Crop To Original Size)")
    lpips_path, lpips_note = resolve_lpips(lpips_weights)
    musiq_path, musiq_note = resolve_musiq(musiq_weights)
    if lpips_path and min(restored.shape[-2:]) < LPIPS_MIN_SIDE:
        raise PackError(f"restored: LPIPS needs images of at least {LPIPS_MIN_SIDE}x{LPIPS_MIN_SIDE} pixels, found "
                        f"{restored.shape[-1]}x{restored.shape[-2]}; set lpips_weights to none for smaller images")
    try:
        cols = {"psnr": metrics_mod.psnr(restored, reference, crop_border),
                "ssim": metrics_mod.ssim(restored, reference, crop_border),
                "psnr_y": metrics_mod.psnr(restored, reference, crop_border, y_channel=True),
                "ssim_y": metrics_mod.ssim(restored, reference, crop_border, y_channel=True)}
    except ValueError as e:
        raise PackError(f"crop_border / image size: {e}") from None
    device = mm.get_torch_device()
    lp = None
    if lpips_path:
        net = LPIPS_CACHE.get(lpips_path).to(device)
        with torch.no_grad():
            lp = torch.cat([net(restored[i:i + 1].to(device), reference[i:i + 1].to(device)).cpu()
                            for i in range(restored.shape[0])])
        net.to("cpu")
    mq = None
    if musiq_path:
        patcher = MUSIQ_CACHE.get("musiq", musiq_path)
        mm.load_models_gpu([patcher])
        mq = iqa_mod.score_images(patcher.model, upscale_min_side(restored, MUSIQ_MIN_SIDE), check=check_interrupt)
    rows = []
    for i in range(restored.shape[0]):
        row = {k: float(v[i]) for k, v in cols.items()}
        row["lpips"] = float(lp[i]) if lp is not None else None
        row["musiq"] = float(mq[i]) if mq is not None else None
        rows.append(row)
        if done:
            done()
    return rows, [n for n in (lpips_note, musiq_note) if n]


def report(rows: list[dict], notes: list[str], label: str = "image") -> str:
    """The text table of ``rows`` (labelled #0, #1, ... unless they carry ``label``) with a mean row and notes."""
    table = [{label: r.get(label, f"#{i}"), **r} for i, r in enumerate(rows)]
    if len(rows) > 1:
        table.append({label: "mean", **metrics_mod.mean_row(rows)})
    return "\n".join([metrics_mod.format_table(table, label), *notes])


class RestorationMetrics(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        files = _iqa_files()
        return io.Schema(
            node_id="AdaptBIR_RestorationMetrics",
            **aliases_for("AdaptBIR_RestorationMetrics"),
            display_name="Restoration Metrics (PSNR, SSIM, LPIPS, MUSIQ)",
            category=CAT_QUALITY,
            description=(
                "Measures how close a restored photo is to the original it came from, and how good it looks. "
                "Compares restored images with their ground truth: PSNR and SSIM on RGB and on the BT.601 luma Y "
                "(BasicSR's convention, 0..255 scale, optional border crop), LPIPS (AlexNet v0.1) when its weights "
                "are in ComfyUI/models/iqa, and the no-reference MUSIQ score of the restored image. Shows a table "
                "per image and the mean on the node."),
            is_output_node=True,
            inputs=[
                io.Image.Input("restored", tooltip="The restored images (any batch size)."),
                io.Image.Input("reference", tooltip=(
                    "The ground truth, same size as the restored images: one per restored image, or one for all.")),
                io.Int.Input("crop_border", default=0, min=0, max=256, tooltip=(
                    "Pixels removed from every side before PSNR/SSIM/LPIPS (BasicSR crops the scale factor, e.g. 4 "
                    "for x4 super-resolution). 0 = whole image.")),
                io.Combo.Input("lpips_weights", options=[AUTO, NONE] + files, default=AUTO, tooltip=(
                    "LPIPS heads in ComfyUI/models/iqa: auto = LPIPS_v0.1_alex-df73285e.pth (pyiqa) or alex.pth "
                    "(the lpips package), skipped when absent; the AlexNet trunk alexnet-owt-7be5be79.pth "
                    "(torchvision) must be there too unless the file holds it. none = skip LPIPS.")),
                io.Combo.Input("musiq_weights", options=[AUTO, NONE] + files, default=AUTO, tooltip=(
                    "MUSIQ (KonIQ) weights in ComfyUI/models/iqa: auto = musiq_koniq_ckpt-e95806b9.pth, skipped "
                    "when absent. none = skip MUSIQ.")),
            ],
            outputs=[
                io.String.Output("report", display_name="report", tooltip=(
                    "The table: one line per image and the mean (also shown on the node).")),
                io.Float.Output("psnr", display_name="PSNR (RGB, mean)", tooltip="Mean PSNR in dB on RGB."),
                io.Float.Output("ssim", display_name="SSIM (RGB, mean)", tooltip="Mean SSIM on RGB."),
                io.Float.Output("psnr_y", display_name="PSNR (Y, mean)", tooltip="Mean PSNR in dB on Y."),
                io.Float.Output("ssim_y", display_name="SSIM (Y, mean)", tooltip="Mean SSIM on Y."),
                io.Float.Output("lpips", display_name="LPIPS (mean)", tooltip=(
                    "Mean LPIPS (lower is better); -1 when LPIPS was skipped.")),
                io.Float.Output("musiq", display_name="MUSIQ (mean)", tooltip=(
                    "Mean MUSIQ score of the restored images (higher is better); -1 when skipped.")),
            ],
            hidden=[io.Hidden.unique_id],
        )

    @classmethod
    def execute(cls, restored, reference, crop_border=0, lpips_weights=AUTO, musiq_weights=AUTO) -> io.NodeOutput:
        import comfy.utils

        x = input_image(restored, "restored")
        ref = input_image(reference, "reference")
        pbar = comfy.utils.ProgressBar(x.shape[0])
        rows, notes = measure(x, ref, int(crop_border), lpips_weights, musiq_weights, done=lambda: pbar.update(1))
        text = report(rows, notes)
        show_text_on_node(cls.hidden.unique_id, text)
        mean = metrics_mod.mean_row(rows)
        fl = {k: (float(v) if v is not None else -1.0) for k, v in mean.items()}
        return io.NodeOutput(text, fl["psnr"], fl["ssim"], fl["psnr_y"], fl["ssim_y"], fl["lpips"], fl["musiq"],
                             ui=ui.PreviewText(text))


NODES = [RestorationMetrics]
