"""Memory-bounded guidance gradients (pure torch): checkpointed blocks, tiled decode-and-backward with a halo,
fp16 gradient scaling. Tiny decoders are built here; every comparison is against the plain untiled gradient."""

import copy

import pytest
import torch
import torch.nn.functional as F
from torch.utils._python_dispatch import TorchDispatchMode

from modules.guidance import (
    Checkpointed,
    checkpoint_blocks,
    fp16_grad_scaling,
    guidance_grad,
    guidance_loss,
    guided_x0,
)


class LocalDecoder(torch.nn.Module):
    """Pixel-local decoder: 1x1 convolutions and nearest upsampling (x4), so each output pixel depends on one
    latent pixel only."""

    def __init__(self):
        super().__init__()
        self.a, self.b, self.c = torch.nn.Conv2d(4, 16, 1), torch.nn.Conv2d(16, 16, 1), torch.nn.Conv2d(16, 3, 1)

    def forward(self, z):
        h = F.interpolate(F.silu(self.a(z)), scale_factor=2.0, mode="nearest")
        h = F.interpolate(torch.tanh(self.b(h)), scale_factor=2.0, mode="nearest")
        return self.c(h)


class Conv3Decoder(LocalDecoder):
    """3x3 convolutions with zero padding and nearest upsampling (x4): receptive field under 2 latent px."""

    def __init__(self):
        torch.nn.Module.__init__(self)
        self.a = torch.nn.Conv2d(4, 16, 3, padding=1)
        self.b = torch.nn.Conv2d(16, 16, 3, padding=1)
        self.c = torch.nn.Conv2d(16, 3, 3, padding=1)


class Block(torch.nn.Module):
    """A residual block like the VAE's (GroupNorm, in-place SiLU, 3x3 convolutions), called with an extra arg."""

    def __init__(self, ch):
        super().__init__()
        self.norm = torch.nn.GroupNorm(4, ch)
        self.act = torch.nn.SiLU(inplace=True)
        self.conv = torch.nn.Conv2d(ch, ch, 3, padding=1)

    def forward(self, x, temb=None):
        return x + self.conv(self.act(self.norm(x)))


class Up(torch.nn.Module):
    def __init__(self, ch):
        super().__init__()
        self.conv = torch.nn.Conv2d(ch, ch, 3, padding=1)

    def forward(self, x):
        return self.conv(F.interpolate(x, scale_factor=2.0, mode="nearest"))


class BlockDecoder(torch.nn.Module):
    def __init__(self, ch=16):
        super().__init__()
        self.conv_in = torch.nn.Conv2d(4, ch, 3, padding=1)
        self.blocks = torch.nn.ModuleList([Block(ch), Block(ch)])
        self.up = torch.nn.ModuleList([Up(ch), Up(ch)])
        self.conv_out = torch.nn.Conv2d(ch, 3, 3, padding=1)

    def forward(self, z):
        h = self.conv_in(z)
        for block, up in zip(self.blocks, self.up, strict=True):
            h = up(block(h, None))
        return self.conv_out(h)


def frozen(module, seed=0):
    torch.manual_seed(seed)
    return module().requires_grad_(False).eval()


def data(b=2, h=13, w=11, scale=4, seed=1, weight_batch=1):
    g = torch.Generator().manual_seed(seed)
    x0 = torch.randn(b, 4, h, w, generator=g)
    target = torch.rand(b, 3, h * scale, w * scale, generator=g) * 2 - 1
    weight = torch.rand(weight_batch, 1, h * scale, w * scale, generator=g)
    return x0, target, weight


def rel(a, b):
    return float((a - b).abs().max() / b.abs().max())


def test_checkpointed_gradient_equals_the_plain_one_and_stores_less():
    dec = frozen(BlockDecoder)
    ckpt = copy.deepcopy(dec)
    assert checkpoint_blocks(ckpt, (Block, Up)) == 4
    assert checkpoint_blocks(ckpt, (Block, Up)) == 0  # already wrapped blocks are left alone
    assert isinstance(ckpt.blocks[0], Checkpointed) and not isinstance(dec.blocks[0], Checkpointed)
    x0, target, weight = data(h=12, w=10)
    loss0, g0 = guidance_grad(x0, target, dec, weight)
    loss1, g1 = guidance_grad(x0, target, ckpt, weight)
    assert torch.allclose(loss1, loss0, rtol=1e-6, atol=0)
    assert (g1 - g0).abs().max() <= 1e-6 * g0.abs().max()
    with torch.no_grad():
        assert torch.equal(ckpt(x0), dec(x0))

    def saved_bytes(model):
        total = [0]

        def pack(t):
            total[0] += t.numel() * t.element_size()
            return t

        leaf = x0.clone().requires_grad_(True)
        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            model(leaf).sum()
        return total[0]

    assert saved_bytes(ckpt) < 0.5 * saved_bytes(dec)


def test_tiled_gradient_is_exact_for_a_pixel_local_decoder():
    dec = frozen(LocalDecoder)
    for weight_batch in (1, 2):
        x0, target, weight = data(weight_batch=weight_batch)
        loss0, g0 = guidance_grad(x0, target, dec, weight)
        for tile, halo in ((4, 8), (5, 0), (3, 2)):
            loss1, g1 = guidance_grad(x0, target, dec, weight, tile=tile, halo=halo)
            assert torch.allclose(g1, g0, rtol=1e-5, atol=1e-6 * float(g0.abs().max())), (tile, halo)
            assert torch.allclose(loss1, loss0, rtol=1e-6, atol=0), (tile, halo)
    # no weight (plain mse) too
    l0, g0 = guidance_grad(x0, target, dec)
    l1, g1 = guidance_grad(x0, target, dec, tile=4)
    assert torch.allclose(g1, g0, rtol=1e-5, atol=1e-6 * float(g0.abs().max())) and torch.allclose(l1, l0)


def test_tiled_gradient_of_a_3x3_decoder_matches_when_the_halo_covers_its_receptive_field():
    dec = frozen(Conv3Decoder)
    x0, target, weight = data()
    loss0, g0 = guidance_grad(x0, target, dec, weight)
    loss1, g1 = guidance_grad(x0, target, dec, weight, tile=4)  # default halo 8 latent px
    assert rel(g1, g0) < 1e-5  # measured 4.7e-7: float rounding only
    assert torch.allclose(loss1, loss0, rtol=1e-5)
    # the halo is what makes it right: without it the border pixels see zero padding
    _, g_nohalo = guidance_grad(x0, target, dec, weight, tile=4, halo=0)
    assert rel(g_nohalo, g0) > 0.05  # measured 0.3-0.8


def test_a_single_tile_covering_the_latent_is_the_untiled_computation():
    dec = frozen(Conv3Decoder)
    x0, target, weight = data()
    loss0, g0 = guidance_grad(x0, target, dec, weight)
    for tile in (13, 20):
        loss1, g1 = guidance_grad(x0, target, dec, weight, tile=tile)
        assert torch.equal(g1, g0) and torch.equal(loss1, loss0)
    # and the untiled result is the plain autograd gradient of guidance_loss
    leaf = x0.clone().requires_grad_(True)
    loss = guidance_loss(dec(leaf), target, weight)
    (ref,) = torch.autograd.grad(loss, leaf)
    assert torch.allclose(g0, ref) and torch.allclose(loss0, loss.detach())


def test_tile_losses_sum_to_the_full_loss_and_scale_comes_from_the_decoder():
    dec = frozen(LocalDecoder)
    x0, target, weight = data(h=9, w=7)
    per_tile = []

    def decode(z):
        out = dec(z)
        per_tile.append(out.detach())
        return out

    full, _ = guidance_grad(x0, target, dec, weight)
    total, _ = guidance_grad(x0, target, decode, weight, tile=4, halo=0)
    assert len(per_tile) == 3 * 2
    # each core's share: its weighted squared error summed, over C*H*W of the whole image
    n = target[0].numel()
    shares = []
    for i, (ty, tx) in enumerate([(a, b) for a in (0, 4, 8) for b in (0, 4)]):
        ys, xs = slice(4 * ty, 4 * min(9, ty + 4)), slice(4 * tx, 4 * min(7, tx + 4))
        err = weight[..., ys, xs] * (per_tile[i] - target[..., ys, xs]) ** 2
        shares.append(float(err.sum()) / n)
    assert sum(shares) == pytest.approx(float(full), rel=1e-5)
    assert float(total) == pytest.approx(float(full), rel=1e-6)
    # a target that does not have the decoder's scale is refused with both sizes named
    with pytest.raises(ValueError, match="decoded size"):
        guidance_grad(x0, target[..., :-4, :], dec, None, tile=4)


def test_check_is_called_once_per_tile_and_its_exception_stops_the_loop():
    dec = frozen(LocalDecoder)
    x0, target, weight = data(h=9, w=7)
    calls = {"check": 0, "decode": 0}

    def check():
        calls["check"] += 1

    def decode(z):
        calls["decode"] += 1
        return dec(z)

    guidance_grad(x0, target, decode, weight, tile=4, check=check)
    assert calls == {"check": 6, "decode": 6}  # 3 x 2 tiles
    guidance_grad(x0, target, decode, weight, check=check)  # untiled = one tile
    assert calls == {"check": 7, "decode": 7}

    class Cancelled(Exception):
        pass

    def cancel_on_third():
        calls["check"] += 1
        if calls["check"] == 10:
            raise Cancelled

    with pytest.raises(Cancelled):
        guidance_grad(x0, target, decode, weight, tile=4, check=cancel_on_third)
    assert calls == {"check": 10, "decode": 9}


def test_guided_x0_with_tiles_equals_untiled_for_a_local_decoder_under_inference_mode():
    dec = frozen(LocalDecoder)
    x0, target, weight = data()
    with torch.inference_mode():
        a = guided_x0(x0, target, dec, 1e-3, 0.5, weight=weight, repeat=2)
        b = guided_x0(x0, target, dec, 1e-3, 0.5, weight=weight, repeat=2, tile=4, check=lambda: None)
    assert not torch.equal(a, x0)
    assert torch.allclose(a, b, rtol=1e-6, atol=1e-6)


class DtypeRecorder(TorchDispatchMode):
    """Records the dtype of every tensor an aten op returns (the backward pass included)."""

    def __init__(self):
        super().__init__()
        self.dtypes = set()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in out if isinstance(out, (tuple, list)) else (out,):
            if isinstance(t, torch.Tensor):
                self.dtypes.add(t.dtype)
        return out


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_no_float64_on_the_gradient_path(dtype):
    dec = copy.deepcopy(frozen(BlockDecoder)).to(dtype)
    checkpoint_blocks(dec, (Block, Up))
    x0, target, weight = data(h=8, w=8)

    def decode(z):
        return dec(z.to(dtype)).float()

    rec = DtypeRecorder()
    with rec:
        loss, grad = guidance_grad(x0, target, decode, weight, tile=4)
    assert torch.float64 not in rec.dtypes and dtype in rec.dtypes
    assert loss.dtype == grad.dtype == torch.float32 and torch.isfinite(grad).all()


def test_fp16_gradient_scaling_keeps_the_backward_from_underflowing():
    ref_dec = frozen(Conv3Decoder)
    half = copy.deepcopy(ref_dec).half()
    g = torch.Generator().manual_seed(3)
    x0 = torch.randn(1, 4, 64, 64, generator=g)
    with torch.no_grad():
        target = ref_dec(x0) + 0.1 * torch.randn(1, 3, 256, 256, generator=g)

    def decode16(z):
        return half(z.half()).float()

    _, g32 = guidance_grad(x0, target, ref_dec)
    _, g_plain = guidance_grad(x0, target, decode16)
    _, g_scaled = guidance_grad(x0, target, fp16_grad_scaling(decode16))
    err_plain = float((g_plain - g32).norm() / g32.norm())
    err_scaled = float((g_scaled - g32).norm() / g32.norm())
    assert g_scaled.dtype == torch.float32
    assert err_scaled < 0.01 and err_plain > 5 * err_scaled, (err_plain, err_scaled)  # measured 0.0022 vs 0.13
    with torch.no_grad():  # forward values unchanged by the wrapper
        assert torch.equal(fp16_grad_scaling(decode16)(x0), decode16(x0))


def test_bad_arguments_are_refused():
    dec = frozen(LocalDecoder)
    x0, target, weight = data()
    with pytest.raises(ValueError, match="tile"):
        guidance_grad(x0, target, dec, weight, tile=-1)
    with pytest.raises(ValueError, match="halo"):
        guidance_grad(x0, target, dec, weight, halo=1.5)
    with pytest.raises(ValueError, match="check"):
        guidance_grad(x0, target, dec, weight, check=3)
    with pytest.raises(ValueError, match="target"):
        guidance_grad(x0, target[:1], dec, weight)
