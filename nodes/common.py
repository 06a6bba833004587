"""Shared pieces of the ComfyUI adapter: categories, pack types, safe weight loading, progress and messages."""

from __future__ import annotations

import math
import os
import re

import torch
from comfy_api.latest import io

from ..modules.image_ops import to_rgb_bchw
from .manifest import where_to_get

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
    """Resolve ``filename`` inside ComfyUI model folder ``folder`` (never outside it), or raise PackError naming
    the folders searched and where to get the file (from the models manifest)."""
    from .paths import folder_dirs, full_path

    check_model_file_name(folder, filename)
    path = full_path(folder, filename)
    if path is None or not os.path.isfile(path):
        dirs = folder_dirs(folder)
        raise PackError(f"model file '{filename}' was not found in the '{folder}' model folder "
                        f"(searched: {', '.join(dirs) or 'no folder registered'}); {where_to_get(folder, filename)}")
    return path


def missing_file_error(folder: str, filename) -> str | None:
    """For a loader's ``validate_inputs``: the message :func:`model_file_path` would raise for ``filename`` (a
    path outside the folder, or a file that is not there, with where to get it), or None when the file is there
    or the input is linked (None while the prompt is validated). ComfyUI 0.3.75 does not check V3 combo values,
    so without this a missing file would surface only when its node runs, one per run."""
    if filename is None:
        return None
    try:
        model_file_path(folder, filename)
    except PackError as e:
        return str(e)
    return None


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
    check_weights(sd, name, what)
    return (sd, metadata or {}) if with_metadata else sd


# Weight dtypes every loader accepts: floating point, fp8 (ComfyUI's scaled/fp8 checkpoints) and torch's quantised
# types. Integer tensors are accepted only as the index buffers some architectures save with their weights, and
# int8/uint8 only in files of a known quantisation format (bitsandbytes: ``quant_state`` / ``SCB`` keys).
FLOAT_DTYPES = {torch.float16, torch.bfloat16, torch.float32, torch.float64} | {
    getattr(torch, n) for n in ("float8_e4m3fn", "float8_e5m2", "float8_e4m3fnuz", "float8_e5m2fnuz")
    if hasattr(torch, n)}
QUANTISED_DTYPES = {getattr(torch, n) for n in ("qint8", "quint8", "qint32", "quint4x2") if hasattr(torch, n)}
INDEX_BUFFERS = ("position_ids", "num_batches_tracked", "relative_position_index")
_FP8 = {d for d in FLOAT_DTYPES if "float8" in str(d)}


def check_weights(sd: dict, name: str, what: str) -> None:
    """The one validation of every loaded weights file, before any network is built: raise PackError naming the
    file, the key, what was expected and what was found unless every value is a tensor (nested dicts of tensors,
    e.g. ``{"params": {...}}``, are walked; plain numbers or strings next to such a dict, a trainer's ``epoch``, are
    ignored), of a float, fp8 or quantised dtype (integer tensors only as index buffers, :data:`INDEX_BUFFERS`, or
    in a bitsandbytes file), and holds finite values only (no NaN or inf)."""
    def walk(d: dict, prefix: str, top: bool):
        nested = any(isinstance(v, dict) for v in d.values())
        for key, value in d.items():
            full = f"{prefix}{key}"
            if isinstance(value, dict):
                yield from walk(value, full + ".", False)
            elif isinstance(value, torch.Tensor):
                yield full, value
            elif not (top and nested and isinstance(value, (int, float, str))):
                raise PackError(f"{name}: expected {what} (tensors only), found a {type(value).__name__} at key "
                                f"'{full}'; the file is not a weights file this loader reads")

    quant_file = None
    for key, t in walk(sd, "", True):
        if t.dtype in FLOAT_DTYPES or t.dtype in QUANTISED_DTYPES:
            pass
        elif not t.is_floating_point() and key.rsplit(".", 1)[-1] in INDEX_BUFFERS:
            continue
        elif t.dtype in (torch.int8, torch.uint8):
            if quant_file is None:
                quant_file = any("quant_state" in str(k) or str(k).endswith(".SCB") for k in _flat_keys(sd))
            if not quant_file:
                raise PackError(f"{name}: expected {what} with float tensors (or a known quantised format), found "
                                f"dtype {t.dtype} at key '{key}' in a file of no known quantisation format")
            continue
        else:
            raise PackError(f"{name}: expected {what} with float tensors (float16/bfloat16/float32, fp8 or a "
                            f"quantised type), found dtype {t.dtype} at key '{key}'; the file may be corrupt or "
                            f"another kind of file")
        if t.dtype in QUANTISED_DTYPES or t.numel() == 0 or t.device.type == "meta":
            continue
        finite = torch.isfinite(t.to(torch.float16) if t.dtype in _FP8 else t)
        if not bool(finite.all()):
            bad = int((~finite).sum())
            raise PackError(f"{name}: expected {what} with finite values, found NaN or inf at key '{key}' ({bad} of "
                            f"{t.numel()} values); the file is damaged or was saved from a diverged training run")


def size_mismatch_error(name: str, what: str, err: BaseException) -> PackError | None:
    """The PackError for torch's ``load_state_dict`` "size mismatch for KEY: copying a param with shape A from
    checkpoint, the shape in current model is B" (naming the file, the key, the expected and the found shape), or
    None when ``err`` is not that error."""
    m = re.search(r"size mismatch for ([\w.]+): copying a param with shape torch\.Size\(\[([\d, ]*)\]\) from "
                  r"checkpoint, the shape in current model is torch\.Size\(\[([\d, ]*)\]\)", str(err))
    if m is None:
        return None
    return PackError(f"{name}: expected {what} whose tensor '{m.group(1)}' has shape [{m.group(3)}] (the recognised "
                     f"layout), found shape [{m.group(2)}]")


def _flat_keys(d: dict):
    for k, v in d.items():
        if isinstance(v, dict):
            yield from _flat_keys(v)
        else:
            yield k


def check_shapes(name: str, sd: dict, expected: dict, what: str, prefix: str = "") -> None:
    """PackError naming the file, the first key whose shape differs, the expected and the found shape, when a
    tensor of ``sd`` (its key with ``prefix`` removed) has another shape than the same key of ``expected`` (a
    network's ``state_dict()``, meta tensors are fine); keys only one side has are left to the loader."""
    for key, t in sd.items():
        k = key[len(prefix):] if prefix and key.startswith(prefix) else key
        ref = expected.get(k)
        if ref is not None and isinstance(t, torch.Tensor) and tuple(t.shape) != tuple(ref.shape):
            raise PackError(f"{name}: expected {what} whose tensor '{key}' has shape {list(ref.shape)} (the "
                            f"recognised layout), found shape {list(t.shape)}")


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
    """True for an out-of-memory error of the torch device (``comfy.model_management.OOM_EXCEPTION``, or the CPU
    allocator's "DefaultCPUAllocator: can't allocate memory" RuntimeError), never for
    the pack's own errors or a cancel. On torch builds without ``OutOfMemoryError`` ComfyUI's OOM_EXCEPTION is plain
    ``Exception``; then only the message can say it."""
    import comfy.model_management as mm

    if isinstance(err, (PackError, mm.InterruptProcessingException)):
        return False
    if isinstance(err, RuntimeError) and "DefaultCPUAllocator" in str(err):  # CPU: a plain RuntimeError
        return True
    if not isinstance(err, mm.OOM_EXCEPTION):
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
