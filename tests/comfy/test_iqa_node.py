"""IQA Classifier through ComfyUI's executor, with real pyiqa MUSIQ networks built offline."""

import os

import pytest
import torch

from modules.iqa import map_score
from tests.comfy.conftest import KONIQ_FILE, image_node, iqa_node, sample_images
from tests.support.comfy_host import ExecutionFailed


def run_iqa(host, tiny, image, **widgets):
    prompt = {"1": image_node(tiny, "iqa", image), "2": iqa_node(["1", 0], **widgets)}
    ex = host.run(prompt)
    params = host.output(ex, "2", 0)
    return ex, params, [host.output(ex, "2", i) for i in range(1, 5)]


def test_auto_weights_from_pyiqa_file(host, tiny, iqa_files):
    host.server.progress_text.clear()
    ex, params, (k, w, score, cls) = run_iqa(host, tiny, sample_images(2))
    assert score == pytest.approx(55.0, abs=1e-3) and cls == "medium"
    assert k == pytest.approx(0.55, abs=1e-4) and w == pytest.approx(0.55 / 0.7, abs=1e-4)
    assert params.classes == ("medium", "medium") and len(params) == 2
    text = host.ui(ex, "2")["text"][0]
    assert "#0 musiq=55.00 medium k=0.550" in text and "#1" in text
    assert any(node == "2" and "medium" in t for node, t in host.server.progress_text)


@pytest.mark.parametrize("weights,cls,k,w", [("level30.safetensors", "severe", 0.0, 0.0),
                                             ("level85.safetensors", "mild", 0.7, 1.0)])
def test_levels_map_to_classes(host, tiny, iqa_files, weights, cls, k, w):
    _, params, (k0, w0, _, c0) = run_iqa(host, tiny, sample_images(1), weights=weights)
    assert (c0, k0, w0) == (cls, pytest.approx(k), pytest.approx(w))


def test_classes_mode_and_thresholds(host, tiny, iqa_files):
    _, params, (k, w, _, cls) = run_iqa(host, tiny, sample_images(1), mode="classes")
    assert cls == "medium" and k == pytest.approx(0.55)
    _, params, (k, w, _, cls) = run_iqa(host, tiny, sample_images(1), low_threshold=60.0, high_threshold=80.0)
    assert cls == "severe" and k == 0.0 and w == 0.0


def test_mixed_batch_gets_per_image_k_and_w(host, tiny, iqa_files):
    _, params, _ = run_iqa(host, tiny, sample_images(3), weights="spread.safetensors")
    assert len(set(round(s, 3) for s in params.scores)) == 3, params.scores
    for s, c, k, w in zip(params.scores, params.classes, params.k, params.w):
        assert (c, k, w) == map_score(s)
    assert len(set(params.classes)) >= 2, params.summary()


@pytest.mark.parametrize("shape", [(1, 37, 53, 4), (1, 40, 41, 1), (1, 64, 1, 3), (1, 1, 64, 3), (2, 1, 1, 3)])
def test_rgba_grey_thin_and_odd_inputs(host, tiny, iqa_files, shape):
    img = torch.rand(shape, generator=torch.Generator().manual_seed(1))
    _, params, (k, w, score, cls) = run_iqa(host, tiny, img, weights="spread.safetensors")
    assert len(params) == shape[0] and all(torch.isfinite(torch.tensor(params.scores)))


def test_rgba_alpha_is_ignored(host, tiny, iqa_files):
    rgb = sample_images(1)
    a = torch.cat([rgb, torch.zeros_like(rgb[..., :1])], -1)
    b = torch.cat([rgb, torch.ones_like(rgb[..., :1])], -1)
    sa = run_iqa(host, tiny, a, weights="spread.safetensors")[1].scores
    sb = run_iqa(host, tiny, b, weights="spread.safetensors")[1].scores
    sr = run_iqa(host, tiny, rgb, weights="spread.safetensors")[1].scores
    assert sa == sb == sr


def test_missing_weights_file_says_which_where_and_from_where(host, tiny, iqa_files):
    # refused when the prompt is validated (nothing runs), naming the file, the folder and its download
    with pytest.raises(AssertionError) as e:
        run_iqa(host, tiny, sample_images(1), metric="musiq-spaq")
    msg = str(e.value)
    assert "musiq_spaq_ckpt-358bb6af.pth" in msg and "models/iqa" in msg
    assert "huggingface.co/chaofengc/IQA-PyTorch-Weights/resolve/main/musiq_spaq_ckpt-358bb6af.pth" in msg


def test_network_is_loaded_once_and_reloaded_when_the_file_changes(host, tiny, iqa_files, pack):
    cache = pack("nodes.iqa").MUSIQ_CACHE
    run_iqa(host, tiny, sample_images(1))
    first = cache._patcher
    run_iqa(host, tiny, sample_images(1))
    assert cache._patcher is first
    path = iqa_files / KONIQ_FILE
    st = os.stat(path)
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000_000))
    run_iqa(host, tiny, sample_images(1))
    assert cache._patcher is not first


def test_wrong_file_is_refused_clearly(host, tiny, iqa_files):
    from safetensors.torch import save_file

    save_file({"foo.weight": torch.zeros(2)}, str(iqa_files / "not_musiq.safetensors"))
    (iqa_files / "empty.pth").write_bytes(b"")
    with pytest.raises(ExecutionFailed, match="not_musiq.safetensors: MUSIQ weights"):
        run_iqa(host, tiny, sample_images(1), weights="not_musiq.safetensors")
    with pytest.raises(ExecutionFailed, match="empty.pth: expected pyiqa MUSIQ weights .* empty"):
        run_iqa(host, tiny, sample_images(1), weights="empty.pth")


def test_thresholds_are_validated_before_running(host, tiny, iqa_files):
    with pytest.raises(AssertionError, match="low_threshold"):
        run_iqa(host, tiny, sample_images(1), low_threshold=80.0, high_threshold=70.0)


def test_input_image_is_not_mutated(host, tiny, iqa_files):
    img = sample_images(2)
    before = img.clone()
    run_iqa(host, tiny, img, weights="spread.safetensors")
    assert torch.equal(img, before)
