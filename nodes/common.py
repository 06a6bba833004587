"""Shared pieces of the ComfyUI adapter: categories, pack types, safe weight loading, progress and messages."""

from __future__ import annotations

import math
import os
import re

from comfy_api.latest import io

from ..modules.image_ops import to_rgb_bchw

CATEGORY_ROOT = "restoration"
CAT_QUALITY = f"{CATEGORY_ROOT}/quality"
CAT_LATENT = f"{CATEGORY_ROOT}/latent"
CAT_IMAGE = f"{CATEGORY_ROOT}/image"

# Pack socket types. The names are stored in saved workflows: never rename them.
RestoreParams = io.Custom("ADAPTBIR_RESTORE_PARAMS")
RestoreCondition = io.Custom("ADAPTBIR_CONDITION")


class PackError(ValueError):
    """An error the pack raises on purpose; its text says what was expected, what was found and what to do."""


def check_model_file_name(folder: str, filename: str) -> None:
    """Raise PackError unless ``filename`` is a name inside model folder ``folder``: not absolute, no ``..`` part
    (with ``/`` or ``\\``), so no loader is pointed outside ComfyUI's model folders."""
    name = str(filename)
    parts = name.replace("\\", "/").split("/")
    if os.path.isabs(name) or name.startswith(("/", "\\")) or re.match(r"^[A-Za-z]:", name) or ".." in parts:
        raise PackError(f"model file '{name}': expected a file name inside the '{folder}' model folder (one the "
                        f"list offers), found a path that leads outside it; it was not read")


def model_file_path(folder: str, filename: str) -> str:
    """Resolve ``filename`` inside ComfyUI model folder ``folder`` (never outside it), or raise PackError."""
    from .paths import folder_dirs, full_path

    check_model_file_name(folder, filename)
    path = full_path(folder, filename)
    if path is None or not os.path.isfile(path):
        dirs = folder_dirs(folder)
        raise PackError(f"model file '{filename}' was not found in the '{folder}' model folder "
                        f"(searched: {', '.join(dirs) or 'no folder registered'})")
    return path


def file_fingerprint(folder: str, filename: str):
    """(size, mtime) of a model file, so a loader node reruns when the file on disk changes; None if missing."""
    try:
        st = os.stat(model_file_path(folder, filename))
    except PackError:
        return None
    return (st.st_size, st.st_mtime_ns)


def load_weights(path: str, what: str, with_metadata: bool = False):
    """Load a state dict safely: safetensors, or a PyTorch file with ``weights_only=True`` (no code runs).

    Returns the state dict, or ``(state_dict, metadata)`` with ``with_metadata`` (metadata: the safetensors
    header's dict, ``{}`` for other files). Raises PackError naming the file and ``what`` was expected when the
    file is empty, truncated, or would need to execute code to load.
    """
    import comfy.utils

    name = os.path.basename(path)
    if os.path.getsize(path) == 0:
        raise PackError(f"{name}: expected {what}, found an empty (0-byte) file; download it again")
    try:
        sd, metadata = comfy.utils.load_torch_file(path, safe_load=True, return_metadata=True)
    except Exception as e:  # noqa: BLE001 - every loader failure becomes one clear message
        raise PackError(_unreadable(name, what, e)) from None
    if not isinstance(sd, dict) or not sd:
        raise PackError(f"{name}: expected {what}, found no tensors in the file")
    return (sd, metadata or {}) if with_metadata else sd


def _unreadable(name: str, what: str, e: Exception) -> str:
    """The message for a weights file that torch/safetensors refused to read (weights-only: nothing ran)."""
    text = re.sub(r"\x1b\[[0-9;]*m", "", str(e))
    code = re.search(r"Unsupported global: GLOBAL ([\w.]+)", text)
    if code:
        return (f"{name}: expected {what}, found a pickle that would run code when loaded (it calls "
                f"{code.group(1)}); it was not executed. Use a safetensors copy of the file or get it again from "
                f"its publisher.")
    detail = re.search(r"WeightsUnpickler error:\s*(.+)", text)
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    reason = detail.group(1).strip() if detail else (lines[0] if lines else type(e).__name__)
    if len(reason) > 160:
        reason = reason[:157] + "..."
    return (f"{name}: expected {what}, found a file that could not be read safely as safetensors or as a "
            f"weights-only PyTorch file ({type(e).__name__}: {reason}); it may be truncated or not a weights file. "
            f"Nothing in it was executed.")


# Appended to every "NaN or inf" image error: decoded images are where NaN usually comes from.
NAN_HINT = ("; if it comes from VAE Decode, the VAE overflowed (common with SD/SDXL VAEs in fp16): decode in fp32 "
            "or bf16 (start ComfyUI with --fp32-vae or --bf16-vae, or use an fp16-fixed VAE)")


def image_error(err: ValueError) -> PackError:
    """A PackError from an image check's ValueError (text kept; the NaN/inf one gets :data:`NAN_HINT`)."""
    text = str(err)
    return PackError(text + NAN_HINT if "NaN or inf" in text else text)


def input_image(image, name: str = "image"):
    """A node's IMAGE input as (B, 3, H, W) float32 RGB in [0, 1] (grey repeated, alpha dropped), or PackError
    naming the input when it is empty, has an unusual channel count or holds NaN/inf (with a fix for a VAE that
    decoded to NaN)."""
    try:
        return to_rgb_bchw(image, name)
    except ValueError as e:
        raise image_error(e) from None


def widget_bounds_error(node_cls, values: dict) -> str | None:
    """The message for the first number widget of ``node_cls`` whose value in ``values`` lies outside the
    widget's min/max (or is NaN), naming the input, the range and the value; None when every value fits.

    ComfyUI skips its own min/max check for the inputs a node's ``validate_inputs`` names, and for all inputs when
    it takes ``**kwargs``; such nodes call this from ``validate_inputs`` so that out-of-range values are still
    refused before anything runs. Linked values (None while validating), booleans and non-numbers are skipped."""
    spec = node_cls.INPUT_TYPES()
    for group in ("required", "optional"):
        for name, entry in (spec.get(group) or {}).items():
            val = values.get(name)
            if isinstance(val, bool) or not isinstance(val, (int, float)) or len(entry) < 2 \
                    or not isinstance(entry[1], dict):
                continue
            lo, hi = entry[1].get("min"), entry[1].get("max")
            nan = isinstance(val, float) and math.isnan(val)
            if nan or (lo is not None and val < lo) or (hi is not None and val > hi):
                return f"{name}: expected a value in [{lo}, {hi}], found {val}"
    return None


def choice_error(node_cls, values: dict) -> str | None:
    """The message for the first combo widget of ``node_cls`` named in ``values`` whose value is not one of the
    widget's options, naming the input, the options and the value; None when every value is an option.

    ComfyUI (0.3.75) checks combo values only where INPUT_TYPES lists the options as the type; nodes written
    with the v3 schema declare "COMBO" with an ``options`` entry, so any string (e.g. an option renamed since a
    workflow was saved, or a typo in an API prompt) would reach ``execute`` and silently take another branch.
    Nodes call this from ``validate_inputs`` for their fixed-choice combos (not for model-file lists, whose
    loaders name a missing file themselves). Linked values (None while validating) are skipped."""
    spec = node_cls.INPUT_TYPES()
    for group in ("required", "optional"):
        for name, entry in (spec.get(group) or {}).items():
            val = values.get(name)
            if not isinstance(val, str) or len(entry) < 2 or not isinstance(entry[1], dict):
                continue
            options = entry[1].get("options")
            if isinstance(options, (list, tuple)) and val not in options:
                return f"{name}: expected one of {list(options)}, found {val!r}"
    return None


def is_oom(err: BaseException) -> bool:
    """True for an out-of-memory error of the torch device (``comfy.model_management.OOM_EXCEPTION``), never for
    the pack's own errors or a cancel. On torch builds without ``OutOfMemoryError`` ComfyUI's OOM_EXCEPTION is plain
    ``Exception``; then only the message can say it."""
    import comfy.model_management as mm

    if isinstance(err, (PackError, mm.InterruptProcessingException)) or not isinstance(err, mm.OOM_EXCEPTION):
        return False
    return mm.OOM_EXCEPTION is not Exception or "out of memory" in str(err).lower()


def check_interrupt() -> None:
    """Raise ComfyUI's InterruptProcessingException if the user pressed Cancel."""
    import comfy.model_management

    comfy.model_management.throw_exception_if_processing_interrupted()


def show_text_on_node(node_id, text: str) -> None:
    """Show ``text`` on the node in the page (ComfyUI's progress text); a no-op without a server."""
    if node_id is None:
        return
    try:
        from server import PromptServer
    except ImportError:  # pragma: no cover - the host always has server.py
        return
    instance = getattr(PromptServer, "instance", None)
    if instance is not None and hasattr(instance, "send_progress_text"):
        instance.send_progress_text(text, node_id)
