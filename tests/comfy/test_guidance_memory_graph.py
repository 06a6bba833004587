"""Memory modes and precision of rgb-space restoration guidance with ComfyUI's real VAE decoder (the tiny KL-f8 VAE
of the test nodes): checkpointing, tiles, bf16, the out-of-memory fallback, and a sampler run with tiles."""

import logging

import pytest
import torch

from tests.comfy.conftest import sample_images
from tests.comfy.test_restoration_sampler import run, sampler_graph

H, W = 192, 256  # px: latent 24 x 32, so 128 px tiles (16 latent px) split it into 2 x 2 tiles


@pytest.fixture(scope="module")
def gm(pack):
    """The pack's nodes.guidance module as ComfyUI loaded it."""
    return pack("nodes.guidance")


@pytest.fixture(scope="module")
def setup(host, tiny):
    import comfy.latent_formats

    vae = tiny.tiny_vae(0)
    guide = sample_images(1, H, W, seed=3).permute(0, 3, 1, 2).contiguous()
    lf = comfy.latent_formats.SD15()
    g = torch.Generator().manual_seed(5)
    x0 = torch.randn(1, 4, H // 8, W // 8, generator=g)
    return vae, guide, lf, x0


def patch(gm, setup, guide=None, **kw):
    vae, full_guide, _, _ = setup
    return gm.RestorationGuidance(vae, full_guide if guide is None else guide, 1.0, **kw)


@pytest.fixture(scope="module")
def full_grad(gm, setup):
    _, _, lf, x0 = setup
    return patch(gm, setup, memory="full", precision="fp32").grad(x0, lf)


@pytest.fixture(scope="module")
def tiled_calls(gm, setup):
    """(loss, grad) with 128 px tiles, and the latent patch sizes decoded for it."""
    _, _, lf, x0 = setup
    calls = []
    p = patch(gm, setup, memory="tiled", precision="fp32", tile_size=128)
    decode_fn = p._decode_fn

    def counting(*args):
        decode = decode_fn(*args)

        def wrapped(z):
            calls.append(tuple(z.shape[-2:]))
            return decode(z)
        return wrapped

    p._decode_fn = counting
    return p.grad(x0, lf), calls


def rel(a, b):
    return float((a - b).norm() / b.norm())


def test_checkpointed_decoder_gives_the_full_gradient(gm, setup, full_grad):
    _, _, lf, x0 = setup
    p = patch(gm, setup, memory="checkpoint", precision="fp32")
    loss, grad = p.grad(x0, lf)
    loss0, grad0 = full_grad
    assert grad.dtype == loss.dtype == torch.float32 and grad.shape == x0.shape
    assert torch.allclose(loss, loss0, rtol=1e-6)
    assert (grad - grad0).abs().max() <= 1e-6 * grad0.abs().max()
    wrapped = [m for m in p._decoders[(x0.device, torch.float32, True)].modules()
               if type(m).__name__ == "Checkpointed"]
    assert len(wrapped) >= 8  # mid blocks + attention + each level's res blocks + upsamplers
    assert p.tile_px is None  # no fallback happened


def test_tiled_gradient_is_close_to_the_full_one(gm, setup, full_grad, tiled_calls):
    _, _, lf, x0 = setup
    (loss, grad), calls = tiled_calls
    loss0, grad0 = full_grad
    assert len(calls) == 4 and max(max(c) for c in calls) == 16 + 8  # 2 x 2 haloed tiles
    # Approximate: this decoder's receptive field (about 9 latent px: conv_in, the mid blocks and the first level
    # run at latent resolution) exceeds the 8 px halo, and GroupNorm sees each patch's statistics. Measured: loss
    # within 0.4%, gradient cosine 0.79 with 16 px tiles (with the norms removed and a 16 px halo it is exact to
    # 1e-6, so the difference is the approximation, not the bookkeeping).
    assert float((loss - loss0).abs() / loss0) < 0.02
    cos = float((grad * grad0).sum() / grad.norm() / grad0.norm())
    assert cos > 0.7, cos
    # tiles covering the whole latent are the whole-image computation
    one = patch(gm, setup, memory="tiled", precision="fp32", tile_size=256).grad(x0, lf)
    assert (one[1] - grad0).abs().max() <= 1e-6 * grad0.abs().max()


def test_bf16_decoder_runs_on_cpu_and_is_close_to_fp32(gm, setup, full_grad):
    _, _, lf, x0 = setup
    p = patch(gm, setup, memory="checkpoint", precision="bf16")
    loss, grad = p.grad(x0, lf)
    dec = p._decoders[(x0.device, torch.bfloat16, True)]
    assert {q.dtype for q in dec.parameters()} == {torch.bfloat16}
    assert grad.dtype == torch.float32 and torch.isfinite(grad).all()
    assert rel(grad, full_grad[1]) < 0.05  # measured 0.0076
    assert float((loss - full_grad[0]).abs() / full_grad[0]) < 0.01  # measured 6e-5
    # auto on a CPU is fp32, as ComfyUI's VAE would be
    assert patch(gm, setup)._dtype(torch.device("cpu")) == torch.float32


def test_fp16_decoder_is_close_and_a_non_finite_gradient_switches_to_fp32(gm, setup, full_grad, caplog):
    _, guide, lf, x0 = setup
    p = patch(gm, setup, memory="checkpoint", precision="fp16")
    with torch.inference_mode():  # as inside a sampler
        _, grad = p.grad(x0, lf)
    assert rel(grad, full_grad[1]) < 0.02  # measured 0.001 (the backward is loss-scaled, see fp16_grad_scaling)
    small = patch(gm, setup, guide=guide[..., :64, :64], memory="checkpoint", precision="fp16")
    with caplog.at_level(logging.WARNING):
        _, grad = small.grad(x0[..., :8, :8] * 3e3, lf)  # overflows float16
    assert torch.isfinite(grad).all() and small._dtypes[x0.device] == torch.float32
    assert {k[1] for k in small._decoders} == {torch.float32}
    assert any("non-finite" in r.getMessage() for r in caplog.records)


def test_the_decoder_copy_is_frozen_and_the_callers_vae_untouched(gm, setup, tiny):
    vae, guide, lf, x0 = setup
    p = patch(gm, setup, guide=guide[..., :64, :64], memory="checkpoint", precision="bf16")
    p.grad(x0[..., :8, :8], lf)
    p.grad(x0[..., :8, :8], lf)
    assert len(p._decoders) == 2  # one plain copy + its checkpointed view, made once for both steps
    fresh = tiny.tiny_vae(0).first_stage_model
    vae_ptrs = {q.data_ptr() for q in vae.first_stage_model.parameters()}
    for dec in p._decoders.values():
        assert all(not q.requires_grad for q in dec.parameters())
        assert not vae_ptrs & {q.data_ptr() for q in dec.parameters()}
    for (name, q), r in zip(vae.first_stage_model.named_parameters(), fresh.parameters(), strict=True):
        assert torch.equal(q, r) and q.dtype == r.dtype and q.requires_grad == r.requires_grad, name
    assert not any(type(m).__name__ == "Checkpointed" for m in vae.first_stage_model.modules())


class Stop(Exception):
    pass


def oom_above(p, limit, seen, stop_after=None):
    """Make the patch's decoder raise ComfyUI's out-of-memory exception for latent patches larger than ``limit``
    (and raise Stop after ``stop_after`` decodes, to end a test early)."""
    import comfy.model_management as mm

    decode_fn = p._decode_fn

    def patched(*args):
        decode = decode_fn(*args)

        def wrapped(z):
            seen.append(tuple(z.shape[-2:]))
            if max(z.shape[-2:]) > limit:
                raise mm.OOM_EXCEPTION("CUDA out of memory (simulated by the test)")
            if stop_after is not None and len(seen) >= stop_after:
                raise Stop
            return decode(z)
        return wrapped

    p._decode_fn = patched


def test_out_of_memory_falls_back_to_tiles_and_keeps_them(gm, setup, caplog, tiled_calls):
    _, _, lf, x0 = setup
    ref, _ = tiled_calls
    p = patch(gm, setup, memory="checkpoint", precision="fp32")  # tile_size 512 covers this image: 128 is tried
    seen = []
    oom_above(p, 24, seen)
    with caplog.at_level(logging.WARNING):
        loss, grad = p.grad(x0, lf)
    assert seen[0] == (24, 32) and len(seen) == 1 + 4  # the whole image failed, then 4 tiles
    assert torch.equal(grad, ref[1]) and torch.equal(loss, ref[0])
    msgs = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert any("out of memory" in m and "128 px tiles" in m for m in msgs), msgs
    assert p.tile_px == 128
    seen = []
    oom_above(p, 24, seen, stop_after=1)
    with pytest.raises(Stop):
        p.grad(x0, lf)  # the next step starts with the tile size that worked
    assert seen == [(24, 24)]


def test_out_of_memory_halves_the_tile_and_gives_up_below_128(gm, setup, caplog):
    _, _, lf, x0 = setup
    p = patch(gm, setup, memory="full", precision="fp32", tile_size=256)
    seen = []
    oom_above(p, 24, seen)
    with caplog.at_level(logging.WARNING):
        _, grad = p.grad(x0, lf)
    # whole image (no checkpointing) -> 256 px tiles (one tile here, now checkpointed) -> 128 px tiles
    assert seen[:2] == [(24, 32), (24, 32)] and len(seen) == 2 + 4 and p.tile_px == 128
    assert torch.isfinite(grad).all()
    p2 = patch(gm, setup, memory="tiled", precision="fp32", tile_size=128)
    oom_above(p2, 0, [])
    with pytest.raises(gm.PackError, match="out of memory .* even with 128 px tiles"):
        p2.grad(x0, lf)
    p3 = patch(gm, setup, memory="auto", precision="fp32")
    decode_fn = p3._decode_fn

    def broken(*args):
        def decode(z):
            raise RuntimeError("not a memory problem")
        decode_fn(*args)
        return decode

    p3._decode_fn = broken
    with pytest.raises(RuntimeError, match="not a memory problem"):  # other errors are not retried
        p3.grad(x0, lf)
    assert p3.tile_px is None


def test_latent_space_ignores_memory_and_precision(gm, setup):
    _, _, lf, x0 = setup
    a = patch(gm, setup, space="latent").grad(x0, lf)
    b = patch(gm, setup, space="latent", memory="tiled", precision="bf16", tile_size=128).grad(x0, lf)
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])


def test_bad_memory_options_are_refused(gm, setup):
    for kw, name in (({"memory": "tiles"}, "g_memory"), ({"precision": "fp8"}, "g_precision"),
                     ({"tile_size": 64}, "g_tile_size")):
        with pytest.raises(gm.PackError, match=name):
            patch(gm, setup, **kw)


def test_memory_widgets_follow_block_size_on_both_nodes(host):
    """Optional (old API prompts still validate) and stored after block_size (old saved workflows still load)."""
    for node_id in ("AdaptBIR_RestorationGuidanceSampler", "AdaptBIR_ApplyRestorationGuidance"):
        types = host.node_class(node_id).INPUT_TYPES()
        required, optional = list(types["required"]), list(types["optional"])
        widgets = [n for n in required + optional if n not in ("condition", "guide_image", "model", "positive",
                                                              "negative", "vae", "latent_image")]
        # the page stores widget values required first, then optional: the new ones follow block_size (and come
        # before widgets appended later still, such as the sampler's rescale_cfg)
        i = widgets.index("block_size")
        assert required[-1] == "block_size" and widgets[i:i + 4] == ["block_size", "g_memory", "g_precision",
                                                                     "g_tile_size"], (required, optional)


def test_sampler_with_tiled_guidance_end_to_end(host, tiny, irc_file):
    img = sample_images(1, 192, 192)  # latent 24 x 24: 128 px tiles split it into 2 x 2

    def graph(memory):
        p = sampler_graph(tiny, irc_file, img, scale=0.5 / 400, steps=2)
        p["8"]["inputs"].update(g_memory=memory, g_precision="fp32", g_tile_size=128)
        return p

    lat_t, dec_t, _ = run(host, graph("tiled"))
    lat_f, _, _ = run(host, graph("full"))
    lat_0, _, _ = run(host, sampler_graph(tiny, irc_file, img, scale=0.0, steps=2))
    assert dec_t.shape == (1, 192, 192, 3) and torch.isfinite(lat_t).all()
    d_t, d_f = (lat_t - lat_0).flatten(), (lat_f - lat_0).flatten()
    cos = float(d_t @ d_f / d_t.norm() / d_f.norm())
    assert d_t.norm() > 0 and cos > 0.7, cos  # guidance acts, close to the untiled direction (measured 0.87)


def test_auto_keeps_every_activation_when_it_fits_and_checkpoints_otherwise(gm, setup, monkeypatch):
    import comfy.model_management as mm

    _, _, lf, x0 = setup
    for free, want in ((1 << 40, False), (1 << 10, True)):
        monkeypatch.setattr(mm, "get_free_memory", lambda *a, free=free, **k: free)
        p = patch(gm, setup, memory="auto", precision="fp32")
        decode_fn, used = p._decode_fn, []
        p._decode_fn = lambda *args: (used.append(args[3]), decode_fn(*args))[1]
        p.grad(x0, lf)
        assert used == [want], (free, used)
    assert gm.full_guidance_bytes((1, 4, 128, 128), torch.bfloat16) / 2 ** 30 == pytest.approx(11.4, rel=0.01)
