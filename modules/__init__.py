"""Pure torch building blocks of the pack (no ComfyUI imports, no I/O)."""
