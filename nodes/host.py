"""Host differences, detected by feature (never by version string), in one place."""

from __future__ import annotations

import dataclasses


def search_aliases(words) -> dict:
    """``{"search_aliases": [...]}`` for ``io.Schema(**...)`` where the host's V3 schema has that field (newer
    ComfyUI: node search also matches these words), else ``{}`` (ComfyUI 0.3.75 has no such field and would
    refuse the argument)."""
    from comfy_api.latest import io

    fields = {f.name for f in dataclasses.fields(io.Schema)} if dataclasses.is_dataclass(io.Schema) else set()
    return {"search_aliases": list(words)} if "search_aliases" in fields else {}
