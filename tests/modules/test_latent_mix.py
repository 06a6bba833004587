import pytest
import torch

from modules.image_ops import crop_bhwc, pad_to_multiple, to_rgb_bchw, upscale_min_side
from modules.latent_mix import mix_latents


@pytest.fixture
def latents():
    g = torch.Generator().manual_seed(0)
    return torch.randn(3, 4, 5, 7, generator=g), torch.randn(3, 4, 5, 7, generator=g)


def test_k0_and_k1_are_exact(latents):
    zr, zi = latents
    assert torch.equal(mix_latents(zr, zi, 0.0), zr)
    assert torch.equal(mix_latents(zr, zi, 1.0), zi)
    per = mix_latents(zr, zi, [0.0, 1.0, 0.0])
    assert torch.equal(per[0], zr[0]) and torch.equal(per[1], zi[1]) and torch.equal(per[2], zr[2])


def test_linear_in_k(latents):
    zr, zi = latents
    ks = torch.linspace(0, 1, 6)
    outs = torch.stack([mix_latents(zr, zi, float(k)) for k in ks])
    # second differences of a linear function vanish
    assert torch.allclose(outs[2:] - 2 * outs[1:-1] + outs[:-2], torch.zeros_like(outs[2:]), atol=1e-6)
    assert torch.allclose(mix_latents(zr, zi, 0.3), 0.7 * zr + 0.3 * zi, atol=1e-6)


def test_mix_rejects_bad_k_and_shapes(latents):
    zr, zi = latents
    with pytest.raises(ValueError, match=r"k: expected values in \[0, 1\]"):
        mix_latents(zr, zi, 1.5)
    with pytest.raises(ValueError, match="k: expected 1 or 3"):
        mix_latents(zr, zi, [0.1, 0.2])
    with pytest.raises(ValueError, match="same shape"):
        mix_latents(zr, zi[:, :, :4], 0.5)
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        mix_latents(zr, zi, float("nan"))


@pytest.mark.parametrize("h,w,m", [(1, 1, 8), (37, 53, 8), (64, 64, 64), (65, 3, 64), (1, 300, 8)])
def test_pad_and_crop_round_trip_is_exact(h, w, m):
    x = torch.rand(2, 3, h, w)
    p, (pb, pr) = pad_to_multiple(x, m)
    assert p.shape[-2] % m == 0 and p.shape[-1] % m == 0 and (pb, pr) == ((-h) % m, (-w) % m)
    # edge mode: the padding repeats the last row/column
    if pb:
        assert torch.equal(p[..., -1, :w], x[..., -1, :])
    back = crop_bhwc(p.permute(0, 2, 3, 1), h, w)
    assert torch.equal(back, x.permute(0, 2, 3, 1))


def test_channel_handling():
    rgba = torch.rand(1, 5, 6, 4)
    assert torch.equal(to_rgb_bchw(rgba), rgba[..., :3].permute(0, 3, 1, 2))
    grey = torch.rand(2, 5, 6, 1)
    out = to_rgb_bchw(grey)
    assert out.shape == (2, 3, 5, 6) and torch.equal(out[:, 0], out[:, 2])
    for bad, needle in [(torch.rand(5, 6, 3), "shape"), (torch.rand(0, 5, 6, 3), "non-empty"),
                        (torch.rand(1, 5, 6, 2), "channels"), (torch.full((1, 2, 2, 3), float("nan")), "NaN")]:
        with pytest.raises(ValueError, match=needle):
            to_rgb_bchw(bad)


def test_upscale_min_side():
    x = torch.rand(1, 3, 1, 40)
    y = upscale_min_side(x, 32)
    assert y.shape[-2] == 32 and y.shape[-1] == 1280 and y.min() >= 0 and y.max() <= 1
    assert upscale_min_side(torch.rand(1, 3, 40, 40), 32).shape[-1] == 40
