"""Shared pieces of the ComfyUI adapter: categories, pack types, safe weight loading, progress and messages."""

from __future__ import annotations

import os

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


def model_file_path(folder: str, filename: str) -> str:
    """Resolve ``filename`` inside ComfyUI model folder ``folder`` (never outside it), or raise PackError."""
    import folder_paths

    path = folder_paths.get_full_path(folder, filename)
    if path is None or not os.path.isfile(path):
        dirs = folder_paths.get_folder_paths(folder) if folder in folder_paths.folder_names_and_paths else []
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
        reason = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise PackError(f"{name}: expected {what} as safetensors or a weights-only PyTorch file, but it could not "
                        f"be read safely ({type(e).__name__}: {reason}). The file may be truncated, not a weights "
                        f"file, or a pickle that would run code; it was not executed.") from None
    if not isinstance(sd, dict) or not sd:
        raise PackError(f"{name}: expected {what}, found no tensors in the file")
    return (sd, metadata or {}) if with_metadata else sd


def input_image(image, name: str = "image"):
    """A node's IMAGE input as (B, 3, H, W) float32 RGB in [0, 1] (grey repeated, alpha dropped), or PackError
    naming the input when it is empty, has an unusual channel count or holds NaN/inf."""
    try:
        return to_rgb_bchw(image, name)
    except ValueError as e:
        raise PackError(str(e)) from None


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
