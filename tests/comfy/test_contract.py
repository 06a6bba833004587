"""Contract of every node the pack registers: ids, categories, docs, tooltips, and a golden interface file.

Node ids and input names are stored in every saved workflow, so renaming one breaks users' files. The golden file
``tests/golden/node_interface.json`` pins them; regenerate it only for an intended, compatible change with
``ADAPTBIR_UPDATE_GOLDEN=1 pytest tests/comfy/test_contract.py``.
"""

import json
import os
from pathlib import Path

import pytest

GOLDEN = Path(__file__).resolve().parents[1] / "golden" / "node_interface.json"
PATCHING_TYPES = {"MODEL", "VAE", "CONDITIONING", "CLIP"}


@pytest.fixture(scope="module")
def pack_nodes(host, pack):
    nodes = pack("nodes.extension").node_list()
    assert nodes, "the pack registers no node"
    return {cls.GET_SCHEMA().node_id: cls for cls in nodes}


def interface(pack_nodes):
    out = {}
    for node_id, cls in sorted(pack_nodes.items()):
        s = cls.GET_SCHEMA()
        out[node_id] = {
            "inputs": [i.id for i in s.inputs],
            "input_types": [i.get_io_type() for i in s.inputs],
            "outputs": [o.get_io_type() for o in s.outputs],
            "output_names": [o.display_name for o in s.outputs],
        }
    return out


def test_nodes_are_registered_with_comfyui(host, pack_nodes):
    for node_id, cls in pack_nodes.items():
        assert host.nodes.NODE_CLASS_MAPPINGS.get(node_id) is cls
        assert host.nodes.NODE_DISPLAY_NAME_MAPPINGS.get(node_id)
    # the tiny test loaders are not part of the pack
    assert not any(n.startswith("AdaptBIRTest_") for n in pack_nodes)


def test_ids_prefix_category_docs_and_tooltips(pack_nodes):
    for node_id, cls in pack_nodes.items():
        s = cls.GET_SCHEMA()
        assert node_id.startswith("AdaptBIR_"), node_id
        assert s.category.split("/")[0] == "restoration", (node_id, s.category)
        assert s.description and len(s.description) > 40, f"{node_id}: no description"
        for i in s.inputs:
            assert i.tooltip and len(i.tooltip) > 10, f"{node_id}: input {i.id} has no tooltip"
        for o in s.outputs:
            assert o.tooltip and len(o.tooltip) > 10, f"{node_id}: output {o.id or o.display_name} has no tooltip"


def test_every_output_is_shown_by_its_name(pack_nodes):
    # Without a display name the page labels an output by its type (three identical IMAGE outputs on Route By
    # Quality, two VAE outputs on the LoRA SUPIR Loader). What /object_info sends is what the page shows.
    for node_id, cls in pack_nodes.items():
        outputs = cls.GET_SCHEMA().outputs
        info = cls.GET_NODE_INFO_V1()
        for o, shown in zip(outputs, info["output_name"]):
            assert o.display_name, f"{node_id}: output {o.id} has no display name (the page would show {shown})"
            assert shown == o.display_name, (node_id, o.id, shown)
        shown = info["output_name"]
        assert len(set(shown)) == len(shown), f"{node_id}: two outputs share a label: {shown}"
        assert len(shown) == len(outputs)


def test_object_info_is_served_for_every_node(host, pack_nodes):
    # what /object_info sends to the page must build for each node
    from server import PromptServer  # noqa: F401  (the stub is installed)

    for node_id, cls in pack_nodes.items():
        info = cls.GET_NODE_INFO_V1()
        assert info["name"] == node_id and info["description"]
        assert "required" in info["input"]


def test_golden_interface(pack_nodes):
    current = interface(pack_nodes)
    if os.environ.get("ADAPTBIR_UPDATE_GOLDEN") == "1":
        GOLDEN.write_text(json.dumps(current, indent=1, sort_keys=True) + "\n")
    golden = json.loads(GOLDEN.read_text())
    for node_id, spec in golden.items():
        assert node_id in current, f"node id {node_id} was removed or renamed: saved workflows would break"
        cur = current[node_id]
        n = len(spec["inputs"])
        assert cur["inputs"][:n] == spec["inputs"], (
            f"{node_id}: inputs renamed or reordered {spec['inputs']} -> {cur['inputs'][:n]}")
        assert cur["input_types"][:n] == spec["input_types"], f"{node_id}: input types changed"
        assert cur["outputs"][:len(spec["outputs"])] == spec["outputs"], f"{node_id}: outputs changed"
        assert cur["output_names"] == spec.get("output_names"), (
            f"{node_id}: output display names {cur['output_names']} differ from the golden file's "
            f"{spec.get('output_names')}; regenerate it if the change is intended")
    new = sorted(set(current) - set(golden))
    assert not new, f"nodes missing from the golden file (add them with ADAPTBIR_UPDATE_GOLDEN=1): {new}"


# Nodes that output MODEL/VAE/CONDITIONING/CLIP must return new objects and leave their inputs untouched. Each such
# node names the test that checks it, so a new one cannot slip through without one.
CHECKED_PATCHING_NODES = {
    "AdaptBIR_ApplyIRControlNet": ("tests.comfy.test_ircontrolnet", "test_apply_does_not_mutate_the_conditioning"),
    "AdaptBIR_RestorationVAELoader": ("tests.comfy.test_restoration_vae", "test_loader_leaves_the_connected_vae_alone"),
    "AdaptBIR_CSFTApply": ("tests.comfy.test_csft_apply", "test_csft_apply_does_not_mutate_the_model"),
    "AdaptBIR_ApplyRestorationGuidance": ("tests.comfy.test_restoration_sampler",
                                          "test_guidance_patch_works_with_the_stock_ksampler_and_leaves_the_model_alone"),
    "AdaptBIR_LoRASUPIRLoader": ("tests.comfy.test_supir", "test_supir_nodes_leave_their_inputs_alone"),
    "AdaptBIR_SUPIRApply": ("tests.comfy.test_supir", "test_supir_nodes_leave_their_inputs_alone"),
    "AdaptBIR_SUPIRConditioning": ("tests.comfy.test_supir", "test_supir_nodes_leave_their_inputs_alone"),
    "AdaptBIR_TiledDiffusion": ("tests.comfy.test_tiled_sampling", "test_tiled_diffusion_leaves_the_model_alone"),
    "AdaptBIR_HYPIRLoader": ("tests.comfy.test_hypir", "test_hypir_nodes_leave_their_inputs_alone"),
}


def test_every_patching_node_has_a_non_mutation_check(pack_nodes):
    import importlib

    patching = {nid for nid, cls in pack_nodes.items()
                if PATCHING_TYPES & {o.get_io_type() for o in cls.GET_SCHEMA().outputs}}
    missing = patching - set(CHECKED_PATCHING_NODES)
    assert not missing, f"add non-mutation checks for {sorted(missing)}"
    for node_id in patching:
        module, func = CHECKED_PATCHING_NODES[node_id]
        assert callable(getattr(importlib.import_module(module), func, None)), (node_id, module, func)


def test_search_aliases_cover_every_node_and_the_artists_words(pack, pack_nodes):
    """Node search should find the pack by the words artists use; the aliases reach the schema only where the
    host's V3 schema has a search_aliases field (detected by feature; ComfyUI 0.3.75 has none)."""
    import dataclasses

    from comfy_api.latest import io

    aliases = pack("nodes.aliases").ALIASES
    assert set(aliases) == set(pack_nodes)
    words = {w.lower() for ws in aliases.values() for w in ws}
    assert {"upscale", "face", "denoise", "deblur", "restore", "enhance", "supir", "diffbir", "adaptbir",
            "iqa"} <= words
    for word in ("diffbir",):  # "DiffBIR" finds Apply IRControlNet, Stage-1 Restore and Colour Fix
        for node_id in ("AdaptBIR_ApplyIRControlNet", "AdaptBIR_Stage1Restore", "AdaptBIR_ColorFix"):
            assert word in {w.lower() for w in aliases[node_id]}, node_id
    supported = "search_aliases" in {f.name for f in dataclasses.fields(io.Schema)}
    kwargs = pack("nodes.host").search_aliases(["restore"])
    assert kwargs == ({"search_aliases": ["restore"]} if supported else {})
    for node_id, cls in pack_nodes.items():
        if supported:
            assert list(cls.GET_SCHEMA().search_aliases) == aliases[node_id]
