"""Dual Encoder Interpolate and Crop To Original: AdaptBIR's latent front end and the matching crop-back."""

from __future__ import annotations

import logging

import torch
from comfy_api.latest import io

from ..modules.image_ops import (
    SMALL_IMAGE_SHORT_SIDE,
    SMALL_IMAGE_SIDE,
    check_image_bhwc,
    check_resized_size,
    pad_to_multiple,
    resize_bchw,
    restore_size_bhwc,
    short_side_size,
    to_bhwc,
)
from ..modules.latent_mix import mix_latents
from .aliases import aliases_for
from .common import (
    CAT_IMAGE,
    CAT_LATENT,
    PackError,
    RestoreCondition,
    RestoreParams,
    check_interrupt,
    image_error,
    input_image,
)

log = logging.getLogger(__name__)

# Key under which a LATENT carries the crop record (see make_condition); samplers copy the dict, so it survives
# sampling.
CROP_KEY = "adaptbir_crop"


def _vae_signature(vae, name: str):
    fsm = getattr(vae, "first_stage_model", None)
    if fsm is None:
        raise PackError(f"{name}: expected a loaded VAE, found an invalid VAE (the loader found no VAE weights)")
    dims = getattr(vae, "latent_dim", 2)
    return (vae.latent_channels, vae.spacial_compression_encode(), dims)


def encode(vae, pixels_bchw: torch.Tensor, tile_size: int) -> torch.Tensor:
    """Encode (B,3,H,W) [0,1] with a ComfyUI VAE -> raw latent (B,C,h,w) float32 (the posterior mode).

    H and W must already be multiples of the VAE's compression so ComfyUI does not crop. ``tile_size`` > 0 forces
    tiled encoding with that tile (pixels); 0 lets ComfyUI decide (it falls back to tiles when memory runs out), and
    on the CPU encodes in 512 px tiles when ComfyUI's estimate exceeds the free memory (:func:`_fits_whole`).
    """
    image = to_bhwc(pixels_bchw)
    if tile_size <= 0 and not _fits_whole(vae, pixels_bchw):
        tile_size = CPU_FALLBACK_TILE
        log.warning("Dual Encoder: a %dx%d px image does not fit the free CPU memory in one pass; encoding it in "
                    "%d px tiles", pixels_bchw.shape[-1], pixels_bchw.shape[-2], tile_size)
    if tile_size > 0:
        overlap = max(8, tile_size // 8)
        return vae.encode_tiled(image, tile_x=tile_size, tile_y=tile_size, overlap=overlap).float()
    return vae.encode(image).float()


CPU_FALLBACK_TILE = 512  # px: tile_size 0 on CPU for an image the free memory cannot hold in one pass


def _fits_whole(vae, pixels_bchw: torch.Tensor) -> bool:
    """False when ``vae`` runs on the CPU and ComfyUI's own estimate for encoding ``pixels_bchw`` in one pass
    exceeds the free memory. On a GPU ComfyUI catches its out-of-memory error and retries in tiles; on the CPU the
    allocator's error is a plain RuntimeError it does not catch (or the system swaps), so the pack decides first."""
    import comfy.model_management as mm

    device = getattr(vae, "device", None)
    estimate = getattr(vae, "memory_used_encode", None)
    if device is None or torch.device(device).type != "cpu" or estimate is None:
        return True
    need = estimate(tuple(pixels_bchw.shape), getattr(vae, "vae_dtype", torch.float32))
    return need <= mm.get_free_memory(torch.device("cpu"))


def post_quant(vae, z: torch.Tensor) -> torch.Tensor | None:
    """Apply the VAE's ``post_quant_conv`` (AdaptBIR's hint space) if it has one, else None."""
    pqc = getattr(getattr(vae, "first_stage_model", None), "post_quant_conv", None)
    if pqc is None or isinstance(pqc, torch.nn.Identity):
        return None
    import comfy.model_management as mm

    mm.load_models_gpu([vae.patcher])
    w = pqc.weight
    with torch.no_grad():
        out = torch.nn.functional.conv2d(z.to(device=w.device, dtype=w.dtype), w,
                                         None if pqc.bias is None else pqc.bias)
    return out.to(device=z.device, dtype=torch.float32)


def dual_encode(restoration_vae, internal_vae, pixels_bchw: torch.Tensor, ks: torch.Tensor,
                tile_size: int = 0) -> torch.Tensor:
    """AdaptBIR's dual-encoder latent z = (1 - k) * z_restoration + k * z_internal, raw VAE space, float32.

    ``pixels_bchw`` (B,3,H,W) [0,1] already padded to the VAE compression; ``ks`` (B,) in [0, 1]. An encoder whose
    weight is 0 for every image is not run.
    """
    check_interrupt()
    z_r = encode(restoration_vae, pixels_bchw, tile_size) if bool((ks < 1).any()) else None
    check_interrupt()
    z_i = encode(internal_vae, pixels_bchw, tile_size) if bool((ks > 0).any()) else None
    if z_r is None:
        z_r = torch.zeros_like(z_i)
    if z_i is None:
        z_i = torch.zeros_like(z_r)
    return mix_latents(z_r, z_i, ks)


def crop_record(size: tuple[int, int], resized: tuple[int, int], pad: tuple[int, int]) -> dict:
    """The crop record (the LATENT's ``CROP_KEY`` and the condition's ``crop``), plain ints:

    ``height``/``width``: the input image's size (what Crop To Original returns); ``resized_height``/
    ``resized_width``: its size after the small-image/min_side resize, before padding (equal to height/width when
    it was not resized); ``pad_bottom``/``pad_right``: the edge padding added to the resized image. Records made
    before ``resized_*`` existed lack them and mean "not resized".
    """
    return {"height": int(size[0]), "width": int(size[1]), "pad_bottom": int(pad[0]), "pad_right": int(pad[1]),
            "resized_height": int(resized[0]), "resized_width": int(resized[1])}


def make_condition(vae, z: torch.Tensor, padded: torch.Tensor, pad: tuple[int, int], size: tuple[int, int],
                   k: torch.Tensor, resized: tuple[int, int] | None = None) -> dict:
    """The ADAPTBIR_CONDITION hand-off: ``samples`` (raw latent z, (B,C,h,w)), ``post_quant`` (z after ``vae``'s
    post_quant_conv: AdaptBIR's hint space; None without one), ``k`` ((B,) mix weights), ``crop`` (the
    :func:`crop_record`: original size, size after resizing, bottom/right padding) and ``image`` (the resized and
    padded input, (B,H,W,3) [0,1], the sampled image's size, for guidance and colour fix).

    ``size`` is the input image's (height, width), ``resized`` its size before padding (None = ``size``)."""
    crop = crop_record(size, size if resized is None else resized, pad)
    return {"samples": z, "post_quant": post_quant(vae, z), "k": k, "crop": crop,
            "image": padded.permute(0, 2, 3, 1).contiguous()}


def fit_size(x: torch.Tensor, min_side: int = 0, name: str = "image") -> tuple[torch.Tensor, tuple[int, int]]:
    """Bring (B,3,H,W) [0,1] up to a size that can be sampled, before padding: the short side to ``min_side``
    (0 = off) and, always, to 512 px when a side is under 64 px (DiffBIR's rule); bicubic, antialiased, clamped to
    [0, 1]. Returns ``(image, (height, width))``; an image that needs no resize is returned as is. PackError
    naming ``name`` when the long side would exceed 8192 px."""
    h, w = x.shape[-2:]
    if int(min_side) < 0:
        raise PackError(f"min_side: expected 0 (off) or a positive number of pixels, found {min_side}")
    nh, nw = short_side_size(h, w, int(min_side))
    try:
        check_resized_size(h, w, nh, nw, name)
    except ValueError as e:
        # lowering min_side helps only when it, not the small-image rule, set the target short side
        by_min_side = int(min_side) > 0 and (min(h, w) >= SMALL_IMAGE_SIDE or int(min_side) > SMALL_IMAGE_SHORT_SIDE)
        raise PackError(f"{e}{' or lower min_side' if by_min_side else ''}") from None
    return resize_bchw(x, nh, nw), (nh, nw)


def encode_condition_image(image, vae, pad_multiple: int = 64, tile_size: int = 0, k: float = 1.0,
                           min_side: int = 0) -> dict:
    """Encode an IMAGE (e.g. the stage-1 result) with one VAE into a condition, recording ``k`` for every image
    (1 = the internal VAE; 0 = a restoration encoder such as SUPIR's). ``tile_size`` as for :func:`encode`; the
    image is resized first as :func:`fit_size` says (sides under 64 px: short side to 512)."""
    x = input_image(image, "image")
    size = tuple(x.shape[-2:])
    x, resized = fit_size(x, min_side, "image")
    padded, pad = pad_to_multiple(x, pad_multiple, mode="replicate")
    z = encode(vae, padded, tile_size)
    return make_condition(vae, z, padded, pad, size, torch.full((x.shape[0],), float(k)), resized)


class DualEncoderInterpolate(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="AdaptBIR_DualEncoderInterpolate",
            **aliases_for("AdaptBIR_DualEncoderInterpolate"),
            display_name="Dual Encoder Interpolate",
            category=CAT_LATENT,
            description=(
                "Prepares a photo for restoration, keeping more of its own detail the better it is. "
                "AdaptBIR's dual encoder: encodes the image with the restoration VAE (whose encoder was trained to "
                "remove degradations) and with the checkpoint's own VAE, and mixes the two latents: "
                "z = (1 - k) * z_restoration + k * z_internal. k = 0 trusts only the restoration encoder (for "
                "badly degraded inputs); larger k keeps more of the input's real detail. Sizes that are not a "
                "multiple of pad_multiple are edge-padded; Crop To Original removes the padding after decoding. "
                "Images with a side under 64 px (or a short side under min_side) are first upscaled, and Crop To "
                "Original scales the result back to the input's size."),
            inputs=[
                io.Image.Input("image", tooltip="The (resized) low-quality image to restore; RGBA/grey accepted."),
                io.Vae.Input("restoration_vae", tooltip=(
                    "VAE whose encoder removes degradations (AdaptBIR stage I, or SUPIR's denoise encoder as a "
                    "VAE). Must share the latent space of the internal VAE.")),
                io.Vae.Input("internal_vae", tooltip="The checkpoint's own VAE (SD 2.1 for DiffBIR/AdaptBIR)."),
                io.Float.Input("k", default=0.0, min=0.0, max=1.0, step=0.01, tooltip=(
                    "Mix weight of the internal VAE latent, used when no params are connected. 0 = restoration "
                    "encoder only, 1 = internal encoder only.")),
                io.Int.Input("pad_multiple", default=64, min=8, max=512, step=8, tooltip=(
                    "Pad the image (edge pixels repeated, bottom/right) to a multiple of this many pixels before "
                    "encoding. 64 = AdaptBIR/DiffBIR (the UNet's full downsampling); 8 = the VAE minimum.")),
                io.Int.Input("tile_size", default=0, min=0, max=4096, step=64, tooltip=(
                    "0 = encode in one go (ComfyUI falls back to tiles if memory runs out; on the CPU an image "
                    "too large for the free memory is encoded in 512 px tiles). > 0 = always encode in tiles of "
                    "this many pixels, for very large images.")),
                RestoreParams.Input("params", optional=True, tooltip=(
                    "Per-image parameters from IQA Classifier; when connected its k replaces the k widget, image "
                    "by image.")),
                io.Int.Input("min_side", default=0, min=0, max=4096, step=8, optional=True, tooltip=(
                    "Upscale (bicubic, antialiased) images whose short side is below this many pixels so that it "
                    "equals it, aspect kept, before padding (DiffBIR: 512). 0 = off. Whatever this is, an image "
                    "with a side under 64 px is always brought to 512 px on its short side. Crop To Original "
                    "scales the result back to the input's size.")),
            ],
            outputs=[
                io.Latent.Output("latent", display_name="latent", tooltip=(
                    "The mixed latent in ComfyUI's raw VAE space (before post_quant_conv), usable by samplers "
                    "and VAE Decode; it remembers the original size (and any upscale) for Crop To Original.")),
                RestoreCondition.Output("condition", display_name="condition", tooltip=(
                    "The same mix for the IRControlNet/CSFT condition, in both hint conventions (DiffBIR: "
                    "0.18215 x latent; AdaptBIR: after post_quant_conv), with the padding record.")),
            ],
        )

    @classmethod
    def execute(cls, image, restoration_vae, internal_vae, k=0.0, pad_multiple=64, tile_size=0,
                params=None, min_side=0) -> io.NodeOutput:
        x = input_image(image, "image")
        b, _, h, w = x.shape
        x, resized = fit_size(x, min_side, "image")  # size errors before any encoding
        sig_r = _vae_signature(restoration_vae, "restoration_vae")
        sig_i = _vae_signature(internal_vae, "internal_vae")
        if sig_r != sig_i:
            raise PackError(
                f"restoration_vae and internal_vae: expected VAEs with the same latent space, found "
                f"{sig_r[0]} latent channels / {sig_r[1]}x compression vs {sig_i[0]} / {sig_i[1]}x. Use a "
                f"restoration VAE fine-tuned from the checkpoint's own VAE.")
        if pad_multiple % sig_i[1] != 0:
            raise PackError(f"pad_multiple: expected a multiple of the VAE compression ({sig_i[1]}), "
                            f"found {pad_multiple}")
        if params is not None:
            try:
                ks = params.k_tensor(b)
            except ValueError as e:
                raise PackError(str(e)) from None
        else:
            if not (0.0 <= float(k) <= 1.0):
                raise PackError(f"k: expected a value in [0, 1], found {k}")
            ks = torch.full((b,), float(k))

        padded, pad = pad_to_multiple(x, pad_multiple, mode="replicate")
        z = dual_encode(restoration_vae, internal_vae, padded, ks, tile_size)

        condition = make_condition(internal_vae, z, padded, pad, (h, w), ks.clone(), resized)
        return io.NodeOutput({"samples": z, CROP_KEY: dict(condition["crop"])}, condition)


class CropToOriginal(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="AdaptBIR_CropToOriginal",
            **aliases_for("AdaptBIR_CropToOriginal"),
            display_name="Crop To Original Size",
            category=CAT_IMAGE,
            description=(
                "Gives the restored photo back its original size. "
                "Removes the padding that Dual Encoder Interpolate added and, when it upscaled a small image, "
                "scales the result back (bicubic, antialiased), so the restored image has exactly the input's "
                "size. Takes the size from the latent (it survives KSampler) or from the condition."),
            inputs=[
                io.Image.Input("image", tooltip="The decoded (padded) image."),
                io.Latent.Input("latent", optional=True, tooltip=(
                    "A latent that came from Dual Encoder Interpolate (directly or through a sampler).")),
                RestoreCondition.Input("condition", optional=True, tooltip=(
                    "Or the condition output of Dual Encoder Interpolate.")),
            ],
            outputs=[io.Image.Output("cropped", display_name="cropped", tooltip=(
                "The image cropped (and, if it was upscaled before encoding, scaled back) to the original height "
                "and width; channels and batch as given.")),
            ],
        )

    @classmethod
    def execute(cls, image, latent=None, condition=None) -> io.NodeOutput:
        crop = None
        if latent is not None:
            crop = latent.get(CROP_KEY)
        if crop is None and condition is not None:
            crop = condition.get("crop")
        if crop is None:
            raise PackError("latent/condition: expected a latent or condition from Dual Encoder Interpolate that "
                            "records the original size, found none; connect one of them")
        try:
            size = (int(crop["height"]), int(crop["width"]))
            resized = (int(crop.get("resized_height", size[0])), int(crop.get("resized_width", size[1])))
        except (KeyError, TypeError, ValueError, AttributeError):
            raise PackError(f"latent/condition: expected a crop record from Dual Encoder Interpolate (height, width, "
                            f"...), found {crop!r}") from None
        try:
            check_image_bhwc(image, "image")  # empty batch, odd channel count, NaN/inf: refused, named
        except ValueError as e:
            raise image_error(e) from None
        try:
            out = restore_size_bhwc(image, size[0], size[1], *resized)
        except ValueError as e:
            raise PackError(f"image: {e} (was the image resized after decoding?)") from None
        return io.NodeOutput(out)


NODES = [DualEncoderInterpolate, CropToOriginal]
