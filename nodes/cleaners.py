"""Stage-1 restorers ("cleaners"): DiffBIR's SwinIR loader and a restore node that also runs core upscale models."""

from __future__ import annotations

import logging

import torch
import torch.nn.functional as F
from comfy_api.latest import io

from ..modules.swinir import (
    SIGNATURE_KEYS,
    SwinIR,
    build_swinir,
    describe_config,
    is_diffbir_swinir_keys,
    normalize_swinir_state_dict,
)
from ..modules.tiling import count_tiles, tiled_apply
from ..modules.weights_kind import describe_weights
from .common import (
    CATEGORY_ROOT,
    PackError,
    check_interrupt,
    file_fingerprint,
    input_image,
    is_oom,
    load_weights,
    model_file_path,
    widget_bounds_error,
)

CAT_STAGE1 = f"{CATEGORY_ROOT}/stage1"
RESTORER_FOLDER = "diffbir"
# Socket type of a loaded stage-1 restorer: a comfy.model_patcher.ModelPatcher whose .model is modules.swinir.SwinIR.
# The name is stored in saved workflows: never rename it.
Restorer = io.Custom("ADAPTBIR_RESTORER")

PRECISIONS = ["auto", "fp32", "bf16", "fp16"]
WHAT = "a DiffBIR stage-1 SwinIR restorer (general_swinir_v1.ckpt, face_swinir_v1.ckpt, " \
       "realesrgan_s4_swinir_100k.pth or codeformer_swinir.ckpt)"
MIN_OOM_TILE = 128
log = logging.getLogger(__name__)


# ------------------------------------------------------------------------------------------------ loading


def _refuse(name: str, keys) -> PackError:
    return PackError(f"{name}: expected {WHAT} with keys such as {SIGNATURE_KEYS[0]!r} and {SIGNATURE_KEYS[1]!r}; "
                     f"found {describe_weights(keys)}")


def _peek_safetensors_keys(path: str):
    """Tensor names from a safetensors header (nothing else is read), or None if it cannot be read."""
    if not path.endswith((".safetensors", ".sft")):
        return None
    try:
        from safetensors import safe_open

        with safe_open(path, framework="pt") as f:
            return list(f.keys())
    except Exception:  # noqa: BLE001 - load_weights reports unreadable files
        return None


def pick_dtype(precision: str, load_device) -> torch.dtype:
    """Weight dtype for ``precision``: auto = bf16 where ComfyUI would use it on ``load_device``, else fp32
    (always fp32 on CPU)."""
    import comfy.model_management as mm

    if precision == "fp32":
        return torch.float32
    if precision == "bf16":
        return torch.bfloat16
    if precision == "fp16":
        return torch.float16
    if precision != "auto":
        raise PackError(f"precision: expected one of {PRECISIONS}, found {precision!r}")
    if mm.should_use_bf16(load_device, prioritize_performance=False):
        return torch.bfloat16
    return torch.float32


def load_restorer(name: str, precision: str = "auto"):
    """Load a DiffBIR SwinIR from the ``diffbir`` model folder into a ModelPatcher (weights on the offload device).

    Detected by its keys, never by the file name; anything else raises PackError naming the file, what was
    expected and what was found.
    """
    import comfy.model_management as mm
    import comfy.model_patcher

    path = model_file_path(RESTORER_FOLDER, name)
    keys = _peek_safetensors_keys(path)
    pre = "preprocess_model."  # DiffBIR v1 full checkpoints carry the restorer under this prefix
    if keys is not None and not is_diffbir_swinir_keys(keys) \
            and not is_diffbir_swinir_keys(k[len(pre):] for k in keys if k.startswith(pre)):
        raise _refuse(name, keys)  # refused from the header alone: a wrong multi-GB file is not read
    sd = load_weights(path, WHAT)
    flat = normalize_swinir_state_dict(sd)
    if not is_diffbir_swinir_keys(flat):
        raise _refuse(name, flat.keys() if flat else sd.keys())
    load_device = mm.get_torch_device()
    offload_device = mm.unet_offload_device()
    dtype = pick_dtype(precision, load_device)
    try:
        net = build_swinir(flat, device=offload_device, dtype=dtype)
    except ValueError as e:
        raise PackError(f"{name}: {e}") from None
    del sd, flat
    return comfy.model_patcher.ModelPatcher(net, load_device=load_device, offload_device=offload_device)


def _restorer_options() -> list[str]:
    from .paths import filename_list

    return filename_list(RESTORER_FOLDER)


class RestorerLoader(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="AdaptBIR_RestorerLoader",
            display_name="Load Stage-1 Restorer",
            category=CAT_STAGE1,
            description=(
                "Loads a DiffBIR stage-1 restorer (SwinIR: general_swinir_v1.ckpt, face_swinir_v1.ckpt, "
                "realesrgan_s4_swinir_100k.pth, codeformer_swinir.ckpt, or a safetensors conversion) from "
                "ComfyUI/models/diffbir. It removes noise, blur and compression from an image without changing its "
                "size; its output is the condition for the diffusion stage. The file is recognised by its weights, "
                "not its name; only tensors are read (no code runs). For BSRNet / SCUNet (DiffBIR v2) use core's "
                "Load Upscale Model instead."),
            inputs=[
                io.Combo.Input("restorer_name", options=_restorer_options(), tooltip=(
                    "Weights file in ComfyUI/models/diffbir. realesrgan_s4_swinir_100k.pth = DiffBIR v2.1 general "
                    "restorer; general_swinir_v1.ckpt = v1; face_swinir_v1.ckpt = aligned 512x512 faces.")),
                io.Combo.Input("precision", options=PRECISIONS, default="auto", tooltip=(
                    "Weight dtype. auto = bf16 on GPUs that support it, otherwise fp32 (always fp32 on CPU). fp32 "
                    "is the most exact; fp16 is fastest on older GPUs but may overflow on some images.")),
            ],
            outputs=[Restorer.Output("restorer", tooltip=(
                "The SwinIR restorer (kept on the offload device until it runs); connect it to Stage-1 "
                "Restore."))],
        )

    @classmethod
    def fingerprint_inputs(cls, restorer_name, precision="auto"):
        # Reload when the file changes on disk, not only when the widget changes.
        return (restorer_name, precision, file_fingerprint(RESTORER_FOLDER, restorer_name))

    @classmethod
    def execute(cls, restorer_name, precision="auto") -> io.NodeOutput:
        return io.NodeOutput(load_restorer(restorer_name, precision))


# ------------------------------------------------------------------------------------------------ restoring


def scaled_size(h: int, w: int, scale: float) -> tuple[int, int]:
    """``(round(h * scale), round(w * scale))``, each at least 1."""
    return max(1, round(h * scale)), max(1, round(w * scale))


def resize_bicubic(x: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Bicubic resize with antialiasing (DiffBIR's choice) of (B, C, H, W) float, clamped to [0, 1]; identity if
    the size does not change."""
    if tuple(x.shape[-2:]) == tuple(size):
        return x
    return F.interpolate(x, size=size, mode="bicubic", align_corners=False, antialias=True).clamp(0.0, 1.0)


def _swinir_memory(net: SwinIR, tile_h: int, tile_w: int, dtype: torch.dtype) -> int:
    # Dominated by the full-resolution upsampler: a few 64-channel maps of the tile.
    elt = torch.finfo(dtype).bits // 8
    ph = -(-tile_h // net.pad_multiple) * net.pad_multiple
    pw = -(-tile_w // net.pad_multiple) * net.pad_multiple
    return int(ph * pw * net.config["num_feat"] * elt * 6)


def _smaller_tile(tile: int, stride: int, h: int, w: int):
    """Next (tile, stride) after an out-of-memory error, or None when the tile would drop below 128 px."""
    cur = tile if tile > 0 else max(h, w)
    new = (min(cur, max(h, w)) // 2) // 64 * 64
    if new < MIN_OOM_TILE:
        return None
    return new, max(1, min(stride, new // 2))


def _with_smaller_tiles_on_oom(run, tile: int, stride: int, h: int, w: int):
    """``run(tile, stride)``; on out-of-memory retry with halved tiles (down to 128 px), then give up.

    Returns ``(result, tile, stride)`` so the next image of the batch starts with the tile that fitted.
    """
    import comfy.model_management as mm

    while True:
        try:
            return run(tile, stride), tile, stride
        except Exception as e:  # only out-of-memory is retried; everything else is re-raised
            if not is_oom(e):
                raise
            nxt = _smaller_tile(tile, stride, h, w)
            if nxt is None:
                raise
            mm.soft_empty_cache(True)
            log.warning("Stage-1 Restore: out of memory with tile %s; retrying with tile %d, stride %d",
                        tile or "off", *nxt)
            tile, stride = nxt


def run_swinir(patcher, x: torch.Tensor, tile_size: int, tile_stride: int) -> torch.Tensor:
    """Restore (B, 3, H, W) float32 [0, 1] image by image -> (B, 3, H, W) float32 [0, 1] on the intermediate
    device. ``tile_size`` 0 = whole image at once; otherwise Gaussian-blended tiles of that many pixels."""
    import comfy.model_management as mm
    import comfy.utils

    net: SwinIR = patcher.model
    b, _, h, w = x.shape
    dtype = next(net.parameters()).dtype
    th, tw = (min(tile_size, h), min(tile_size, w)) if tile_size > 0 else (h, w)
    mm.load_models_gpu([patcher], memory_required=_swinir_memory(net, th, tw, dtype), force_full_load=True)
    device = patcher.load_device
    out_device = mm.intermediate_device()

    def fn(t: torch.Tensor) -> torch.Tensor:
        return net(t.to(device=device, dtype=dtype)).to(device=out_device, dtype=torch.float32)

    tile, stride = tile_size, tile_stride
    pbar = comfy.utils.ProgressBar(b * count_tiles(h, w, tile or max(h, w), stride if tile else 1))
    outs = []
    for i in range(b):
        xi = x[i:i + 1].to(out_device)

        def run(tile, stride, xi=xi):
            with torch.no_grad():
                return tiled_apply(fn, xi, tile or max(h, w), stride if tile else max(h, w), weight="gaussian",
                                   check=check_interrupt, callback=lambda done, total: pbar.update(1))

        y, tile, stride = _with_smaller_tiles_on_oom(run, tile, stride, h, w)
        outs.append(y.clamp(0.0, 1.0))
    return torch.cat(outs)


def run_upscale_model(model, x: torch.Tensor, size: tuple[int, int], tile_size: int,
                      tile_stride: int) -> torch.Tensor:
    """Run a core UPSCALE_MODEL (spandrel ImageModelDescriptor) on (B, 3, H, W) float32 [0, 1], image by image,
    tiled like core's Upscale Image (using Model) (``comfy.utils.tiled_scale``, overlap = tile - stride), then
    resize to ``size`` (bicubic, antialias). Returns (B, 3, *size) float32 [0, 1] on the intermediate device."""
    import comfy.model_management as mm
    import comfy.utils

    for attr in ("scale", "model", "to"):
        if not hasattr(model, attr):
            raise PackError(f"upscale_model: expected an UPSCALE_MODEL from Load Upscale Model, found "
                            f"{type(model).__name__}")
    in_ch = getattr(model, "input_channels", 3)
    if in_ch != 3:
        raise PackError(f"upscale_model: expected a model that takes RGB (3 channels), found one that takes {in_ch}")
    out_ch = getattr(model, "output_channels", 3)
    scale = model.scale
    b, _, h, w = x.shape
    device = mm.get_torch_device()
    out_device = mm.intermediate_device()
    dtype = getattr(model, "dtype", torch.float32)
    t0 = tile_size if tile_size > 0 else max(h, w)
    memory = mm.module_size(model.model) + int(min(t0, h) * min(t0, w) * 3 * 4 * max(scale, 1.0) ** 2 * 96)
    mm.free_memory(memory, device)
    model.to(device)

    def fn(a: torch.Tensor) -> torch.Tensor:
        check_interrupt()
        return model(a.to(device=device, dtype=dtype)).float()

    tile, stride = tile_size, tile_stride
    try:
        outs = []
        for i in range(b):
            xi = x[i:i + 1]

            def run(tile, stride, xi=xi):
                if tile <= 0 or (h <= tile and w <= tile):
                    with torch.no_grad():
                        y = fn(xi).to(out_device)
                    comfy.utils.ProgressBar(1).update(1)
                    return y
                overlap = tile - stride
                steps = comfy.utils.get_tiled_scale_steps(w, h, tile_x=tile, tile_y=tile, overlap=overlap)
                return comfy.utils.tiled_scale(xi, fn, tile_x=tile, tile_y=tile, overlap=overlap,
                                               upscale_amount=scale, out_channels=out_ch, output_device=out_device,
                                               pbar=comfy.utils.ProgressBar(steps))

            y, tile, stride = _with_smaller_tiles_on_oom(run, tile, stride, h, w)
            outs.append(resize_bicubic(y.float(), size).clamp(0.0, 1.0))
    finally:
        model.to("cpu")
    return torch.cat(outs)


class Stage1Restore(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="AdaptBIR_Stage1Restore",
            display_name="Stage-1 Restore",
            category=CAT_STAGE1,
            description=(
                "DiffBIR's stage 1: removes degradations with a restorer before diffusion. Connect exactly one of "
                "restorer (a SwinIR from Load Stage-1 Restorer; DiffBIR v1/v2.1: the image is bicubically resized "
                "by output_scale first, then restored at that size) or upscale_model (e.g. BSRNet x4 or SCUNet "
                "from core's Load Upscale Model; DiffBIR v2: the model runs on the image as it is and its result "
                "is bicubically resized to input size x output_scale). Large images are processed in tiles "
                "blended with Gaussian weights. RGBA/grey images are accepted (alpha is dropped); a batch is "
                "processed image by image."),
            inputs=[
                io.Image.Input("image", tooltip="The low-quality image(s) to restore (RGB, RGBA or grey)."),
                Restorer.Input("restorer", optional=True, tooltip=(
                    "A SwinIR from Load Stage-1 Restorer. Connect this or upscale_model, not both.")),
                io.UpscaleModel.Input("upscale_model", optional=True, tooltip=(
                    "A model from core's Load Upscale Model, e.g. BSRNet.pth (DiffBIR v2's x4 super-resolution "
                    "stage 1) or scunet_color_real_psnr.pth (v2 denoising). Connect this or restorer, not both.")),
                io.Float.Input("output_scale", default=1.0, min=0.125, max=8.0, step=0.05, tooltip=(
                    "Output size = input size x this. SwinIR: the image is resized (bicubic) to that size before "
                    "restoring, as DiffBIR v1/v2.1 do for super-resolution. Upscale model: its output (e.g. x4) is "
                    "resized (bicubic, antialiased) to that size, as DiffBIR v2 does with BSRNet. 1.0 keeps the "
                    "input size.")),
                io.Int.Input("tile_size", default=512, min=0, max=8192, step=64, tooltip=(
                    "Process the image in tiles of this many pixels (input pixels); 0 = whole image at once. "
                    "Smaller tiles need less memory. Multiples of 64 suit SwinIR (other sizes are padded). If the "
                    "image fits in one tile the result is the same as untiled.")),
                io.Int.Input("tile_stride", default=256, min=8, max=8192, step=8, tooltip=(
                    "Distance between tiles in pixels (at most tile_size); tile_size - tile_stride is the overlap "
                    "that is blended. DiffBIR: 512 / 256.")),
            ],
            outputs=[io.Image.Output("restored", tooltip=(
                "The restored RGB image, values in [0, 1], size = input size x output_scale."))],
        )

    @classmethod
    def validate_inputs(cls, output_scale=1.0, tile_size=512, tile_stride=256, **kwargs):
        bad = widget_bounds_error(cls, {"output_scale": output_scale, "tile_size": tile_size,
                                        "tile_stride": tile_stride, **kwargs})
        if bad:
            return bad
        if isinstance(output_scale, (int, float)) and not output_scale > 0:
            return f"output_scale: expected a value > 0, found {output_scale}"
        if isinstance(tile_size, int) and isinstance(tile_stride, int) and tile_size > 0 \
                and not 1 <= tile_stride <= tile_size:
            return f"tile_stride: expected 1 .. tile_size ({tile_size}), found {tile_stride}"
        return True

    @classmethod
    def execute(cls, image, restorer=None, upscale_model=None, output_scale=1.0, tile_size=512,
                tile_stride=256) -> io.NodeOutput:
        if (restorer is None) == (upscale_model is None):
            found = "both" if restorer is not None else "neither"
            raise PackError(f"restorer / upscale_model: expected exactly one of them connected (a SwinIR from Load "
                            f"Stage-1 Restorer, or a model from Load Upscale Model), found {found}")
        if not output_scale > 0:
            raise PackError(f"output_scale: expected a value > 0, found {output_scale}")
        if tile_size < 0:
            raise PackError(f"tile_size: expected 0 (no tiling) or a size in pixels, found {tile_size}")
        if tile_size > 0 and not 1 <= tile_stride <= tile_size:
            raise PackError(f"tile_stride: expected 1 .. tile_size ({tile_size}), found {tile_stride}")
        x = input_image(image, "image")
        h, w = x.shape[-2:]
        size = scaled_size(h, w, output_scale)

        if restorer is not None:
            if not isinstance(getattr(restorer, "model", None), SwinIR):
                raise PackError(f"restorer: expected a SwinIR from Load Stage-1 Restorer, found "
                                f"{type(getattr(restorer, 'model', restorer)).__name__}")
            out = run_swinir(restorer, resize_bicubic(x, size), tile_size, tile_stride)
        else:
            out = run_upscale_model(upscale_model, x, size, tile_size, tile_stride)
        return io.NodeOutput(out.permute(0, 2, 3, 1).contiguous())


def restorer_summary(patcher) -> str:
    """One-line description of a loaded restorer (for logs and tests)."""
    return describe_config(patcher.model.config)


NODES = [RestorerLoader, Stage1Restore]
