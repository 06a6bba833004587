"""SUPIR on ComfyUI's SDXL: the adapter hooks against SUPIR's explicit forward, graphs through the executor (LoRA
SUPIR Loader -> SUPIR Apply -> KSampler -> VAE Decode), LoRA composition, the loader's cache, sampling knobs and the
full-size SUPIR-v0Q key layout (meta tensors)."""

import pytest
import torch
from safetensors.torch import save_file

from tests.comfy.conftest import image_node, iqa_node, sample_images, write_kohya_lora
from tests.support.comfy_host import ExecutionFailed

SUPIR_FILE = "tiny_supir_v0q.safetensors"
SUPIR_ZERO = "tiny_supir_fresh.safetensors"
LORA_FILE = "tiny_sdxl_lora.safetensors"
ZERO_PARTS = ("zero_conv", "zero_mul", "zero_add", "input_hint_block")


def tiny_adapter_sd(sm, sdxl, tiny, seed, fresh=False):
    import comfy.ops

    from modules.supir import supir_layout

    cfg = {k: v for k, v in sdxl.model.model_config.unet_config.items() if k not in ("out_channels", "dtype")}
    layout = supir_layout(cfg["model_channels"], cfg["channel_mult"], cfg["num_res_blocks"])
    net = sm.SUPIRAdapterModule(cfg, layout, None, torch.float32, comfy.ops.manual_cast)
    sd = tiny.seeded_state_dict(net, seed)
    if fresh:  # SUPIR's zero_module() parts
        sd = {k: torch.zeros_like(v) if any(p in k for p in ZERO_PARTS) else v for k, v in sd.items()}
    return sd


@pytest.fixture(scope="module")
def supir_files(host, sm, sdxl, tiny):
    """Two tiny SUPIR files in models/supir: the original checkpoint layout (seeded, with a denoise encoder, a
    training-only mask_LQ and SDXL weights to ignore) and a freshly initialised adapter in the bare layout."""
    d = host.models_dir / "supir"
    d.mkdir(exist_ok=True)
    sd = {("model.control_model." + k[len("control_model."):]) if k.startswith("control_model.") else
          ("model.diffusion_model." + k): v for k, v in tiny_adapter_sd(sm, sdxl, tiny, 7).items()}
    vae = tiny._vae_weights(3, 4)
    sd.update({"first_stage_model.denoise_encoder." + k[len("encoder."):]: v for k, v in vae.items()
               if k.startswith("encoder.")})
    sd["model.control_model.mask_LQ"] = torch.ones(1)
    sd["model.diffusion_model.input_blocks.0.0.weight"] = torch.full((32, 4, 3, 3), 99.0)  # must be ignored
    save_file({k: v.contiguous() for k, v in sd.items()}, str(d / SUPIR_FILE))
    fresh = tiny_adapter_sd(sm, sdxl, tiny, 7, fresh=True)
    fresh.update({"denoise_encoder." + k[len("encoder."):]: v for k, v in vae.items() if k.startswith("encoder.")})
    save_file(fresh, str(d / SUPIR_ZERO))
    return d


@pytest.fixture(scope="module")
def lora_file(host):
    """A kohya-style LoRA on an encoder and a decoder convolution of the tiny SDXL UNet."""
    return write_kohya_lora(host, LORA_FILE, [("input_blocks_1_0_out_layers_3", 32), ("output_blocks_8_0_out_layers_3", 32)], seed=11, scale=0.3)


def graph(tiny, supir_name=SUPIR_FILE, scale=(1.0, 1.0), supir=True, loras=(), lora_loader=None,
          lora_after=False, cfg=1.0, cfg_start=0.0, restore_cfg=-1.0, steps=2, decode=False, params_from=None,
          sampler="ddpm"):
    """Image -> LoRA SUPIR Loader -> SUPIR Apply -> KSampler (node 8) [-> VAE Decode (node 9)]."""
    p = {
        "1": image_node(tiny, "supir", sample_images(1, 64, 64)),
        "2": {"class_type": "AdaptBIRTest_TinyCheckpoint", "inputs": {"kind": "sdxl", "seed": 0}},
        "3": {"class_type": "AdaptBIRTest_TinyConditioning", "inputs": {"text": "a", "seed": 0, "sdxl": True}},
        "4": {"class_type": "AdaptBIRTest_TinyConditioning", "inputs": {"text": "b", "seed": 1, "sdxl": True}},
        "7": {"class_type": "EmptyLatentImage", "inputs": {"width": 64, "height": 64, "batch_size": 1}},
        "8": {"class_type": "KSampler", "inputs": {
            "model": ["2", 0], "positive": ["3", 0], "negative": ["4", 0], "latent_image": ["7", 0], "seed": 5,
            "steps": steps, "cfg": cfg, "sampler_name": sampler, "scheduler": "normal", "denoise": 1.0}},
        "20": {"class_type": "AdaptBIRTest_Sink", "inputs": {"value": ["8", 0]}},
    }
    model = ["2", 0]
    if lora_loader is not None and not lora_after:
        p["12"] = {"class_type": "LoraLoaderModelOnly", "inputs": {"model": model, "lora_name": lora_loader,
                                                                  "strength_model": 1.0}}
        model = ["12", 0]
    if supir:
        p["5"] = {"class_type": "AdaptBIR_LoRASUPIRLoader", "inputs": {
            "model": model, "vae": ["2", 1], "supir_name": supir_name}}
        prev = None
        for i, (name, sm_, sa) in enumerate(loras):
            nid = f"3{i}"
            p[nid] = {"class_type": "AdaptBIR_SUPIRLoRA", "inputs": {
                "lora_name": name, "strength_model": sm_, "strength_clip": 0.0, "strength_adapter": sa}}
            if prev:
                p[nid]["inputs"]["loras"] = [prev, 0]
            prev = nid
        if prev:
            p["5"]["inputs"]["loras"] = [prev, 0]
        p["6"] = {"class_type": "AdaptBIR_SUPIRApply", "inputs": {
            "model": ["5", 0], "supir": ["5", 3], "image": ["1", 0], "control_scale_start": scale[0],
            "control_scale_end": scale[1], "cfg_start": cfg_start, "restore_cfg": restore_cfg,
            "restore_cfg_s_tmin": 0.05, "pad_multiple": 64, "tile_size": 0, "params_scale_min": 0.5}}
        if params_from is not None:
            p["13"] = iqa_node(["1", 0], weights=params_from)
            p["6"]["inputs"]["params"] = ["13", 0]
        model = ["6", 0]
        p["8"]["inputs"]["latent_image"] = ["6", 1]
    if lora_loader is not None and lora_after:
        p["12"] = {"class_type": "LoraLoaderModelOnly", "inputs": {"model": model, "lora_name": lora_loader,
                                                                  "strength_model": 1.0}}
        model = ["12", 0]
    p["8"]["inputs"]["model"] = model
    if decode:
        p["9"] = {"class_type": "VAEDecode", "inputs": {"samples": ["8", 0], "vae": ["5", 2] if supir else ["2", 1]}}
        p["10"] = {"class_type": "AdaptBIR_CropToOriginal", "inputs": {"image": ["9", 0], "latent": ["8", 0]}}
        p["21"] = {"class_type": "AdaptBIRTest_Sink", "inputs": {"value": ["10", 0]}}
    return p


def sampled(host, prompt):
    return host.output(host.run(prompt), "8", 0)["samples"]


def test_hooks_reproduce_supir_explicit_forward(host, pack, sm, sdxl, tiny):
    """The patched ComfyUI UNet call equals LightGLVUNet's forward written out block by block."""
    import comfy.patcher_extension
    from comfy.ldm.modules.diffusionmodules.util import timestep_embedding

    from modules.supir import supir_layout

    unet = sdxl.model.diffusion_model
    cfg = {k: v for k, v in sdxl.model.model_config.unet_config.items() if k not in ("out_channels", "dtype")}
    net = sm.build_adapter(cfg, tiny_adapter_sd(sm, sdxl, tiny, 7), torch.float32)
    want = supir_layout(32, (1, 2, 2), [2, 2, 2])
    assert (net.layout.feature_channels, net.layout.upsample_blocks) == (want.feature_channels, want.upsample_blocks)
    g = torch.Generator().manual_seed(0)
    x, ctx = torch.randn(2, 4, 8, 8, generator=g), torch.randn(2, 4, 64, generator=g)
    y, hint = torch.randn(2, cfg["adm_in_channels"], generator=g), torch.randn(2, 4, 8, 8, generator=g)
    t = torch.tensor([500.0, 500.0])
    sigma = torch.tensor([4.0, 4.0])
    patch = sm.SUPIRPatch(type("P", (), {"model": net})(), hint, 0.0, torch.tensor([1.0, 0.5]), 8.0)
    opts = {"wrappers": {comfy.patcher_extension.WrappersMP.DIFFUSION_MODEL: {"k": [patch]}}, "sigmas": sigma,
            "cond_or_uncond": [0, 1]}
    with torch.no_grad():
        got = unet(x, t, ctx, y, None, opts)
        plain = unet(x, t, ctx, y, None, {})
        # explicit: s = end + (start - end) * sigma / sigma_max with start 0, sigma/sigma_max = 0.5
        s = torch.tensor([0.5, 0.25]).view(-1, 1, 1, 1)
        feats = net.control_model(hint, x, t, ctx, y)
        emb = unet.time_embed(timestep_embedding(t, 32)) + unet.label_emb(y)
        hs, h = [], x
        for block in unet.input_blocks:
            h = block(h, emb, ctx)
            hs.append(h)
        h = net.middle(feats, unet.middle_block(h, emb, ctx), s)
        for j, block in enumerate(unet.output_blocks):
            h = net.fuse_skip(j, feats, h, hs.pop(), s)
            if j in net.layout.upsample_blocks:
                for layer in block[:-1]:
                    h = layer(h, emb) if layer is block[0] else layer(h, ctx)
                h = block[-1](net.before_upsample(j, feats, h, s))
            else:
                h = block(h, emb, ctx)
        want = unet.out(h)
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)
    assert (got - plain).abs().mean() > 1e-3
    # the hooks are gone after the call
    assert torch.equal(unet(x, t, ctx, y, None, {}), plain)

    # a freshly initialised adapter (SUPIR's zero_module parts at 0): at scale 1 every skip fusion is exactly
    # GroupNorm(cat(h, skip)) and the middle GroupNorm(h) -- SUPIR's ZeroSFT normalises even with zero convolutions,
    # so the fresh adapter is *not* the identity; only control scale 0 is (tested through the executor)
    fresh = sm.build_adapter(cfg, tiny_adapter_sd(sm, sdxl, tiny, 7, fresh=True), torch.float32)
    patch = sm.SUPIRPatch(type("P", (), {"model": fresh})(), hint, 1.0, 1.0, 8.0)
    opts["wrappers"][comfy.patcher_extension.WrappersMP.DIFFUSION_MODEL]["k"] = [patch]

    def gn(h, norm):
        return torch.nn.functional.group_norm(h, 32, norm.weight, norm.bias, 1e-5)

    with torch.no_grad():
        got = unet(x, t, ctx, y, None, opts)
        feats = fresh.control_model(hint, x, t, ctx, y)
        hs, h = [], x
        for block in unet.input_blocks:
            h = block(h, emb, ctx)
            hs.append(h)
        mods = fresh.project_modules
        h = gn(unet.middle_block(h, emb, ctx), mods[fresh.mid_index].param_free_norm)
        for j, block in enumerate(unet.output_blocks):
            h = gn(torch.cat([h, hs.pop()], 1), mods[fresh.sft_index[j]].param_free_norm)
            if j in fresh.layout.upsample_blocks:
                for layer in block[:-1]:
                    h = layer(h, emb) if layer is block[0] else layer(h, ctx)
                h = block[-1](fresh.before_upsample(j, feats, h, 1.0))
            else:
                h = block(h, emb, ctx)
        want = unet.out(h)
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)


@pytest.fixture(scope="module")
def plain(host, tiny):
    return sampled(host, graph(tiny, supir=False))


def test_graph_runs_and_control_scale_zero_is_plain_sdxl(host, tiny, supir_files, plain):
    ex = host.run(graph(tiny, decode=True))
    out = host.output(ex, "8", 0)["samples"]
    image = host.output(ex, "10", 0)
    assert tuple(image.shape) == (1, 64, 64, 3) and torch.isfinite(image).all()
    # scale 0 everywhere: the patch runs nothing; only the start latent (the stage-1 latent) differs from plain
    zero = graph(tiny, scale=(0.0, 0.0))
    zero_plain = graph(tiny, supir=False)
    zero_plain["8"]["inputs"]["latent_image"] = zero["8"]["inputs"]["latent_image"] = ["7", 0]
    assert torch.equal(sampled(host, zero), sampled(host, zero_plain))
    assert (out - plain).abs().mean() > 1e-3
    # a fresh (zero-initialised) adapter loads from the bare layout and runs (its closed form: see the hooks test)
    fresh = sampled(host, graph(tiny, supir_name=SUPIR_ZERO))
    assert torch.isfinite(fresh).all() and not torch.equal(fresh, out)


def test_lora_composes_with_the_supir_patch(host, tiny, supir_files, lora_file):
    zero = graph(tiny, scale=(0.0, 0.0), lora_loader=lora_file)
    lora_plain = graph(tiny, supir=False, lora_loader=lora_file)
    lora_plain["8"]["inputs"]["latent_image"] = zero["8"]["inputs"]["latent_image"] = ["7", 0]
    nolora_plain = graph(tiny, supir=False)
    # the LoRA changes plain SDXL, and exactly the same way under an inactive SUPIR patch
    assert not torch.allclose(sampled(host, lora_plain), sampled(host, nolora_plain), atol=1e-4)
    assert torch.equal(sampled(host, zero), sampled(host, lora_plain))
    # with SUPIR active: LoraLoader before the loader == after SUPIR Apply == in the loader's own list
    before = sampled(host, graph(tiny, lora_loader=lora_file))
    after = sampled(host, graph(tiny, lora_loader=lora_file, lora_after=True))
    listed = sampled(host, graph(tiny, loras=[(lora_file, 1.0, 0.0)]))
    assert torch.equal(before, after) and torch.equal(before, listed)
    assert not torch.allclose(before, sampled(host, graph(tiny)), atol=1e-4)


def test_adapter_lora_strength_and_no_reload(host, pack, tiny, supir_files, lora_file, monkeypatch):
    supir_nodes = pack("nodes.supir")
    base = sampled(host, graph(tiny, loras=[(lora_file, 1.0, 0.0)]))
    loads = []
    original = supir_nodes._load_adapter
    monkeypatch.setattr(supir_nodes, "_load_adapter", lambda *a: loads.append(a) or original(*a))
    with_adapter = sampled(host, graph(tiny, loras=[(lora_file, 1.0, 1.0)]))
    half = sampled(host, graph(tiny, loras=[(lora_file, 0.5, 0.0)]))
    assert loads == []  # LoRA and strength changes reuse the loaded SUPIR weights
    assert not torch.allclose(with_adapter, base, atol=1e-5)
    assert not torch.allclose(half, base, atol=1e-5)
    # the cached adapter itself is never patched: its weights equal the file's
    from safetensors.torch import load_file

    cached = supir_nodes._ADAPTERS.value[0].model.state_dict()
    on_disk = load_file(str(supir_files / SUPIR_FILE))
    k = "control_model.input_blocks.1.0.out_layers.3.weight"
    assert torch.equal(cached[k], on_disk["model." + k])


def test_linear_cfg_and_restore_cfg_functions(pack):
    nodes = pack("nodes.supir")
    fn = nodes._cfg_function(1.0, 10.0)
    cond, uncond = torch.full((2, 1, 1, 1), 3.0), torch.full((2, 1, 1, 1), 1.0)
    out = fn({"cond": cond, "uncond": uncond, "cond_scale": 5.0, "sigma": torch.tensor([10.0, 5.0])})
    # cfg(sigma) = (1 - 5) * sigma / 10 + 5 -> 1 and 3
    torch.testing.assert_close(out.flatten(), torch.tensor([1.0 + 2.0 * 1.0, 1.0 + 2.0 * 3.0]))
    centre = torch.zeros(1, 4, 2, 2)
    r = nodes.RestoreCFG(centre, 2.0, 0.05, 10.0)
    d = torch.ones(1, 4, 2, 2)
    sched = torch.tensor([10.0, 5.0, 1.0, 0.04, 0.0])
    opts = {"transformer_options": {"sample_sigmas": sched}}
    # sigma 5.1 with churn: the schedule's 5.0 is used: 1 - (1 - 0) * 0.5^2
    torch.testing.assert_close(r({"denoised": d, "sigma": torch.tensor([5.1]), "model_options": opts}),
                               torch.full_like(d, 0.75))
    # next sigma 0.04 <= s_tmin: untouched
    assert r({"denoised": d, "sigma": torch.tensor([1.0]), "model_options": opts}) is d


def test_sampling_knobs_run(host, tiny, supir_files):
    linear = sampled(host, graph(tiny, cfg=4.0, cfg_start=1.0, scale=(0.0, 1.0), restore_cfg=2.0, steps=3,
                                 sampler="euler"))
    const = sampled(host, graph(tiny, cfg=4.0, cfg_start=0.0, scale=(0.0, 1.0), restore_cfg=2.0, steps=3,
                                sampler="euler"))
    assert torch.isfinite(linear).all() and not torch.allclose(linear, const, atol=1e-5)


def test_iqa_params_drive_the_control_scale(host, tiny, supir_files, iqa_files):
    # level 85 -> mild -> w = 1 -> end scale = control_scale_end; level 30 -> w = 0 -> params_scale_min (0.5)
    mild = sampled(host, graph(tiny, params_from="level85.safetensors"))
    assert torch.equal(mild, sampled(host, graph(tiny)))
    severe = sampled(host, graph(tiny, params_from="level30.safetensors"))
    assert torch.equal(severe, sampled(host, graph(tiny, scale=(1.0, 0.5))))


def test_dual_encoder_with_supir_stage1_vae(host, tiny, supir_files):
    p = graph(tiny)
    p["15"] = {"class_type": "AdaptBIR_DualEncoderInterpolate", "inputs": {
        "image": ["1", 0], "restoration_vae": ["5", 4], "internal_vae": ["2", 1], "k": 0.0, "pad_multiple": 64,
        "tile_size": 0}}
    del p["6"]["inputs"]["image"]
    p["6"]["inputs"]["condition"] = ["15", 1]
    # k = 0: only SUPIR's denoise encoder, exactly what SUPIR Apply's own encode gives
    assert torch.equal(sampled(host, p), sampled(host, graph(tiny)))
    p["15"]["inputs"]["k"] = 0.5
    assert not torch.equal(sampled(host, p), sampled(host, graph(tiny)))


def test_wrong_models_and_files_are_refused(host, tiny, supir_files):
    def t():
        return torch.zeros(2, 2)
    sd15 = {"model.diffusion_model.input_blocks.0.0.weight": t(), "cond_stage_model.transformer.x": t()}
    sd21 = {"model.diffusion_model.input_blocks.1.1.proj_in.weight": t(), "cond_stage_model.model.x": t()}
    save_file(sd15, str(supir_files / "sd15.safetensors"))
    save_file(sd21, str(supir_files / "sd21.safetensors"))
    for name in ("sd15.safetensors", "sd21.safetensors"):
        with pytest.raises(ExecutionFailed, match=r"expected SUPIR weights .*Stable Diffusion checkpoint"):
            host.run(graph(tiny, supir_name=name))
    p = graph(tiny)
    p["2"]["inputs"]["kind"] = "sd2-eps"
    p["3"]["inputs"]["sdxl"] = p["4"]["inputs"]["sdxl"] = False
    with pytest.raises(ExecutionFailed, match="expected an SDXL model"):
        host.run(p)


def test_full_size_supir_v0q_layout_is_accepted(host, sm):
    """Random weights with SUPIR-v0Q's key names and shapes (GLVControl = SDXL encoder + 4->320 hint conv,
    12 project_modules as SUPIR constructs them, the SDXL VAE encoder), built on the meta device."""
    import comfy.model_detection
    import comfy.supported_models
    from comfy.ldm.modules.diffusionmodules.openaimodel import UNetModel

    from tests.modules.test_supir_modules import xl_base_table

    unet_config = dict(comfy.supported_models.SDXL.unet_config)
    unet_config.update({"use_checkpoint": False, "image_size": 32, "out_channels": 4, "use_spatial_transformer": True,
                        "legacy": False, "num_classes": "sequential", "in_channels": 4, "num_res_blocks": [2, 2, 2],
                        "channel_mult": [1, 2, 4], "transformer_depth_middle": 10,
                        "transformer_depth_output": [0, 0, 0, 2, 2, 2, 10, 10, 10], "num_head_channels": 64,
                        "num_heads": -1, "use_temporal_resblock": False})
    with torch.device("meta"):
        sdxl_unet = UNetModel(**unet_config)
    shapes = {}
    for k, v in sdxl_unet.state_dict().items():
        if k.startswith(("time_embed.", "label_emb.", "input_blocks.", "middle_block.")):
            shapes["model.control_model." + k] = v.shape
    shapes["model.control_model.input_hint_block.0.weight"] = (320, 4, 3, 3)
    shapes["model.control_model.input_hint_block.0.bias"] = (320,)
    for i, spec in enumerate(xl_base_table()):
        p = f"model.diffusion_model.project_modules.{i}."
        if spec[0] == "sft":
            _, label, norm, concat = spec
            out = norm + concat
            shapes.update({p + "param_free_norm.weight": (out,), p + "param_free_norm.bias": (out,),
                           p + "mlp_shared.0.weight": (128, label, 3, 3), p + "mlp_shared.0.bias": (128,),
                           p + "zero_mul.weight": (out, 128, 3, 3), p + "zero_mul.bias": (out,),
                           p + "zero_add.weight": (out, 128, 3, 3), p + "zero_add.bias": (out,),
                           p + "zero_conv.weight": (norm, label, 1, 1), p + "zero_conv.bias": (norm,)})
        else:
            _, context, query = spec
            shapes.update({p + "attn.to_q.weight": (query, query), p + "attn.to_k.weight": (query, context),
                           p + "attn.to_v.weight": (query, context), p + "attn.to_out.0.weight": (query, query),
                           p + "attn.to_out.0.bias": (query,), p + "norm1.weight": (query,),
                           p + "norm1.bias": (query,), p + "norm2.weight": (context,), p + "norm2.bias": (context,)})
    sd = {k: torch.empty(s, device="meta", dtype=torch.float16) for k, s in shapes.items()}
    sd["model.control_model.mask_LQ"] = torch.empty(1, device="meta")
    from modules.supir import split_supir_state_dict

    adapter_sd, _ = split_supir_state_dict(sd)
    net = sm.build_adapter(unet_config, adapter_sd, torch.float16, device="meta")
    assert len(net.project_modules) == 12
    params = sum(v.numel() for v in net.state_dict().values())
    assert 1.2e9 < params < 1.4e9  # SUPIR's pruned fp16 file: 2.66 GB incl. the denoise encoder
    # an SD 2.1-sized UNet config (no adm) is refused
    sd21 = dict(unet_config, adm_in_channels=None, num_classes=None, context_dim=1024)
    with pytest.raises(ValueError, match="expected an SDXL model"):
        sm.build_adapter(sd21, adapter_sd, torch.float16, device="meta")
    assert comfy.model_detection is not None


def test_supir_conditioning_with_a_real_tokenizer(host, tiny, supir_files):
    p = graph(tiny)
    p["16"] = {"class_type": "AdaptBIRTest_TinyCLIP", "inputs": {"seed": 0}}
    p["17"] = {"class_type": "AdaptBIR_SUPIRConditioning", "inputs": {
        "clip": ["16", 0], "caption": "a cat. ", "positive_prompt": "sharp photo", "negative_prompt": "blurry"}}
    p["8"]["inputs"]["positive"], p["8"]["inputs"]["negative"] = ["17", 0], ["17", 1]
    p["18"] = {"class_type": "AdaptBIRTest_Sink", "inputs": {"value": ["17", 0]}}
    ex = host.run(p)
    (cond, opts), = host.output(ex, "17", 0)
    assert cond.shape[-1] == 64 and opts["pooled_output"].shape == (1, 64)
    assert {k: opts[k] for k in ("width", "height", "crop_w", "crop_h", "target_width", "target_height")} == {
        "width": 1024, "height": 1024, "crop_w": 0, "crop_h": 0, "target_width": 1024, "target_height": 1024}
    # positive = caption directly followed by the quality prompt, encoded by the same CLIP
    clip = tiny.tiny_clip(0)
    want = clip.encode_from_tokens_scheduled(clip.tokenize("a cat. sharp photo"))[0][0]
    torch.testing.assert_close(cond, want)
    assert torch.isfinite(host.output(ex, "8", 0)["samples"]).all()
    # a checkpoint loader without a text encoder hands over None
    with pytest.raises(ValueError, match="clip: expected a CLIP model"):
        host.node_class("AdaptBIR_SUPIRConditioning").execute(clip=None)


def test_supir_nodes_leave_their_inputs_alone(host, tiny, supir_files, lora_file):
    model, vae, clip = tiny.tiny_model("sdxl", 0), tiny.tiny_vae(0), tiny.tiny_clip(0)

    def state():
        return (dict(model.patches), repr(model.model_options), dict(model.wrappers),
                dict(model.additional_models), dict(clip.patcher.patches), repr(clip.patcher.model_options),
                {k: v.clone() for k, v in vae.get_sd().items()})

    before = state()
    loras = [{"name": lora_file, "strength_model": 1.0, "strength_clip": 1.0, "strength_adapter": 1.0}]
    m2, c2, _vae, supir, _stage1 = host.node_class("AdaptBIR_LoRASUPIRLoader").execute(
        model=model, vae=vae, supir_name=SUPIR_FILE, clip=clip, loras=loras).result
    m3, _latent, _condition = host.node_class("AdaptBIR_SUPIRApply").execute(
        model=m2, supir=supir, image=sample_images(1, 64, 64), restore_cfg=1.0).result
    host.node_class("AdaptBIR_SUPIRConditioning").execute(clip=c2)
    after = state()
    assert before[:6] == after[:6]
    assert all(torch.equal(before[6][k], after[6][k]) for k in before[6])
    assert m2 is not model and m3 is not m2 and m2.patches and not model.patches
    assert not m2.wrappers and m3.wrappers and supir.patcher.patches  # the adapter LoRA is on a clone


def custom_sampler_graph(tiny, steps=3):
    """SUPIR Apply -> SamplerCustom with SUPIR EDM Sampler and the 'normal' scheduler (node 8)."""
    p = graph(tiny)
    p["22"] = {"class_type": "AdaptBIR_SUPIRSampler", "inputs": {"s_churn": 5.0, "s_noise": 1.01}}
    p["23"] = {"class_type": "BasicScheduler", "inputs": {"model": ["6", 0], "scheduler": "normal", "steps": steps,
                                                          "denoise": 1.0}}
    p["8"] = {"class_type": "SamplerCustom", "inputs": {
        "model": ["6", 0], "add_noise": True, "noise_seed": 3, "cfg": 3.0, "positive": ["3", 0],
        "negative": ["4", 0], "sampler": ["22", 0], "sigmas": ["23", 0], "latent_image": ["6", 1]}}
    return p


def test_sampler_custom_progress_per_step_and_cancel_inside_a_step(host, tiny, supir_files, monkeypatch):
    import comfy.model_management
    import comfy.utils

    progress = []
    # what the sampler asks of ComfyUI's ProgressBar (newer hosts throttle what reaches the hook)
    update = comfy.utils.ProgressBar.update_absolute
    monkeypatch.setattr(comfy.utils.ProgressBar, "update_absolute", lambda self, value, total=None, *a, **k: (
        progress.append((value, self.total if total is None else total)), update(self, value, total, *a, **k))[1])
    out = sampled(host, custom_sampler_graph(tiny))
    assert torch.isfinite(out).all()
    assert [p for p in progress if p[1] == 3] == [(1, 3), (2, 3), (3, 3)]

    calls = []

    def interrupt_on_fourth():
        calls.append(1)
        if len(calls) == 4:
            raise comfy.model_management.InterruptProcessingException()

    monkeypatch.setattr(comfy.model_management, "throw_exception_if_processing_interrupted", interrupt_on_fourth)
    progress.clear()
    with pytest.raises(ExecutionFailed) as e:
        sampled(host, custom_sampler_graph(tiny, steps=4))
    assert any(ev == "execution_interrupted" for ev, _ in e.value.messages)
    assert not [p for p in progress if p[1] == 4]  # stopped inside the first step's adapter pass
