"""Synthetic degradation: make a low-quality test input from a clean image (known ground truth)."""

from __future__ import annotations

import torch
from comfy_api.latest import io

from ..modules.degradations import codeformer_degrade, mild_degrade, realesrgan_degrade
from ..modules.image_ops import to_bhwc
from .aliases import aliases_for
from .common import CAT_IMAGE, PackError, check_interrupt, input_image

# The ceiling: the pipelines work on the whole batch at full resolution, about 220 bytes of working memory per
# pixel (measured for realesrgan: 0.87 GiB at 2048x2048, docs/performance-memory.md); 24 MP (a 6000x4000 photo)
# stays near 5 GiB. Beyond it the node refuses (a degraded 8k image is not a useful test input anyway).
DEGRADE_MAX_PIXELS = 24_000_000

# option -> (pipeline, CodeFormer preset). The option names are stored in saved workflows: never rename them.
PIPELINES = {
    "realesrgan": ("realesrgan", None),
    "codeformer_diffbir": ("codeformer", "diffbir"),
    "codeformer_diffbir_face": ("codeformer", "diffbir_face"),
    "codeformer_large": ("codeformer", "codeformer_large"),
    "codeformer_small": ("codeformer", "codeformer_small"),
    "mild_adaptbir": ("mild", None),
}


def _kernel(p: dict, key: str, i: int) -> str:
    t = p[f"{key}_type"][i]
    if t == "sinc":
        return f"sinc w={float(p[f'{key}_omega'][i]):.2f}"
    sx, sy = float(p[f"{key}_sigma_x"][i]), float(p[f"{key}_sigma_y"][i])
    return f"{t} sigma={sx:.2f}" + (f"/{sy:.2f}" if "aniso" in t else "")


def _realesrgan_line(p: dict, i: int) -> str:
    parts = []
    for s in ("1", "2"):
        blur = _kernel(p, f"kernel{s}", i) if s == "1" or bool(p["blur2_applied"][i]) else "off"
        if p[f"noise{s}_type"][i] == "gaussian":
            noise = f"gauss {float(p[f'noise{s}_gaussian_sigma'][i]):.1f}"
        else:
            noise = f"poisson {float(p[f'noise{s}_poisson_scale'][i]):.2f}"
        noise += " grey" if bool(p[f"noise{s}_gray"][i]) else ""
        parts.append(f"blur{s} {blur} resize{s}=x{float(p[f'resize{s}_scale'][i]):.2f} {p[f'resize{s}_mode'][i]} "
                     f"noise{s}={noise} jpeg{s}={float(p[f'jpeg{s}_quality'][i]):.0f}")
    sinc = f"sinc w={float(p['final_sinc_omega'][i]):.2f}" if bool(p["final_sinc_applied"][i]) else "sinc off"
    order = "sinc,jpeg" if bool(p["sinc_first"][i]) else "jpeg,sinc"
    return " | ".join(parts) + f" | {sinc} order={order} lq=1/{float(p['scale'][i]):.2f}"


def _first_order_line(p: dict, i: int) -> str:
    blur = _kernel(p, "kernel", i) if bool(p["blur_applied"][i]) else "off"
    return (f"blur {blur} down={float(p['downsample'][i]):.2f} noise={float(p['noise_sigma'][i]):.1f} "
            f"jpeg={int(p['jpeg_quality'][i])}")


def describe_params(pipeline: str, params: dict, batch: int) -> str:
    """One readable line per image: ``#i`` and the sampled values (sigmas/noise in 8-bit units; kernels left out)."""
    line = _realesrgan_line if PIPELINES[pipeline][0] == "realesrgan" else _first_order_line
    return "\n".join(f"#{i} {line(params, i)}" for i in range(batch))


class DegradeImage(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="AdaptBIR_DegradeImage",
            **aliases_for("AdaptBIR_DegradeImage"),
            display_name="Degrade Image (synthetic LQ)",
            category=CAT_IMAGE,
            description=(
                "Damages a clean photo on purpose (blur, noise, JPEG) to test restorers against the original. "
                "Makes a synthetic low-quality version of a clean image with the random degradations restorers are "
                "trained on (blur, resize, noise, JPEG), so restorers can be compared against known ground truth. "
                "The result keeps the input size. Seeded: the same seed, pipeline and image give bit-identical "
                "output (computed on the CPU). Each image of a batch gets its own random parameters."),
            inputs=[
                io.Image.Input("image", tooltip=(
                    "The clean image(s) to degrade (RGB, RGBA or grey; alpha is dropped). At most 24 MP per run "
                    "(batch x height x width), about 5 GiB of memory.")),
                io.Combo.Input("pipeline", options=list(PIPELINES), default="realesrgan", tooltip=(
                    "realesrgan = Real-ESRGAN second-order chain (DiffBIR v2.1, AdaptBIR stages I-II), strongest; "
                    "codeformer_* = DiffBIR's first-order blur/down/noise/JPEG with the ranges of DiffBIR "
                    "(general), DiffBIR faces, CodeFormer stage II (large) or stage III (small); mild_adaptbir = "
                    "AdaptBIR stage III mild degradation.")),
                io.Int.Input("seed", default=0, min=0, max=0xFFFFFFFFFFFFFFFF, control_after_generate=True, tooltip=(
                    "Seed of every random choice (CPU torch.Generator): the same seed reproduces the same result.")),
                io.Float.Input("scale", default=4.0, min=1.0, max=16.0, step=0.1, tooltip=(
                    "realesrgan only: the super-resolution factor; the chain ends at input size / scale and the "
                    "result is resized back to the input size (1 = no size loss). Ignored by the other pipelines.")),
            ],
            outputs=[
                io.Image.Output("degraded", display_name="degraded", tooltip=(
                    "The degraded image(s), same size as the input, values in [0, 1] (realesrgan: 8-bit levels).")),
                io.String.Output("params", display_name="params", tooltip=(
                    "The sampled parameters, one line per image (#0, #1, ...): blur kernel and sigma, resize "
                    "factor, noise (8-bit units), JPEG quality.")),
            ],
        )

    @classmethod
    def execute(cls, image, pipeline="realesrgan", seed=0, scale=4.0) -> io.NodeOutput:
        if pipeline not in PIPELINES:
            raise PackError(f"pipeline: expected one of {list(PIPELINES)}, found {pipeline!r}")
        check_interrupt()
        x = input_image(image, "image").cpu()
        b, _, h, w = x.shape
        if b * h * w > DEGRADE_MAX_PIXELS:
            raise PackError(f"image: expected at most {DEGRADE_MAX_PIXELS / 1e6:.0f} MP per run of Degrade Image "
                            f"(batch x height x width; it degrades the whole batch at once, about 220 bytes per "
                            f"pixel), found {b} x {w}x{h} = {b * h * w / 1e6:.1f} MP; crop or downscale the image, "
                            f"or split the batch")
        generator = torch.Generator().manual_seed(int(seed))
        kind, preset = PIPELINES[pipeline]
        try:
            if kind == "realesrgan":
                out, params = realesrgan_degrade(x, generator, scale=float(scale), per_sample=True)
            elif kind == "codeformer":
                out, params = codeformer_degrade(x, generator, preset=preset)
            else:
                out, params = mild_degrade(x, generator)
        except ValueError as e:
            field, _, rest = str(e).partition(": ")
            if field == "scale":
                raise PackError(f"scale: {rest}") from None
            raise PackError(f"image: {rest if field == 'images' else e}") from None
        text = describe_params(pipeline, params, x.shape[0])
        return io.NodeOutput(to_bhwc(out.clamp(0.0, 1.0).to(torch.float32)), text)


NODES = [DegradeImage]
