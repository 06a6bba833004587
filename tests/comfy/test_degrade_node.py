"""Degrade Image (synthetic LQ) through ComfyUI's executor: every pipeline, seeding, batches, params text, refusals."""

import pytest
import torch

from modules.degradations import (
    CODEFORMER_PRESETS,
    codeformer_degrade,
    mild_degrade,
    realesrgan_degrade,
)
from tests.comfy.conftest import image_node, sample_images
from tests.support.comfy_host import ExecutionFailed

PIPELINES = ["realesrgan", "codeformer_diffbir", "codeformer_diffbir_face", "codeformer_large", "codeformer_small",
             "mild_adaptbir"]


def degrade_prompt(tiny, img, **widgets):
    inputs = {"image": ["1", 0], "pipeline": "realesrgan", "seed": 0, "scale": 4.0}
    inputs.update(widgets)
    return {"1": image_node(tiny, "degrade", img),
            "2": {"class_type": "AdaptBIR_DegradeImage", "inputs": inputs},
            "9": {"class_type": "AdaptBIRTest_Sink", "inputs": {"value": ["2", 0]}}}


def run_degrade(host, tiny, img, **widgets):
    """(degraded IMAGE, params text) of one run (a fresh executor: nothing is cached between runs)."""
    ex = host.run(degrade_prompt(tiny, img, **widgets))
    return host.output(ex, "2", 0), host.output(ex, "2", 1)


def test_options_are_the_documented_pipelines_and_real_presets(host, pack):
    mod = pack("nodes.degrade")
    assert list(mod.PIPELINES) == PIPELINES
    assert all(preset in CODEFORMER_PRESETS for _, preset in mod.PIPELINES.values() if preset)
    info = mod.DegradeImage.GET_NODE_INFO_V1()
    seed = info["input"]["required"]["seed"][1]
    assert seed["max"] == 0xFFFFFFFFFFFFFFFF and seed.get("control_after_generate")


@pytest.mark.parametrize("pipeline", PIPELINES)
def test_each_pipeline_degrades_a_batch_reproducibly(host, tiny, pipeline):
    img = sample_images(2, 48, 40)
    out, text = run_degrade(host, tiny, img, pipeline=pipeline, seed=7)
    assert out.shape == (2, 48, 40, 3) and out.dtype == torch.float32 and out.device.type == "cpu"
    assert float(out.min()) >= 0 and float(out.max()) <= 1
    assert (out - img).abs().mean() > 1e-3  # it did something
    lines = text.splitlines()
    assert len(lines) == 2 and lines[0].startswith("#0 ") and lines[1].startswith("#1 ")
    assert all("jpeg" in line and "blur" in line for line in lines)
    again, text_again = run_degrade(host, tiny, img, pipeline=pipeline, seed=7)
    assert torch.equal(again, out) and text_again == text
    other, text_other = run_degrade(host, tiny, img, pipeline=pipeline, seed=8)
    assert not torch.equal(other, out) and text_other != text


def test_realesrgan_is_on_8bit_levels_and_matches_the_pipeline(host, tiny):
    img = sample_images(1, 48, 40)
    out, text = run_degrade(host, tiny, img, pipeline="realesrgan", seed=123, scale=2.0)
    assert torch.equal(out, torch.round(out * 255) / 255)
    assert len(text.splitlines()) == 1 and text.startswith("#0 ") and "lq=1/2.00" in text
    ref, _ = realesrgan_degrade(img.permute(0, 3, 1, 2), torch.Generator().manual_seed(123), scale=2.0,
                                per_sample=True)
    assert torch.equal(out, ref.permute(0, 2, 3, 1))
    assert not torch.equal(run_degrade(host, tiny, img, pipeline="realesrgan", seed=123, scale=4.0)[0], out)


def test_codeformer_options_use_their_preset_and_ignore_scale(host, tiny):
    img = sample_images(2, 32, 24)
    x = img.permute(0, 3, 1, 2)
    out, text = run_degrade(host, tiny, img, pipeline="codeformer_diffbir_face", seed=5, scale=2.0)
    ref, params = codeformer_degrade(x, torch.Generator().manual_seed(5), preset="diffbir_face")
    assert torch.equal(out, ref.permute(0, 2, 3, 1))
    assert f"jpeg={int(params['jpeg_quality'][1])}" in text.splitlines()[1]
    assert torch.equal(run_degrade(host, tiny, img, pipeline="codeformer_diffbir_face", seed=5, scale=8.0)[0], out)
    mild, _ = run_degrade(host, tiny, img, pipeline="mild_adaptbir", seed=5)
    assert torch.equal(mild, mild_degrade(x, torch.Generator().manual_seed(5))[0].permute(0, 2, 3, 1))


def test_largest_seed_grey_input_and_tiny_image(host, tiny):
    grey = sample_images(1, 20, 12)[..., :1].contiguous()
    out, _ = run_degrade(host, tiny, grey, pipeline="mild_adaptbir", seed=0xFFFFFFFFFFFFFFFF)
    assert out.shape == (1, 20, 12, 3)
    out, text = run_degrade(host, tiny, sample_images(1, 3, 2), pipeline="realesrgan", scale=16.0)
    assert out.shape == (1, 3, 2, 3) and text.startswith("#0 ")


def test_bad_images_fail_naming_the_image_input(host, tiny):
    bad = sample_images(1, 16, 16).clone()
    bad[0, 3, 4, 1] = float("nan")
    with pytest.raises(ExecutionFailed, match="image: expected finite values") as e:
        run_degrade(host, tiny, bad)
    assert e.value.node_type == "AdaptBIR_DegradeImage"
    with pytest.raises(ExecutionFailed, match="image: expected a non-empty image batch"):
        run_degrade(host, tiny, torch.zeros(0, 16, 16, 3))
