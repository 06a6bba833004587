"""DiffBIR's stage-1 SwinIR (modules/swinir.py): shapes, padding, DiffBIR's key layout, config inference."""

import pytest
import torch
import torch.nn.functional as F

from modules.swinir import (DIFFBIR_SWINIR_CONFIG, RGB_MEAN, SwinIR, build_swinir, is_diffbir_swinir_keys,
                            normalize_swinir_state_dict, relative_position_index, shifted_window_mask,
                            swinir_config_from_state_dict)

# window 4 x unshuffle 2 -> sizes padded to multiples of 8; heads differ per group to test their inference
TINY = {"embed_dim": 12, "depths": (2, 3), "num_heads": (2, 3), "window_size": 4, "mlp_ratio": 2.0,
        "unshuffle_scale": 2, "in_chans": 3, "num_feat": 16, "img_size": 8, "resi_connection": "1conv",
        "patch_norm": True, "qkv_bias": True}


def seeded(net: torch.nn.Module, seed=0, scale=0.2) -> torch.nn.Module:
    """Random (non-default) weights, so that the bias tables, norms and biases all matter."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in net.named_parameters():
            noise = torch.randn(p.shape, generator=g)
            p.copy_(1.0 + 0.1 * noise if "norm" in name and name.endswith("weight") else scale * noise)
    return net.eval()


@pytest.fixture(scope="module")
def tiny():
    torch.manual_seed(0)
    return seeded(SwinIR(**TINY))


@pytest.mark.parametrize("shape", [(1, 3, 13, 21), (2, 3, 8, 8), (1, 3, 1, 1), (1, 3, 9, 30), (1, 3, 40, 17)])
def test_output_has_the_input_shape_for_any_size(tiny, shape):
    x = torch.rand(shape, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        y = tiny(x)
    assert y.shape == x.shape and y.dtype == x.dtype and bool(torch.isfinite(y).all())


def test_sizes_are_zero_padded_to_window_times_unshuffle_then_cropped(tiny):
    assert tiny.pad_multiple == 8 and SwinIR(device="meta").pad_multiple == 64
    x = torch.rand(1, 3, 13, 21, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        y = tiny(x)
        ref = tiny(F.pad(x, (0, 3, 0, 3)))[:, :, :13, :21]  # DiffBIR: pad_to_multiples_of(lq, 64), constant 0
        rep = tiny(x, pad_mode="replicate")
        ref_rep = tiny(F.pad(x, (0, 3, 0, 3), mode="replicate"))[:, :, :13, :21]
    assert torch.equal(y, ref)
    assert torch.equal(rep, ref_rep) and not torch.equal(rep, y)


def test_input_is_not_modified_and_batch_items_are_independent(tiny):
    x = torch.rand(2, 3, 16, 8, generator=torch.Generator().manual_seed(3))
    before = x.clone()
    with torch.no_grad():
        both = tiny(x)
        one = tiny(x[1:])
    assert torch.equal(x, before)
    assert torch.allclose(both[1:], one, rtol=1e-4, atol=1e-4)


def test_zero_network_returns_the_input_mean_image():
    # with every conv/linear zeroed, the output is the RGB mean DiffBIR adds back (input range [0, 1])
    net = SwinIR(**TINY)
    with torch.no_grad():
        net.conv_last.weight.zero_()
        net.conv_last.bias.zero_()
        y = net(torch.rand(1, 3, 8, 8))
    assert torch.allclose(y, torch.tensor(RGB_MEAN).view(1, 3, 1, 1).expand(1, 3, 8, 8))


@pytest.mark.filterwarnings("ignore:torch.meshgrid")
def test_matches_spandrels_independent_swinir_in_float64(tiny):
    # spandrel's SwinIR with start_unshuffle + nearest+conv is the same network with `conv_first.weight` instead of
    # DiffBIR's `conv_first.1.weight`; its attention and shifted-window code is independent of ours.
    pytest.importorskip("spandrel")
    from spandrel.architectures.SwinIR.__arch.SwinIR import SwinIR as SpandrelSwinIR

    cfg = dict(TINY, num_feat=64)  # spandrel fixes the upsampler width at 64
    ours = seeded(SwinIR(**cfg), seed=5).double()
    ref = SpandrelSwinIR(img_size=cfg["img_size"], patch_size=1, in_chans=3, embed_dim=cfg["embed_dim"],
                         depths=list(cfg["depths"]), num_heads=list(cfg["num_heads"]), window_size=4,
                         mlp_ratio=2.0, upscale=2, upsampler="nearest+conv", start_unshuffle=2).eval().double()
    sd = {k.replace("conv_first.1.", "conv_first."): v for k, v in ours.state_dict().items()}
    assert set(sd) == set(ref.state_dict())  # same names, buffers included
    ref.load_state_dict(sd, strict=True)
    for shape in [(2, 3, 16, 24), (1, 3, 16, 16), (1, 3, 32, 8)]:  # multiples of 8: spandrel pads differently
        x = torch.rand(shape, dtype=torch.float64, generator=torch.Generator().manual_seed(6))
        with torch.no_grad():
            a, b = ours(x), ref(x)
        assert (a - b).abs().max() <= 1e-9 * max(1.0, b.abs().max().item())


def test_bfloat16_forward_runs(tiny):
    net = SwinIR(**TINY, dtype=torch.bfloat16)
    net.load_state_dict(tiny.state_dict())
    x = torch.rand(1, 3, 12, 12, generator=torch.Generator().manual_seed(4))
    with torch.no_grad():
        y = net(x.bfloat16())
        ref = tiny(x)
    assert y.dtype == torch.bfloat16 and (y.float() - ref).abs().max() < 0.25 * ref.abs().max()


@pytest.mark.parametrize("bad", [torch.rand(1, 4, 8, 8), torch.rand(3, 8, 8),
                                 torch.zeros(1, 3, 8, 8, dtype=torch.int64)])
def test_bad_input_is_refused(tiny, bad):
    with pytest.raises(ValueError, match="x: expected"):
        tiny(bad)


# ------------------------------------------------------------------------------------------------ DiffBIR layout


@pytest.fixture(scope="module")
def full_meta():
    return SwinIR(device="meta")  # DiffBIR's config, nothing allocated


def test_full_model_builds_on_meta_without_allocating(full_meta):
    sd = full_meta.state_dict()
    assert all(t.is_meta for t in sd.values())
    assert len(sd) == 8 * (3 * 14 + 3 * 15 + 2) + 20 == 732
    assert sum(p.numel() for p in full_meta.parameters()) == 15_792_587


@pytest.mark.parametrize("key,shape", [
    ("conv_first.1.weight", (180, 3 * 64, 3, 3)),  # pixel-unshuffle x8: 3 * 8 * 8 = 192 input channels
    ("conv_first.1.bias", (180,)),
    ("patch_embed.norm.weight", (180,)),
    ("layers.0.residual_group.blocks.0.norm1.weight", (180,)),
    ("layers.0.residual_group.blocks.0.attn.relative_position_bias_table", (225, 6)),  # (2*8-1)^2 rows, 6 heads
    ("layers.0.residual_group.blocks.0.attn.relative_position_index", (64, 64)),
    ("layers.0.residual_group.blocks.0.attn.qkv.weight", (540, 180)),
    ("layers.0.residual_group.blocks.0.attn.qkv.bias", (540,)),
    ("layers.0.residual_group.blocks.0.attn.proj.weight", (180, 180)),
    ("layers.0.residual_group.blocks.0.mlp.fc1.weight", (360, 180)),  # mlp ratio 2
    ("layers.0.residual_group.blocks.0.mlp.fc2.weight", (180, 360)),
    ("layers.7.residual_group.blocks.1.attn_mask", (64, 64, 64)),  # 512 px training size: 8x8 windows of 64
    ("layers.7.residual_group.blocks.5.attn_mask", (64, 64, 64)),
    ("layers.7.conv.weight", (180, 180, 3, 3)),
    ("norm.weight", (180,)),
    ("conv_after_body.weight", (180, 180, 3, 3)),
    ("conv_before_upsample.0.weight", (64, 180, 3, 3)),
    ("conv_up1.weight", (64, 64, 3, 3)),
    ("conv_up2.weight", (64, 64, 3, 3)),
    ("conv_up3.weight", (64, 64, 3, 3)),  # x8 = three nearest x2 steps
    ("conv_hr.weight", (64, 64, 3, 3)),
    ("conv_last.weight", (3, 64, 3, 3)),
    ("conv_last.bias", (3,)),
])
def test_diffbir_key_names_and_shapes(full_meta, key, shape):
    assert tuple(full_meta.state_dict()[key].shape) == shape


def test_keys_that_diffbir_files_do_not_have(full_meta):
    keys = set(full_meta.state_dict())
    assert "layers.0.residual_group.blocks.0.attn_mask" not in keys  # unshifted blocks store no mask
    assert "mean" not in keys and "conv_up4.weight" not in keys and "conv_first.weight" not in keys
    assert not any(".patch_embed." in k or "patch_unembed" in k for k in keys)
    assert is_diffbir_swinir_keys(keys)
    assert full_meta.state_dict()["layers.0.residual_group.blocks.0.attn.relative_position_index"].dtype \
        == torch.int64


def test_config_inferred_from_the_full_layout_is_diffbirs(full_meta):
    cfg = swinir_config_from_state_dict(full_meta.state_dict())
    assert cfg == DIFFBIR_SWINIR_CONFIG
    assert cfg["depths"] == (6,) * 8 and cfg["num_heads"] == (6,) * 8 and cfg["window_size"] == 8


@pytest.mark.parametrize("changes", [{}, {"resi_connection": "3conv"}, {"mlp_ratio": 4.0, "img_size": 12},
                                     {"unshuffle_scale": 4, "window_size": 2, "patch_norm": False,
                                      "qkv_bias": False}])
def test_config_inference_round_trips(changes):
    cfg = dict(TINY, **changes)
    net = SwinIR(**cfg, device="meta")
    assert swinir_config_from_state_dict(net.state_dict()) == cfg
    assert net.config == cfg


def test_build_from_a_state_dict_without_the_recomputable_buffers(tiny):
    sd = {k: v for k, v in tiny.state_dict().items() if not k.endswith((".attn_mask", ".relative_position_index"))}
    net = build_swinir({"state_dict": {"module." + k: v for k, v in sd.items()}})
    assert not net.training and not any(p.requires_grad for p in net.parameters())
    x = torch.rand(1, 3, 9, 14, generator=torch.Generator().manual_seed(7))
    with torch.no_grad():
        assert torch.equal(net(x), tiny(x))
    assert net.config["img_size"] == 64  # no stored mask: DiffBIR's training size is assumed


def test_stored_buffers_equal_the_computed_ones(tiny):
    sd = tiny.state_dict()
    assert torch.equal(sd["layers.0.residual_group.blocks.0.attn.relative_position_index"],
                       relative_position_index(4))
    assert torch.equal(sd["layers.1.residual_group.blocks.1.attn_mask"], shifted_window_mask(8, 8, 4, 2))
    mask = shifted_window_mask(8, 8, 4, 2)
    assert mask.shape == (4, 16, 16) and torch.equal(mask[0], torch.zeros(16, 16))  # top-left window is one region
    assert set(mask.unique().tolist()) == {0.0, -100.0}


def test_build_refuses_wrong_shapes_and_extra_keys(tiny):
    sd = dict(tiny.state_dict())
    bad = dict(sd, **{"layers.0.residual_group.blocks.0.mlp.fc2.weight": torch.zeros(12, 5)})
    with pytest.raises(ValueError, match="mlp.fc2.weight: expected \\(12, 24\\), found \\(12, 5\\)"):
        build_swinir(bad)
    with pytest.raises(ValueError, match="unexpected 1 .*'extra.weight'"):
        build_swinir(dict(sd, **{"extra.weight": torch.zeros(1)}))
    missing = {k: v for k, v in sd.items() if k != "conv_hr.bias"}
    with pytest.raises(ValueError, match="missing 1 .*conv_hr.bias"):
        build_swinir(missing)


def test_config_inference_names_what_is_wrong(tiny):
    with pytest.raises(ValueError, match="expected DiffBIR SwinIR keys .* missing"):
        swinir_config_from_state_dict({"input_blocks.0.0.weight": torch.zeros(1)})
    sd = dict(tiny.state_dict())
    with pytest.raises(ValueError, match="conv_up\\*: expected log2\\(2\\) = 1 .* found 2"):
        swinir_config_from_state_dict(dict(sd, **{"conv_up2.weight": torch.zeros(16, 16, 3, 3)}))
    with pytest.raises(ValueError, match="conv_first.1.weight: expected in_chans \\* s\\^2 input channels"):
        swinir_config_from_state_dict(dict(sd, **{"conv_first.1.weight": torch.zeros(12, 13, 3, 3)}))
    with pytest.raises(ValueError, match="relative_position_bias_table: expected \\(2\\*window-1\\)\\^2 rows"):
        swinir_config_from_state_dict(dict(sd, **{
            "layers.0.residual_group.blocks.0.attn.relative_position_bias_table": torch.zeros(50, 2)}))


# ------------------------------------------------------------------------------------------------ normalisation


def test_normalisation_unwraps_and_strips_without_touching_the_input():
    t = torch.zeros(2)
    flat = {"conv_last.weight": t, "conv_hr.weight": t}
    assert normalize_swinir_state_dict(flat) == flat and normalize_swinir_state_dict(flat) is not flat
    wrapped = {"state_dict": {"module.conv_last.weight": t, "module.conv_hr.weight": t}, "epoch": 3}
    before = {"state_dict": dict(wrapped["state_dict"]), "epoch": 3}
    assert normalize_swinir_state_dict(wrapped) == flat
    assert wrapped == before
    ema = {"params": {"conv_last.weight": torch.ones(2)}, "params_ema": {"conv_last.weight": t}}
    assert normalize_swinir_state_dict(ema)["conv_last.weight"] is t
    assert normalize_swinir_state_dict({"params": {"a": t, "step": 5}}) == {"a": t}
    assert normalize_swinir_state_dict({"a": t, "lpips_metric.lin0.model.1.weight": t}) == {"a": t}
    assert normalize_swinir_state_dict({"module.a": t, "b": t}) == {"module.a": t, "b": t}  # partial prefix kept
    with pytest.raises(ValueError, match="state dict: expected a mapping"):
        normalize_swinir_state_dict([t])


def test_normalisation_extracts_the_restorer_of_a_v1_full_checkpoint(tiny):
    sd = tiny.state_dict()
    full = {"state_dict": {**{"preprocess_model." + k: v for k, v in sd.items()},
                           "control_model.input_blocks.0.0.weight": torch.zeros(1),
                           "model.diffusion_model.out.0.weight": torch.zeros(1)}}
    out = normalize_swinir_state_dict(full)
    assert set(out) == set(sd)
    assert swinir_config_from_state_dict(out) == TINY
