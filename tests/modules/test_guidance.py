import math

import pytest
import torch

from modules.guidance import (
    apply_guidance_step,
    guidance_active,
    guidance_delta_scale,
    guidance_loss,
    guided_x0,
    resize_weight_map,
    sobel_weight_map,
)

GREY = 0.2989 + 0.5870 + 0.1140  # grey value of an RGB pixel (1, 1, 1)


def step_image(h, w, edge_col, value, dtype=torch.float64):
    """Columns >= edge_col have grey level `value` in all channels, the rest are 0."""
    img = torch.zeros(1, 3, h, w, dtype=dtype)
    img[..., edge_col:] = value
    return img


def test_flat_image_weight_is_one():
    img = torch.ones(2, 3, 6, 10) * torch.tensor([0.2, 0.7, 0.4]).view(1, 3, 1, 1)
    w = sobel_weight_map(img)
    assert w.shape == (2, 1, 6, 10) and w.dtype == img.dtype
    assert torch.equal(w, torch.ones_like(w))


def test_vertical_edge_blocks_by_hand():
    v = 0.05
    w = sobel_weight_map(step_image(4, 8, 4, v))[0, 0]
    # |Gx| = 4 * v * GREY on columns 3 and 4 only; each 2x2 block touching them holds two such pixels.
    edge = 1 - math.tanh(2 * 4 * v * GREY)
    expected = torch.tensor([1, 1, edge, edge, edge, edge, 1, 1], dtype=torch.float64).expand(4, 8)
    assert torch.allclose(w, expected, rtol=0, atol=1e-12)
    assert 0.5 < edge < 0.7


def test_odd_size_partial_blocks():
    v = 0.03
    w = sobel_weight_map(step_image(5, 7, 6, v))[0, 0]
    # Edge between columns 5 and 6: |Gx| = 4 v GREY on columns 5 and 6 (6 via replicate padding).
    full, half = 1 - math.tanh(8 * v * GREY), 1 - math.tanh(4 * v * GREY)
    expected = torch.ones(5, 7, dtype=torch.float64)
    expected[:4, 4:] = full   # blocks (rows 0-1, 2-3) x (cols 4-5) and the partial column block (col 6)
    expected[4, 4:] = half    # the partial last row block holds one pixel row
    assert torch.allclose(w, expected, rtol=0, atol=1e-12)
    for bs in (1, 3, 4):
        out = sobel_weight_map(torch.rand(2, 3, 5, 7), block_size=bs)
        assert out.shape == (2, 1, 5, 7) and bool(((out >= 0) & (out <= 1)).all())


def test_weight_map_matches_3x3_sobel_kernels():
    img = torch.rand(2, 3, 6, 8, generator=torch.Generator().manual_seed(5), dtype=torch.float64)
    grey = (img * torch.tensor([0.2989, 0.5870, 0.1140], dtype=torch.float64).view(1, 3, 1, 1)).sum(1, keepdim=True)
    gx = torch.tensor([[1, 0, -1], [2, 0, -2], [1, 0, -1]], dtype=torch.float64)
    gy = torch.tensor([[1, 2, 1], [0, 0, 0], [-1, -2, -1]], dtype=torch.float64)
    grad = torch.nn.functional.conv2d(torch.nn.functional.pad(grey, (1, 1, 1, 1), mode="replicate"),
                                      torch.stack([gx, gy]).unsqueeze(1))
    mag = grad.pow(2).sum(1, keepdim=True).sqrt()
    blocks = mag.view(2, 1, 3, 2, 4, 2).sum(dim=(3, 5)).tanh()
    expected = 1 - blocks.repeat_interleave(2, 2).repeat_interleave(2, 3)
    assert torch.allclose(sobel_weight_map(img), expected, atol=1e-12)


def test_weight_map_rejects_bad_input():
    with pytest.raises(ValueError, match="image"):
        sobel_weight_map(torch.rand(1, 1, 4, 4))
    with pytest.raises(ValueError, match="block_size"):
        sobel_weight_map(torch.rand(1, 3, 4, 4), block_size=0)


def test_resize_weight_map_area_is_block_mean():
    w = torch.rand(2, 1, 16, 24)
    small = resize_weight_map(w, (2, 3))
    assert small.shape == (2, 1, 2, 3)
    assert torch.allclose(small, w.view(2, 1, 2, 8, 3, 8).mean(dim=(3, 5)), atol=1e-6)
    assert resize_weight_map(w, 4, mode="bilinear").shape == (2, 1, 4, 4)
    with pytest.raises(ValueError, match="mode"):
        resize_weight_map(w, 4, mode="cubic")
    with pytest.raises(ValueError, match="size"):
        resize_weight_map(w, (0, 4))


def test_loss_gradient_matches_finite_differences():
    g = torch.Generator().manual_seed(0)
    pred = torch.rand(2, 3, 4, 5, generator=g, dtype=torch.float64, requires_grad=True)
    target = torch.rand(2, 3, 4, 5, generator=g, dtype=torch.float64)
    weight = torch.rand(2, 1, 4, 5, generator=g, dtype=torch.float64)
    (grad,) = torch.autograd.grad(guidance_loss(pred, target, weight), pred)
    assert torch.allclose(grad, 2 * weight * (pred - target) / 60, atol=1e-14)
    eps = 1e-6
    for idx in [(0, 0, 0, 0), (1, 2, 3, 4), (0, 1, 2, 3), (1, 0, 1, 1)]:
        plus, minus = pred.detach().clone(), pred.detach().clone()
        plus[idx] += eps
        minus[idx] -= eps
        fd = (guidance_loss(plus, target, weight) - guidance_loss(minus, target, weight)) / (2 * eps)
        assert fd.item() == pytest.approx(grad[idx].item(), rel=1e-6, abs=1e-10)


def test_loss_sums_over_batch_and_plain_mse():
    g = torch.Generator().manual_seed(1)
    pred, target = torch.randn(3, 4, 5, 5, generator=g), torch.randn(3, 4, 5, 5, generator=g)
    per_sample = [guidance_loss(pred[i:i + 1], target[i:i + 1]) for i in range(3)]
    total = guidance_loss(pred, target)
    assert total.ndim == 0
    assert total.item() == pytest.approx(sum(p.item() for p in per_sample), rel=1e-6)
    assert total.item() == pytest.approx(3 * torch.mean((pred - target) ** 2).item(), rel=1e-6)
    assert guidance_loss(pred, target, torch.ones(1, 1, 5, 5)).item() == pytest.approx(total.item(), rel=1e-6)
    with pytest.raises(ValueError, match="target"):
        guidance_loss(pred, target[:, :3])
    with pytest.raises(ValueError, match="weight"):
        guidance_loss(pred, target, torch.ones(1, 1, 4, 4))


def test_apply_guidance_step_closed_form():
    g = torch.Generator().manual_seed(2)
    x0, grad = torch.randn(2, 4, 3, 3, generator=g), torch.randn(2, 4, 3, 3, generator=g)
    c1 = torch.tensor([0.2, 0.5])
    out = apply_guidance_step(x0, grad, 0.5, c1)
    expected = x0 - 1500.0 * grad / c1.view(2, 1, 1, 1)
    assert torch.allclose(out, expected, rtol=1e-6)
    assert torch.allclose(apply_guidance_step(x0, grad, 0.5, 0.25), x0 - 6000.0 * grad, rtol=1e-6)
    assert guidance_delta_scale(0.5) == 1500.0
    with pytest.raises(ValueError, match="coef1"):
        apply_guidance_step(x0, grad, 0.5, 0.0)
    with pytest.raises(ValueError, match="coef1"):
        apply_guidance_step(x0, grad, 0.5, torch.ones(3))
    with pytest.raises(ValueError, match="scale"):
        apply_guidance_step(x0, grad, -1.0, 1.0)


def test_guidance_active_window():
    assert guidance_active(999, 1001, -1) and guidance_active(0, 1001, -1)
    assert not guidance_active(599, 600, -1) and guidance_active(598, 600, -1)
    assert not guidance_active(199, 1001, 200) and guidance_active(200, 1001, 200)
    with pytest.raises(ValueError, match="g_start"):
        guidance_active(10, 1.5, 0)


@pytest.mark.parametrize("mode", ["inference_mode", "no_grad"])
def test_guided_x0_identity_decode_reduces_loss(mode):
    ctx = torch.inference_mode() if mode == "inference_mode" else torch.no_grad()
    with ctx:
        g = torch.Generator().manual_seed(3)
        x0 = torch.randn(2, 4, 6, 6, generator=g)
        target = torch.randn(2, 4, 6, 6, generator=g)
        weight = torch.rand(2, 1, 6, 6, generator=g)
        before = x0.clone()
        out = guided_x0(x0, target, lambda z: z, scale=0.001, coef1=torch.tensor([1.0, 2.0]), weight=weight, repeat=2)
        assert torch.equal(x0, before)
    assert out.shape == x0.shape and not out.requires_grad
    assert guidance_loss(out, target, weight) < guidance_loss(x0, target, weight)
    # closed form of two repeats with identity decode: x <- x - 3 * 2 w (x - t) / (C H W) / c1
    x = before.clone()
    for _ in range(2):
        x = x - 3.0 * (2 * weight * (x - target) / 144) / torch.tensor([1.0, 2.0]).view(2, 1, 1, 1)
    assert torch.allclose(out, x, atol=1e-6)


def test_guided_x0_backpropagates_through_decoder():
    conv = torch.nn.Conv2d(4, 3, 1)  # created outside inference mode: normal parameters
    up = torch.nn.Upsample(scale_factor=2)

    def decode(z):
        return up(conv(z))

    g = torch.Generator().manual_seed(4)
    x0, target = torch.randn(1, 4, 3, 3, generator=g), torch.rand(1, 3, 6, 6, generator=g)
    with torch.inference_mode():
        out = guided_x0(x0, target, decode, scale=1e-4, coef1=0.5)
    leaf = x0.clone().requires_grad_(True)
    (grad,) = torch.autograd.grad(guidance_loss(decode(leaf), target), leaf)
    assert torch.allclose(out, x0 - 0.3 * grad / 0.5, atol=1e-6)


def test_guided_x0_scale_zero_is_identity_without_decode():
    x0 = torch.randn(1, 4, 3, 3)

    def decode(z):
        raise AssertionError("decode must not be called")

    out = guided_x0(x0, torch.zeros(1, 4, 3, 3), decode, scale=0.0, coef1=0.3)
    assert torch.equal(out, x0) and out is not x0
    with pytest.raises(ValueError, match="repeat"):
        guided_x0(x0, x0, lambda z: z, 0.1, 0.3, repeat=0)
