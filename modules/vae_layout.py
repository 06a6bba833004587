"""Find a restoration encoder (AdaptBIR stage I, SUPIR's denoise encoder) in a checkpoint and lay it out as a VAE.

A restoration encoder is an SD/SDXL VAE encoder fine-tuned on degraded images; it is used with the unchanged VAE's
``quant_conv`` (and ``post_quant_conv`` / decoder), so it shares the VAE's latent space. This module turns the
released checkpoints into a state dict in ComfyUI's (LDM) ``AutoencoderKL`` layout, which ``comfy.sd.VAE`` loads:

* ``encoder.*``: the restoration encoder, e.g. for the SD/SDXL KL-f8 VAE ``encoder.conv_in.weight`` [128, 3, 3, 3],
  ``encoder.down.{0..3}.block.{0,1}.*``, ``encoder.mid.*``, ``encoder.norm_out.*``, ``encoder.conv_out.weight``
  [2z, 512, 3, 3] (2z = 8: mean and log-variance of z = 4 latent channels);
* ``quant_conv.weight`` [2e, 2z, 1, 1] and ``post_quant_conv.weight`` [z, e, 1, 1] (e = embed_dim = 4), with biases;
* ``decoder.*``: ``decoder.conv_in.weight`` [512, z, 3, 3] ... ``decoder.conv_out.weight`` [3, 128, 3, 3].

Key layouts read (after unwrapping ``{"state_dict": ...}`` and removing a ``module.`` prefix):

* AdaptBIR full checkpoints (PyTorch Lightning): ``preprocess_model.{encoder,decoder,quant_conv,post_quant_conv}.*``
  (the whole stage-1 restoration AutoencoderKL), optionally ``denoise_encoder.*`` (a frozen copy of its encoder),
  ``first_stage_model.*`` (the SD 2.1 VAE), and unrelated ``model.diffusion_model.*``, ``control_model.*``,
  ``cond_stage_model.*``, ``musiq_model.*``;
* SUPIR checkpoints: ``first_stage_model.denoise_encoder.*`` next to the SDXL VAE's
  ``first_stage_model.{encoder,decoder,quant_conv,post_quant_conv}.*`` and ``model.diffusion_model.*``,
  ``model.control_model.*``;
* a bare ``denoise_encoder.*`` file (the encoder alone): the other parts then come from the caller's VAE.

Pure torch: nothing here imports ComfyUI.
"""

from __future__ import annotations

import re

from .controlnet_layout import unwrap_state_dict
from .weights_kind import describe_weights

# Where the restoration encoder is looked for, in this order: prefix -> description of what was found.
ENCODER_SOURCES = (
    ("first_stage_model.denoise_encoder.", "SUPIR denoise_encoder (first_stage_model.denoise_encoder)"),
    ("denoise_encoder.", "AdaptBIR denoise_encoder"),
    ("preprocess_model.encoder.", "AdaptBIR restoration encoder (preprocess_model.encoder)"),
)
# The parts besides the encoder, and the prefixes they are taken from inside the file, in this order.
OTHER_PARTS = ("quant_conv", "post_quant_conv", "decoder")
PART_SOURCES = ("first_stage_model.", "preprocess_model.")
# One tensor each part must have; also the ones whose shapes tie the latent channels together.
REQUIRED = {"encoder": ("encoder.conv_in.weight", "encoder.conv_out.weight"),
            "quant_conv": ("quant_conv.weight",), "post_quant_conv": ("post_quant_conv.weight",),
            "decoder": ("decoder.conv_in.weight", "decoder.conv_out.weight")}


def _take(sd: dict, prefix: str, new_prefix: str) -> dict:
    n = len(prefix)
    return {new_prefix + k[n:]: v for k, v in sd.items() if k.startswith(prefix)}


def _shape(t) -> tuple:
    return tuple(t.shape)


def restoration_vae_state_dict(sd: dict, base: dict | None = None) -> tuple[dict, str]:
    """A VAE state dict (ComfyUI/LDM layout) whose encoder is the restoration encoder found in ``sd``.

    Args:
        sd: a loaded checkpoint (tensors, meta tensors work: only names and shapes are read), possibly wrapped in
            ``{"state_dict": ...}`` and/or with a ``module.`` prefix. See the module docstring for the layouts.
        base: optional LDM-layout VAE state dict (``encoder.*``, ``decoder.*``, ``quant_conv.*``,
            ``post_quant_conv.*``), e.g. ``vae.get_sd()`` of the checkpoint's own SD/SDXL VAE; used for the parts
            ``sd`` lacks. Its ``encoder.*`` is never used.

    Returns:
        ``(vae_sd, description)``: ``vae_sd`` has exactly the keys ``encoder.*`` (the restoration encoder),
        ``quant_conv.{weight,bias}``, ``post_quant_conv.{weight,bias}`` and ``decoder.*``, no prefix, holding the
        input tensors themselves (no copies). The encoder is the first present of
        ``first_stage_model.denoise_encoder.*`` (SUPIR), ``denoise_encoder.*``, ``preprocess_model.encoder.*``;
        each other part comes from ``first_stage_model.`` if the file has it, else ``preprocess_model.``, else
        ``base``. ``description`` says what was found and where each part came from, e.g.
        ``"AdaptBIR denoise_encoder; quant_conv, post_quant_conv and decoder from the connected VAE"``.

    Raises:
        ValueError: no restoration encoder (``"expected ..., found <what the weights are>"``); a part missing from
            both the file and ``base`` (names the parts; the SD/SDXL VAE must be connected to the ``vae`` input);
            a part without its core tensors (truncated file); latent channel counts that do not agree between the
            encoder, ``quant_conv``, ``post_quant_conv`` and the decoder (says which shapes differ).
    """
    sd = unwrap_state_dict(sd)
    found = next(((p, d) for p, d in ENCODER_SOURCES if any(k.startswith(p) for k in sd)), None)
    if found is None:
        what = describe_weights(sd)
        hint = ""
        if any(k.startswith(("encoder.", "decoder.")) for k in sd):
            hint = ("; a plain VAE file already is a VAE: load it with ComfyUI's Load VAE and connect it to "
                    "restoration_vae directly")
        raise ValueError(f"expected a restoration encoder (AdaptBIR preprocess_model.encoder or denoise_encoder, "
                         f"SUPIR first_stage_model.denoise_encoder), found {what}{hint}")
    enc_prefix, description = found
    out = _take(sd, enc_prefix, "encoder.")

    base = unwrap_state_dict(base) if base is not None else None
    sources: dict[str, str] = {}
    missing = []
    for part in OTHER_PARTS:
        for prefix in PART_SOURCES:
            taken = _take(sd, f"{prefix}{part}.", f"{part}.")
            if taken:
                sources[part] = prefix.rstrip(".")
                break
        else:
            taken = _take(base, f"{part}.", f"{part}.") if base is not None else {}
            if taken:
                sources[part] = "the connected VAE"
            else:
                missing.append(part)
        out.update(taken)
    if missing:
        parts = _join(missing)
        if base is None:
            raise ValueError(
                f"found the {description} but no {parts} in the file, so it is not a complete VAE. Connect the "
                f"checkpoint's own SD/SDXL VAE (the one the encoder was fine-tuned from) to the vae input")
        raise ValueError(
            f"found the {description} but no {parts}, neither in the file nor in the VAE connected to the vae "
            f"input; connect the checkpoint's own SD/SDXL VAE (a KL VAE with quant_conv and post_quant_conv)")

    absent = [k for keys in REQUIRED.values() for k in keys if k not in out]
    if absent:
        raise ValueError(f"found the {description}, but the assembled VAE lacks {', '.join(absent)} (truncated or "
                         f"foreign file)")
    _check_channels(out)

    by_source: dict[str, list[str]] = {}
    for part in OTHER_PARTS:
        by_source.setdefault(sources[part], []).append(part)
    origin = "; ".join(f"{_join(parts)} from {src}" for src, parts in by_source.items())
    return out, f"{description}; {origin}"


def _join(parts: list[str]) -> str:
    return parts[0] if len(parts) == 1 else f"{', '.join(parts[:-1])} and {parts[-1]}"


def _check_channels(vae_sd: dict) -> None:
    """Raise ValueError naming the shapes that disagree on the latent channel counts (or the encoder/decoder
    width)."""
    enc_out = _shape(vae_sd["encoder.conv_out.weight"])  # (2z, C_top, 3, 3)
    qc = _shape(vae_sd["quant_conv.weight"])  # (2e, 2z, 1, 1)
    pqc = _shape(vae_sd["post_quant_conv.weight"])  # (z, e, 1, 1)
    dec_in = _shape(vae_sd["decoder.conv_in.weight"])  # (C_top, z, 3, 3)
    problems = []
    if len(enc_out) != 4 or len(qc) != 4 or len(pqc) != 4 or len(dec_in) != 4:
        problems.append(f"4-d convolution weights expected, found encoder.conv_out {enc_out}, quant_conv {qc}, "
                        f"post_quant_conv {pqc}, decoder.conv_in {dec_in}")
    else:
        z = dec_in[1]
        if enc_out[0] != 2 * z:
            problems.append(f"the encoder outputs {enc_out[0]} channels (encoder.conv_out.weight {enc_out}) but the "
                            f"decoder takes {z} latent channels, so 2 x {z} = {2 * z} were expected "
                            f"(decoder.conv_in.weight {dec_in})")
        if qc[1] != enc_out[0]:
            problems.append(f"quant_conv takes {qc[1]} channels (quant_conv.weight {qc}) but the encoder outputs "
                            f"{enc_out[0]} (encoder.conv_out.weight {enc_out})")
        if qc[0] != 2 * pqc[1]:
            problems.append(f"quant_conv outputs {qc[0]} channels (quant_conv.weight {qc}) but post_quant_conv "
                            f"takes {pqc[1]}, so 2 x {pqc[1]} = {2 * pqc[1]} were expected (post_quant_conv.weight "
                            f"{pqc})")
        if pqc[0] != z:
            problems.append(f"post_quant_conv outputs {pqc[0]} channels (post_quant_conv.weight {pqc}) but the "
                            f"decoder takes {z} (decoder.conv_in.weight {dec_in})")
        if enc_out[1] != dec_in[0]:
            problems.append(f"the encoder's last width is {enc_out[1]} (encoder.conv_out.weight {enc_out}) but the "
                            f"decoder's first is {dec_in[0]} (decoder.conv_in.weight {dec_in}): different VAE "
                            f"architectures")
    if problems:
        raise ValueError("expected a restoration encoder with the latent space of the VAE's quant_conv, "
                         "post_quant_conv and decoder, found that " + "; ".join(problems))


def kl_vae_config(vae_sd: dict) -> dict:
    """The ``AutoencoderKL`` config (``{"embed_dim": e, "ddconfig": {...}}``, LDM/ComfyUI argument names) that
    fits an LDM-layout KL VAE state dict, read from its shapes.

    For the SD/SDXL VAE: ``{"embed_dim": 4, "ddconfig": {"double_z": True, "z_channels": 4, "resolution": 256,
    "in_channels": 3, "out_ch": 3, "ch": 128, "ch_mult": [1, 2, 4, 4], "num_res_blocks": 2,
    "attn_resolutions": [], "dropout": 0.0}}``. ``attn_resolutions`` lists the levels with attention in their
    down blocks as ``256 // 2**level``.
    """
    ch, in_channels = _shape(vae_sd["encoder.conv_in.weight"])[:2]
    levels = sorted({int(m.group(1)) for k in vae_sd if (m := re.match(r"encoder\.down\.(\d+)\.", k))})
    if not levels:
        raise ValueError("expected encoder.down.* blocks in the VAE, found none")
    ch_mult, attn = [], []
    for i in levels:
        blocks = sorted({int(m.group(1)) for k in vae_sd
                         if (m := re.match(rf"encoder\.down\.{i}\.block\.(\d+)\.", k))})
        if not blocks:
            raise ValueError(f"expected res blocks in encoder.down.{i}, found none")
        out_c = _shape(vae_sd[f"encoder.down.{i}.block.{blocks[-1]}.conv2.weight"])[0]
        ch_mult.append(out_c // ch)
        if any(k.startswith(f"encoder.down.{i}.attn.") for k in vae_sd):
            attn.append(256 // 2 ** i)
    num_res_blocks = len({m.group(1) for k in vae_sd if (m := re.match(r"encoder\.down\.0\.block\.(\d+)\.", k))})
    z = _shape(vae_sd["decoder.conv_in.weight"])[1]
    ddconfig = {"double_z": _shape(vae_sd["encoder.conv_out.weight"])[0] == 2 * z, "z_channels": z,
                "resolution": 256, "in_channels": in_channels, "out_ch": _shape(vae_sd["decoder.conv_out.weight"])[0],
                "ch": ch, "ch_mult": ch_mult, "num_res_blocks": num_res_blocks, "attn_resolutions": attn,
                "dropout": 0.0}
    return {"embed_dim": _shape(vae_sd["post_quant_conv.weight"])[1], "ddconfig": ddconfig}
