"""The pack's models manifest (``nodes/models.json``): every model file the pack knows, where it goes and where to
get it. Plain Python (json only, no ComfyUI import), so the batch runner, scripts and tests read it too.

An entry: ``name`` (file name), ``folder`` (ComfyUI model folder key), ``url`` (direct download, '' when none),
``page`` (the publisher's page), ``licence``, ``sha256`` ('' unless the publisher states it), ``required`` (a
shipped workflow needs it), ``nodes`` (``NodeType.input`` that take it), ``workflows`` (shipped workflows that
name it), optional ``note``, ``how`` (what to do when there is no download) and ``unofficial`` (a mirror).
"""

from __future__ import annotations

import functools
import json
import os

MANIFEST = os.path.join(os.path.dirname(os.path.abspath(__file__)), "models.json")


@functools.lru_cache(maxsize=1)
def _entries() -> tuple[dict, ...]:
    with open(MANIFEST, encoding="utf-8") as f:
        return tuple(json.load(f)["models"])


def entries() -> list[dict]:
    """Every manifest entry (copies), in the file's order."""
    return [dict(e) for e in _entries()]


def entry(folder: str, name: str) -> dict | None:
    """The entry for file ``name`` in model folder ``folder`` (sub-folders ignored), or None."""
    base = os.path.basename(str(name).replace("\\", "/"))
    return next((dict(e) for e in _entries() if e["folder"] == folder and e["name"] == base), None)


def for_workflow(workflow: str) -> list[dict]:
    """The entries a shipped workflow (file stem) names."""
    return [dict(e) for e in _entries() if workflow in e["workflows"]]


def download_entry(e: dict) -> dict:
    """The ``{name, url, directory}`` record the page's missing-models dialog reads from a node's
    ``properties.models``."""
    return {"name": e["name"], "url": e["url"], "directory": e["folder"]}


def where_to_get(folder: str, name: str) -> str:
    """One sentence saying where file ``name`` of ``folder`` comes from: its download URL (and licence), how to
    make it when it is not published, or that the pack does not know the file."""
    e = entry(folder, name)
    if e is None:
        return (f"the pack does not know this file: put your own file of that name in ComfyUI/models/{folder}/ or "
                f"pick a file the list offers")
    mirror = " (an unofficial mirror)" if e.get("unofficial") else ""
    if e["url"]:
        return f"download it from {e['url']}{mirror} into ComfyUI/models/{folder}/ (licence: {e['licence']})"
    return e.get("how") or f"see {e['page']}"
