"""The models manifest (nodes/models.json) is the one source of model files: the README's models table, the
workflows' download records, the batch runner's and the nodes' missing-file messages are made from it. These tests
keep them in sync (no ComfyUI needed)."""

from __future__ import annotations

import importlib.util
import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
WORKFLOWS = sorted((ROOT / "workflows").glob("*.json"))


def _manifest():
    spec = importlib.util.spec_from_file_location("adaptbir_manifest", ROOT / "nodes" / "manifest.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


manifest = _manifest()
ENTRIES = manifest.entries()


def test_entries_are_complete_and_unique():
    assert len(ENTRIES) >= 20
    keys = [(e["folder"], e["name"]) for e in ENTRIES]
    assert len(keys) == len(set(keys)), "a file is listed twice"
    for e in ENTRIES:
        assert {"name", "folder", "url", "page", "licence", "sha256", "required", "nodes", "workflows"} <= set(e), e
        assert e["licence"] and e["nodes"] and all("." in n for n in e["nodes"]), e
        assert e["sha256"] == "" or re.fullmatch(r"[0-9a-f]{64}", e["sha256"]), e  # only what a publisher states
        if e["url"]:
            assert e["url"].startswith("https://") and e["url"].endswith("/" + e["name"]), e
        else:
            assert e.get("how"), f"{e['name']}: no download and no 'how' to make or find it"
        assert e["required"] == bool(e["workflows"]) or e["folder"] == "loras", e


def test_sd21_points_at_a_mirror_named_unofficial():
    """Stability AI withdrew the SD 2.x repositories (Nov 2025): the link is a community mirror, said so."""
    (sd21,) = [e for e in ENTRIES if e["name"] == "v2-1_512-ema-pruned.safetensors"]
    assert "stabilityai" not in sd21["url"] and sd21.get("unofficial") is True
    assert "unofficial" in sd21["note"] and "withdrew" in sd21["note"]


def test_readme_models_table_is_made_from_the_manifest():
    r = subprocess.run([sys.executable, str(ROOT / "scripts" / "models_table.py"), "--check"], cwd=ROOT)
    assert r.returncode == 0, "README.md's models table is stale: run .venv/bin/python scripts/models_table.py"
    readme = (ROOT / "README.md").read_text()
    section = readme.split("<!-- models:start -->")[1].split("<!-- models:end -->")[0]
    for e in ENTRIES:
        assert f"`{e['name']}`" in section and f"`models/{e['folder']}`" in section, e["name"]


@pytest.mark.parametrize("path", WORKFLOWS, ids=lambda p: p.stem)
def test_workflow_download_records_come_from_the_manifest(path):
    wf = json.loads(path.read_text())
    named = {v for n in wf["nodes"] for v in (n.get("widgets_values") or []) if isinstance(v, str)}
    for node in wf["nodes"]:
        for m in (node.get("properties") or {}).get("models") or []:
            e = manifest.entry(m["directory"], m["name"])
            assert e is not None and path.stem in e["workflows"], (path.stem, m)
            assert m == manifest.download_entry(e), (path.stem, m)
    listed = manifest.for_workflow(path.stem)
    assert listed, path.stem
    for e in listed:  # each file the manifest says this workflow needs is chosen in one of its widgets
        assert e["name"] in named, (path.stem, e["name"])
        if e["url"]:  # ... and the page's download dialog knows where to get it
            assert any(m == manifest.download_entry(e) for n in wf["nodes"]
                       for m in (n.get("properties") or {}).get("models") or []), (path.stem, e["name"])


def test_where_to_get_names_the_download_or_how_to_make_it():
    assert "https://huggingface.co/Kijai/SUPIR_pruned/resolve/main/SUPIR-v0F_fp16.safetensors" in \
        manifest.where_to_get("supir", "SUPIR-v0F_fp16.safetensors")
    assert "train.py stage3" in manifest.where_to_get("diffbir", "adaptbir_csft.safetensors")
    assert "unofficial mirror" in manifest.where_to_get("checkpoints", "v2-1_512-ema-pruned.safetensors")
    assert "does not know this file" in manifest.where_to_get("diffbir", "someone_elses.pth")
