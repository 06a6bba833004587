"""Tiled Diffusion: latent tiles blended with Gaussian weights, tile-aware IRControlNet and SUPIR, the
out-of-memory fallback to tiles and cancel between tiles, on ComfyUI's real sampling path with tiny models."""

import logging

import pytest
import torch

from tests.comfy.conftest import image_node, sample_images
from tests.comfy.test_restoration_sampler import sampler_graph
from tests.comfy.test_supir import graph as supir_graph
from tests.comfy.test_supir import supir_files  # noqa: F401 - module fixture reused here


def tiled(prompt, sampler_node, tile, stride, node="30"):
    """Insert Tiled Diffusion between the sampler's model and the sampler."""
    p = {k: {**v, "inputs": dict(v["inputs"])} for k, v in prompt.items()}
    p[node] = {"class_type": "AdaptBIR_TiledDiffusion", "inputs": {
        "model": p[sampler_node]["inputs"]["model"], "tile_size": tile, "tile_stride": stride}}
    p[sampler_node]["inputs"]["model"] = [node, 0]
    return p


def samples(host, prompt, node="8"):
    return host.output(host.run(prompt), node, 0)["samples"]


def seam_ratio(z: torch.Tensor, borders: list[int]) -> float:
    """Mean |horizontal step| of z at the given column borders over the mean elsewhere (1 = no visible seam)."""
    step = (z[..., 1:] - z[..., :-1]).abs().mean(dim=(0, 1, 2))
    at = torch.tensor([step[b - 1] for b in borders])
    rest = torch.cat([step[i:i + 1] for i in range(step.numel()) if i + 1 not in borders])
    return float(at.mean() / rest.mean())


@pytest.fixture(scope="module")
def big_image():
    return sample_images(1, 192, 192, seed=3)


def test_single_tile_is_exactly_untiled(host, tiny, irc_file):
    base = sampler_graph(tiny, irc_file, sample_images(1, 64, 64), scale=0.5)
    assert torch.equal(samples(host, base), samples(host, tiled(base, "8", 512, 256)))


def test_ircontrolnet_tiles_are_bounded_and_seamless(host, tiny, irc_file, big_image):
    base = sampler_graph(tiny, irc_file, big_image, steps=3)
    full = samples(host, base)
    # 192 px = 24 latent cells; 128 px tiles (16 cells) every 64 px: starts 0 and 8 on each axis (4 tiles)
    out = samples(host, tiled(base, "8", 128, 64))
    assert out.shape == full.shape and torch.isfinite(out).all()
    diff = (out - full).abs()
    # measured: mean |difference| 0.5% of the latent's spread (tiles see less context than the whole image)
    assert 0 < float(diff.mean()) < 0.02 * float(full.std())
    # the tile edges (cells 8 and 16) are where seams would show; Gaussian blending keeps them as smooth as untiled
    assert seam_ratio(out, [8, 16]) < 1.1 * seam_ratio(full, [8, 16])


def test_tiled_control_sees_the_tiles_crop_of_the_hint(host, pack, tiny, irc_file):
    irc = pack("nodes.ircontrolnet")
    ts = pack("nodes.tiled_sampling")
    from modules.tiling import Tile

    model = tiny.tiny_model("sd2-eps", 0)
    path = str(host.models_dir / "diffbir" / irc_file)
    g = torch.Generator().manual_seed(0)
    hint = torch.randn(1, 4, 24, 24, generator=g)
    tile = Tile(8, 0, 16, 16, 24, 24)
    x = torch.randn(2, 4, 16, 16, generator=g)
    t = torch.full((2,), 5.0)
    cond = {"c_crossattn": torch.randn(2, 4, 64, generator=g)}

    def control(h):
        c = irc.load_ircontrolnet(path, irc_file).copy().set_cond_hint(h, 1.0, (0.0, 1.0))
        c.pre_run(model.model, lambda p: 999.0 * (1 - p))
        return c

    with torch.inference_mode():
        got = control(hint).get_control(x, t, cond, 2, {ts.TILE_KEY: tile})
        want = control(hint[..., 8:24, 0:16]).get_control(x, t, cond, 2, {})
    for a, b in zip(got["output"] + got["middle"], want["output"] + want["middle"]):
        assert torch.equal(a, b)
    with pytest.raises(Exception, match="sampled latent's size"):
        control(hint[..., :20, :]).get_control(x, t, cond, 2, {ts.TILE_KEY: tile})


class Recorder:
    """A stand-in for ComfyUI's batched model call: a pixel-wise function of the latent and of the cropped
    noise-shaped conditioning, so the blended result must equal that function on the whole latent."""

    def __init__(self, full_x, interrupt_after=None):
        self.full_x, self.calls, self.interrupt_after = full_x, [], interrupt_after

    def __call__(self, model, conds, x, timestep, model_options):
        import comfy.model_management as mm

        tile = model_options["transformer_options"].get("adaptbir_tile")
        if tile is not None:
            assert torch.equal(tile.crop(self.full_x), x)
        self.calls.append(tile)
        if self.interrupt_after is not None and len(self.calls) == self.interrupt_after:
            mm.interrupt_current_processing(True)
        cc = conds[0][0]["model_conds"]["c_concat"].cond
        return [2.0 * x + cc, x * x]


def test_tiles_blend_back_a_pixelwise_function_and_crop_the_conditioning(host, pack, tiny):
    import comfy.conds

    ts = pack("nodes.tiled_sampling")
    model = tiny.tiny_model("sd2-eps", 0).model
    g = torch.Generator().manual_seed(1)
    x = torch.randn(2, 4, 24, 40, generator=g)
    cc = torch.randn(2, 4, 24, 40, generator=g)
    conds = [[{"model_conds": {"c_concat": comfy.conds.CONDNoiseShape(cc)}}], None]
    rec = Recorder(x)
    out = ts.LatentTiler(128, 64)(rec, model, conds, x, torch.ones(2), {"transformer_options": {}})
    assert len(rec.calls) == 2 * 4 and all(c is not None for c in rec.calls)  # starts 0,8 x 0,8,16,24
    torch.testing.assert_close(out[0], 2.0 * x + cc, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(out[1], x * x, rtol=1e-5, atol=1e-5)
    assert conds[0][0]["model_conds"]["c_concat"].cond is cc  # the caller's conds are not changed


def test_cancel_stops_between_tiles(host, pack, tiny):
    import comfy.conds
    import comfy.model_management as mm

    ts = pack("nodes.tiled_sampling")
    x = torch.randn(1, 4, 24, 24)
    conds = [[{"model_conds": {"c_concat": comfy.conds.CONDNoiseShape(torch.zeros_like(x))}}], None]
    rec = Recorder(x, interrupt_after=1)
    try:
        with pytest.raises(mm.InterruptProcessingException):
            ts.LatentTiler(128, 64)(rec, tiny.tiny_model("sd2-eps", 0).model, conds, x, torch.ones(1),
                                    {"transformer_options": {}})
    finally:
        mm.interrupt_current_processing(False)
    assert len(rec.calls) == 1


def test_foreign_controls_and_area_conditioning_are_refused(host, pack, tiny):
    import comfy.controlnet

    ts = pack("nodes.tiled_sampling")
    x = torch.randn(1, 4, 24, 24)
    model = tiny.tiny_model("sd2-eps", 0).model
    for cond, needle in (({"model_conds": {}, "control": comfy.controlnet.ControlBase()}, "tile-aware"),
                         ({"model_conds": {}, "area": (8, 8, 0, 0)}, "area or mask")):
        with pytest.raises(Exception, match=needle):
            ts.LatentTiler(128, 64)(Recorder(x), model, [[cond], None], x, torch.ones(1),
                                    {"transformer_options": {}})


def test_out_of_memory_falls_back_to_smaller_tiles(host, pack, tiny, caplog):
    import comfy.patcher_extension as pe

    sampling = pack("nodes.sampling")
    ts = pack("nodes.tiled_sampling")
    base = tiny.tiny_model("sd2-eps", 0)
    calls = []

    def refuse_large(executor, *args, **kwargs):
        calls.append(tuple(args[0].shape[-2:]))
        if args[0].shape[-1] > 16:
            raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB (test)")
        return executor(*args, **kwargs)

    starved = base.clone()
    starved.add_wrapper_with_key(pe.WrappersMP.DIFFUSION_MODEL, "test_oom", refuse_large)
    pos, neg = tiny.tiny_conditioning("", 0), tiny.tiny_conditioning("bad", 0)
    latent = {"samples": torch.zeros(1, 4, 24, 24)}

    def run(model):
        return sampling.RestorationGuidanceSampler.execute(model, pos, neg, None, latent, seed=3, steps=3,
                                                           cfg=4.0).result[0]["samples"]

    with caplog.at_level(logging.WARNING):
        fell_back = run(starved)
    assert "out of memory" in caplog.text and "128 px tiles" in caplog.text
    assert max(c[-1] for c in calls[-4:]) == 16
    assert torch.equal(fell_back, run(ts.set_tiling(base.clone(), 128, 64)))
    assert not base.get_wrappers(pe.WrappersMP.CALC_COND_BATCH, ts.WRAPPER_KEY)  # the caller's model untouched


def test_supir_tiles(host, tiny, supir_files):  # noqa: F811 - the fixture imported above
    p = supir_graph(tiny)
    p["1"] = image_node(tiny, "supir_big", sample_images(1, 192, 192, seed=4))
    p["7"]["inputs"].update(width=192, height=192)
    full = samples(host, p)
    assert torch.equal(full, samples(host, tiled(p, "8", 512, 256)))
    out = samples(host, tiled(p, "8", 128, 64))
    assert torch.isfinite(out).all() and 0 < float((out - full).abs().mean()) < 0.02 * float(full.std())
    assert seam_ratio(out, [8, 16]) < 1.1 * seam_ratio(full, [8, 16])


def test_tile_settings_are_validated(host, tiny, irc_file):
    base = sampler_graph(tiny, irc_file, sample_images(1, 64, 64))
    for tile, stride, needle in ((192 + 32, 64, "multiple of 64"), (128, 256, "tile_stride")):
        valid, _, _, node_errors = host.validate(tiled(base, "8", tile, stride))
        assert not valid and needle in str(node_errors["30"])


def test_tiled_diffusion_leaves_the_model_alone(host, pack, tiny):
    import comfy.patcher_extension as pe

    ts = pack("nodes.tiled_sampling")
    model = tiny.tiny_model("sd2-eps", 0)
    before = {k: dict(v) for k, v in model.wrappers.items()}
    out = ts.TiledDiffusion.execute(model, 256, 128).result[0]
    again = ts.TiledDiffusion.execute(out, 512, 256).result[0]
    assert out is not model and {k: dict(v) for k, v in model.wrappers.items()} == before
    [tiler] = again.get_wrappers(pe.WrappersMP.CALC_COND_BATCH, ts.WRAPPER_KEY)  # replaced, not stacked
    assert (tiler.tile_px, tiler.stride_px) == (512, 256)
    assert out.get_wrappers(pe.WrappersMP.CALC_COND_BATCH, ts.WRAPPER_KEY)[0].tile_px == 256
