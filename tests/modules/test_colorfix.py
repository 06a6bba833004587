import pytest
import torch
import torch.nn.functional as F

from modules.colorfix import adain_color_fix, wavelet_color_fix


def rand_image(*shape, seed=0, dtype=torch.float32):
    return torch.rand(*shape, generator=torch.Generator().manual_seed(seed), dtype=dtype)


def constant_image(colour, h=16, w=20):
    return torch.tensor(colour).view(1, 3, 1, 1).expand(2, 3, h, w).clone()


def test_wavelet_identity_when_content_is_reference():
    img = rand_image(2, 3, 17, 23)
    out = wavelet_color_fix(img, img)
    assert out.shape == img.shape and out.dtype == img.dtype
    assert torch.allclose(out, img, atol=1e-5)


def test_wavelet_low_band_comes_from_reference():
    content = rand_image(2, 3, 16, 20, seed=1) * 0.2 + 0.4
    red, blue = constant_image([0.8, 0.1, 0.5]), constant_image([0.3, 0.6, 0.2])
    out_red = wavelet_color_fix(content, red, clamp=False)
    out_blue = wavelet_color_fix(content, blue, clamp=False)
    # The low band of a constant image is that constant (replicate padding keeps the borders exact).
    shift = torch.tensor([0.5, -0.5, 0.3]).view(1, 3, 1, 1).expand_as(out_red)
    assert torch.allclose(out_red - out_blue, shift, atol=1e-6)
    means = out_red.mean(dim=(0, 2, 3))
    assert torch.allclose(means, torch.tensor([0.8, 0.1, 0.5]), atol=0.03)


def test_wavelet_high_band_comes_from_content():
    content = rand_image(1, 3, 12, 12, seed=2)
    ref = rand_image(1, 3, 12, 12, seed=3)
    a = wavelet_color_fix(content, ref, clamp=False)
    b = wavelet_color_fix(content + 0.25, ref, clamp=False)  # a constant offset is pure low band
    assert torch.allclose(a, b, atol=1e-6)


def test_wavelet_blur_kernel_and_dilation_by_hand():
    impulse = torch.zeros(1, 3, 15, 15, dtype=torch.float64)
    impulse[..., 7, 7] = 1.0
    zeros = torch.zeros_like(impulse)
    k = torch.tensor([1.0, 2.0, 1.0], dtype=torch.float64)
    k2 = torch.outer(k, k) / 16
    one = wavelet_color_fix(zeros, impulse, levels=1, clamp=False)[0, 0]
    assert torch.allclose(one[6:9, 6:9], k2) and one.sum().item() == pytest.approx(1.0)
    two = wavelet_color_fix(zeros, impulse, levels=2, clamp=False)[0, 0]
    k2_dilated = torch.zeros(5, 5, dtype=torch.float64)
    k2_dilated[::2, ::2] = k2
    expected = F.conv2d(F.pad(k2, (2, 2, 2, 2))[None, None], k2_dilated[None, None], padding=2)[0, 0]
    assert torch.allclose(two[4:11, 4:11], expected, atol=1e-12)
    assert two.sum().item() == pytest.approx(1.0)


def test_wavelet_small_image_clamp_and_dtype():
    content = rand_image(1, 3, 5, 7, seed=4)
    ref = torch.ones(1, 3, 5, 7)
    out = wavelet_color_fix(content, ref)  # padding 16 > image size at the last level
    assert out.shape == (1, 3, 5, 7) and float(out.max()) <= 1.0 and float(out.min()) >= 0.0
    raw = wavelet_color_fix(content, ref, clamp=False)
    assert float(raw.max()) > 1.0
    half = wavelet_color_fix(content.half(), ref.half())
    assert half.dtype == torch.float16


def test_adain_matches_mean_and_std():
    content = rand_image(2, 3, 10, 12, seed=5) * 0.5 + 0.25
    ref = rand_image(2, 3, 10, 12, seed=6) * 0.3 + 0.1
    out = adain_color_fix(content, ref, clamp=False)
    flat_o, flat_r = out.reshape(2, 3, -1), ref.reshape(2, 3, -1)
    assert torch.allclose(flat_o.mean(-1), flat_r.mean(-1), atol=1e-6)
    assert torch.allclose(flat_o.std(-1), flat_r.std(-1), rtol=1e-3)
    assert out.dtype == content.dtype
    clamped = adain_color_fix(content, ref * 4)
    assert float(clamped.max()) <= 1.0 and float(clamped.min()) >= 0.0


@pytest.mark.parametrize("fn", [wavelet_color_fix, adain_color_fix])
def test_shape_errors(fn):
    img = rand_image(1, 3, 8, 8)
    with pytest.raises(ValueError, match="reference"):
        fn(img, rand_image(1, 3, 8, 9))
    with pytest.raises(ValueError, match="reference"):
        fn(img, rand_image(2, 3, 8, 8))
    with pytest.raises(ValueError, match="content"):
        fn(rand_image(1, 1, 8, 8), rand_image(1, 1, 8, 8))
    with pytest.raises(ValueError, match="content"):
        fn(img[0], img[0])


def test_argument_errors():
    img = rand_image(1, 3, 8, 8)
    with pytest.raises(ValueError, match="levels"):
        wavelet_color_fix(img, img, levels=0)
    with pytest.raises(ValueError, match="eps"):
        adain_color_fix(img, img, eps=0.0)
    with pytest.raises(ValueError, match="content"):
        adain_color_fix(rand_image(1, 3, 1, 1), rand_image(1, 3, 1, 1))
