"""IQA Classifier node: MUSIQ score -> (class, k, w) per image."""

from __future__ import annotations

import math
import os
import threading

import torch
import torch.nn.functional as F
from comfy_api.latest import io, ui

from ..modules import iqa as iqa_mod
from ..modules.image_ops import downscale_max_side
from ..modules.weights_kind import identify_weights
from .aliases import aliases_for
from .common import (
    CAT_QUALITY,
    PackError,
    RestoreParams,
    check_interrupt,
    check_model_file_name,
    choice_error,
    input_image,
    load_weights,
    show_text_on_node,
    widget_bounds_error,
)
from .manifest import where_to_get

IQA_FOLDER = "iqa"
AUTO = "auto"
MUSIQ_MIN_SIDE = 32  # one MUSIQ patch
# The scoring ceiling. MUSIQ attends over every 32x32 patch of the image it scores, so its memory grows with the
# square of the pixel count (a 16-MP photo asked for a 6.6 GB attention matrix). AdaptBIR scores the image at the
# size it restores (short side 512 and up, e.g. 512x512 or a DIV2K-size 2040x1356); up to this many pixels the
# node scores exactly like that. Larger images are shrunk to it (area filter, aspect kept): about 1.5 GiB of
# working memory on CPU (docs/performance-memory.md).
MUSIQ_MAX_PIXELS = 2048 * 2048


def scoring_size(height: int, width: int, max_pixels: int | None = None,
                 min_side: int = MUSIQ_MIN_SIDE) -> tuple[int, int]:
    """The (height, width) MUSIQ scores an image of ``height`` x ``width`` px at: unchanged when it has at least
    ``min_side`` px on its short side and at most ``max_pixels`` (default :data:`MUSIQ_MAX_PIXELS`) pixels;
    a thinner image is brought up to ``min_side`` on its short side (aspect kept); one above the ceiling is brought
    down to it. PackError naming the image when both cannot hold (an aspect ratio above max_pixels / min_side^2),
    so no size is ever computed beyond the ceiling."""
    max_pixels = MUSIQ_MAX_PIXELS if max_pixels is None else int(max_pixels)
    scale = max(1.0, min_side / min(height, width))
    if height * width * scale * scale > max_pixels:
        scale = math.sqrt(max_pixels / (height * width))
    if scale == 1.0:
        h, w = height, width
    elif scale > 1.0:  # thin: short side up to min_side (as before the ceiling existed)
        h, w = max(min_side, round(height * scale)), max(min_side, round(width * scale))
    else:
        h, w = max(1, int(height * scale)), max(1, int(width * scale))
    if min(h, w) < min_side or h * w > max_pixels:
        raise PackError(
            f"image: expected an aspect ratio MUSIQ can score (at least {min_side} px on the short side within "
            f"{max_pixels} pixels, at most {max_pixels // (min_side * min_side)}:1), found {width}x{height} (width x "
            f"height); crop it to a less extreme aspect ratio first")
    return h, w


def fit_for_scoring(x: torch.Tensor, max_pixels: int | None = None) -> torch.Tensor:
    """(B, 3, H, W) float [0, 1] resized to :func:`scoring_size` (bicubic up, area down; itself when unchanged)."""
    h, w = x.shape[-2:]
    th, tw = scoring_size(h, w, max_pixels)
    if (th, tw) == (h, w):
        return x
    if th <= h and tw <= w:
        return F.interpolate(x, size=(th, tw), mode="area")
    return F.interpolate(x, size=(th, tw), mode="bicubic", align_corners=False).clamp(0.0, 1.0)


class _MusiqCache:
    """Keeps the most recently used MUSIQ network (a ModelPatcher) so repeated runs do not reload it.

    Keyed by (variant, path, size, mtime): replacing the file on disk reloads it. One entry, so switching the metric
    frees the previous network.
    """

    def __init__(self):
        self._lock = threading.Lock()
        self._key = None
        self._patcher = None

    def get(self, variant: str, path: str):
        import comfy.model_management as mm
        import comfy.model_patcher

        st = os.stat(path)
        key = (variant, os.path.realpath(path), st.st_size, st.st_mtime_ns)
        with self._lock:
            if self._key != key:
                sd = load_weights(path, f"pyiqa MUSIQ weights ({variant})")
                try:
                    net = iqa_mod.build_musiq(variant, sd)
                except ValueError as e:
                    kind = identify_weights(sd)
                    if kind is not None and "MUSIQ" not in kind:  # another model's file: say which
                        raise PackError(f"{os.path.basename(path)}: MUSIQ weights expected for metric '{variant}' "
                                        f"(pyiqa's MUSIQ tensors), found {kind}") from None
                    raise PackError(f"{os.path.basename(path)}: {e}") from None
                self._patcher = comfy.model_patcher.ModelPatcher(
                    net, load_device=mm.get_torch_device(), offload_device=mm.unet_offload_device())
                self._key = key
            return self._patcher

    def clear(self):
        with self._lock:
            self._key = None
            self._patcher = None


MUSIQ_CACHE = _MusiqCache()


def resolve_musiq_weights(variant: str, weights: str) -> str:
    """Path of the MUSIQ weights to use; ``auto`` means pyiqa's published file name for ``variant``."""
    from .paths import folder_dirs, full_path

    filename = iqa_mod.MUSIQ_VARIANTS[variant][1] if weights == AUTO else weights
    check_model_file_name(IQA_FOLDER, filename)
    path = full_path(IQA_FOLDER, filename)
    if path is None:
        dirs = folder_dirs(IQA_FOLDER)
        raise PackError(
            f"MUSIQ weights '{filename}' for metric '{variant}' were not found in the '{IQA_FOLDER}' model folder "
            f"({', '.join(dirs)}): {where_to_get(IQA_FOLDER, filename)} (the pack never downloads weights itself).")
    return path


DEFAULT_WEIGHTS = iqa_mod.MUSIQ_VARIANTS["musiq"][1]  # the widget names a real file (the page's download dialog)


def _weights_options() -> list[str]:
    """'auto', the default metric's file (listed even before it is downloaded: queuing then names its download),
    then the files of the iqa folder."""
    from .paths import filename_list

    files = filename_list(IQA_FOLDER)
    return list(dict.fromkeys([AUTO, DEFAULT_WEIGHTS, *files]))


def metric_file_error(metric: str, weights) -> str | None:
    """The message when ``weights`` is pyiqa's published file of another MUSIQ metric than ``metric`` (it would
    load and score on the wrong scale silently), else None."""
    for other, spec in iqa_mod.MUSIQ_VARIANTS.items():
        if weights == spec[1] and other != metric:
            return (f"weights: expected pyiqa's file for metric '{metric}' "
                    f"({iqa_mod.MUSIQ_VARIANTS[metric][1]}) or 'auto', found the file of metric '{other}' "
                    f"({weights}); choose the matching metric or file")
    return None


class IQAClassifier(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="AdaptBIR_IQAClassifier",
            **aliases_for("AdaptBIR_IQAClassifier"),
            display_name="IQA Classifier (MUSIQ)",
            category=CAT_QUALITY,
            description=(
                "Rates how damaged each photo is (a quality score) and picks how strongly to restore it. "
                "Scores every image of the batch with MUSIQ (pyiqa) and turns the score into AdaptBIR's restoration "
                "settings: the quality class, k (how much of the SD encoder's latent to mix in) and w (CSFT "
                "strength). Low quality -> severe (k=0, w=0, rely on the restorer); high quality -> mild (keep "
                "detail). Scores the image at the resolution it receives: put it after the resize that sets the "
                "restoration size, as AdaptBIR does."),
            is_output_node=True,
            inputs=[
                io.Image.Input("image", tooltip=(
                    "Images to score (RGB, RGBA or grey; alpha is ignored). Scored at this resolution: MUSIQ looks "
                    "at every 32x32 patch, so cost grows with the pixel count (CPU about 0.5 s at 512x512, 7 s at "
                    "1024x1024).")),
                io.Combo.Input("metric", options=list(iqa_mod.MUSIQ_VARIANTS), default="musiq", tooltip=(
                    "MUSIQ variant: musiq = KonIQ-10k (about 0..100, AdaptBIR's choice); musiq-spaq and "
                    "musiq-paq2piq also about 0..100; musiq-ava = aesthetics, 1..10 (thresholds then apply to "
                    "score x 10).")),
                io.Combo.Input("weights", options=_weights_options(), default=DEFAULT_WEIGHTS, tooltip=(
                    "Weights file in ComfyUI/models/iqa: pyiqa's file of the chosen metric (musiq: "
                    "musiq_koniq_ckpt-e95806b9.pth, the default; named so the page can offer its download). 'auto' "
                    "picks pyiqa's file for whatever metric is chosen. Nothing is downloaded.")),
                io.Combo.Input("mode", options=list(iqa_mod.MAPPING_MODES), default="adaptbir", tooltip=(
                    "adaptbir: the released code's continuous mapping (medium band: k = score/100, "
                    "w = score/70). classes: the paper's three classes with fixed k and w each.")),
                io.Float.Input("low_threshold", default=40.0, min=0.0, max=100.0, step=0.5, tooltip=(
                    "Scores at or below this (0..100 scale) are 'severe': k = 0 and w = 0.")),
                io.Float.Input("high_threshold", default=70.0, min=0.0, max=100.0, step=0.5, tooltip=(
                    "Scores above this (0..100 scale) are 'mild': k = k_max and w = w_max. Must be above "
                    "low_threshold.")),
                io.Float.Input("k_max", default=0.7, min=0.0, max=1.0, step=0.01, tooltip=(
                    "k for mild images (and the cap of k). 0 = never mix in the SD encoder latent.")),
                io.Float.Input("w_max", default=1.0, min=0.0, max=2.0, step=0.01, tooltip=(
                    "CSFT strength for mild images; the medium band scales up to it.")),
                io.Int.Input("score_max_side", default=0, min=0, max=8192, step=8, tooltip=(
                    "0 = score at full resolution (AdaptBIR) up to 2048x2048 pixels (4.2 MP); larger images are "
                    "shrunk to that pixel count so memory stays bounded (the node says so). A value > 0 first "
                    "shrinks images whose longer side exceeds it, which is faster but changes the score.")),
            ],
            outputs=[
                RestoreParams.Output("params", display_name="params", tooltip=(
                    "Per-image score, class, k and w; connect to Dual Encoder Interpolate or CSFT Apply so each "
                    "image of the batch gets its own settings.")),
                io.Float.Output("k", display_name="k", tooltip="k of the first image (0..1)."),
                io.Float.Output("w", display_name="w", tooltip="w (CSFT strength) of the first image."),
                io.Float.Output("score", display_name="score",
                    tooltip="MUSIQ score of the first image (higher is better)."),
                io.String.Output("quality_class", display_name="quality_class",
                    tooltip="'severe', 'medium' or 'mild' for the first image."),
            ],
            hidden=[io.Hidden.unique_id],
        )

    @classmethod
    def validate_inputs(cls, low_threshold=40.0, high_threshold=70.0, **kwargs):
        bad = widget_bounds_error(cls, {"low_threshold": low_threshold, "high_threshold": high_threshold, **kwargs}) \
            or choice_error(cls, {k: kwargs.get(k) for k in ("metric", "mode")})  # weights: a file list
        if bad:
            return bad
        if not low_threshold < high_threshold:
            return (f"low_threshold ({low_threshold}) must be below high_threshold ({high_threshold})")
        weights, metric = kwargs.get("weights"), kwargs.get("metric", "musiq")
        if weights is not None and metric in iqa_mod.MUSIQ_VARIANTS:
            mismatch = metric_file_error(metric, weights)
            if mismatch:
                return mismatch
            # checked when the prompt is queued, so every missing file of a graph is named at once
            try:
                resolve_musiq_weights(metric, weights)
            except PackError as e:
                return str(e)
        return True

    @classmethod
    def fingerprint_inputs(cls, metric="musiq", weights=AUTO, **kwargs):
        # Re-run when the weights file changes on disk, not only when the widget changes.
        try:
            path = resolve_musiq_weights(metric, weights)
        except (PackError, KeyError):
            return None
        st = os.stat(path)
        return (path, st.st_size, st.st_mtime_ns)

    @classmethod
    def execute(cls, image, metric="musiq", weights=DEFAULT_WEIGHTS, mode="adaptbir", low_threshold=40.0,
                high_threshold=70.0, k_max=0.7, w_max=1.0, score_max_side=0) -> io.NodeOutput:
        import comfy.model_management as mm
        import comfy.utils

        if metric not in iqa_mod.MUSIQ_VARIANTS:
            raise PackError(f"metric: expected one of {list(iqa_mod.MUSIQ_VARIANTS)}, found {metric!r}")
        x = input_image(image, "image")
        x = downscale_max_side(x, score_max_side)
        size = tuple(x.shape[-2:])
        x = fit_for_scoring(x)
        ceiling = ""
        if x.shape[-2] * x.shape[-1] < size[0] * size[1]:
            ceiling = (f"scored at {x.shape[-1]}x{x.shape[-2]} (shrunk from {size[1]}x{size[0]}: above the "
                       f"{MUSIQ_MAX_PIXELS / 1e6:.1f} MP scoring ceiling)\n")

        patcher = MUSIQ_CACHE.get(metric, resolve_musiq_weights(metric, weights))
        mm.load_models_gpu([patcher])
        pbar = comfy.utils.ProgressBar(x.shape[0])
        scores = iqa_mod.score_images(patcher.model, x, check=check_interrupt, done=lambda: pbar.update(1))
        scale = iqa_mod.MUSIQ_VARIANTS[metric][2]
        # thresholds are on a 0..100 scale; map_score compares score/score_scale against them / 100
        params = iqa_mod.params_from_scores(
            scores, metric=metric, mode=mode, score_scale=scale, t_low=low_threshold / 100.0,
            t_high=high_threshold / 100.0, k_max=k_max, w_max=w_max)
        text = ceiling + params.summary()
        show_text_on_node(cls.hidden.unique_id, text)
        return io.NodeOutput(params, params.k[0], params.w[0], params.scores[0], params.classes[0],
                             ui=ui.PreviewText(text))


NODES = [IQAClassifier]
