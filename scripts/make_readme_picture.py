"""Take the README's picture of the page (``docs/images/page.jpg``) in the real ComfyUI page.

    .venv/bin/python scripts/make_readme_picture.py

It starts the development ComfyUI with the pack (as the browser tests do), loads the quick start's workflow
(``workflows/diffbir_v2_guidance.json``), opens the help page of its Stage-1 Restore node in the node library's help
panel and saves a JPEG screenshot. Needs the development setup (scripts/setup.sh) and Chromium.
"""

from __future__ import annotations

import json
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
WORKFLOW = REPO / "workflows" / "diffbir_v2_guidance.json"
OUT = REPO / "docs" / "images" / "page.jpg"


def main() -> int:
    sys.path.insert(0, str(REPO))
    from tests.support.browser import close_dialogs, comfy_page, comfy_server

    OUT.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp, comfy_server(Path(tmp)) as base, \
            comfy_page(base, viewport=(1440, 810)) as page:
        page.evaluate("(wf) => app.loadGraphData(wf)", json.loads(WORKFLOW.read_text()))
        close_dialogs(page, settle_ms=400)
        # the "what's new" banner above the canvas and the minimap are not part of the pack
        page.evaluate("""() => document.querySelectorAll('button').forEach(b => {
            const label = (b.getAttribute('aria-label') || '');
            if (label.startsWith('Hide Minimap')) b.click(); })""")
        page.evaluate("""() => { const t = Array.from(document.querySelectorAll('button'))
            .find(b => b.innerText.trim() === 'Try it out');
            let box = t && t.parentElement;
            while (box && box.querySelectorAll('button').length < 2) box = box.parentElement;
            const buttons = box ? Array.from(box.querySelectorAll('button')) : [];
            if (buttons.length) buttons[buttons.length - 1].click(); }""")
        node = page.evaluate("() => app.graph._nodes.find(n => n.type === 'AdaptBIR_Stage1Restore').id")
        page.evaluate("(id) => { app.canvas.deselectAll(); app.canvas.selectNode(app.graph.getNodeById(id)); "
                      "app.canvas.setDirty(true, true); }", node)
        page.click("[data-testid=info-button]")
        page.wait_for_selector(".node-help-content h1", timeout=30_000)
        # the whole graph in the canvas area right of the help panel
        page.evaluate("""() => {
            const panel = document.querySelector('.node-help-content').getBoundingClientRect().right + 20;
            const ns = app.graph._nodes, c = app.canvas.canvas.getBoundingClientRect();
            const x0 = Math.min(...ns.map(n => n.pos[0])), y0 = Math.min(...ns.map(n => n.pos[1] - 30));
            const x1 = Math.max(...ns.map(n => n.pos[0] + n.size[0])), y1 = Math.max(...ns.map(n => n.pos[1] + n.size[1]));
            const s = Math.min((c.width - panel - 20) / (x1 - x0), (c.height - 160) / (y1 - y0));
            app.canvas.deselectAll();
            app.canvas.ds.scale = s;
            app.canvas.ds.offset[0] = (panel - c.left) / s - x0;
            app.canvas.ds.offset[1] = 110 / s - y0;
            app.canvas.setDirty(true, true); }""")
        page.wait_for_timeout(800)
        page.screenshot(path=str(OUT), type="jpeg", quality=72)
    print(f"wrote {OUT.relative_to(REPO)} ({OUT.stat().st_size} bytes)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
