"""Seeded synthetic degradations for blind image restoration training data (pure torch + kornia).

Three pipelines, each ``fn(images (B, 3, H, W) float [0, 1], generator, **overrides) -> (degraded, params)``:

* :func:`realesrgan_degrade` -- Real-ESRGAN second order (DiffBIR v2.1, AdaptBIR stages I-II), ranges
  :data:`REALESRGAN_RANGES`;
* :func:`codeformer_degrade` -- DiffBIR's first-order CodeFormer-style pipeline, presets :data:`CODEFORMER_PRESETS`
  (default ranges :data:`CODEFORMER_RANGES`);
* :func:`mild_degrade` -- AdaptBIR stage III "mild CodeFormer", ranges :data:`MILD_RANGES`.

``*_sample_params`` draw the parameters alone. Building blocks live in :mod:`.kernels` and :mod:`.ops`; the
choices made where the references are silent or buggy are listed in :mod:`.pipelines`.
"""

from .pipelines import (
                        CODEFORMER_PRESETS,
                        CODEFORMER_RANGES,
                        MILD_RANGES,
                        REALESRGAN_RANGES,
                        codeformer_degrade,
                        codeformer_sample_params,
                        mild_degrade,
                        mild_sample_params,
                        realesrgan_degrade,
                        realesrgan_sample_params,
)

__all__ = [
    "CODEFORMER_PRESETS", "CODEFORMER_RANGES", "MILD_RANGES", "REALESRGAN_RANGES",
    "codeformer_degrade", "codeformer_sample_params", "mild_degrade", "mild_sample_params",
    "realesrgan_degrade", "realesrgan_sample_params",
]
