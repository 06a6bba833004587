"""Dual Encoder Interpolate and Crop To Original through ComfyUI's executor with tiny VAEs."""

import pytest
import torch

from modules.image_ops import pad_to_multiple
from tests.comfy.conftest import image_node, iqa_node, sample_images
from tests.support.comfy_host import ExecutionFailed

R_SEED, I_SEED = 11, 22


def dual_prompt(tiny, image, k=0.0, pad_multiple=64, params=False, tile_size=0, channels=4):
    p = {
        "1": image_node(tiny, "dual", image),
        "2": {"class_type": "AdaptBIRTest_TinyVAE", "inputs": {"seed": R_SEED, "latent_channels": channels}},
        "3": {"class_type": "AdaptBIRTest_TinyVAE", "inputs": {"seed": I_SEED, "latent_channels": 4}},
        "4": {"class_type": "AdaptBIR_DualEncoderInterpolate",
              "inputs": {"image": ["1", 0], "restoration_vae": ["2", 0], "internal_vae": ["3", 0], "k": k,
                         "pad_multiple": pad_multiple, "tile_size": tile_size}},
        "5": {"class_type": "AdaptBIRTest_Sink", "inputs": {"value": ["4", 0]}},
    }
    if params:
        p["6"] = iqa_node(["1", 0], weights="spread.safetensors")
        p["4"]["inputs"]["params"] = ["6", 0]
    return p


def encode_direct(tiny, seed, image, multiple=64):
    x, _ = pad_to_multiple(image.permute(0, 3, 1, 2), multiple)
    return tiny.tiny_vae(seed).encode(x.permute(0, 2, 3, 1)).float()


def run_dual(host, tiny, image, **kw):
    ex = host.run(dual_prompt(tiny, image, **kw))
    return host.output(ex, "4", 0), host.output(ex, "4", 1), ex


@pytest.fixture(scope="module")
def img():
    return sample_images(2, 69, 85)  # sides >= 64: not upscaled (see test_sizes.py), padded to 128


def test_k0_is_the_restoration_latent_and_k1_the_internal_one_exactly(host, tiny, img):
    z_r = encode_direct(tiny, R_SEED, img)
    z_i = encode_direct(tiny, I_SEED, img)
    assert not torch.allclose(z_r, z_i)
    lat0, cond0, _ = run_dual(host, tiny, img, k=0.0)
    lat1, _, _ = run_dual(host, tiny, img, k=1.0)
    assert torch.equal(lat0["samples"], z_r) and torch.equal(lat1["samples"], z_i)
    assert lat0["samples"].shape == (2, 4, 16, 16)  # 69x85 padded to 128x128
    assert torch.equal(cond0["samples"], z_r) and cond0["k"].tolist() == [0.0, 0.0]


def test_interpolation_is_linear_in_k(host, tiny, img):
    z_r = encode_direct(tiny, R_SEED, img)
    z_i = encode_direct(tiny, I_SEED, img)
    for k in (0.25, 0.6):
        lat, cond, _ = run_dual(host, tiny, img, k=k)
        assert torch.allclose(lat["samples"], (1 - k) * z_r + k * z_i, atol=1e-6)


def test_post_quant_hint_matches_the_vae_decoder_input(host, tiny, img):
    lat, cond, _ = run_dual(host, tiny, img, k=0.4)
    pqc = tiny.tiny_vae(I_SEED).first_stage_model.post_quant_conv
    with torch.no_grad():
        assert torch.allclose(cond["post_quant"], pqc(lat["samples"]), atol=1e-6)


def test_per_image_k_from_the_classifier(host, tiny, iqa_files):
    image = sample_images(3, 72, 88)
    lat, cond, ex = run_dual(host, tiny, image, params=True)
    params = host.output(ex, "6", 0)
    z_r = encode_direct(tiny, R_SEED, image)
    z_i = encode_direct(tiny, I_SEED, image)
    k = torch.tensor(params.k).view(3, 1, 1, 1)
    assert torch.allclose(lat["samples"], (1 - k) * z_r + k * z_i, atol=1e-6)
    assert torch.allclose(cond["k"], torch.tensor(params.k))


def test_batch_mismatch_between_params_and_image_is_refused(host, tiny, iqa_files):
    image = sample_images(3, 72, 88)
    prompt = dual_prompt(tiny, image, params=True)
    tiny.IMAGES["other"] = sample_images(2, 72, 88)
    prompt["7"] = {"class_type": "AdaptBIRTest_Image", "inputs": {"name": "other"}}
    prompt["4"]["inputs"]["image"] = ["7", 0]
    with pytest.raises(ExecutionFailed, match="3 per-image values but the batch has 2"):
        host.run(prompt)


def test_incompatible_vaes_are_refused(host, tiny, img):
    with pytest.raises(ExecutionFailed, match="same latent space.*8 latent channels"):
        run_dual(host, tiny, img, channels=8)


def test_tiled_encoding_path(host, tiny):
    image = sample_images(1, 128, 128)
    full, _, _ = run_dual(host, tiny, image, k=0.5)
    one_tile, _, _ = run_dual(host, tiny, image, k=0.5, tile_size=256)
    tiled, _, _ = run_dual(host, tiny, image, k=0.5, tile_size=64)
    # tiles covering the image (ComfyUI averages three tilings: 256, 128x512, 512x128) give the untiled encode
    assert torch.allclose(one_tile["samples"], full["samples"], atol=1e-5)
    # smaller tiles: same shape, finite (GroupNorm statistics per tile make it an approximation, as in ComfyUI)
    assert tiled["samples"].shape == full["samples"].shape and torch.isfinite(tiled["samples"]).all()


def test_iqa_dual_encoder_ksampler_decode_crop_graph(host, tiny, img, iqa_files):
    """The front half of AdaptBIR as a ComfyUI graph; the padding is cropped back exactly after sampling."""
    prompt = dual_prompt(tiny, img, params=True)
    del prompt["5"]
    prompt.update({
        "10": {"class_type": "AdaptBIRTest_TinyCheckpoint", "inputs": {"kind": "sd2-eps", "seed": 0}},
        "11": {"class_type": "AdaptBIRTest_TinyConditioning", "inputs": {"text": "", "seed": 0, "sdxl": False}},
        "12": {"class_type": "KSampler", "inputs": {
            "model": ["10", 0], "positive": ["11", 0], "negative": ["11", 0], "latent_image": ["4", 0], "seed": 3,
            "steps": 2, "cfg": 1.0, "sampler_name": "euler", "scheduler": "simple", "denoise": 0.5}},
        "13": {"class_type": "VAEDecode", "inputs": {"samples": ["12", 0], "vae": ["3", 0]}},
        "14": {"class_type": "AdaptBIR_CropToOriginal", "inputs": {"image": ["13", 0], "latent": ["12", 0]}},
        "15": {"class_type": "AdaptBIR_CropToOriginal", "inputs": {"image": ["13", 0], "condition": ["4", 1]}},
        "16": {"class_type": "PreviewImage", "inputs": {"images": ["14", 0]}},
        "17": {"class_type": "AdaptBIRTest_Sink", "inputs": {"value": ["15", 0]}},
    })
    ex = host.run(prompt)
    decoded = host.output(ex, "13", 0)
    out = host.output(ex, "14", 0)
    assert decoded.shape == (2, 128, 128, 3) and out.shape == (2, 69, 85, 3)
    assert torch.equal(out, decoded[:, :69, :85]) and torch.equal(out, host.output(ex, "15", 0))


def test_crop_without_size_record_is_refused(host, tiny, img):
    prompt = {"1": image_node(tiny, "plain", img),
              "2": {"class_type": "EmptyLatentImage", "inputs": {"width": 64, "height": 64, "batch_size": 1}},
              "3": {"class_type": "AdaptBIR_CropToOriginal", "inputs": {"image": ["1", 0], "latent": ["2", 0]}},
              "4": {"class_type": "AdaptBIRTest_Sink", "inputs": {"value": ["3", 0]}}}
    with pytest.raises(ExecutionFailed, match="records the original size"):
        host.run(prompt)


def test_inputs_are_not_mutated(host, tiny, img):
    before = img.clone()
    run_dual(host, tiny, img, k=0.5)
    assert torch.equal(img, before)


@pytest.mark.parametrize("kind", ["sd2-eps", "sd2-v", "sd2-v-zsnr", "sdxl"])
def test_tiny_models_sample_through_ksampler(host, tiny, kind):
    """The harness's tiny models are real ComfyUI models: each kind samples and decodes through the executor."""
    sdxl = kind == "sdxl"
    p = {"1": {"class_type": "AdaptBIRTest_TinyCheckpoint", "inputs": {"kind": kind, "seed": 0}},
         "2": {"class_type": "AdaptBIRTest_TinyConditioning", "inputs": {"text": "x", "seed": 0, "sdxl": sdxl}},
         "3": {"class_type": "EmptyLatentImage", "inputs": {"width": 64, "height": 64, "batch_size": 1}},
         "4": {"class_type": "KSampler", "inputs": {
             "model": ["1", 0], "positive": ["2", 0], "negative": ["2", 0], "latent_image": ["3", 0], "seed": 1,
             "steps": 2, "cfg": 2.0, "sampler_name": "euler", "scheduler": "simple", "denoise": 1.0}},
         "5": {"class_type": "VAEDecode", "inputs": {"samples": ["4", 0], "vae": ["1", 1]}},
         "6": {"class_type": "AdaptBIRTest_Sink", "inputs": {"value": ["5", 0]}}}
    ex = host.run(p)
    model = host.output(ex, "1", 0)
    ms = model.get_model_object("model_sampling")
    assert type(model.model).__name__ == ("SDXL" if sdxl else "BaseModel")
    assert ("V_PREDICTION" in type(ms).__mro__[1].__name__ or "V_PREDICTION" in str(type(ms).__mro__)) == \
        kind.startswith("sd2-v")
    if kind == "sd2-v-zsnr":
        assert float(ms.sigmas[-1]) > 1000  # zero terminal SNR, clamped as ComfyUI does
    assert torch.isfinite(host.output(ex, "5", 0)).all()
