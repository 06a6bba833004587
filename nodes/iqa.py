"""IQA Classifier node: MUSIQ score -> (class, k, w) per image."""

from __future__ import annotations

import os
import threading

from comfy_api.latest import io, ui

from ..modules import iqa as iqa_mod
from ..modules.image_ops import downscale_max_side, upscale_min_side
from ..modules.weights_kind import identify_weights
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

IQA_FOLDER = "iqa"
WEIGHTS_SOURCE = "https://huggingface.co/chaofengc/IQA-PyTorch-Weights"
AUTO = "auto"
MUSIQ_MIN_SIDE = 32  # one MUSIQ patch


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
            f"({', '.join(dirs)}). Download '{filename}' from {WEIGHTS_SOURCE} and put it in "
            f"ComfyUI/models/{IQA_FOLDER}/ (the pack never downloads weights itself).")
    return path


def _weights_options() -> list[str]:
    from .paths import filename_list

    files = filename_list(IQA_FOLDER)
    return [AUTO] + [f for f in files if f != AUTO]


class IQAClassifier(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="AdaptBIR_IQAClassifier",
            display_name="IQA Classifier (MUSIQ)",
            category=CAT_QUALITY,
            description=(
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
                io.Combo.Input("weights", options=_weights_options(), default=AUTO, tooltip=(
                    "Weights file in ComfyUI/models/iqa. 'auto' uses pyiqa's published file for the chosen metric "
                    "(e.g. musiq_koniq_ckpt-e95806b9.pth). Nothing is downloaded.")),
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
                    "0 = score at full resolution (AdaptBIR). A value > 0 first shrinks images whose longer side "
                    "exceeds it, which is faster but changes the score.")),
            ],
            outputs=[
                RestoreParams.Output("params", tooltip=(
                    "Per-image score, class, k and w; connect to Dual Encoder Interpolate or CSFT Apply so each "
                    "image of the batch gets its own settings.")),
                io.Float.Output("k", tooltip="k of the first image (0..1)."),
                io.Float.Output("w", tooltip="w (CSFT strength) of the first image."),
                io.Float.Output("score", tooltip="MUSIQ score of the first image (higher is better)."),
                io.String.Output("quality_class", tooltip="'severe', 'medium' or 'mild' for the first image."),
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
    def execute(cls, image, metric="musiq", weights=AUTO, mode="adaptbir", low_threshold=40.0,
                high_threshold=70.0, k_max=0.7, w_max=1.0, score_max_side=0) -> io.NodeOutput:
        import comfy.model_management as mm
        import comfy.utils

        if metric not in iqa_mod.MUSIQ_VARIANTS:
            raise PackError(f"metric: expected one of {list(iqa_mod.MUSIQ_VARIANTS)}, found {metric!r}")
        x = input_image(image, "image")
        x = upscale_min_side(downscale_max_side(x, score_max_side), MUSIQ_MIN_SIDE)

        patcher = MUSIQ_CACHE.get(metric, resolve_musiq_weights(metric, weights))
        mm.load_models_gpu([patcher])
        pbar = comfy.utils.ProgressBar(x.shape[0])
        scores = iqa_mod.score_images(patcher.model, x, check=check_interrupt, done=lambda: pbar.update(1))
        scale = iqa_mod.MUSIQ_VARIANTS[metric][2]
        # thresholds are on a 0..100 scale; map_score compares score/score_scale against them / 100
        params = iqa_mod.params_from_scores(
            scores, metric=metric, mode=mode, score_scale=scale, t_low=low_threshold / 100.0,
            t_high=high_threshold / 100.0, k_max=k_max, w_max=w_max)
        text = params.summary()
        show_text_on_node(cls.hidden.unique_id, text)
        return io.NodeOutput(params, params.k[0], params.w[0], params.scores[0], params.classes[0],
                             ui=ui.PreviewText(text))


NODES = [IQAClassifier]
