"""SUPIR's connectors in pure torch: SUPIR's XL-base layout, the ZeroSFT / ZeroCrossAttn formulas, the sampling
formulas and the checkpoint key handling, against closed forms written out here."""

import math

import pytest
import torch
import torch.nn.functional as F

from modules.supir import (
    SUPIRConnectors,
    ZeroCrossAttn,
    ZeroSFT,
    linear_in_sigma,
    restore_toward_center,
    split_supir_state_dict,
    supir_layout,
)

# SUPIR_v0.py, LightGLVUNet(mode='XL-base', project_channel_scale=2): the ten ZeroSFT(label_nc, norm_nc, concat)
# in construction order, then ZeroCrossAttn(cond_output_channels[i], concat_channels[i]) inserted at 6, then 3.
XL_COND = [320] * 4 + [640] * 3 + [1280] * 3
XL_PROJECT = [2 * c for c in [160] * 4 + [320] * 3 + [640] * 3]
XL_CONCAT = [320] * 2 + [640] * 3 + [1280] * 4 + [0]


def xl_base_table():
    mods = [("sft", XL_PROJECT[i], XL_COND[i], XL_CONCAT[i]) for i in range(10)]
    for i in (6, 3):
        mods.insert(i, ("xattn", XL_COND[i], XL_CONCAT[i]))
    return mods


def test_sdxl_layout_matches_supir_xl_base_construction():
    layout = supir_layout(320, (1, 2, 4), 2)
    net = SUPIRConnectors(layout, device="meta")
    table = xl_base_table()
    assert len(net.project_modules) == len(table) == 12
    for idx, (mod, want) in enumerate(zip(net.project_modules, table)):
        if want[0] == "sft":
            _, label, norm, concat = want
            assert isinstance(mod, ZeroSFT), idx
            assert tuple(mod.mlp_shared[0].weight.shape) == (128, label, 3, 3)
            assert tuple(mod.zero_conv.weight.shape) == (norm, label, 1, 1)
            assert tuple(mod.zero_mul.weight.shape) == (norm + concat, 128, 3, 3)
            assert tuple(mod.param_free_norm.weight.shape) == (norm + concat,)
        else:
            _, context, query = want
            assert isinstance(mod, ZeroCrossAttn), idx
            assert tuple(mod.attn.to_q.weight.shape) == (query, query)
            assert tuple(mod.attn.to_k.weight.shape) == (query, context)
            assert mod.attn.heads == query // 64
    # forward order of LightGLVUNet: middle = 11, output block j = 0..8 -> ZeroSFT 10,9,8,6,5,4,2,1,0, cross-attn
    # before the Upsample of blocks 2 (index 7) and 5 (index 3)
    assert net.mid_index == 11
    assert net.sft_index == (10, 9, 8, 6, 5, 4, 2, 1, 0)
    assert net.xattn_index == {2: 7, 5: 3}
    assert layout.upsample_blocks == (2, 5)


def _gn(x, norm):
    return F.group_norm(x.float(), 32, norm.weight.float(), norm.bias.float(), 1e-5)


def _randomise(module, seed):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.1)


def test_zero_sft_formula_scale_and_zero_init():
    torch.manual_seed(0)
    sft = ZeroSFT(32, 32, 64)
    _randomise(sft, 1)
    c, skip, dec = torch.randn(2, 32, 6, 5), torch.randn(2, 32, 6, 5), torch.randn(2, 64, 6, 5)
    raw = torch.cat([dec, skip], 1)
    m = torch.cat([dec, skip + sft.zero_conv(c)], 1)
    a = F.silu(sft.mlp_shared[0](c))
    full = _gn(m, sft.param_free_norm) * (1 + sft.zero_mul(a)) + sft.zero_add(a)
    for s in (1.0, 0.7):
        torch.testing.assert_close(sft(c, skip, dec, scale=s), s * full + (1 - s) * raw, atol=1e-5, rtol=1e-5)
    per_image = torch.tensor([1.0, 0.0])
    out = sft(c, skip, dec, scale=per_image)
    torch.testing.assert_close(out[0], full[0], atol=1e-5, rtol=1e-5)
    assert torch.equal(out[1], raw[1])
    assert torch.equal(sft(c, skip, dec, scale=0.0), raw)
    # freshly initialised (zero convolutions): SUPIR still normalises the raw concatenation (not the identity)
    with torch.no_grad():
        for conv in (sft.zero_conv, sft.zero_mul, sft.zero_add):
            conv.weight.zero_()
            conv.bias.zero_()
    torch.testing.assert_close(sft(c, skip, dec), _gn(raw, sft.param_free_norm), atol=1e-5, rtol=1e-5)
    with pytest.raises(ValueError, match="h_dec"):
        sft(c, skip)


def test_middle_zero_sft_has_no_concatenation():
    sft = ZeroSFT(64, 64, 0)
    _randomise(sft, 2)
    c, h = torch.randn(1, 64, 4, 4), torch.randn(1, 64, 4, 4)
    a = F.silu(sft.mlp_shared[0](c))
    want = _gn(h + sft.zero_conv(c), sft.param_free_norm) * (1 + sft.zero_mul(a)) + sft.zero_add(a)
    torch.testing.assert_close(sft(c, h), want, atol=1e-5, rtol=1e-5)


def test_zero_cross_attn_formula():
    xa = ZeroCrossAttn(32, 128)
    _randomise(xa, 3)
    x, c = torch.randn(2, 128, 4, 3), torch.randn(2, 32, 4, 3)
    q = xa.attn.to_q(_gn(x, xa.norm1).flatten(2).transpose(1, 2))
    kv = _gn(c, xa.norm2).flatten(2).transpose(1, 2)
    k, v = xa.attn.to_k(kv), xa.attn.to_v(kv)
    heads = 2
    qh, kh, vh = (t.reshape(2, -1, heads, 64).transpose(1, 2) for t in (q, k, v))
    att = torch.softmax(qh @ kh.transpose(-1, -2) / math.sqrt(64), dim=-1) @ vh
    att = xa.attn.to_out(att.transpose(1, 2).reshape(2, -1, 128))
    want = x + 0.5 * att.transpose(1, 2).reshape(2, 128, 4, 3)
    torch.testing.assert_close(xa(c, x, scale=0.5), want, atol=1e-5, rtol=1e-5)
    assert xa(c, x, scale=0.0) is x


def test_linear_schedules_and_restore_cfg_closed_forms():
    sigma_max = 14.6146
    sig = torch.tensor([sigma_max, 7.3073, 0.0])
    # control scale: SUPIR's (sigma / sigma_max) * (start - s_stage2) + s_stage2
    torch.testing.assert_close(linear_in_sigma(sig, sigma_max, 0.0, 1.0), torch.tensor([0.0, 0.5, 1.0]))
    # CFG: (start - end) * sigma / 14.6146 + end
    torch.testing.assert_close(linear_in_sigma(sig, sigma_max, 1.0, 7.5), torch.tensor([1.0, 4.25, 7.5]))
    d, centre = torch.full((1, 4, 2, 2), 3.0), torch.full((1, 4, 2, 2), 1.0)
    out = restore_toward_center(d, centre, torch.tensor([7.3073]), sigma_max, 2.0)
    torch.testing.assert_close(out, torch.full_like(d, 3.0 - 2.0 * 0.25))
    torch.testing.assert_close(restore_toward_center(d, centre, sigma_max, sigma_max, 4.0), centre)


def test_split_supir_state_dict_layouts():
    t = torch.zeros(1)
    original = {"model.control_model.input_blocks.0.0.weight": t, "model.control_model.mask_LQ": t,
                "model.diffusion_model.project_modules.0.zero_conv.weight": t,
                "model.diffusion_model.input_blocks.0.0.weight": t,  # SDXL weights a full checkpoint carries
                "first_stage_model.denoise_encoder.conv_in.weight": t, "first_stage_model.decoder.conv_in.weight": t,
                "conditioner.embedders.0.x": t}
    adapter, enc = split_supir_state_dict({"state_dict": original})
    assert set(adapter) == {"control_model.input_blocks.0.0.weight", "project_modules.0.zero_conv.weight"}
    assert set(enc) == {"conv_in.weight"}
    bare = {"control_model.input_blocks.0.0.weight": t, "project_modules.0.zero_conv.weight": t}
    assert set(split_supir_state_dict(bare)[0]) == set(bare)
    with pytest.raises(ValueError, match="expected SUPIR weights"):
        split_supir_state_dict({"model.diffusion_model.input_blocks.0.0.weight": t})
