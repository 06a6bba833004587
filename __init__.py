"""AdaptBIR restoration nodes for ComfyUI.

Registers the pack's model folders and exposes the nodes through ComfyUI's V3 extension entry point.
Nothing else happens at import: no downloads, prints, sys.path edits or patching of ComfyUI.
"""

from .nodes.paths import register_model_folders

register_model_folders()


async def comfy_entrypoint():
    """ComfyUI's V3 entry point: returns the pack's extension (its node list)."""
    from .nodes.extension import AdaptBIRExtension

    return AdaptBIRExtension()
