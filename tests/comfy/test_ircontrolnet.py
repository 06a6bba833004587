"""IRControlNet: key layouts of the real DiffBIR/AdaptBIR files (full size, on the meta device), the loader's
refusals, and the control in graphs run by ComfyUI's executor with a tiny SD2 UNet."""

import pytest
import torch
from safetensors.torch import save_file

from modules.controlnet_layout import extract_ircontrolnet
from tests.comfy.conftest import image_node, sample_images
from tests.support.comfy_host import ExecutionFailed

SD21 = {"image_size": 32, "in_channels": 8, "model_channels": 320, "num_res_blocks": [2, 2, 2, 2],
        "channel_mult": [1, 2, 4, 4], "transformer_depth": [1, 1, 1, 1, 1, 1, 0, 0], "transformer_depth_middle": 1,
        "context_dim": 1024, "num_head_channels": 64, "use_linear_in_transformer": True,
        "use_spatial_transformer": True, "legacy": False}


def meta_controlnet(hint=False, **over):
    import comfy.cldm.cldm

    cfg = dict(SD21, **over)
    net = comfy.cldm.cldm.ControlNet(hint_channels=3, device="meta", **cfg)
    sd = net.state_dict()
    return sd if hint else {k: v for k, v in sd.items() if not k.startswith("input_hint_block.")}


@pytest.fixture(scope="module")
def diffbir_v2_layout(host):
    return meta_controlnet()


def test_full_size_diffbir_layout_is_accepted(host, pack, diffbir_v2_layout):
    sd = diffbir_v2_layout
    assert tuple(sd["input_blocks.0.0.weight"].shape) == (320, 8, 3, 3)
    assert tuple(sd["zero_convs.11.0.weight"].shape) == (1280, 1280, 1, 1) and "zero_convs.12.0.weight" not in sd
    assert tuple(sd["middle_block_out.0.weight"].shape) == (1280, 1280, 1, 1)
    assert sum(1 for k in sd if k.startswith("zero_convs.") and k.endswith(".weight")) == 12
    layout, control = extract_ircontrolnet(sd)
    assert layout == "diffbir"
    net, cfg = pack("nodes.ircontrolnet").build_ircontrolnet(control, device="meta", dtype=torch.float16)
    assert cfg["model_channels"] == 320 and cfg["context_dim"] == 1024 and cfg["channel_mult"] == [1, 2, 4, 4]
    assert sum(p.numel() for p in net.parameters()) > 300_000_000  # the SD2.1 encoder half + zero convs


def test_prefixed_checkpoints_are_recognised(host, diffbir_v2_layout):
    full = {f"control_model.{k}": v for k, v in diffbir_v2_layout.items()}
    full["model.diffusion_model.input_blocks.0.0.weight"] = torch.empty(320, 4, 3, 3, device="meta")
    full["first_stage_model.encoder.conv_in.weight"] = torch.empty(128, 3, 3, 3, device="meta")
    full["preprocess_model.conv_first.weight"] = torch.empty(180, 192, 3, 3, device="meta")
    assert extract_ircontrolnet({"state_dict": full})[0] == "diffbir_full"
    full["model.diffusion_model.cft_blocks.0.conv1.weight"] = torch.empty(128, 1280, 3, 3, device="meta")
    layout, control = extract_ircontrolnet(full)
    assert layout == "adaptbir_full" and set(control) == set(diffbir_v2_layout)
    assert extract_ircontrolnet({"module." + k: v for k, v in diffbir_v2_layout.items()})[0] == "diffbir"


@pytest.mark.parametrize("kind,needle", [
    ("sd15_controlnet", "standard ControlNet"), ("sdxl", "SDXL checkpoint"), ("truncated", "zero convolution"),
    ("four_channel", "8 channels"), ("lora", "LoRA")])
def test_foreign_weights_are_refused(host, kind, needle, diffbir_v2_layout):
    if kind == "sd15_controlnet":
        sd = meta_controlnet(hint=True, in_channels=4, context_dim=768, num_head_channels=-1, num_heads=8,
                             use_linear_in_transformer=False)
    elif kind == "sdxl":
        sd = {"model.diffusion_model.label_emb.0.0.weight": torch.empty(1280, 2816, device="meta"),
              "model.diffusion_model.input_blocks.0.0.weight": torch.empty(320, 4, 3, 3, device="meta")}
    elif kind == "truncated":
        sd = {k: v for k, v in diffbir_v2_layout.items() if not k.startswith("zero_convs.11.")}
    elif kind == "four_channel":
        sd = dict(diffbir_v2_layout, **{"input_blocks.0.0.weight": torch.empty(320, 4, 3, 3, device="meta")})
    else:
        sd = {"lora_unet_input_blocks_1_1_proj_in.lora_up.weight": torch.empty(4, 4)}
    with pytest.raises(ValueError, match=needle):
        extract_ircontrolnet(sd)


def control_graph(tiny, image, irc_file, strength=1.0, chain=False, cfg=2.0, use_condition=False):
    p = {
        "1": image_node(tiny, "irc", image),
        "2": {"class_type": "AdaptBIRTest_TinyCheckpoint", "inputs": {"kind": "sd2-eps", "seed": 0}},
        "3": {"class_type": "AdaptBIRTest_TinyConditioning", "inputs": {"text": "", "seed": 0, "sdxl": False}},
        "4": {"class_type": "AdaptBIRTest_TinyConditioning", "inputs": {"text": "neg", "seed": 0, "sdxl": False}},
        "5": {"class_type": "AdaptBIR_IRControlNetLoader", "inputs": {"control_net_name": irc_file}},
        "6": {"class_type": "AdaptBIR_ApplyIRControlNet", "inputs": {
            "positive": ["3", 0], "negative": ["4", 0], "control_net": ["5", 0], "strength": strength,
            "start_percent": 0.0, "end_percent": 1.0, "hint_convention": "auto", "image": ["1", 0],
            "vae": ["2", 1]}},
        "7": {"class_type": "EmptyLatentImage", "inputs": {"width": 64, "height": 64, "batch_size": image.shape[0]}},
        "8": {"class_type": "KSampler", "inputs": {
            "model": ["2", 0], "positive": ["6", 0], "negative": ["6", 1], "latent_image": ["7", 0], "seed": 5,
            "steps": 3, "cfg": cfg, "sampler_name": "ddpm", "scheduler": "simple", "denoise": 1.0}},
        "9": {"class_type": "AdaptBIRTest_Sink", "inputs": {"value": ["8", 0]}},
    }
    if chain:
        p["10"] = dict(p["6"], inputs=dict(p["6"]["inputs"], positive=["6", 0], negative=["6", 1]))
        p["8"]["inputs"].update(positive=["10", 0], negative=["10", 1])
    return p


def sampled(host, prompt):
    ex = host.run(prompt)
    return host.output(ex, "8", 0)["samples"]


def test_strength_zero_equals_no_control_and_strength_one_changes_the_result(host, tiny, irc_file):
    img = sample_images(1, 64, 64)
    plain = control_graph(tiny, img, irc_file)
    plain["8"]["inputs"].update(positive=["3", 0], negative=["4", 0])
    del plain["6"], plain["5"]
    base = sampled(host, plain)
    assert torch.equal(sampled(host, control_graph(tiny, img, irc_file, strength=0.0)), base)
    one = sampled(host, control_graph(tiny, img, irc_file, strength=1.0))
    assert not torch.allclose(one, base, atol=1e-4)


def test_controls_chain(host, tiny, irc_file):
    img = sample_images(2, 64, 64)
    one = sampled(host, control_graph(tiny, img, irc_file))
    two = sampled(host, control_graph(tiny, img, irc_file, chain=True))
    assert torch.isfinite(two).all() and not torch.allclose(one, two, atol=1e-4)


def test_wrong_condition_size_is_reported(host, tiny, irc_file):
    p = control_graph(tiny, sample_images(1, 128, 128), irc_file)
    with pytest.raises(ExecutionFailed, match="sampled latent's size"):
        host.run(p)


def test_loader_refuses_foreign_and_broken_files(host, tiny, irc_file):
    d = host.models_dir / "diffbir"
    save_file({"encoder.conv_in.weight": torch.zeros(4, 3, 3, 3), "decoder.conv_in.weight": torch.zeros(4, 4, 3, 3)},
              str(d / "a_vae.safetensors"))
    good = (d / irc_file).read_bytes()
    (d / "cut.safetensors").write_bytes(good[: len(good) // 2])
    for name, needle in [("a_vae.safetensors", "found a VAE"), ("cut.safetensors", "could not be read safely")]:
        p = {"1": {"class_type": "AdaptBIR_IRControlNetLoader", "inputs": {"control_net_name": name}},
             "2": {"class_type": "AdaptBIRTest_Sink", "inputs": {"value": ["1", 0]}}}
        with pytest.raises(ExecutionFailed, match=needle) as e:
            host.run(p)
        assert name in e.value.exception_message


def test_apply_does_not_mutate_the_conditioning(host, tiny, irc_file, pack):
    node = host.node_class("AdaptBIR_ApplyIRControlNet")
    pos = tiny.tiny_conditioning("a")
    neg = tiny.tiny_conditioning("b")
    prompt = control_graph(tiny, sample_images(1, 64, 64), irc_file)
    ex = host.run(prompt)
    pos_in = host.output(ex, "3", 0)
    out = host.output(ex, "6", 0)
    assert "control" not in pos_in[0][1] and "control" in out[0][1] and out is not pos_in
    assert node is not None and pos[0][1] == {} and neg[0][1] == {}
