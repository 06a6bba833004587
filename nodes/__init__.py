"""ComfyUI adapter of the pack. Submodules import the host; this file imports nothing so that the pack's root
``__init__`` can register model folders cheaply."""
