"""Recognise IRControlNet weights (DiffBIR / AdaptBIR) by their keys and shapes, never by file name.

Layouts accepted (key examples after unwrapping ``state_dict`` and stripping ``module.``):

* ``diffbir``: DiffBIR ``v1_general.pth``, ``v1_face.pth``, ``v2.pth``, ``DiffBIR_v2.1.pt``: the control net alone,
  no prefix: ``time_embed.*``, ``input_blocks.{0..11}.*`` (``input_blocks.0.0.weight`` is [C, 8, 3, 3]),
  ``zero_convs.{0..12}.0.*``, ``middle_block.*``, ``middle_block_out.0.*``.
* ``diffbir_full``: the legacy full DiffBIR v1 checkpoints (Lightning): the same under ``control_model.``, next to
  ``model.diffusion_model.*``, ``first_stage_model.*``, ``cond_encoder.*``, ``preprocess_model.*``.
* ``adaptbir_full``: AdaptBIR checkpoints: ``control_model.*`` next to ``model.diffusion_model.cft_blocks.*``.
* ``adaptbir``: our own safetensors files whose metadata says ``hint_convention = adaptbir``.
"""

from __future__ import annotations

import re

from .weights_kind import describe_weights

LAYOUT_HINT = {"diffbir": "diffbir", "diffbir_full": "diffbir", "adaptbir_full": "adaptbir", "adaptbir": "adaptbir"}
_REQUIRED = ("time_embed.0.weight", "input_blocks.0.0.weight", "zero_convs.0.0.weight", "middle_block.0.in_layers.2.weight",
             "middle_block_out.0.weight")


def unwrap_state_dict(sd: dict) -> dict:
    """Return the tensor dict inside ``{"state_dict": ...}`` wrappers, with any ``module.`` prefix removed."""
    while "state_dict" in sd and isinstance(sd["state_dict"], dict):
        sd = sd["state_dict"]
    if any(k.startswith("module.") for k in sd):
        sd = {k[len("module."):] if k.startswith("module.") else k: v for k, v in sd.items()}
    return sd


def extract_ircontrolnet(sd: dict, metadata: dict | None = None) -> tuple[str, dict]:
    """Find the IRControlNet weights in ``sd``.

    Args:
        sd: a loaded state dict (tensors; may be meta tensors).
        metadata: safetensors metadata if any (``hint_convention`` marks our own AdaptBIR files).

    Returns:
        ``(layout, control_state_dict)`` with ``layout`` a key of :data:`LAYOUT_HINT` and the control keys without
        prefix.

    Raises:
        ValueError: the weights are not an IRControlNet; the message says what they look like instead.
    """
    sd = unwrap_state_dict(sd)
    if any(k.startswith("control_model.") for k in sd):
        n = len("control_model.")
        control = {k[n:]: v for k, v in sd.items() if k.startswith("control_model.")}
        layout = "adaptbir_full" if any(k.startswith("model.diffusion_model.cft_blocks.") for k in sd) \
            else "diffbir_full"
    else:
        control = dict(sd)
        layout = "adaptbir" if (metadata or {}).get("hint_convention") == "adaptbir" else "diffbir"
    missing = [k for k in _REQUIRED if k not in control]
    if missing or any(k.startswith("input_hint_block.") for k in control) or any("label_emb" in k for k in control):
        raise ValueError(f"expected an IRControlNet (DiffBIR/AdaptBIR control branch: time_embed, input_blocks, "
                         f"zero_convs, middle_block_out, no hint block), found {describe_weights(sd)}")
    w0 = control["input_blocks.0.0.weight"]
    if len(w0.shape) != 4 or w0.shape[1] != 8:
        raise ValueError(f"expected an IRControlNet whose first convolution takes 8 channels (noisy latent + "
                         f"condition latent), found input_blocks.0.0.weight of shape {tuple(w0.shape)}")
    n_in = 1 + max(int(m.group(1)) for k in control if (m := re.match(r"input_blocks\.(\d+)\.", k)))
    n_zero = 1 + max(int(m.group(1)) for k in control if (m := re.match(r"zero_convs\.(\d+)\.", k)))
    if n_zero != n_in:
        raise ValueError(f"expected one zero convolution per input block, found {n_zero} zero convolutions for "
                         f"{n_in} input blocks (truncated or foreign file)")
    return layout, control
