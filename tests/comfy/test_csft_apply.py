"""CSFT Apply and Load CSFT: behaviour in graphs run by ComfyUI's executor with the tiny SD2 UNet + IRControlNet,
composition with LoRA weight patches, and the AdaptBIR / own-file key layouts at full size (meta tensors)."""

import pytest
import torch
from safetensors.torch import save_file

from modules.csft import CSFT
from tests.comfy.conftest import image_node, iqa_node, sample_images, write_kohya_lora
from tests.support.comfy_host import ExecutionFailed

CSFT_FILE = "tiny_csft.safetensors"
LORA_FILE = "tiny_decoder_lora.safetensors"


@pytest.fixture(scope="module")
def csft_file(host, tiny):
    d = host.models_dir / "diffbir"
    d.mkdir(exist_ok=True)
    meta = {"adaptbir_kind": "csft", "format_version": "1", "base_model": "tiny-sd2", "hint_convention": "adaptbir"}
    save_file(tiny.tiny_csft_state_dict(0), str(d / CSFT_FILE), metadata=meta)
    return CSFT_FILE


@pytest.fixture(scope="module")
def lora_file(host):
    """A kohya-style LoRA on two decoder convolutions of the tiny UNet (one CSFT modulates right after)."""
    return write_kohya_lora(host, LORA_FILE, [("output_blocks_11_0_out_layers_3", 64), ("output_blocks_2_0_out_layers_3", 128)], seed=3, scale=0.2)


def csft_graph(tiny, irc_file, csft_file, w=1.0, csft=True, lora=None, lora_first=True, strength=1.0, batch=1,
               params_from=None):
    """Image -> Apply IRControlNet (condition from the tiny VAE) -> [LoRA] -> CSFT Apply -> KSampler (node 8)."""
    p = {
        "1": image_node(tiny, "csft", sample_images(batch, 64, 64)),
        "2": {"class_type": "AdaptBIRTest_TinyCheckpoint", "inputs": {"kind": "sd2-eps", "seed": 0}},
        "3": {"class_type": "AdaptBIRTest_TinyConditioning", "inputs": {"text": "", "seed": 0, "sdxl": False}},
        "5": {"class_type": "AdaptBIR_IRControlNetLoader", "inputs": {"control_net_name": irc_file}},
        "6": {"class_type": "AdaptBIR_ApplyIRControlNet", "inputs": {
            "positive": ["3", 0], "negative": ["3", 0], "control_net": ["5", 0], "strength": strength,
            "start_percent": 0.0, "end_percent": 1.0, "hint_convention": "adaptbir", "image": ["1", 0],
            "vae": ["2", 1]}},
        "7": {"class_type": "EmptyLatentImage", "inputs": {"width": 64, "height": 64, "batch_size": batch}},
        "8": {"class_type": "KSampler", "inputs": {
            "model": ["2", 0], "positive": ["6", 0], "negative": ["6", 1], "latent_image": ["7", 0], "seed": 5,
            "steps": 2, "cfg": 1.0, "sampler_name": "ddpm", "scheduler": "simple", "denoise": 1.0}},
        "9": {"class_type": "AdaptBIRTest_Sink", "inputs": {"value": ["8", 0]}},
        "10": {"class_type": "AdaptBIR_CSFTLoader", "inputs": {"csft_name": csft_file}},
    }
    model = ["2", 0]
    if lora and lora_first:
        p["12"] = {"class_type": "LoraLoaderModelOnly", "inputs": {"model": model, "lora_name": lora,
                                                                  "strength_model": 1.0}}
        model = ["12", 0]
    if csft:
        p["11"] = {"class_type": "AdaptBIR_CSFTApply", "inputs": {
            "model": model, "csft": ["10", 0], "control_net": ["5", 0], "w": w}}
        if params_from is not None:
            p["13"] = image_node(tiny, "csft_iqa", sample_images(batch, 64, 64))
            p["14"] = iqa_node(["13", 0], weights=params_from)
            p["11"]["inputs"]["params"] = ["14", 0]
        model = ["11", 0]
    if lora and not lora_first:
        p["12"] = {"class_type": "LoraLoaderModelOnly", "inputs": {"model": model, "lora_name": lora,
                                                                  "strength_model": 1.0}}
        model = ["12", 0]
    p["8"]["inputs"]["model"] = model
    return p


def sampled(host, prompt):
    return host.output(host.run(prompt), "8", 0)["samples"]


@pytest.fixture(scope="module")
def no_csft(host, tiny, irc_file, csft_file):
    return sampled(host, csft_graph(tiny, irc_file, csft_file, csft=False))


def test_w_zero_is_bit_identical_to_no_csft_and_w_one_changes_the_output(host, tiny, irc_file, csft_file, no_csft):
    assert torch.equal(sampled(host, csft_graph(tiny, irc_file, csft_file, w=0.0)), no_csft)
    one = sampled(host, csft_graph(tiny, irc_file, csft_file, w=1.0))
    half = sampled(host, csft_graph(tiny, irc_file, csft_file, w=0.5))
    assert torch.isfinite(one).all()
    d1, d05 = (one - no_csft).abs().mean().item(), (half - no_csft).abs().mean().item()
    assert d1 > 1e-3 and 0 < d05 < d1


def test_lora_weight_patches_still_apply_with_csft(host, tiny, irc_file, csft_file, lora_file, no_csft):
    lora_only = sampled(host, csft_graph(tiny, irc_file, csft_file, csft=False, lora=lora_file))
    assert not torch.allclose(lora_only, no_csft, atol=1e-4)  # the LoRA does something
    # w = 0: CSFT present but off, the LoRA result is reproduced exactly
    assert torch.equal(sampled(host, csft_graph(tiny, irc_file, csft_file, w=0.0, lora=lora_file)), lora_only)
    both = sampled(host, csft_graph(tiny, irc_file, csft_file, w=1.0, lora=lora_file))
    csft_only = sampled(host, csft_graph(tiny, irc_file, csft_file, w=1.0))
    assert not torch.allclose(both, csft_only, atol=1e-4) and not torch.allclose(both, lora_only, atol=1e-4)
    # the order of LoRA and CSFT Apply does not matter: both patch the same UNet
    after = sampled(host, csft_graph(tiny, irc_file, csft_file, w=1.0, lora=lora_file, lora_first=False))
    assert torch.equal(after, both)


def test_per_image_w_from_the_iqa_classifier(host, tiny, irc_file, csft_file, iqa_files, no_csft):
    # level 30 -> severe -> w = 0 (exactly no CSFT); level 85 -> mild -> w = 1 (as the widget at 1)
    severe = sampled(host, csft_graph(tiny, irc_file, csft_file, w=1.0, params_from="level30.safetensors"))
    assert torch.equal(severe, no_csft)
    mild = sampled(host, csft_graph(tiny, irc_file, csft_file, w=0.0, params_from="level85.safetensors"))
    assert torch.equal(mild, sampled(host, csft_graph(tiny, irc_file, csft_file, w=1.0)))


def test_per_image_w_broadcasts_over_cond_and_uncond(pack):
    patch = pack("nodes.csft").CSFTPatch(None, torch.tensor([0.0, 1.0], dtype=torch.float64))
    assert patch._weights(4, {"cond_or_uncond": [0, 1]}).tolist() == [0.0, 1.0, 0.0, 1.0]
    assert patch._weights(2, {"cond_or_uncond": [0]}).tolist() == [0.0, 1.0]
    with pytest.raises(ValueError, match="one CSFT weight w per image of the sampled batch \\(3\\), found 2"):
        patch._weights(3, {"cond_or_uncond": [0]})


def test_control_strength_zero_switches_csft_off(host, tiny, irc_file, csft_file):
    off = sampled(host, csft_graph(tiny, irc_file, csft_file, csft=False, strength=0.0))
    assert torch.equal(sampled(host, csft_graph(tiny, irc_file, csft_file, w=1.0, strength=0.0)), off)


def test_csft_without_an_ircontrolnet_is_reported(host, tiny, irc_file, csft_file):
    p = csft_graph(tiny, irc_file, csft_file, w=1.0)
    p["8"]["inputs"].update(positive=["3", 0], negative=["3", 0])
    with pytest.raises(ExecutionFailed, match="no IRControlNet ran in this UNet call"):
        host.run(p)


def test_csft_apply_does_not_mutate_the_model(host, tiny, irc_file, csft_file, pack):
    ex = host.run(csft_graph(tiny, irc_file, csft_file, w=1.0))
    base, patched = host.output(ex, "2", 0), host.output(ex, "11", 0)
    assert patched is not base and patched.model is base.model
    assert "patches" not in base.model_options["transformer_options"]
    assert not base.wrappers and not base.object_patches and not patched.object_patches
    assert base.model_options["transformer_options"].get("adaptbir_want_control_features") is None
    # applying CSFT twice replaces the first: one patch, one wrapper
    node = pack("nodes.csft")
    again = node.patch_model(patched, host.output(ex, "10", 0), torch.tensor([0.5], dtype=torch.float64))
    assert len(again.model_options["transformer_options"]["patches"]["output_block_patch"]) == 1
    assert len(patched.model_options["transformer_options"]["patches"]["output_block_patch"]) == 1


def test_mismatched_csft_is_refused(host, tiny, irc_file):
    d = host.models_dir / "diffbir"
    small = CSFT(model_channels=32, channel_mult=(1, 1, 2, 2), num_res_blocks=2, sft_channels=16)
    save_file({k: v.contiguous() for k, v in small.state_dict().items()}, str(d / "csft32.safetensors"))
    p = csft_graph(tiny, irc_file, "csft32.safetensors")
    with pytest.raises(ExecutionFailed, match="32 base channels"):
        host.run(p)


# ---------------------------------------------------------------------------------------------------- layouts

@pytest.fixture(scope="module")
def sd21_csft_meta():
    return CSFT(device="meta").state_dict()


def test_adaptbir_lightning_checkpoint_layout(host, pack, sd21_csft_meta):
    sd = {f"model.diffusion_model.{k}": v for k, v in sd21_csft_meta.items()}
    sd["model.diffusion_model.input_blocks.0.0.weight"] = torch.empty(320, 4, 3, 3, device="meta")
    sd["control_model.input_blocks.0.0.weight"] = torch.empty(320, 8, 3, 3, device="meta")
    sd["preprocess_model.encoder.conv_in.weight"] = torch.empty(128, 3, 3, 3, device="meta")
    sd["musiq_model.net.conv_root.weight"] = torch.empty(64, 3, 7, 7, device="meta")
    for wrapped in ({"state_dict": sd}, {"state_dict": {f"module.{k}": v for k, v in sd.items()}}):
        weights = pack("nodes.csft").load_csft(wrapped, {}, "adaptbir_stage3.ckpt")
        assert weights.config == {"model_channels": 320, "channel_mult": (1, 2, 4, 4), "num_res_blocks": 2,
                                  "sft_channels": 128}
        assert set(weights.state_dict) == set(sd21_csft_meta)
    net = CSFT(**weights.config, device="meta")
    net.load_state_dict(weights.state_dict, strict=True, assign=True)
    assert sum(p.numel() for p in net.parameters()) == 64_932_864


def test_own_file_layout_and_refusals(host, pack, sd21_csft_meta):
    load = pack("nodes.csft").load_csft
    meta = {"adaptbir_kind": "csft", "format_version": "1", "base_model": "sd2.1-base"}
    assert load(dict(sd21_csft_meta), meta, "mine.safetensors").config["model_channels"] == 320
    with pytest.raises(ValueError, match="made by this pack for 'restoration_vae'"):
        load(dict(sd21_csft_meta), {"adaptbir_kind": "restoration_vae"}, "vae.safetensors")
    irc_only = {"zero_convs.0.0.weight": torch.empty(320, 320, 1, 1, device="meta")}
    with pytest.raises(ValueError, match="irc.pth: .*IRControlNet alone"):
        load(irc_only, {}, "irc.pth")
    truncated = {k: v for k, v in sd21_csft_meta.items() if not k.startswith("upsample_layers.2.")}
    with pytest.raises(ValueError, match="cut.safetensors: .*expected"):
        load(truncated, {}, "cut.safetensors")
