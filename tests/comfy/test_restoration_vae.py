"""Load Restoration VAE through ComfyUI's executor: tiny AdaptBIR-style and denoise_encoder-only files feed Dual
Encoder Interpolate; the restoration latent is the restoration encoder followed by the SD VAE's quant_conv."""

import os

import pytest
import torch
from safetensors.torch import save_file

from modules.image_ops import pad_to_multiple
from tests.comfy.conftest import image_node, sample_images
from tests.support.comfy_host import ExecutionFailed

R_SEED, SD_SEED = 1, 0  # the restoration (stage-1) VAE and the checkpoint's SD VAE
ADAPTBIR_FILE = "tiny_adaptbir_restoration.ckpt"
DENOISE_FILE = "tiny_denoise_encoder.safetensors"


def encoder_part(sd: dict) -> dict:
    return {k: v for k, v in sd.items() if k.startswith("encoder.")}


@pytest.fixture(scope="module")
def restoration_files(host, tiny):
    """An AdaptBIR-style Lightning file (``{"state_dict": {"module." + key}}``: the whole stage-1 VAE under
    preprocess_model, the SD VAE under first_stage_model, other branches) and a denoise_encoder-only safetensors."""
    stage1, sd_vae = tiny._vae_weights(R_SEED, 4), tiny._vae_weights(SD_SEED, 4)
    inner = {f"preprocess_model.{k}": v for k, v in stage1.items()}
    inner.update({f"first_stage_model.{k}": v for k, v in sd_vae.items()})
    inner["control_model.zero_convs.0.0.weight"] = torch.zeros(8, 8, 1, 1)
    inner["model.diffusion_model.input_blocks.0.0.weight"] = torch.zeros(8, 4, 3, 3)
    d = host.models_dir / "diffbir"
    d.mkdir(exist_ok=True)
    torch.save({"state_dict": {f"module.{k}": v for k, v in inner.items()}}, d / ADAPTBIR_FILE)
    save_file({f"denoise_encoder.{k[len('encoder.'):]}": v.contiguous() for k, v in encoder_part(stage1).items()},
              str(d / DENOISE_FILE))
    return d


def expected_restoration_vae(tiny):
    """What AdaptBIR's E_R is: the stage-1 encoder with the SD VAE's quant_conv (and its decoder)."""
    import comfy.sd

    merged = dict(tiny._vae_weights(SD_SEED, 4))
    merged.update(encoder_part(tiny._vae_weights(R_SEED, 4)))
    return comfy.sd.VAE(sd=merged, config={"params": tiny.vae_config(4)}, dtype=torch.float32)


def encode(vae, image, multiple=64):
    x, _ = pad_to_multiple(image.permute(0, 3, 1, 2), multiple, mode="replicate")
    return vae.encode(x.permute(0, 2, 3, 1)).float()


def loader_prompt(tiny, image, ckpt, k=0.0, with_vae=False):
    p = {
        "1": image_node(tiny, "restoration_vae", image),
        "2": {"class_type": "AdaptBIR_RestorationVAELoader", "inputs": {"ckpt_name": ckpt}},
        "3": {"class_type": "AdaptBIRTest_TinyVAE", "inputs": {"seed": SD_SEED, "latent_channels": 4}},
        "4": {"class_type": "AdaptBIR_DualEncoderInterpolate",
              "inputs": {"image": ["1", 0], "restoration_vae": ["2", 0], "internal_vae": ["3", 0], "k": k,
                         "pad_multiple": 64, "tile_size": 0}},
        "5": {"class_type": "AdaptBIRTest_Sink", "inputs": {"value": ["4", 0]}},
    }
    if with_vae:
        p["2"]["inputs"]["vae"] = ["3", 0]
    return p


@pytest.fixture(scope="module")
def img():
    return sample_images(2, 69, 85)  # sides >= 64: not upscaled (see test_sizes.py), padded to 128


def test_adaptbir_file_gives_the_restoration_encoder_with_the_sd_quant_conv(host, tiny, restoration_files, img):
    ex = host.run(loader_prompt(tiny, img, ADAPTBIR_FILE, k=0.0))
    z = host.output(ex, "4", 0)["samples"]
    want = encode(expected_restoration_vae(tiny), img)
    assert z.shape == (2, 4, 16, 16)
    assert torch.equal(z, want)
    # the stage-1 VAE's own quant_conv (seed 1) would give another latent: the SD VAE's one was taken
    assert not torch.allclose(z, encode(tiny.tiny_vae(R_SEED), img), atol=1e-3)
    vae = host.output(ex, "2", 0)
    assert vae.latent_channels == 4 and vae.spacial_compression_encode() == 8
    assert any("preprocess_model.encoder" in text for _, text in host.server.progress_text)


def test_k1_gives_the_sd_vae_latent(host, tiny, restoration_files, img):
    ex = host.run(loader_prompt(tiny, img, ADAPTBIR_FILE, k=1.0))
    assert torch.equal(host.output(ex, "4", 0)["samples"], encode(tiny.tiny_vae(SD_SEED), img))


def test_restoration_vae_decodes_like_the_sd_vae(host, tiny, restoration_files, img):
    p = loader_prompt(tiny, img, ADAPTBIR_FILE, k=0.3)
    p["6"] = {"class_type": "VAEDecode", "inputs": {"samples": ["4", 0], "vae": ["2", 0]}}
    p["7"] = {"class_type": "VAEDecode", "inputs": {"samples": ["4", 0], "vae": ["3", 0]}}
    p["8"] = {"class_type": "AdaptBIRTest_Sink", "inputs": {"value": ["6", 0]}}
    p["9"] = {"class_type": "AdaptBIRTest_Sink", "inputs": {"value": ["7", 0]}}
    ex = host.run(p)
    assert host.output(ex, "6", 0).shape == (2, 128, 128, 3)
    assert torch.equal(host.output(ex, "6", 0), host.output(ex, "7", 0))


def test_denoise_encoder_file_with_the_connected_vae(host, tiny, restoration_files, img):
    ex = host.run(loader_prompt(tiny, img, DENOISE_FILE, k=0.0, with_vae=True))
    want = encode(expected_restoration_vae(tiny), img)
    assert torch.equal(host.output(ex, "4", 0)["samples"], want)
    assert any("from the connected VAE" in text for _, text in host.server.progress_text)


def test_denoise_encoder_file_without_a_vae_is_refused(host, tiny, restoration_files, img):
    with pytest.raises(ExecutionFailed, match=r"tiny_denoise_encoder.safetensors.*no quant_conv, post_quant_conv "
                                              r"and decoder in the file.*to the vae input") as e:
        host.run(loader_prompt(tiny, img, DENOISE_FILE))
    assert e.value.node_type == "AdaptBIR_RestorationVAELoader"


def test_foreign_weights_are_refused(host, tiny, swinir_file, img):
    with pytest.raises(ExecutionFailed, match=r"expected a restoration encoder .*found a DiffBIR stage-1 SwinIR"):
        host.run(loader_prompt(tiny, img, swinir_file))


def test_loader_leaves_the_connected_vae_alone(host, tiny, restoration_files, img):
    ex = host.run(loader_prompt(tiny, img, DENOISE_FILE, k=0.5, with_vae=True))
    sd_vae, restoration = host.output(ex, "3", 0), host.output(ex, "2", 0)
    assert restoration is not sd_vae and restoration.first_stage_model is not sd_vae.first_stage_model
    want = tiny._vae_weights(SD_SEED, 4)
    got = sd_vae.get_sd()
    assert all(torch.equal(got[k].cpu(), want[k]) for k in want)
    ptrs = {t.data_ptr() for t in got.values()}
    assert not ptrs & {t.data_ptr() for t in restoration.get_sd().values()}


def test_fingerprint_follows_the_file(host, restoration_files):
    cls = host.node_class("AdaptBIR_RestorationVAELoader")
    st = os.stat(restoration_files / DENOISE_FILE)
    assert cls.fingerprint_inputs(DENOISE_FILE) == (st.st_size, st.st_mtime_ns)
    assert cls.fingerprint_inputs("no_such_file.safetensors") is None
