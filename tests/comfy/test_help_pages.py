"""Every node of the pack has a help page (``web/docs/<node id>.md``) that names its inputs and outputs.

The ComfyUI page (frontend 1.32.9) fetches a custom node's help from ``/extensions/<pack folder>/docs/<node id>.md``
(after trying ``docs/<node id>/<locale>.md``) and resolves relative image paths against ``/extensions/<pack
folder>/docs/``; ComfyUI serves ``/extensions/<pack folder>/`` from the pack's ``WEB_DIRECTORY``. That the real server
serves the pages is checked in test_server.py; these tests keep the pages complete.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
DOCS = ROOT / "web" / "docs"
GOLDEN = json.loads((ROOT / "tests" / "golden" / "node_interface.json").read_text())
SECTIONS = ("## Input", "## Output")


def page(node_id: str) -> str:
    return (DOCS / f"{node_id}.md").read_text()


def test_one_page_per_node_and_no_stray_page():
    pages = {p.stem for p in DOCS.glob("*.md")}
    assert pages == set(GOLDEN), (f"missing pages: {sorted(set(GOLDEN) - pages)}; "
                                  f"pages of no node: {sorted(pages - set(GOLDEN))}")


@pytest.mark.parametrize("node_id", sorted(GOLDEN))
def test_page_names_every_input(node_id):
    text = page(node_id)
    assert text.startswith("# "), f"{node_id}.md: expected a '# <node name>' title"
    for section in SECTIONS:
        assert section in text, f"{node_id}.md: expected a '{section}...' section"
    missing = [name for name in GOLDEN[node_id]["inputs"] if f"`{name}`" not in text]
    assert not missing, f"{node_id}.md: inputs not described: {missing}"


def test_pages_name_every_output(host):
    """Output ids come from the loaded nodes (the golden file records only their types)."""
    missing = {}
    for node_id in GOLDEN:
        text = page(node_id)
        outs = [o.id for o in host.node_class(node_id).GET_SCHEMA().outputs]
        gaps = [o for o in outs if f"`{o}`" not in text]
        if gaps:
            missing[node_id] = gaps
    assert not missing, f"outputs not described: {missing}"


def test_pictures_exist_and_are_small():
    refs = {(p.name, ref) for p in DOCS.glob("*.md") for ref in re.findall(r"!\[[^\]]*\]\(([^)\s]+)", p.read_text())}
    assert refs, "expected pictures on some pages"
    for name, ref in refs:
        assert not ref.startswith(("/", "http")), f"{name}: {ref}: expected a path relative to web/docs/"
        path = DOCS / ref
        assert path.is_file(), f"{name}: picture {ref} not found"
        assert path.stat().st_size < 200_000, f"{name}: {ref} is {path.stat().st_size} bytes; keep pictures small"


def test_pages_link_no_other_page_relatively():
    """The help panel renders links as they are (only images get its base URL): a relative link would open the
    ComfyUI page's own address, so pages link nothing relatively."""
    for p in DOCS.glob("*.md"):
        links = [m for m in re.findall(r"(?<!!)\[[^\]]*\]\(([^)\s]+)", p.read_text()) if not m.startswith("http")]
        assert not links, f"{p.name}: relative links {links}"


def test_pack_sets_web_directory_to_the_docs_parent(host):
    web = getattr(host.pack, "WEB_DIRECTORY", None)
    assert web is not None and (ROOT / web / "docs").resolve() == DOCS.resolve()
    assert not list((ROOT / web).rglob("*.js")), "the web folder holds help pages only (every .js would be loaded)"


@pytest.mark.browser
def test_help_panel_shows_the_page_and_its_picture(tmp_path):
    """In the real page: select a pack node, press the selection toolbox's info button; the node library's help
    panel shows the node's page (not the fallback built from the description) with its picture loaded."""
    from tests.support.browser import chromium_path, close_dialogs, comfy_page, comfy_server

    if chromium_path() is None:
        pytest.skip("Chromium not installed (scripts/setup.sh installs it)")
    artifacts = ROOT / "tests" / "artifacts"
    artifacts.mkdir(parents=True, exist_ok=True)
    with comfy_server(tmp_path) as base, comfy_page(base, viewport=(1400, 800)) as page:
        workflow = json.loads((ROOT / "workflows" / "diffbir_v2_guidance.json").read_text())
        page.evaluate("(wf) => app.loadGraphData(wf)", workflow)
        close_dialogs(page, settle_ms=400)
        page.evaluate("""() => { const n = LiteGraph.createNode('AdaptBIR_IQAClassifier'); n.pos = [40, 700];
            app.graph.add(n); app.canvas.deselectAll(); app.canvas.selectNode(n); app.canvas.setDirty(true, true); }""")
        page.click("[data-testid=info-button]")
        page.wait_for_function("""() => { const i = document.querySelector('.node-help-content img');
            return i && i.complete && i.naturalWidth > 0 }""", timeout=30_000)
        shown = page.evaluate("() => document.querySelector('.node-help-content').innerText")
        src = page.evaluate("() => document.querySelector('.node-help-content img').getAttribute('src')")
        page.screenshot(path=str(artifacts / "help_panel.png"))
    first_paragraph = page_paragraph("AdaptBIR_IQAClassifier")
    assert " ".join(first_paragraph.split()) in " ".join(shown.split())
    assert "How k and w follow the score" in shown
    assert src.endswith("/docs/images/iqa_mapping.png") and src.startswith("/extensions/"), src


def page_paragraph(node_id: str) -> str:
    """The first paragraph after the title."""
    return page(node_id).split("\n\n")[1]
