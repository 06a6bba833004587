"""Shared fixtures: one in-process ComfyUI host per session, tiny models, synthesized weights files."""

from __future__ import annotations

import os
import sys

import pytest
import torch

# Deterministic, bounded CPU work on the 2-core CI machine.
torch.set_num_threads(min(2, os.cpu_count() or 1))


def pytest_report_header(config):
    from tests.support.comfy_host import comfyui_path

    import re

    path = comfyui_path()
    m = re.search(r'__version__\s*=\s*"([^"]+)"', (path / "comfyui_version.py").read_text())
    return f"ComfyUI host: {m.group(1) if m else 'unknown version'} at {path}"


@pytest.fixture(scope="session")
def host(tmp_path_factory):
    """ComfyUI (0.3.75 or COMFYUI_PATH) imported once, with the pack loaded through its custom-node loader."""
    from tests.support.comfy_host import InProcessHost

    return InProcessHost(tmp_path_factory.mktemp("comfy"))


@pytest.fixture(scope="session")
def tiny(host):
    """The test-nodes' tiny model builders (tiny_model, tiny_vae, tiny_conditioning)."""
    return sys.modules[[m for m in sys.modules if m.endswith("adaptbir_test_nodes.tiny")][0]]


@pytest.fixture(scope="session")
def pack(host):
    """Accessor for the pack's own submodules as ComfyUI loaded them: pack('nodes.iqa'); submodules ComfyUI does
    not load (the training commands) are imported inside the loaded package."""
    import importlib

    def get(sub: str):
        return importlib.import_module(f"{host.pack_module_name}.{sub}")
    return get


@pytest.fixture(scope="session")
def musiq_random_state():
    """State dict of pyiqa's own MUSIQ class (KonIQ head, pyiqa's key layout) with seeded random weights; the head
    bias sets the score level. pyiqa is a test requirement: it is the reference the pack's MUSIQ is checked against."""
    from pyiqa.archs.musiq_arch import MUSIQ

    torch.manual_seed(0)
    net = MUSIQ(pretrained=False, pretrained_model_path=None, num_class=1)
    return {k: v.clone() for k, v in net.state_dict().items()}


def musiq_with_level(state: dict, level: float) -> dict:
    """Copy of a MUSIQ state dict whose head always predicts about ``level`` (zeroed weights, bias = level)."""
    sd = dict(state)
    sd["head.weight"] = torch.zeros_like(state["head.weight"])
    sd["head.bias"] = torch.full_like(state["head.bias"], float(level))
    return sd
