"""Workflow files (the page's UI format) -> the API prompt ComfyUI executes, and their model-file check.

The conversion follows the page's own rules (``app.graphToPrompt`` of frontend 1.32.9, which the browser test
compares against): widget values are stored in the order of the node's widget inputs (required, then optional),
an INT with ``control_after_generate`` (by default: an INT named seed or noise_seed) is followed by its control
value, an image-upload combo by the upload widget's value; an input connected by a link takes the link's source
``[node id, output slot]`` (a widget converted to an input keeps its stored value, unused); muted nodes (mode 2)
and notes are left out. Bypassed nodes (mode 4), reroutes and other page-only nodes are refused with a clear error
rather than guessed.
"""

from __future__ import annotations

import os

from ..nodes.manifest import entry as manifest_entry
from ..nodes.manifest import where_to_get

WIDGET_TYPES = ("INT", "FLOAT", "STRING", "BOOLEAN", "COMBO")
# the page's note nodes: text on the canvas, left out of the prompt like the page does (virtual nodes)
PAGE_NOTES = ("Note", "MarkdownNote")


class WorkflowError(ValueError):
    """A workflow file that cannot be run; the message names the node and what was expected."""


def widget_specs(node_class) -> list[tuple[str | None, dict]]:
    """``(name, options)`` of a node class's stored widget values, in the page's order (extra control values
    included as ``(None, {})``)."""
    types = node_class.INPUT_TYPES()
    specs = []
    for section in ("required", "optional"):
        for name, spec in (types.get(section) or {}).items():
            kind = spec[0]
            opts = spec[1] if len(spec) > 1 and isinstance(spec[1], dict) else {}
            if isinstance(kind, list) or kind in WIDGET_TYPES:
                specs.append((name, opts))
                # the page adds the control to INTs that ask for it, and by default to any INT named seed/noise_seed
                if opts.get("control_after_generate", kind == "INT" and name in ("seed", "noise_seed")):
                    specs.append((None, {}))
                if opts.get("image_upload") or opts.get("video_upload") or opts.get("audio_upload"):
                    specs.append((None, {}))
    return specs


def to_prompt(workflow: dict, node_classes: dict) -> dict:
    """The API prompt ``{id: {"class_type", "inputs", "_meta"}}`` of a UI-format ``workflow``.

    ``node_classes``: ComfyUI's ``nodes.NODE_CLASS_MAPPINGS``. Raises WorkflowError for unknown node types,
    bypassed nodes, page-only nodes and values that do not match the node's widgets.
    """
    if not isinstance(workflow, dict) or not isinstance(workflow.get("nodes"), list):
        raise WorkflowError("workflow: expected the page's UI format (a JSON object with 'nodes' and 'links'), found "
                            f"{type(workflow).__name__}{' without nodes' if isinstance(workflow, dict) else ''}")
    links = {link[0]: link for link in workflow.get("links") or []}
    prompt = {}
    for node in workflow["nodes"]:
        nid, ntype, mode = node.get("id"), node.get("type"), node.get("mode", 0)
        if mode == 2 or ntype in PAGE_NOTES:
            continue
        if mode == 4:
            raise WorkflowError(f"node {nid} ({ntype}): bypassed nodes are not supported by the batch runner; "
                                f"remove or un-bypass it")
        cls = node_classes.get(ntype)
        if cls is None:
            raise WorkflowError(f"node {nid}: expected a node type installed in this ComfyUI, found '{ntype}' "
                                f"(a missing custom node pack, or a page-only node such as a Reroute or Note)")
        inputs = {}
        values = list(node.get("widgets_values") or [])
        specs = widget_specs(cls)
        # A workflow saved before a node gained widgets stores fewer values: like the page, the new widgets
        # (always appended last) take their defaults.
        missing = specs[len(values):]
        if len(values) > len(specs) or any(n is not None and "default" not in o for n, o in missing):
            raise WorkflowError(f"node {nid} ({ntype}): expected {len(specs)} widget values for "
                                f"{[n for n, _ in specs if n]}, found {len(values)}: {values}")
        for (name, _), value in zip(specs, values + [o.get("default") for _, o in missing]):
            if name is not None:
                inputs[name] = value
        for slot in node.get("inputs") or []:
            link_id = slot.get("link")
            if link_id is None:
                continue
            link = links.get(link_id)
            if link is None:
                raise WorkflowError(f"node {nid} ({ntype}): input '{slot.get('name')}' refers to link {link_id}, "
                                    f"which the workflow does not have")
            inputs[slot["name"]] = [str(link[1]), link[2]]
        prompt[str(nid)] = {"class_type": ntype, "inputs": inputs,
                            "_meta": {"title": node.get("title") or getattr(cls, "DISPLAY_NAME", None) or ntype}}
    return prompt


def missing_models(workflow: dict) -> list[dict]:
    """The loaders' ``properties.models`` entries (name, url, directory) whose file ComfyUI cannot find."""
    import folder_paths

    missing = []
    for node in workflow.get("nodes") or []:
        if node.get("mode", 0) == 2:
            continue
        for m in (node.get("properties") or {}).get("models") or []:
            folder = m.get("directory")
            known = folder in folder_paths.folder_names_and_paths
            if not known or folder_paths.get_full_path(folder, m.get("name", "")) is None:
                missing.append(m)
    return missing


def describe_missing(missing: list[dict]) -> str:
    """One line per missing file: name, folder and where to get it (the models manifest's source or how to make
    it; the workflow's own URL for a file the manifest does not know)."""
    lines = []
    for m in missing:
        name, folder = m.get("name"), m.get("directory")
        source = where_to_get(folder, name) if manifest_entry(folder, name) else f"download: {m.get('url')}"
        lines.append(f"  - {name}  ->  ComfyUI/models/{folder}/  ({source})")
    return "missing model files; download each into its folder:\n" + "\n".join(lines)


def image_files(folder: str) -> list[str]:
    """The image files of ``folder`` (png, jpg, jpeg, webp, bmp, tif, tiff), sorted by name."""
    exts = (".png", ".jpg", ".jpeg", ".webp", ".bmp", ".tif", ".tiff")
    return sorted(f for f in os.listdir(folder) if f.lower().endswith(exts) and os.path.isfile(os.path.join(folder, f)))
