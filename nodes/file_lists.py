"""Loader lists that fit the loader: each loader offers the files of its model folder whose kind fits it, plus
every file whose kind cannot be told cheaply; files recognised as another kind (a SwinIR in Load IRControlNet's
list, a LoRA in Load CSFT's) are left out.

Recognition is cheap and never unpickles: a safetensors file's header (tensor names and the pack's metadata,
read without loading any tensor), else the file-name conventions of the published files. A saved workflow that
names a file left out of a list still runs: the loader reads it and keeps its clear error when it is not its kind.
"""

from __future__ import annotations

import functools
import json
import os
import re
import struct

# loader kind -> file-name patterns of the published .pth/.ckpt/.pt files of that kind (case-insensitive)
NAME_KINDS = {
    "restorer": (r"swinir",),
    "ircontrolnet": (r"^v1_(general|face)\.pth$", r"^v2\.pth$", r"diffbir_v2[._]1", r"ircontrolnet", r"controlnet"),
    "csft": (r"csft",),
    "supir": (r"^supir",),
    "face_detector": (r"^detection_", r"retinaface"),  # facexlib's detection_Resnet50_Final.pth / _mobilenet0.25
    "face_parser": (r"^parsing_", r"parsenet"),  # facexlib's parsing_parsenet.pth (parsing_bisenet.pth: refused)
    "hypir": (r"^hypir",),  # HYPIR_sd2.pth from huggingface.co/lxq007/HYPIR
}
MAX_HEADER = 64 * 1024 * 1024  # a safetensors header larger than this is not read (not a weights file we know)


def kinds_from_keys(keys, metadata: dict | None = None) -> set[str] | None:
    """The loader kinds a file with these tensor names (and safetensors metadata) fits: a set (empty = another
    kind of file, e.g. a LoRA or an SD checkpoint), or None when nothing tells.

    Kinds: ``ircontrolnet``, ``csft``, ``restoration_vae``, ``restorer``, ``supir``, ``iqa``, ``face_detector``
    (RetinaFace), ``face_parser`` (ParseNet), ``hypir`` (HYPIR's peft LoRA on SD 2.1's diffusers UNet). A full
    AdaptBIR checkpoint fits several loaders (its control, CSFT layers and restoration encoder)."""
    from ..modules.weights_kind import identify_weights

    meta_kind = (metadata or {}).get("adaptbir_kind")
    if meta_kind in ("csft", "ircontrolnet", "restoration_vae"):
        return {meta_kind}
    keys = [str(k) for k in keys]
    if not keys:
        return None

    def has(*parts):
        return any(p in k for k in keys for p in parts)

    kinds = set()
    if all(k.endswith((".lora_A.default.weight", ".lora_B.default.weight")) for k in keys) and \
            has("down_blocks.", "up_blocks.", "mid_block."):
        return {"hypir"}  # HYPIR's published layout (peft names on the diffusers UNet)
    if has("control_model.") and has("project_modules."):
        kinds.add("supir")
        if has("denoise_encoder."):
            kinds.add("restoration_vae")
        return kinds
    if has("zero_convs.", "middle_block_out.") and not has("input_hint_block."):
        kinds.add("ircontrolnet")
    if has("cft_blocks."):
        kinds.add("csft")
    if has("denoise_encoder.", "preprocess_model.encoder."):
        kinds.add("restoration_vae")
    if any(k == "conv_first.1.weight" or k.endswith(".conv_first.1.weight") for k in keys):
        kinds.add("restorer")
    if any(k.endswith("conv_root.weight") for k in keys) and has("transformer_encoder."):
        kinds.add("iqa")
    if has("LandmarkHead.") and has("ClassHead.") and any(k.endswith("body.conv1.weight") for k in keys):
        kinds.add("face_detector")
    if has("out_mask_conv.") and has("decoder.") and has("encoder."):
        kinds.add("face_parser")
    if kinds:
        return kinds
    return set() if identify_weights(keys) is not None else None


def safetensors_header(path: str) -> tuple[list[str], dict] | None:
    """(tensor names, metadata) from a safetensors file's JSON header, without reading any tensor; None when the
    file is not a readable safetensors file."""
    try:
        with open(path, "rb") as f:
            head = f.read(8)
            if len(head) != 8:
                return None
            (n,) = struct.unpack("<Q", head)
            if not 2 <= n <= MAX_HEADER:
                return None
            header = json.loads(f.read(n))
    except (OSError, ValueError):
        return None
    if not isinstance(header, dict):
        return None
    meta = header.pop("__metadata__", None)
    return list(header), meta if isinstance(meta, dict) else {}


@functools.lru_cache(maxsize=512)
def _file_kinds(path: str, size: int, mtime_ns: int) -> frozenset[str] | None:
    """Kinds of the file at ``path`` (cached while its size and time are unchanged); None = unknown."""
    name = os.path.basename(path)
    if name.lower().endswith((".safetensors", ".sft")):
        header = safetensors_header(path)
        if header is not None:
            kinds = kinds_from_keys(*header)
            if kinds is not None:
                return frozenset(kinds)
    by_name = {kind for kind, patterns in NAME_KINDS.items() if any(re.search(p, name, re.I) for p in patterns)}
    return frozenset(by_name) if by_name else None


def file_kinds(path: str) -> frozenset[str] | None:
    try:
        st = os.stat(path)
    except OSError:
        return None
    return _file_kinds(os.path.realpath(path), st.st_size, st.st_mtime_ns)


def loader_options(folder: str, kind: str) -> list[str]:
    """The files of model folder ``folder`` for a loader of ``kind``: those recognised as that kind first, then
    those whose kind is unknown (both in ComfyUI's order); files recognised as another kind are left out."""
    from .paths import filename_list, full_path

    fits, unknown = [], []
    for name in filename_list(folder):
        path = full_path(folder, name)
        kinds = file_kinds(path) if path else None
        if kinds is None:
            unknown.append(name)
        elif kind in kinds:
            fits.append(name)
    return fits + unknown
