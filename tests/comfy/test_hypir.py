"""HYPIR one-step restoration (issue 21): the pack's Load HYPIR LoRA + HYPIR Restore, run by ComfyUI's executor,
against HYPIR's own enhancer computation built from diffusers + peft at a tiny size.

The reference network is the *same* network as the tiny ComfyUI SD2 model: a diffusers UNet2DConditionModel of the
tiny config whose weights are the ComfyUI model's, renamed with ComfyUI's own ``comfy.utils.unet_to_diffusers``
map; the diffusers AutoencoderKL holds the tiny VAE's weights renamed with the inverse of ComfyUI's
``comfy.diffusers_convert.convert_vae_state_dict``. HYPIR's LoRA is added the way HYPIR does
(``add_adapter(LoraConfig(r, lora_alpha=r, target_modules=HYPIR's list))``), filled with seeded random values and
saved as HYPIR's trainer saves it (the LoRA parameters' state dict, ``torch.save``). The reference then follows
``HYPIR/enhancer/base.py`` + ``sd2.py`` step by step (one tile), with one documented difference: HYPIR draws a
sample from the VAE posterior, ComfyUI's VAE Encode (and the reference here) takes its mean.
"""

import pytest
import torch
import torch.nn.functional as F

from tests.comfy.conftest import image_node, iqa_node
from tests.support.comfy_host import ExecutionFailed

diffusers = pytest.importorskip("diffusers")
peft = pytest.importorskip("peft")

HYPIR_FILE = "tiny_hypir.pth"
RANK = 4
LORA_MODULES = ["to_k", "to_q", "to_v", "to_out.0", "conv", "conv1", "conv2", "conv_shortcut", "conv_out",
                "proj_in", "proj_out", "ff.net.2", "ff.net.0.proj"]  # configs/sd2_gradio.yaml


def diffusers_unet(tiny):
    """The tiny SD2 UNet (seed 0) as a diffusers UNet2DConditionModel, weights renamed by ComfyUI's own map."""
    import comfy.utils

    cfg = tiny.SD2_UNET
    unet = diffusers.UNet2DConditionModel(
        sample_size=32, in_channels=4, out_channels=4, layers_per_block=2, block_out_channels=(64, 64, 128, 128),
        down_block_types=("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",),
        up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3, cross_attention_dim=cfg["context_dim"],
        attention_head_dim=(1, 1, 2, 2), use_linear_projection=True)
    comfy_sd = tiny.tiny_model("sd2-eps", 0).model.diffusion_model.state_dict()
    mapping = comfy.utils.unet_to_diffusers(dict(cfg))
    sd = {dk: comfy_sd[ck] for dk, ck in mapping.items() if ck in comfy_sd}  # the map lists optional layers too
    unet.load_state_dict(sd, strict=True)
    return unet.eval()


def diffusers_vae(tiny):
    """The tiny KL VAE (seed 0) as a diffusers AutoencoderKL (names from ComfyUI's diffusers -> ldm conversion)."""
    import comfy.diffusers_convert

    vae = diffusers.AutoencoderKL(
        in_channels=3, out_channels=3, down_block_types=("DownEncoderBlock2D",) * 4,
        up_block_types=("UpDecoderBlock2D",) * 4, block_out_channels=(32,) * 4, layers_per_block=1,
        latent_channels=4, norm_num_groups=32, scaling_factor=0.18215)
    names = list(vae.state_dict())
    probe = comfy.diffusers_convert.convert_vae_state_dict({k: torch.tensor([float(i)]) for i, k in enumerate(names)})
    ldm = tiny.tiny_vae(0).first_stage_model.state_dict()
    shapes = vae.state_dict()
    sd = {names[int(v.flatten()[0])]: ldm[k].reshape(shapes[names[int(v.flatten()[0])]].shape)
          for k, v in probe.items()}
    vae.load_state_dict(sd, strict=True)
    return vae.eval()


@pytest.fixture(scope="module")
def hypir_parts(host, tiny):
    """(diffusers UNet with HYPIR's LoRA, diffusers VAE, the LoRA state dict saved in models/hypir)."""
    unet = diffusers_unet(tiny)
    unet.add_adapter(peft.LoraConfig(r=RANK, lora_alpha=RANK, init_lora_weights="gaussian",
                                     target_modules=LORA_MODULES))
    g = torch.Generator().manual_seed(21)
    lora = {}
    for name, p in unet.named_parameters():
        if "lora" in name:
            p.data = torch.randn(p.shape, generator=g) * (0.5 / p[0].numel() ** 0.5)
            lora[name] = p.detach().clone()
    torch.save(lora, host.models_dir / "hypir" / HYPIR_FILE)
    return unet, diffusers_vae(tiny), lora


def tiny_hypir_state_dict(tiny, seed: int = 0, rank: int = RANK) -> dict:
    """HYPIR's saved layout for the tiny SD2 UNet without peft: '<diffusers module>.lora_A/B.default.weight' for
    every layer HYPIR's target list names, seeded (for loaders and workflows; the parity test uses peft itself)."""
    import comfy.utils

    weights = tiny.tiny_model("sd2-eps", 0).model.diffusion_model.state_dict()
    g = torch.Generator().manual_seed(seed)
    sd = {}
    for dk, ck in sorted(comfy.utils.unet_to_diffusers(dict(tiny.SD2_UNET)).items()):
        base = dk[:-len(".weight")]
        if not dk.endswith(".weight") or ck not in weights or weights[ck].ndim < 2 or \
                not any(base == m or base.endswith("." + m) for m in LORA_MODULES):
            continue
        w = weights[ck]
        sd[base + ".lora_A.default.weight"] = torch.randn(rank, *w.shape[1:], generator=g) * 0.05
        sd[base + ".lora_B.default.weight"] = torch.randn(w.shape[0], rank, *([1] * (w.ndim - 2)), generator=g) * 0.05
    return sd


def _wavelet_blur(image, radius):  # HYPIR/utils/common.py
    k = torch.tensor([[0.0625, 0.125, 0.0625], [0.125, 0.25, 0.125], [0.0625, 0.125, 0.0625]], dtype=image.dtype)
    k = k[None, None].repeat(3, 1, 1, 1)
    return F.conv2d(F.pad(image, (radius,) * 4, mode="replicate"), k, groups=3, dilation=radius)


def _wavelet_decomposition(image, levels=5):
    high = torch.zeros_like(image)
    for i in range(levels):
        low = _wavelet_blur(image, 2 ** i)
        high += image - low
        image = low
    return high, low


def hypir_reference(unet, vae, lq, text_embed, patch_size, model_t=200, coeff_t=200):
    """HYPIR's BaseEnhancer.enhance (upscale 1, one tile) + SD2Enhancer, float32, posterior mean."""
    ref = lq
    h0, w0 = lq.shape[2:]
    if min(h0, w0) <= patch_size:
        h, w = lq.shape[2:]
        size = (patch_size, patch_size) if h == w else (
            (patch_size, int(w * (patch_size / h))) if h < w else (int(h * (patch_size / w)), patch_size))
        lq = F.interpolate(lq, size=size, mode="bicubic", antialias=True)
    lq = lq * 2 - 1
    h1, w1 = lq.shape[2:]
    lq = F.pad(lq, (0, (-w1) % 8, 0, (-h1) % 8), mode="constant", value=0)
    scheduler = diffusers.DDPMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
                                        num_train_timesteps=1000, clip_sample=False, prediction_type="epsilon")
    with torch.no_grad():
        z_lq = vae.encode(lq).latent_dist.mode()
        z_in = z_lq * vae.config.scaling_factor
        t = torch.full((len(lq),), model_t, dtype=torch.long)
        eps = unet(z_in, t, encoder_hidden_states=text_embed.expand(len(lq), -1, -1)).sample
        z = scheduler.step(eps, coeff_t, z_in).pred_original_sample / vae.config.scaling_factor
        x = vae.decode(z).sample.float()
    x = (x[..., :h1, :w1] + 1) / 2
    x = F.interpolate(x, size=(h0, w0), mode="bicubic", antialias=True)
    high, _ = _wavelet_decomposition(x)
    _, low = _wavelet_decomposition(ref)
    return (high + low).clamp(0, 1)


def hypir_graph(tiny, image, *, tile=64, stride=32, strength=1.0, lora=True, **widgets):
    p = {
        "1": image_node(tiny, "hypir", image),
        "2": {"class_type": "AdaptBIRTest_TinyCheckpoint", "inputs": {"kind": "sd2-eps", "seed": 0}},
        "3": {"class_type": "AdaptBIRTest_TinyConditioning", "inputs": {"text": "", "seed": 0, "sdxl": False}},
        "4": {"class_type": "AdaptBIR_HYPIRLoader", "inputs": {"model": ["2", 0], "hypir_name": HYPIR_FILE,
                                                               "strength": strength}},
        "5": {"class_type": "AdaptBIR_HYPIRRestore", "inputs": {
            "model": ["4", 0] if lora else ["2", 0], "vae": ["2", 1], "positive": ["3", 0], "image": ["1", 0],
            "model_t": 200, "coeff_t": 200, "upscale": 1.0, "color_fix": "wavelet", "tile_size": tile,
            "tile_stride": stride, "adapt": "off", "mild_factor": 0.5, **widgets}},
        "6": {"class_type": "AdaptBIRTest_Sink", "inputs": {"value": ["5", 0]}},
    }
    return p


def _image(h, w, seed=0):
    g = torch.Generator().manual_seed(seed)
    base = torch.linspace(0, 1, w).view(1, 1, w, 1).expand(1, h, w, 3)
    return (0.7 * base + 0.3 * torch.rand(1, h, w, 3, generator=g)).contiguous()


def test_lora_file_has_hypirs_saved_layout(tiny, hypir_parts):
    _, _, lora = hypir_parts
    own = tiny_hypir_state_dict(tiny)
    assert set(own) == set(lora) and all(own[k].shape == lora[k].shape for k in lora)  # the stand-in's layout
    assert lora and all(k.endswith((".lora_A.default.weight", ".lora_B.default.weight")) for k in lora)
    assert any(".attn1.to_out.0.lora_A" in k for k in lora) and any("conv_shortcut.lora_B" in k for k in lora)
    assert any("downsamplers.0.conv.lora_A" in k for k in lora) and any(k.startswith("conv_out.") for k in lora)


@pytest.fixture(scope="module")
def plain(host, tiny, hypir_parts):
    """HYPIR Restore of the test image by the model without HYPIR's LoRA."""
    return host.output(host.run(hypir_graph(tiny, _image(40, 40), lora=False)), "5")


@pytest.mark.parametrize("model_t,coeff_t", [(200, 200), (300, 150)])
def test_one_step_equals_hypirs_enhancer(host, tiny, hypir_parts, plain, model_t, coeff_t):
    unet, vae, _ = hypir_parts
    img = _image(40, 40)
    out = host.output(host.run(hypir_graph(tiny, img, tile=64, stride=32, model_t=model_t, coeff_t=coeff_t)), "5")
    cond = tiny.tiny_conditioning("", 0)[0][0]
    ref = hypir_reference(unet, vae, img.movedim(-1, 1), cond, 64, model_t, coeff_t).movedim(1, -1)
    assert out.shape == ref.shape == (1, 40, 40, 3)
    assert (ref - ref.mean()).abs().max() > 0.05  # not a flat image
    err = (out - ref).abs().max().item()
    assert err < 2e-4, err
    if (model_t, coeff_t) == (200, 200):  # the LoRA matters: without it the result is different
        assert (plain - out).abs().max() > 1e-3


def test_strength_zero_is_the_plain_model(host, tiny, plain):
    zero = host.output(host.run(hypir_graph(tiny, _image(40, 40), strength=0.0)), "5")
    assert torch.allclose(zero, plain, atol=1e-5)


def test_large_image_runs_in_tiles(host, tiny, hypir_parts):
    wide = _image(40, 72, seed=2)  # resized to 64 x 115, padded to 64 x 120: several latent tiles, tiled VAE
    out = host.output(host.run(hypir_graph(tiny, wide, tile=64, stride=32)), "5")
    assert out.shape == (1, 40, 72, 3) and bool(torch.isfinite(out).all())
    assert (out - wide).abs().mean() > 1e-3


def test_adapt_strength_from_iqa_class(host, tiny, plain, iqa_files):
    """A mild image (IQA level 85) with adapt='strength' and mild_factor 0 is restored by the model without the
    LoRA."""
    g = hypir_graph(tiny, _image(40, 40), adapt="strength", mild_factor=0.0)
    g["7"] = iqa_node(["1", 0], weights="level85.safetensors")
    g["5"]["inputs"]["params"] = ["7", 0]
    ex = host.run(g)
    assert host.output(ex, "7").classes == ("mild",)
    assert torch.allclose(host.output(ex, "5"), plain, atol=1e-5)  # weights + s A B - s A B: float rounding


def test_adapt_without_params_is_refused(host, tiny, hypir_parts):
    with pytest.raises(ExecutionFailed, match="adapt: expected IQA params connected"):
        host.run(hypir_graph(tiny, _image(40, 40), adapt="timestep"))


def test_hypir_nodes_leave_their_inputs_alone(host, tiny, hypir_parts):
    """Load HYPIR LoRA returns a patched clone; HYPIR Restore (with per-image strength) leaves its model alone."""
    model = tiny.tiny_model("sd2-eps", 0)
    weights = {k: v.clone() for k, v in model.model.state_dict().items()}
    loaded = host.node_class("AdaptBIR_HYPIRLoader").execute(model, HYPIR_FILE, 1.0).args[0]
    assert loaded is not model and not model.patches and not model.attachments and loaded.patches
    n_patches = {k: len(v) for k, v in loaded.patches.items()}
    wrappers = dict(loaded.wrappers)
    params = type("P", (), {"classes": ("mild",)})()
    host.node_class("AdaptBIR_HYPIRRestore").execute(
        loaded, tiny.tiny_vae(0), tiny.tiny_conditioning("", 0), _image(32, 32), tile_size=64, tile_stride=32,
        adapt="both", mild_factor=0.5, params=params)
    assert {k: len(v) for k, v in loaded.patches.items()} == n_patches and dict(loaded.wrappers) == wrappers
    import comfy.model_management as mm
    mm.unload_all_models()
    assert all(torch.equal(weights[k], v) for k, v in model.model.state_dict().items())


def test_workflow_runs_in_the_executor(host, tiny, pack, musiq_random_state):
    """workflows/hypir_one_step.json converted by the batch runner (equal to the page's conversion, see
    test_workflows.py) runs with tiny stand-ins under the real file names and saves one image of the input size."""
    import json
    from pathlib import Path

    from PIL import Image

    from tests.comfy.test_workflows import tiny_prompt, write_tiny_files

    write_tiny_files(host.models_dir, host.workdir / "input", tiny, musiq_state=musiq_random_state)
    wf = json.loads((Path(__file__).resolve().parents[2] / "workflows" / "hypir_one_step.json").read_text())
    prompt = tiny_prompt(pack("batch.workflow").to_prompt(wf, host.nodes.NODE_CLASS_MAPPINGS))
    assert {v["class_type"] for v in prompt.values()} >= {"AdaptBIR_HYPIRLoader", "AdaptBIR_HYPIRRestore"}
    ex = host.run(prompt)
    (save,) = [k for k, v in prompt.items() if v["class_type"] == "SaveImage"]
    (image,) = host.ui(ex, save)["images"]
    out = Image.open(host.workdir / "output" / image.get("subfolder", "") / image["filename"])
    assert out.size == (36, 32)


def test_missing_hypir_file_is_named_with_where_to_get_it_at_validation(host):
    """Load HYPIR LoRA checks its file when the prompt is validated (as the other pack loaders do): the error names
    the file, the hypir folder and the manifest's download link (found by the file's name; a sub-folder keeps the
    name missing whatever other tests put in models/hypir), and nothing runs."""
    prompt = {"ck": {"class_type": "AdaptBIRTest_TinyCheckpointLoader", "inputs": {"kind": "sd2-eps", "seed": 0}},
              "1": {"class_type": "AdaptBIR_HYPIRLoader",
                    "inputs": {"model": ["ck", 0], "hypir_name": "not_here/HYPIR_sd2.pth", "strength": 1.0}},
              "2": {"class_type": "AdaptBIRTest_Sink", "inputs": {"value": ["1", 0]}}}
    valid, _, _, node_errors = host.validate(prompt)
    assert not valid
    errors = node_errors["1"]["errors"]  # ComfyUI 0.3.75 repeats a node's validate_inputs message per input
    assert errors and all(e["type"] == "custom_validation_failed" for e in errors), errors
    details = errors[0]["details"]
    assert "HYPIR_sd2.pth" in details and "'hypir' model folder" in details, details
    assert "https://huggingface.co/lxq007/HYPIR/resolve/main/HYPIR_sd2.pth" in details, details
