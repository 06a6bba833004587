"""Overlapping-tile evaluation with Gaussian blending (modules/tiling.py)."""

import math

import pytest
import torch
import torch.nn.functional as F

from modules.tiling import count_tiles, tile_boxes, tile_starts, tile_weights, tiled_apply

TILINGS = [(8, 4), (8, 8), (5, 3), (7, 1), (16, 5), (3, 2), (64, 32)]
SIZES = [(17, 23), (8, 8), (1, 9), (31, 4)]


def image(b=2, c=3, h=17, w=23, seed=0, dtype=torch.float32):
    return torch.rand(b, c, h, w, generator=torch.Generator().manual_seed(seed)).to(dtype)


def blur(t):
    """A non-pointwise function of the same size (so tiling changes its result)."""
    return F.avg_pool2d(F.pad(t, (1, 1, 1, 1), mode="replicate"), 3, stride=1)


@pytest.mark.parametrize("size,tile,stride,expected", [
    (10, 4, 3, [0, 3, 6]), (11, 4, 3, [0, 3, 6, 7]), (4, 8, 2, [0]), (8, 8, 3, [0]), (9, 8, 8, [0, 1]),
    (12, 4, 4, [0, 4, 8]), (1, 1, 1, [0])])
def test_tile_starts_cover_and_last_is_flush(size, tile, stride, expected):
    starts = tile_starts(size, tile, stride)
    assert starts == expected
    t = min(tile, size)
    assert starts[-1] + t == size
    covered = torch.zeros(size, dtype=torch.bool)
    for s in starts:
        covered[s:s + t] = True
    assert bool(covered.all())


@pytest.mark.parametrize("tile,stride", [(0, 1), (4, 0), (4, 5), (2.5, 1), (True, 1)])
def test_bad_tile_or_stride_is_refused(tile, stride):
    with pytest.raises(ValueError, match="tile|stride"):
        tiled_apply(lambda t: t, image(), tile, stride)


def test_single_covering_tile_is_exactly_fn():
    x = image()
    for tile in (23, 24, 1000):
        y = tiled_apply(blur, x, tile, 4)
        assert torch.equal(y, blur(x))
    sentinel = torch.zeros(2, 3, 17, 23)
    assert tiled_apply(lambda t: sentinel, x, 64, 8) is sentinel


@pytest.mark.parametrize("h,w", SIZES)
@pytest.mark.parametrize("tile,stride", TILINGS)
@pytest.mark.parametrize("weight", ["gaussian", "uniform"])
def test_identity_is_reproduced_exactly(h, w, tile, stride, weight):
    x = image(h=h, w=w)
    y = tiled_apply(lambda t: t.clone(), x, tile, stride, weight=weight)
    assert y.dtype == x.dtype and torch.equal(y, x)


@pytest.mark.parametrize("h,w", SIZES)
@pytest.mark.parametrize("tile,stride", TILINGS)
def test_pointwise_function_is_reproduced(h, w, tile, stride):
    x = image(h=h, w=w)
    y = tiled_apply(lambda t: t * 2 + 1, x, tile, stride)
    assert (y - (x * 2 + 1)).abs().max() <= 1e-6


def test_half_precision_identity_and_channel_change():
    x = image(dtype=torch.float16)
    assert torch.equal(tiled_apply(lambda t: t.clone(), x, 6, 4), x)
    y = tiled_apply(lambda t: t.float().sum(1, keepdim=True), x, 6, 4)
    assert y.shape == (2, 1, 17, 23) and y.dtype == torch.float32
    assert torch.allclose(y, x.float().sum(1, keepdim=True), atol=1e-6)


def test_tiled_non_pointwise_function_is_close_but_not_identical():
    x = image()
    y = tiled_apply(blur, x, 8, 4)
    # away from the image border only tile borders differ, and they are down-weighted
    assert (y - blur(x)).abs().mean() < 0.02
    assert not torch.equal(y, blur(x))


def test_check_is_called_before_every_tile_and_callback_after():
    x = image(h=17, w=23)
    n = count_tiles(17, 23, 8, 4)
    assert n == len(tile_boxes(17, 23, 8, 4)) == 4 * 5  # rows 0,4,8,9; columns 0,4,8,12,15
    events = []
    tiled_apply(lambda t: (events.append("fn"), t)[1], x, 8, 4, check=lambda: events.append("check"),
                callback=lambda done, total: events.append((done, total)))
    assert events == [e for i in range(n) for e in ("check", "fn", (i + 1, n))]


def test_check_can_stop_the_work():
    calls = []

    def check():
        if len(calls) == 2:
            raise KeyboardInterrupt("stop")

    with pytest.raises(KeyboardInterrupt):
        tiled_apply(lambda t: (calls.append(1), t)[1], image(), 8, 4, check=check)
    assert len(calls) == 2


def test_input_is_not_modified():
    x = image()
    before = x.clone()
    tiled_apply(lambda t: t * 3, x, 8, 4)
    tiled_apply(lambda t: t * 3, x, 100, 4)
    assert torch.equal(x, before)


def test_gaussian_weights_shape_and_sigma():
    w = tile_weights(9, 16)
    assert w.shape == (9, 16) and bool((w > 0).all())
    assert torch.equal(w, w.flip(0)) and torch.equal(w, w.flip(1))
    assert w[4].max() == pytest.approx(w[4, 7:9].max().item())
    # sigma = 0.1 x side: one sigma from the centre along y weighs exp(-1/2) of the centre (rows 4 -> 4 + 0.9)
    col = tile_weights(100, 1)[:, 0]
    assert (col[int(49.5 + 10 + 0.5)] / col[50]).item() == pytest.approx(math.exp(-(10.5 ** 2 - 0.5 ** 2) / 200),
                                                                         rel=1e-9)
    assert torch.equal(tile_weights(4, 5, "uniform"), torch.ones(4, 5, dtype=torch.float64))
    with pytest.raises(ValueError, match="weight"):
        tile_weights(4, 4, "cosine")


def test_gaussian_blending_favours_the_tile_whose_centre_is_nearest():
    # each tile returns its own left offset; column 5 is 1.5 px from tile 0's centre and 2.5 px from tile 4's
    def by_tile():
        starts = iter(tile_starts(16, 8, 4))
        return lambda t: torch.full_like(t, float(next(starts)))

    x = torch.zeros(1, 1, 1, 16)
    g = tiled_apply(by_tile(), x, 8, 4)
    assert 0 < g[0, 0, 0, 5] < 0.2
    u = tiled_apply(by_tile(), x, 8, 4, weight="uniform")
    assert u[0, 0, 0, 5] == pytest.approx(2.0)


def test_bad_inputs_and_outputs_are_named():
    with pytest.raises(ValueError, match="x: expected a \\(B, C, H, W\\) tensor"):
        tiled_apply(lambda t: t, torch.zeros(3, 4, 4), 2, 1)
    with pytest.raises(ValueError, match="fn: expected"):
        tiled_apply(lambda t: t[..., :-1], image(), 8, 4)
    with pytest.raises(ValueError, match="fn: expected a floating-point"):
        tiled_apply(lambda t: (t * 10).long(), image(), 8, 4)
