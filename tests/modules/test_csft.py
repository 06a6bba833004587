"""AdaptBIR's CSFT layers: key layout, checkpoint extraction, the formula, per-image weights and the schedule."""

from __future__ import annotations

import types

import pytest
import torch
import torch.nn.functional as F

from modules.csft import (
    CSFT,
    FuseSFTBlock,
    UpsampleLayer,
    csft_config_from_state_dict,
    csft_plan,
    csft_state_dict_from_checkpoint,
    csft_weights,
)

# A tiny UNet with SD 2.1's structure: 4 levels, 2 res blocks per level, widths 32/64/128/128.
TINY = {"model_channels": 32, "channel_mult": (1, 2, 4, 4), "num_res_blocks": 2, "sft_channels": 16,
        "num_groups": 8}
SD21_BLOCK_CHANNELS = [1280] * 7 + [640] * 3 + [320] * 3
SD21_UPSAMPLE = [(1280, 1280), (640, 1280), (320, 640)]  # (in, out), for output blocks 2, 5, 8


def seeded(module: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.2)
    return module


def tiny_csft(seed: int = 0) -> CSFT:
    return seeded(CSFT(**TINY), seed)


def unet_shapes(model_channels, channel_mult, num_res_blocks, latent_hw):
    """Shapes (C, H, W) of an SD-style UNet's input-block outputs, middle output and output-block outputs.

    Downsampling is a stride-2 3x3 conv with padding 1 (ceil(H / 2)); an output block that ends a level upsamples
    to the size of the skip tensor it will meet next, as ComfyUI's UNet does.
    """
    h, w = latent_hw
    inputs = [(model_channels, h, w)]
    sizes = [(h, w)]
    for level, mult in enumerate(channel_mult):
        for _ in range(num_res_blocks):
            inputs.append((model_channels * mult, h, w))
        if level != len(channel_mult) - 1:
            h, w = (h + 1) // 2, (w + 1) // 2
            inputs.append((model_channels * mult, h, w))
        sizes.append((h, w))
    middle = (model_channels * channel_mult[-1], h, w)
    outputs = []
    skips = list(inputs)
    for level in range(len(channel_mult) - 1, -1, -1):
        for i in range(num_res_blocks + 1):
            skips.pop()
            c = model_channels * channel_mult[level]
            if level and i == num_res_blocks:
                h, w = skips[-1][1:]
            outputs.append((c, h, w))
    return inputs, middle, outputs


# ------------------------------------------------------------------------------------------------------------------
# layout
# ------------------------------------------------------------------------------------------------------------------

def test_full_size_keys_and_shapes_match_adaptbir():
    model = CSFT(device="meta")
    expected = {}
    for i, c in enumerate(SD21_BLOCK_CHANNELS):
        p = f"cft_blocks.{i}."
        expected.update({p + "fd_norm.weight": (c,), p + "fd_norm.bias": (c,),
                         p + "mlp_shared.0.weight": (128, c, 3, 3), p + "mlp_shared.0.bias": (128,),
                         p + "scale.weight": (c, 128, 3, 3), p + "scale.bias": (c,),
                         p + "shift.weight": (c, 128, 3, 3), p + "shift.bias": (c,)})
    for j, (cin, cout) in enumerate(SD21_UPSAMPLE):
        expected.update({f"upsample_layers.{j}.conv.weight": (cout, cin, 3, 3),
                         f"upsample_layers.{j}.conv.bias": (cout,)})
    got = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    assert got == expected
    assert len(got) == 13 * 8 + 3 * 2
    assert sum(p.numel() for p in model.parameters()) == 64_932_864
    assert model.block_channels == tuple(SD21_BLOCK_CHANNELS)
    assert model.upsample_channels == tuple(SD21_UPSAMPLE)
    assert model.num_features == 13
    assert model.feature_channels() == (320,) * 4 + (640,) * 3 + (1280,) * 6
    norm = model.cft_blocks[0].fd_norm
    assert isinstance(norm, torch.nn.GroupNorm) and norm.num_groups == 32 and norm.eps == 1e-5 and norm.affine
    assert isinstance(model.cft_blocks[0].mlp_shared[1], torch.nn.ReLU)


def test_config_inferred_from_full_size_shapes():
    sd = CSFT(device="meta").state_dict()
    assert csft_config_from_state_dict(sd) == {"model_channels": 320, "channel_mult": (1, 2, 4, 4),
                                               "num_res_blocks": 2, "sft_channels": 128}
    tiny = tiny_csft().state_dict()
    cfg = csft_config_from_state_dict(tiny)
    assert cfg == {k: TINY[k] for k in ("model_channels", "channel_mult", "num_res_blocks", "sft_channels")}
    rebuilt = CSFT(**cfg, num_groups=8)
    rebuilt.load_state_dict(tiny, strict=True)


def test_operations_namespace_builds_the_layers():
    made = []

    class Conv2d(torch.nn.Conv2d):
        def __init__(self, *a, **k):
            super().__init__(*a, **k)
            made.append("conv")

        def forward(self, x):  # casts its weights to the input like ComfyUI's manual-cast ops
            return F.conv2d(x, self.weight.to(x.dtype), self.bias.to(x.dtype), self.stride, self.padding)

    class GroupNorm(torch.nn.GroupNorm):
        def __init__(self, *a, **k):
            super().__init__(*a, **k)
            made.append("norm")

        def forward(self, x):
            return F.group_norm(x, self.num_groups, self.weight.to(x.dtype), self.bias.to(x.dtype), self.eps)

    ops = types.SimpleNamespace(Conv2d=Conv2d, GroupNorm=GroupNorm)
    model = seeded(CSFT(**TINY, operations=ops))
    assert made.count("norm") == 13 and made.count("conv") == 13 * 3 + 3
    assert all(isinstance(b.fd_norm, GroupNorm) for b in model.cft_blocks)
    # fp32 weights, bf16 features: the casting ops make it run; the result keeps h's dtype.
    h, fc = torch.randn(2, 32, 8, 8).bfloat16(), torch.randn(2, 32, 8, 8)
    out = model.cft_blocks[-1](h, fc, 1.0)
    assert out.dtype == torch.bfloat16 and out.shape == h.shape
    ref = model.cft_blocks[-1](h.float(), fc, 1.0)
    torch.testing.assert_close(out.float(), ref, rtol=0.05, atol=0.1)


# ------------------------------------------------------------------------------------------------------------------
# checkpoints
# ------------------------------------------------------------------------------------------------------------------

def lightning_checkpoint(csft_sd: dict) -> dict:
    sd = {f"model.diffusion_model.{k}": v for k, v in csft_sd.items()}
    sd.update({
        "model.diffusion_model.input_blocks.0.0.weight": torch.zeros(32, 4, 3, 3),
        "model.diffusion_model.output_blocks.2.2.conv.weight": torch.zeros(128, 128, 3, 3),
        "control_model.zero_convs.0.0.weight": torch.zeros(32, 32, 1, 1),
        "control_model.input_blocks.0.0.weight": torch.zeros(32, 8, 3, 3),
        "first_stage_model.post_quant_conv.weight": torch.zeros(4, 4, 1, 1),
        "preprocess_model.encoder.conv_in.weight": torch.zeros(8, 3, 3, 3),
        "musiq_model.net.head.weight": torch.zeros(1, 4),
        "betas": torch.zeros(1000),
    })
    return {"epoch": 3, "global_step": 500, "state_dict": sd}


def test_load_from_lightning_checkpoint_strict():
    source = tiny_csft(seed=1)
    ckpt = lightning_checkpoint(source.state_dict())
    extracted = csft_state_dict_from_checkpoint(ckpt)
    target = CSFT(**TINY)
    assert set(extracted) == set(target.state_dict())
    result = target.load_state_dict(extracted, strict=True)
    assert not result.missing_keys and not result.unexpected_keys
    for k, v in source.state_dict().items():
        assert torch.equal(target.state_dict()[k], v)
    # unwrapped, DDP-prefixed, ComfyUI-style and flat dicts all give the same keys
    inner = ckpt["state_dict"]
    for variant in (inner, {f"module.{k}": v for k, v in inner.items()},
                    {f"diffusion_model.{k}": v for k, v in source.state_dict().items()}, source.state_dict()):
        assert set(csft_state_dict_from_checkpoint(variant)) == set(extracted)
    assert csft_config_from_state_dict(ckpt)["model_channels"] == 32


def test_full_size_checkpoint_on_meta_loads_strict():
    full = CSFT(device="meta")
    ckpt = lightning_checkpoint({k: torch.empty(v.shape, device="meta") for k, v in full.state_dict().items()})
    extracted = csft_state_dict_from_checkpoint(ckpt)
    assert sorted(extracted) == sorted(full.state_dict())
    full.load_state_dict(extracted, strict=True, assign=True)


def test_checkpoint_without_csft_says_what_it_found():
    stage2 = lightning_checkpoint({})
    with pytest.raises(ValueError, match=r"sd: expected AdaptBIR CSFT weights.*found a ControlLDM checkpoint"):
        csft_state_dict_from_checkpoint(stage2)
    with pytest.raises(ValueError, match=r"found an IRControlNet alone"):
        csft_state_dict_from_checkpoint({"zero_convs.0.0.weight": torch.zeros(1)})
    with pytest.raises(ValueError, match=r"found 1 tensors with top-level names encoder"):
        csft_state_dict_from_checkpoint({"encoder.conv_in.weight": torch.zeros(1)})
    with pytest.raises(ValueError, match=r"found no tensors"):
        csft_state_dict_from_checkpoint({})
    with pytest.raises(ValueError, match=r"sd: expected a state dict.*found list"):
        csft_state_dict_from_checkpoint([])


def test_config_rejects_inconsistent_shapes():
    sd = dict(tiny_csft().state_dict())
    broken = dict(sd)
    broken["upsample_layers.1.conv.weight"] = torch.zeros(128, 32, 3, 3)
    with pytest.raises(ValueError, match=r"upsample_layers.1.conv.weight of shape \(128, 64, 3, 3\), found"):
        csft_config_from_state_dict(broken)
    broken = dict(sd)
    del broken["cft_blocks.4.shift.bias"]
    with pytest.raises(ValueError, match=r"cft_blocks.4.shift.bias"):
        csft_config_from_state_dict(broken)
    broken = dict(sd)
    broken["cft_blocks.5.fd_norm.weight"] = torch.zeros(7)
    with pytest.raises(ValueError, match=r"cft_blocks.5.fd_norm.weight of shape \(128,\), found \(7,\)"):
        csft_config_from_state_dict(broken)
    broken = {k: v for k, v in sd.items() if not k.startswith("cft_blocks.12.")}
    with pytest.raises(ValueError, match=r"found 12 cft_blocks"):
        csft_config_from_state_dict(broken)


# ------------------------------------------------------------------------------------------------------------------
# the block
# ------------------------------------------------------------------------------------------------------------------

def hand_fuse(block: FuseSFTBlock, h, fc, w, groups):
    """F + w * (GroupNorm(F) * alpha + beta) written out: biased variance, eps 1e-5, per-channel affine."""
    conv1, conv_a, conv_b = block.mlp_shared[0], block.scale, block.shift
    a = F.conv2d(fc, conv1.weight, conv1.bias, padding=1).clamp_min(0)
    alpha = F.conv2d(a, conv_a.weight, conv_a.bias, padding=1)
    beta = F.conv2d(a, conv_b.weight, conv_b.bias, padding=1)
    b, c, hh, ww = h.shape
    x = h.reshape(b, groups, -1)
    mean = x.mean(dim=2, keepdim=True)
    var = ((x - mean) ** 2).mean(dim=2, keepdim=True)
    normed = ((x - mean) / torch.sqrt(var + 1e-5)).reshape(b, c, hh, ww)
    normed = normed * block.fd_norm.weight.view(1, c, 1, 1) + block.fd_norm.bias.view(1, c, 1, 1)
    return h + torch.as_tensor(w, dtype=h.dtype).reshape(-1, 1, 1, 1) * (normed * alpha + beta)


def test_formula_against_hand_computation():
    torch.manual_seed(0)
    block = seeded(FuseSFTBlock(16, sft_channels=8, num_groups=4), seed=3)
    h = torch.randn(2, 16, 5, 6, dtype=torch.float64) * 3 + 1
    fc = torch.randn(2, 16, 5, 6, dtype=torch.float64)
    block = block.double()
    for w in (1.0, 0.35, [0.2, 0.9]):
        torch.testing.assert_close(block(h, fc, w), hand_fuse(block, h, fc, w, groups=4), rtol=1e-10, atol=1e-10)


def test_default_block_uses_32_groups():
    block = seeded(FuseSFTBlock(64, sft_channels=8), seed=4)
    h, fc = torch.randn(1, 64, 4, 4), torch.randn(1, 64, 4, 4)
    torch.testing.assert_close(block(h, fc, 1.0), hand_fuse(block, h, fc, 1.0, groups=32), rtol=1e-5, atol=1e-5)
    assert not torch.allclose(block(h, fc, 1.0), hand_fuse(block, h, fc, 1.0, groups=16), rtol=1e-3, atol=1e-3)


def test_w_zero_returns_h_itself():
    block = seeded(FuseSFTBlock(16, sft_channels=8, num_groups=4))
    h, fc = torch.randn(3, 16, 4, 4), torch.randn(3, 16, 4, 4)
    for w in (0, 0.0, torch.tensor(0.0), torch.zeros(3), [0.0, 0.0, 0.0], torch.zeros(3, 1, 1, 1)):
        assert block(h, fc, w) is h
    model = tiny_csft()
    inputs, middle, outputs = unet_shapes(32, (1, 2, 4, 4), 2, (16, 16))
    feats = [torch.randn(2, *s) for s in inputs] + [torch.randn(2, *middle)]
    for index, shape in enumerate([middle] + outputs):
        hh = torch.randn(2, *shape)
        assert model.modulate(index, hh, feats, 0.0) is hh


def test_per_image_w():
    block = seeded(FuseSFTBlock(16, sft_channels=8, num_groups=4), seed=5)
    h, fc = torch.randn(3, 16, 4, 4), torch.randn(3, 16, 4, 4)
    h[0, 0, 0, 0] = -0.0  # adding 0.0 would turn it into +0.0: the w == 0 image must stay bit-identical
    out = block(h, fc, torch.tensor([0.0, 0.5, 1.0]))
    assert torch.equal(out[0], h[0]) and torch.signbit(out[0, 0, 0, 0])
    full = block(h, fc, 1.0)
    for b, wb in ((1, 0.5), (2, 1.0)):
        torch.testing.assert_close(out[b:b + 1], block(h[b:b + 1], fc[b:b + 1], wb))
    torch.testing.assert_close(out[1] - h[1], 0.5 * (full[1] - h[1]))
    # AdaptBIR's own (B, 1, 1, 1) layout and a single-element tensor broadcast
    torch.testing.assert_close(block(h, fc, torch.tensor([0.0, 0.5, 1.0]).view(3, 1, 1, 1)), out)
    torch.testing.assert_close(block(h, fc, torch.tensor([1.0])), full)


def test_low_precision_weights_keep_dtype():
    block = seeded(FuseSFTBlock(16, sft_channels=8, num_groups=4), seed=6)
    h, fc = torch.randn(2, 16, 4, 4), torch.randn(2, 16, 4, 4)
    ref = block(h, fc, 0.7)
    low = block.to(torch.bfloat16)
    out = low(h.bfloat16(), fc.bfloat16(), 0.7)
    assert out.dtype == torch.bfloat16
    torch.testing.assert_close(out.float(), ref, rtol=0.1, atol=0.1)


def test_upsample_layer():
    up = seeded(UpsampleLayer(8, 16), seed=7)
    x = torch.randn(2, 8, 3, 5)
    near = x.repeat_interleave(2, dim=2).repeat_interleave(2, dim=3)
    torch.testing.assert_close(up(x), F.conv2d(near, up.conv.weight, up.conv.bias, padding=1))
    assert torch.equal(up(x, output_size=(6, 10)), up(x))
    assert up(x, output_size=(5, 9)).shape == (2, 16, 5, 9)


# ------------------------------------------------------------------------------------------------------------------
# the schedule
# ------------------------------------------------------------------------------------------------------------------

def test_plan_matches_adaptbir_schedule():
    plan = csft_plan()
    assert len(plan) == 13
    assert (plan[0].block, plan[0].output_block, plan[0].feature, plan[0].upsample, plan[0].skip) == \
        (0, None, 12, None, None)
    assert "middle control residual" in plan[0].where
    expected_up = {2: 0, 5: 1, 8: 2}
    for i in range(12):
        step = plan[i + 1]
        assert (step.block, step.output_block, step.feature, step.skip) == (i + 1, i, 11 - i, 11 - i)
        assert step.upsample == expected_up.get(i)
        assert ("after its Upsample" in step.where) == (i in expected_up)
    assert csft_plan(12, 2) == plan and tuple(plan) == CSFT(device="meta").plan
    # other layouts: 3 levels of 1 res block -> 6 input blocks, upsample after output blocks 1 and 3
    small = csft_plan(6, 1)
    assert [s.feature for s in small] == [6, 5, 4, 3, 2, 1, 0]
    assert [s.upsample for s in small] == [None, None, 0, None, 1, None, None]


def test_modulation_through_the_plan_aligns_resolutions():
    model = tiny_csft(seed=8)
    inputs, middle, outputs = unet_shapes(32, (1, 2, 4, 4), 2, (64, 64))
    # the shapes mirror SD 2.1 on a 64x64 latent (channels / 10)
    assert [s[1] for s in inputs] == [64] * 3 + [32] * 3 + [16] * 3 + [8] * 3
    assert [s[0] for s in inputs] == [32] * 4 + [64] * 3 + [128] * 5
    assert [s[1:] for s in outputs] == [(8, 8)] * 2 + [(16, 16)] * 3 + [(32, 32)] * 3 + [(64, 64)] * 4
    assert [s[0] for s in outputs] == [128] * 6 + [64] * 3 + [32] * 3
    feats = [torch.randn(2, *s) for s in inputs] + [torch.randn(2, *middle)]
    kept = list(feats)
    w = torch.tensor([0.6, 1.0])
    for index, shape in enumerate([middle] + outputs):
        h = torch.randn(2, *shape)
        out = model.modulate(index, h, feats, w)
        assert out.shape == h.shape and not torch.equal(out, h)
        step = model.plan[index]
        f = feats[step.feature]
        if step.upsample is not None:
            assert f.shape[2] * 2 == h.shape[2]
            f = model.upsample_layers[step.upsample](f)
        torch.testing.assert_close(out, model.cft_blocks[index](h, f, w))
    assert all(a is b for a, b in zip(feats, kept)) and len(feats) == 13


def test_sizes_that_are_not_multiples_of_eight():
    model = tiny_csft(seed=9)
    inputs, middle, outputs = unet_shapes(32, (1, 2, 4, 4), 2, (60, 44))
    assert inputs[-1][1:] == (8, 6) and outputs[2][1:] == (15, 11)
    feats = [torch.randn(1, *s) for s in inputs] + [torch.randn(1, *middle)]
    for index, shape in enumerate([middle] + outputs):
        h = torch.randn(1, *shape)
        assert model.modulate(index, h, feats, 1.0).shape == h.shape


def test_plan_reproduces_adaptbirs_pop_based_forward():
    """The decoder loop written the way AdaptBIR's stage-3 forward is (popping features off the end, upsampling the
    last one in place after every third output block), against the same loop driven by csft_plan/modulate."""
    torch.manual_seed(0)
    model = tiny_csft(seed=10)
    inputs, middle, outputs = unet_shapes(32, (1, 2, 4, 4), 2, (32, 32))
    b = 2
    feats = [torch.randn(b, *s) for s in inputs] + [torch.randn(b, *middle)]
    skips = [torch.randn(b, *s) for s in inputs]
    ctrl = [torch.randn(b, *s) * 0.1 for s in inputs] + [torch.randn(b, *middle) * 0.1]
    mid_h = torch.randn(b, *middle)
    w = torch.tensor([0.8, 0.45])
    # stand-in output blocks: 1x1 projection of cat(h, skip) to the block's width, then nearest upsample if it ends
    # a level
    prev = [middle[0]] + [s[0] for s in outputs[:-1]]
    proj = [torch.randn(o[0], p + s[0], 1, 1) * 0.1 for o, p, s in zip(outputs, prev, reversed(inputs))]

    def output_block(i, h, skip):
        h = F.conv2d(torch.cat([h, skip], dim=1), proj[i])
        return F.interpolate(h, size=outputs[i][1:], mode="nearest") if h.shape[2:] != outputs[i][1:] else h

    # AdaptBIR-style
    hs, cs, fs = list(skips), list(ctrl), list(feats)
    h = mid_h + cs.pop()
    h = model.cft_blocks[0](h, fs.pop(), w)
    ups = 0
    for i in range(12):
        h = output_block(i, h, hs.pop() + cs.pop())
        if (i + 1) % 3 == 0 and i != 11:
            fs[-1] = model.upsample_layers[ups](fs[-1])
            ups += 1
        h = model.cft_blocks[i + 1](h, fs.pop(), w)
    reference = h
    # plan-driven
    plan = csft_plan()
    h = model.modulate(0, mid_h + ctrl[12], feats, w)
    for i in range(12):
        step = plan[i + 1]
        h = output_block(i, h, skips[step.skip] + ctrl[step.skip])
        h = model.modulate(i + 1, h, feats, w)
    assert torch.equal(h, reference)


# ------------------------------------------------------------------------------------------------------------------
# bad arguments
# ------------------------------------------------------------------------------------------------------------------

def test_bad_constructor_arguments():
    with pytest.raises(ValueError, match=r"channels: expected a multiple of num_groups=32, found 48"):
        FuseSFTBlock(48)
    with pytest.raises(ValueError, match=r"channel_mult: expected a non-empty sequence of ints >= 1, found \(\)"):
        CSFT(channel_mult=())
    with pytest.raises(ValueError, match=r"channel_mult: .*found \(1, 2.5\)"):
        CSFT(channel_mult=(1, 2.5))
    with pytest.raises(ValueError, match=r"model_channels: expected an int >= 1, found 0"):
        CSFT(model_channels=0)
    with pytest.raises(ValueError, match=r"num_res_blocks: expected an int >= 1, found True"):
        CSFT(num_res_blocks=True)
    with pytest.raises(ValueError, match=r"operations: .*without GroupNorm"):
        CSFT(**TINY, operations=types.SimpleNamespace(Conv2d=torch.nn.Conv2d))
    with pytest.raises(ValueError, match=r"in_channels: expected an int >= 1, found -1"):
        UpsampleLayer(-1, 4)
    with pytest.raises(ValueError, match=r"num_input_blocks: expected a multiple of num_res_blocks \+ 1 = 3, found 10"):
        csft_plan(10)
    with pytest.raises(ValueError, match=r"num_input_blocks: expected an int >= 3, found 0"):
        csft_plan(0)


def test_bad_forward_arguments():
    model = tiny_csft()
    block = model.cft_blocks[-1]
    h, fc = torch.randn(2, 32, 8, 8), torch.randn(2, 32, 8, 8)
    with pytest.raises(ValueError, match=r"w: expected 1 or 2 values \(one per image\), found 3"):
        block(h, fc, [1.0, 0.5, 0.2])
    with pytest.raises(ValueError, match=r"w: expected finite values, found \[nan, 1.0\]"):
        block(h, fc, [float("nan"), 1.0])
    with pytest.raises(ValueError, match=r"w: expected a number.*found str"):
        block(h, fc, "strong")
    with pytest.raises(ValueError, match=r"w: expected a number or 1 or 2 numbers, found a boolean"):
        block(h, fc, True)
    with pytest.raises(ValueError, match=r"control_feature: expected 32 channels, found shape \(2, 64, 8, 8\)"):
        block(h, torch.randn(2, 64, 8, 8), 1.0)
    with pytest.raises(ValueError, match=r"control_feature: expected the batch size and spatial size of h"):
        block(h, torch.randn(2, 32, 4, 4), 1.0)
    with pytest.raises(ValueError, match=r"h: expected a 4-D floating tensor"):
        block(torch.randn(32, 8, 8), fc, 1.0)
    with pytest.raises(ValueError, match=r"h: expected a 4-D floating tensor"):
        block(torch.ones(2, 32, 8, 8, dtype=torch.long), fc, 1.0)
    inputs, middle, outputs = unet_shapes(32, (1, 2, 4, 4), 2, (32, 32))
    feats = [torch.randn(2, *s) for s in inputs] + [torch.randn(2, *middle)]
    with pytest.raises(ValueError, match=r"index: expected an int in \[0, 12\], found 13"):
        model.modulate(13, h, feats, 1.0)
    with pytest.raises(ValueError, match=r"features: expected 13 control features .*found 12"):
        model.modulate(0, torch.randn(2, *middle), feats[:12], 1.0)
    with pytest.raises(ValueError, match=r"features: expected a list of 13 tensors, found Tensor"):
        model.modulate(0, torch.randn(2, *middle), torch.randn(13, 2), 1.0)
    # output block 2's feature (input block 9) must be half the size of h
    bad = list(feats)
    bad[9] = torch.randn(2, 128, 8, 8)
    with pytest.raises(ValueError, match=r"features\[9\]: expected batch 2 and spatial size \(4, 4\) for CSFT step 3"):
        model.modulate(3, torch.randn(2, *outputs[2]), bad, 1.0)
    with pytest.raises(ValueError, match=r"h: expected 64 channels"):
        model.modulate(7, torch.randn(2, 128, 16, 16), feats, 1.0)
    with pytest.raises(ValueError, match=r"output_size: expected None or two ints"):
        model.upsample_layers[0](torch.randn(1, 128, 2, 2), output_size=(4,))


def test_csft_weights_normalisation():
    assert csft_weights(0.5, 3).tolist() == [0.5, 0.5, 0.5]
    assert csft_weights(torch.tensor([[0.1], [0.2]]), 2).dtype == torch.float64
    assert csft_weights([1, 0], 2).tolist() == [1.0, 0.0]
