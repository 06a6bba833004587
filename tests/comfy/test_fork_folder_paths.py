"""Model folders on a host whose folder_paths keeps one registry per execution context with live views (the
pip-installable fork's behaviour, see tests/support/fork_folder_paths.py): registration copies what it reads, is
idempotent, and every lookup registers again, so the loaders still find models/iqa, models/diffbir, models/supir."""

import sys

import pytest
import torch
from safetensors.torch import save_file

from tests.comfy.conftest import image_node, iqa_node
from tests.conftest import musiq_with_level
from tests.support.fork_folder_paths import ForkFolderPaths


@pytest.fixture
def fork(tmp_path, monkeypatch):
    """The stand-in installed as ``folder_paths`` for the pack's lazy imports; models_dir = tmp_path/models."""
    fp = ForkFolderPaths(tmp_path / "models")
    monkeypatch.setitem(sys.modules, "folder_paths", fp)
    return fp


def test_the_stand_in_empties_an_entry_given_its_own_live_list(fork):
    # what the pack used to do: read the entry, append to its list, write the same list back
    fork.folder_names_and_paths["iqa"] = (["/yaml/iqa"], set())
    paths, exts = fork.folder_names_and_paths["iqa"]
    paths.append("/models/iqa")
    fork.folder_names_and_paths["iqa"] = (paths, exts)
    assert fork.get_folder_paths("iqa") == []


def test_registration_keeps_yaml_paths_and_is_idempotent(fork, pack):
    paths = pack("nodes.paths")
    fork.folder_names_and_paths["iqa"] = (["/yaml/iqa"], set())  # extra_model_paths.yaml came first
    paths.register_model_folders()
    writes = list(fork.writes)
    paths.register_model_folders()
    paths.register_model_folders()
    assert fork.writes == writes, "a second registration must not write again"
    models = fork.models_dir
    assert fork.get_folder_paths("iqa") == ["/yaml/iqa", f"{models}/iqa"]
    assert fork.get_folder_paths("diffbir") == [f"{models}/diffbir"]
    assert fork.get_folder_paths("supir") == [f"{models}/supir"]
    for key in paths.PACK_FOLDERS:
        assert paths.WEIGHT_EXTENSIONS <= fork.folder_names_and_paths[key][1]


def test_a_new_execution_context_still_finds_the_pack_folders(fork, pack, tmp_path):
    paths, common, iqa = pack("nodes.paths"), pack("nodes.common"), pack("nodes.iqa")
    paths.register_model_folders()  # at import, in the host's first context
    for key in paths.PACK_FOLDERS:
        (tmp_path / "models" / key).mkdir(parents=True)
        (tmp_path / "models" / key / f"{key}_w.safetensors").write_bytes(b"x")
    with fork.execution_context():
        assert "iqa" not in fork.folder_names_and_paths  # the fork's new context has the built-in folders only
        for key in paths.PACK_FOLDERS:
            assert common.model_file_path(key, f"{key}_w.safetensors") == str(
                tmp_path / "models" / key / f"{key}_w.safetensors")
            assert paths.filename_list(key) == [f"{key}_w.safetensors"]
        assert iqa.resolve_musiq_weights("musiq", "iqa_w.safetensors").endswith("iqa_w.safetensors")
        assert "iqa_w.safetensors" in iqa._weights_options()
        with pytest.raises(common.PackError, match="searched: .*models/diffbir"):
            common.model_file_path("diffbir", "absent.safetensors")


def test_iqa_graph_runs_in_a_new_execution_context(fork, host, tiny, musiq_random_state, tmp_path):
    d = tmp_path / "models" / "iqa"
    d.mkdir(parents=True)
    save_file(musiq_with_level(musiq_random_state, 80.0), str(d / "fork80.safetensors"))
    img = torch.rand(1, 32, 32, 3, generator=torch.Generator().manual_seed(0))
    prompt = {"1": image_node(tiny, "fork_img", img), "2": iqa_node(["1", 0], weights="fork80.safetensors")}
    with fork.execution_context():
        ex = host.run(prompt)
    text = host.ui(ex, "2")["text"][0]
    assert "80" in text, text
