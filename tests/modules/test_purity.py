"""modules/ must never import the ComfyUI host: import every module of it with those names blocked."""

import subprocess
import sys
import textwrap
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
HOST_NAMES = ("comfy", "comfy_api", "comfy_extras", "comfy_execution", "folder_paths", "nodes", "server",
              "execution")


def all_module_names():
    root = REPO / "modules"
    for path in sorted(root.rglob("*.py")):
        rel = path.relative_to(REPO).with_suffix("")
        parts = list(rel.parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        yield ".".join(parts)


def import_with_host_blocked(names):
    code = textwrap.dedent(f"""
        import importlib, importlib.abc, sys
        BLOCKED = {HOST_NAMES!r}
        class Block(importlib.abc.MetaPathFinder):
            def find_spec(self, name, path=None, target=None):
                if name.split(".")[0] in BLOCKED:
                    raise ImportError("host module imported from modules/: " + name)
                return None
        sys.meta_path.insert(0, Block())
        for name in {list(names)!r}:
            importlib.import_module(name)
        leaked = sorted(m for m in sys.modules if m.split(".")[0] in BLOCKED)
        assert not leaked, leaked
        print("imported", len({list(names)!r}))
    """)
    return subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=300)


def test_modules_never_import_the_host():
    names = list(all_module_names())
    assert "modules.iqa" in names and len(names) >= 4
    result = import_with_host_blocked(names)
    assert result.returncode == 0, result.stderr[-3000:]
    assert f"imported {len(names)}" in result.stdout


def test_the_purity_check_catches_a_host_import(tmp_path):
    # The same check on a module that imports the host must fail, so the test above can fail.
    bad = REPO / "modules" / "_purity_probe_tmp.py"
    bad.write_text("import folder_paths\n")
    try:
        result = import_with_host_blocked(["modules._purity_probe_tmp"])
    finally:
        bad.unlink()
    assert result.returncode != 0 and "host module imported from modules/: folder_paths" in result.stderr
