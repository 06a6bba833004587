"""Batch runner: workflows of workflows/ on folders of images through ComfyUI's executor (see batch.py)."""
