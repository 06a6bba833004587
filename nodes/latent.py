"""Dual Encoder Interpolate and Crop To Original: AdaptBIR's latent front end and the matching crop-back."""

from __future__ import annotations

import torch
from comfy_api.latest import io

from ..modules.image_ops import crop_bhwc, pad_to_multiple, to_bhwc
from ..modules.latent_mix import mix_latents
from .common import (
    CAT_IMAGE,
    CAT_LATENT,
    PackError,
    RestoreCondition,
    RestoreParams,
    check_interrupt,
    input_image,
)

# Key under which a LATENT carries the original image size; samplers copy the dict, so it survives sampling.
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
    tiled encoding with that tile (pixels); 0 lets ComfyUI decide (it falls back to tiles when memory runs out).
    """
    image = to_bhwc(pixels_bchw)
    if tile_size > 0:
        overlap = max(8, tile_size // 8)
        return vae.encode_tiled(image, tile_x=tile_size, tile_y=tile_size, overlap=overlap).float()
    return vae.encode(image).float()


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


def make_condition(vae, z: torch.Tensor, padded: torch.Tensor, pad: tuple[int, int], size: tuple[int, int],
                   k: torch.Tensor) -> dict:
    """The ADAPTBIR_CONDITION hand-off: ``samples`` (raw latent z, (B,C,h,w)), ``post_quant`` (z after ``vae``'s
    post_quant_conv: AdaptBIR's hint space; None without one), ``k`` ((B,) mix weights), ``crop`` (original
    height/width and the bottom/right padding) and ``image`` (the padded input, (B,H,W,3) [0,1], for guidance and
    colour fix)."""
    crop = {"height": size[0], "width": size[1], "pad_bottom": pad[0], "pad_right": pad[1]}
    return {"samples": z, "post_quant": post_quant(vae, z), "k": k, "crop": crop,
            "image": padded.permute(0, 2, 3, 1).contiguous()}


def encode_condition_image(image, vae, pad_multiple: int = 64, tile_size: int = 0, k: float = 1.0) -> dict:
    """Encode an IMAGE (e.g. the stage-1 result) with one VAE into a condition, recording ``k`` for every image
    (1 = the internal VAE; 0 = a restoration encoder such as SUPIR's). ``tile_size`` as for :func:`encode`."""
    x = input_image(image, "image")
    padded, pad = pad_to_multiple(x, pad_multiple, mode="replicate")
    z = encode(vae, padded, tile_size)
    return make_condition(vae, z, padded, pad, tuple(x.shape[-2:]), torch.full((x.shape[0],), float(k)))


class DualEncoderInterpolate(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="AdaptBIR_DualEncoderInterpolate",
            display_name="Dual Encoder Interpolate",
            category=CAT_LATENT,
            description=(
                "AdaptBIR's dual encoder: encodes the image with the restoration VAE (whose encoder was trained to "
                "remove degradations) and with the checkpoint's own VAE, and mixes the two latents: "
                "z = (1 - k) * z_restoration + k * z_internal. k = 0 trusts only the restoration encoder (for "
                "badly degraded inputs); larger k keeps more of the input's real detail. Sizes that are not a "
                "multiple of pad_multiple are edge-padded; Crop To Original removes the padding after decoding."),
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
                    "0 = encode in one go (ComfyUI falls back to tiles if memory runs out). > 0 = always encode "
                    "in tiles of this many pixels, for very large images.")),
                RestoreParams.Input("params", optional=True, tooltip=(
                    "Per-image parameters from IQA Classifier; when connected its k replaces the k widget, image "
                    "by image.")),
            ],
            outputs=[
                io.Latent.Output("latent", tooltip=(
                    "The mixed latent in ComfyUI's raw VAE space (before post_quant_conv), usable by samplers "
                    "and VAE Decode; it remembers the original size for Crop To Original.")),
                RestoreCondition.Output("condition", tooltip=(
                    "The same mix for the IRControlNet/CSFT condition, in both hint conventions (DiffBIR: "
                    "0.18215 x latent; AdaptBIR: after post_quant_conv), with the padding record.")),
            ],
        )

    @classmethod
    def execute(cls, image, restoration_vae, internal_vae, k=0.0, pad_multiple=64, tile_size=0,
                params=None) -> io.NodeOutput:
        x = input_image(image, "image")
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
        b, _, h, w = x.shape
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

        condition = make_condition(internal_vae, z, padded, pad, (h, w), ks.clone())
        return io.NodeOutput({"samples": z, CROP_KEY: condition["crop"]}, condition)


class CropToOriginal(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="AdaptBIR_CropToOriginal",
            display_name="Crop To Original Size",
            category=CAT_IMAGE,
            description=(
                "Removes the padding that Dual Encoder Interpolate added, so the restored image has exactly the "
                "input's size. Takes the size from the latent (it survives KSampler) or from the condition."),
            inputs=[
                io.Image.Input("image", tooltip="The decoded (padded) image."),
                io.Latent.Input("latent", optional=True, tooltip=(
                    "A latent that came from Dual Encoder Interpolate (directly or through a sampler).")),
                RestoreCondition.Input("condition", optional=True, tooltip=(
                    "Or the condition output of Dual Encoder Interpolate.")),
            ],
            outputs=[io.Image.Output("cropped", tooltip="The image cropped to the original height and width.")],
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
            out = crop_bhwc(image, crop["height"], crop["width"])
        except ValueError as e:
            raise PackError(f"image: {e} (was the image resized after decoding?)") from None
        return io.NodeOutput(out)


NODES = [DualEncoderInterpolate, CropToOriginal]
