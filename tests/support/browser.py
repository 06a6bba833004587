"""The real ComfyUI page: a ComfyUI server subprocess on loopback and its page in headless Chromium (Playwright).

Used by the browser tests and by ``scripts/make_workflows.py`` (which builds the example workflows *in the page*,
so the files are exactly what the page saves). Chromium is the distribution's package (``/usr/bin/chromium``, or
``CHROMIUM_PATH``); Playwright only drives it.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

from .comfy_host import comfyui_path, make_custom_nodes_dir


def chromium_path() -> str | None:
    for path in (os.environ.get("CHROMIUM_PATH"), "/usr/bin/chromium", "/usr/bin/chromium-browser"):
        if path and os.path.isfile(path):
            return path
    return None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def http_json(url: str, data=None, timeout: float = 10):
    req = urllib.request.Request(url, data=None if data is None else json.dumps(data).encode(),
                                 headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=timeout) as r:
        return json.loads(r.read())


@contextlib.contextmanager
def comfy_server(root: Path, folders: dict[str, str] | None = None):
    """Run ``main.py --cpu`` with the pack and the test nodes; yields the base URL. ``folders``: extra model folder
    keys -> paths relative to ``root`` (written to an extra_model_paths.yaml)."""
    root = Path(root)
    make_custom_nodes_dir(root)
    for sub in ("input", "output"):
        (root / sub).mkdir(exist_ok=True)
    lines = ["adaptbir_tests:", f"  base_path: {root}", "  custom_nodes: custom_nodes"]
    lines += [f"  {k}: {v}" for k, v in (folders or {}).items()]
    cfg = root / "extra_model_paths.yaml"
    cfg.write_text("\n".join(lines) + "\n")
    port = _free_port()
    log = open(root / "server.log", "w")  # noqa: SIM115 - closed in the finally below
    proc = subprocess.Popen(
        [sys.executable, "main.py", "--cpu", "--listen", "127.0.0.1", "--port", str(port),
         "--extra-model-paths-config", str(cfg), "--input-directory", str(root / "input"),
         "--output-directory", str(root / "output"), "--preview-method", "none"],
        cwd=comfyui_path(), stdout=log, stderr=subprocess.STDOUT)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.time() + 180
        while True:
            try:
                http_json(f"{base}/system_stats", timeout=2)
                break
            except OSError:
                if proc.poll() is not None or time.time() > deadline:
                    raise RuntimeError(f"ComfyUI did not start:\n{(root / 'server.log').read_text()[-3000:]}")
                time.sleep(0.5)
        yield base
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
        log.close()


@contextlib.contextmanager
def comfy_page(base: str, viewport=(1600, 1000)):
    """A Playwright page on the ComfyUI page at ``base``, ready (``window.app.graph``), dialogs closed."""
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=chromium_path(), args=[
            "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
            "--disable-component-update", "--disable-sync"])
        try:
            # the first visit opens the template browser; a completed tutorial keeps it closed
            # and full-detail drawing down to 20 % zoom makes readable screenshots of whole workflows
            for key, value in (("Comfy.TutorialCompleted", b"true"),
                               ("LiteGraph.Canvas.LowQualityRenderingZoomThreshold", b"0.2")):
                req = urllib.request.Request(f"{base}/settings/{key}", data=value,
                                             headers={"Content-Type": "application/json"})
                urllib.request.urlopen(req, timeout=10).close()
            page = browser.new_page(viewport={"width": viewport[0], "height": viewport[1]})
            page.goto(base + "/")
            page.wait_for_function("window.app && window.app.graph", timeout=120_000)
            close_dialogs(page)
            yield page
        finally:
            browser.close()


def close_dialogs(page, settle_ms: int = 1000, timeout_ms: int = 15_000) -> None:
    """Press Escape until no dialog has been open for ``settle_ms`` (dialogs may open a moment after load)."""
    quiet = waited = 0
    while quiet < settle_ms and waited < timeout_ms:
        if page.evaluate("() => document.querySelectorAll('.p-dialog').length") > 0:
            page.keyboard.press("Escape")
            page.evaluate("""() => document.querySelectorAll(
                '.p-dialog .p-dialog-close-button, .p-dialog button[aria-label="Close"]').forEach(b => b.click())""")
            quiet = 0
        else:
            quiet += 200
        page.wait_for_timeout(200)
        waited += 200


# Builds a graph in the page from a spec (see scripts/make_workflows.py) and returns it as the page saves it:
# JSON.stringify(app.graph.serialize()) (undefined fields dropped, not null).
BUILD_JS = """(spec) => {
  app.graph.clear();
  const nodes = {};
  spec.nodes.forEach(([key, type, widgets, title]) => {
    const n = LiteGraph.createNode(type);
    if (!n) throw new Error("unknown node type " + type);
    app.graph.add(n);
    if (title) n.title = title;
    if (spec.sizes && spec.sizes[key]) n.size = [spec.sizes[key][0], spec.sizes[key][1] ?? n.size[1]];
    for (const [name, value] of Object.entries(widgets || {})) {
      const w = (n.widgets || []).find(w => w.name === name);
      if (!w) throw new Error(type + " has no widget " + name);
      w.value = value;
    }
    nodes[key] = n;
  });
  for (const [src, out, dst, input] of spec.links) {
    const d = nodes[dst];
    const slot = d.findInputSlot(input);
    if (slot < 0) throw new Error(d.type + " has no input " + input);
    const o = nodes[src].connect(out, d, slot);
    if (!o) throw new Error("could not connect " + src + ":" + out + " -> " + dst + "." + input);
  }
  for (const [key, models] of Object.entries(spec.models || {})) nodes[key].properties.models = models;
  // columns of spec.per_column nodes in spec order, stacked by their real sizes
  const list = Object.values(nodes);
  let x = 40;
  for (let c = 0; c * spec.per_column < list.length; c++) {
    const col = list.slice(c * spec.per_column, (c + 1) * spec.per_column);
    let y = 60, width = 0;
    for (const n of col) { n.pos = [x, y]; y += n.size[1] + 70; width = Math.max(width, n.size[0]); }
    x += width + 80;
  }
  return JSON.stringify(app.graph.serialize());
}"""

def page_problems(page) -> list[str]:
    """Visible toast/alert/dialog texts of the page (PrimeVue toasts and dialogs)."""
    return page.evaluate("""() => Array.from(document.querySelectorAll('.p-toast-message, .p-dialog'))
        .map(e => e.innerText.trim()).filter(t => t.length)""")
