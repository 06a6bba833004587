"""AdaptBIR restoration nodes for ComfyUI.

Registers the pack's model folders and exposes the nodes through ComfyUI's V3 extension entry point.
Nothing else happens at import: no downloads, prints, sys.path edits or patching of ComfyUI.
``WEB_DIRECTORY`` is served by ComfyUI at ``/extensions/<this folder's name>/``; it holds no scripts, only the
per-node help pages (``web/docs/<node id>.md``) that the node library's help panel fetches.
"""

from .nodes.paths import register_model_folders

WEB_DIRECTORY = "./web"

register_model_folders()


async def comfy_entrypoint():
    """ComfyUI's V3 entry point: returns the pack's extension (its node list)."""
    from .nodes.extension import AdaptBIRExtension

    return AdaptBIRExtension()
