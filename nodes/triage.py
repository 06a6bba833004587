"""Route By Quality: split an IMAGE batch into severe / medium / mild branches by the IQA Classifier's classes."""

from __future__ import annotations

from comfy_api.latest import io

from ..modules.iqa import QUALITY_CLASSES
from .aliases import aliases_for
from .common import CAT_QUALITY, PackError, RestoreParams, input_image


def per_image(values, batch: int) -> tuple:
    """``values`` (one entry per image of params) as ``batch`` entries: one entry applies to every image;
    otherwise the count must be ``batch`` (else PackError naming ``params``)."""
    values = tuple(values)
    if len(values) == 1:
        return values * batch
    if len(values) != batch:
        raise PackError(f"params: expected 1 or {batch} entries (one per image of the {batch}-image batch), "
                        f"found {len(values)}; score the same batch you route")
    return values


class RouteByQuality(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="AdaptBIR_RouteByQuality",
            **aliases_for("AdaptBIR_RouteByQuality"),
            display_name="Route By Quality",
            category=CAT_QUALITY,
            description=(
                "Sorts photos by how damaged they are, so each group can be restored its own way. "
                "Splits an image batch by the quality class the IQA Classifier gave each image, so severe, medium "
                "and mild images can go through different restoration settings. Images keep their input order "
                "and are passed on unchanged. A class with no image blocks its output silently: the nodes "
                "downstream of that branch do not run."),
            inputs=[
                io.Image.Input("image", tooltip=(
                    "The image batch (B,H,W,C) to route; the same batch (same order) that the IQA Classifier "
                    "scored. Passed on unchanged, alpha included.")),
                RestoreParams.Input("params", tooltip=(
                    "Per-image parameters from IQA Classifier: one entry per image, or one entry that then "
                    "applies to every image.")),
            ],
            outputs=[
                io.Image.Output("severe", display_name="severe",
                    tooltip="Images classed 'severe' (low score); blocked when there are none."),
                io.Image.Output("medium", display_name="medium",
                    tooltip="Images classed 'medium'; blocked when there are none."),
                io.Image.Output("mild", display_name="mild",
                    tooltip="Images classed 'mild' (high score); blocked when there are none."),
                io.String.Output("summary", display_name="summary", tooltip=(
                    "One line per input image: index, score and class (2 decimals), e.g. '#0 musiq=31.52 severe'.")),
            ],
        )

    @classmethod
    def execute(cls, image, params) -> io.NodeOutput:
        """``image`` (B,H,W,C) -> the images of each class as (n,H,W,C) slices of ``image``, or a silent
        ExecutionBlocker for an empty class, plus the summary text."""
        from comfy_execution.graph_utils import ExecutionBlocker

        input_image(image, "image")  # validation only: empty batch, odd channel count, NaN/inf
        batch = image.shape[0]
        classes, scores = per_image(params.classes, batch), per_image(params.scores, batch)
        routes = {c: [] for c in QUALITY_CLASSES}
        for i, c in enumerate(classes):
            if c not in routes:
                raise PackError(f"params: expected classes {QUALITY_CLASSES}, found {c!r} for image {i}")
            routes[c].append(i)
        metric = getattr(params, "metric", "score")
        summary = "\n".join(f"#{i} {metric}={s:.2f} {c}" for i, (s, c) in enumerate(zip(scores, classes)))
        outs = [ExecutionBlocker(None) if not idx else image if len(idx) == batch else image[idx]
                for idx in routes.values()]
        return io.NodeOutput(*outs, summary)


NODES = [RouteByQuality]
