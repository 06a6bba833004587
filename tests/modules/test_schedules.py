import math

import pytest
import torch

from modules.guidance import apply_guidance_step
from modules.schedules import (
    COMFY_ZSNR_MIN_ALPHA_CUMPROD,
    posterior_mean_coef1,
    posterior_mean_coef2,
    q_sample_start,
    scaled_linear_alphas_cumprod,
    space_timesteps,
    spaced_sigmas,
    timesteps_from_sigmas,
)

# Values produced by IDDPM's space_timesteps (as vendored in DiffBIR v2.0.0 utils/sampler.py).
IDDPM_50 = [0, 20, 41, 61, 82, 102, 122, 143, 163, 183, 204, 224, 245, 265, 285, 306, 326, 347, 367, 387,
            408, 428, 449, 469, 489, 510, 530, 550, 571, 591, 612, 632, 652, 673, 693, 714, 734, 754, 775, 795,
            816, 836, 856, 877, 897, 917, 938, 958, 979, 999]
IDDPM_10 = [0, 111, 222, 333, 444, 555, 666, 777, 888, 999]
IDDPM_10_20_5 = [0, 37, 74, 111, 148, 185, 222, 259, 296, 333, 334, 351, 369, 386, 404, 421, 439, 456, 474,
                 491, 509, 526, 544, 561, 579, 596, 614, 631, 649, 666, 667, 750, 833, 916, 999]


def iddpm_formula(num_timesteps, counts):
    """Independent restatement of the IDDPM respacing (float accumulation, Python round)."""
    out, start = set(), 0
    for i, n in enumerate(counts):
        size = num_timesteps // len(counts) + (1 if i < num_timesteps % len(counts) else 0)
        stride = 1 if n <= 1 else (size - 1) / (n - 1)
        pos = 0.0
        for _ in range(n):
            out.add(start + round(pos))
            pos += stride
        start += size
    return sorted(out)


@pytest.mark.parametrize("counts, expected", [
    ("50", IDDPM_50), (50, IDDPM_50), ([50], IDDPM_50), ("10", IDDPM_10), ("10,20,5", IDDPM_10_20_5),
    ([3, 4], [0, 250, 499, 500, 666, 833, 999]), ("1,1,1", [0, 334, 667]),
    ("7", [0, 166, 333, 500, 666, 832, 999]),  # 832, not 833: accumulated float + round-half-even
    ("ddim50", list(range(0, 1000, 20))), ("ddim25", list(range(0, 1000, 40))), ("1", [0]),
])
def test_space_timesteps_matches_iddpm(counts, expected):
    assert space_timesteps(1000, counts) == expected


@pytest.mark.parametrize("counts", [[50], [10], [10, 20, 5], [250, 1, 100, 2], [7, 13], [999], [1000]])
def test_space_timesteps_formula(counts):
    assert space_timesteps(1000, counts) == iddpm_formula(1000, counts)
    assert space_timesteps(300, [10, 15, 20]) == iddpm_formula(300, [10, 15, 20])


@pytest.mark.parametrize("bad", ["ddim1", "1001", "abc", -3, [0, 0], "", 2.5, True])
def test_space_timesteps_rejects(bad):
    with pytest.raises(ValueError, match="section_counts"):
        space_timesteps(1000, bad)


def test_alphas_cumprod_schedule():
    a = scaled_linear_alphas_cumprod()
    assert a.dtype == torch.float64 and a.shape == (1000,)
    assert a[0].item() == pytest.approx(1 - 0.00085, abs=1e-15)
    assert a[-1].item() == pytest.approx(math.prod(1 - (0.00085 ** 0.5 + k * (0.012 ** 0.5 - 0.00085 ** 0.5) / 999) ** 2
                                                   for k in range(1000)), rel=1e-9)
    z = scaled_linear_alphas_cumprod(zero_terminal_snr=True)
    assert z[-1].item() == 0.0 and z[0].item() == pytest.approx(a[0].item(), rel=1e-12)
    ra = a.sqrt()
    assert torch.allclose(z.sqrt(), (ra - ra[-1]) * ra[0] / (ra[0] - ra[-1]), rtol=0, atol=1e-12)
    assert bool((z[1:] <= z[:-1]).all())


@pytest.mark.parametrize("steps", [1, 10, 50, 1000])
@pytest.mark.parametrize("zsnr", [False, True])
def test_spaced_sigmas_layout_and_round_trip(steps, zsnr):
    a = scaled_linear_alphas_cumprod(zero_terminal_snr=zsnr)
    s = spaced_sigmas(a, steps)
    assert s.dtype == torch.float32 and s.shape == (steps + 1,)
    assert s[-1].item() == 0.0 and bool(torch.isfinite(s).all())
    assert bool((s[1:] < s[:-1]).all())
    kept = space_timesteps(1000, str(steps))
    assert timesteps_from_sigmas(s, a).tolist() == kept[::-1]


def test_zero_snr_sigma_is_finite_and_clamped():
    z = scaled_linear_alphas_cumprod(zero_terminal_snr=True)
    s = spaced_sigmas(z, 50)
    m = COMFY_ZSNR_MIN_ALPHA_CUMPROD
    assert s[0].item() == pytest.approx(math.sqrt((1 - m) / m), rel=1e-6)  # ~4518.76, ComfyUI's sigma_max
    s8 = spaced_sigmas(z, 50, min_alpha_cumprod=1e-8)  # DiffBIR EDM-path clamp
    assert s8[0].item() == pytest.approx(math.sqrt((1 - 1e-8) / 1e-8), rel=1e-6)
    x = q_sample_start(torch.ones(1, 4, 2, 2), torch.ones(1, 4, 2, 2), z)
    assert bool(torch.isfinite(x).all())


def test_spaced_sigmas_rejects():
    a = scaled_linear_alphas_cumprod()
    for bad in (0, 1001, 2.0):
        with pytest.raises(ValueError, match="steps"):
            spaced_sigmas(a, bad)
    with pytest.raises(ValueError, match="alphas_cumprod"):
        spaced_sigmas(a.flip(0), 10)
    with pytest.raises(ValueError, match="sigmas"):
        timesteps_from_sigmas(torch.tensor([1.0, -1.0]), a)


def respaced_tables(a, steps):
    """DiffBIR SpacedSampler.make_schedule, restated: respaced betas and posterior tables (float64)."""
    kept = space_timesteps(1000, str(steps))
    ab = a[kept]
    prev = torch.cat([torch.ones(1, dtype=torch.float64), ab[:-1]])
    betas = 1 - ab / prev
    c1 = betas * prev.sqrt() / (1 - ab)
    c2 = (1 - prev) * (1 - betas).sqrt() / (1 - ab)
    var = betas * (1 - prev) / (1 - ab)
    return kept, ab, c1, c2, var


@pytest.mark.parametrize("steps", [10, 50])
def test_posterior_coefficients_match_respaced_betas(steps):
    a = scaled_linear_alphas_cumprod()
    kept, ab, c1, c2, _ = respaced_tables(a, steps)
    sig = torch.cat([((1 - ab) / ab).sqrt().flip(0), torch.zeros(1, dtype=torch.float64)])
    got1, got2 = posterior_mean_coef1(sig[:-1], sig[1:]), posterior_mean_coef2(sig[:-1], sig[1:])
    assert got1.dtype == torch.float64
    assert torch.allclose(got1, c1.flip(0), rtol=1e-10, atol=0)
    assert torch.allclose(got2, c2.flip(0), rtol=1e-10, atol=1e-14)
    assert got1[-1].item() == 1.0 and got2[-1].item() == 0.0
    s32 = spaced_sigmas(a, steps)
    assert torch.allclose(posterior_mean_coef1(s32[:-1], s32[1:]).double(), c1.flip(0), rtol=1e-4)
    with pytest.raises(ValueError, match="sigma_next"):
        posterior_mean_coef1(1.0, 2.0)
    with pytest.raises(ValueError, match="sigma"):
        posterior_mean_coef2(0.0, 0.0)


def comfy_ddpm_step(x, sigma, sigma_next, denoised, noise):
    """ComfyUI's ddpm step on the scaled x, written from the formula (abar from sigma, posterior step)."""
    x_t = x / math.sqrt(1 + sigma ** 2)
    eps = (x - denoised) / sigma
    abar, abar_prev = 1 / (sigma ** 2 + 1), 1 / (sigma_next ** 2 + 1)
    alpha = abar / abar_prev
    mean = (x_t - (1 - alpha) * eps / math.sqrt(1 - abar)) / math.sqrt(alpha)
    if sigma_next > 0:
        mean = mean + math.sqrt((1 - alpha) * (1 - abar_prev) / (1 - abar)) * noise
        return mean * math.sqrt(1 + sigma_next ** 2), mean
    return mean, mean


def test_guided_x0_moves_comfy_posterior_mean_by_delta():
    a = scaled_linear_alphas_cumprod()
    sig = spaced_sigmas(a, 10).double().tolist()
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, 4, 3, 3, generator=g, dtype=torch.float64) * math.sqrt(1 + sig[0] ** 2)
    for s, sn in zip(sig[:-1], sig[1:]):
        x0 = torch.randn(x.shape, generator=g, dtype=torch.float64)
        grad = torch.randn(x.shape, generator=g, dtype=torch.float64)
        c1 = posterior_mean_coef1(torch.tensor([s, s], dtype=torch.float64), sn)  # per-sample
        x0_mod = apply_guidance_step(x0, grad, 0.25, c1)
        delta = -(0.25 * 3000) * grad
        noise = torch.randn(x.shape, generator=g, dtype=torch.float64)
        _, mean_plain = comfy_ddpm_step(x, s, sn, x0, noise)
        x_next, mean_mod = comfy_ddpm_step(x, s, sn, x0_mod, noise)
        assert torch.allclose(mean_mod - mean_plain, delta, rtol=1e-9, atol=1e-9)
        x = x_next


def test_comfy_ddpm_over_spaced_sigmas_equals_diffbir_spaced_sampler():
    a = scaled_linear_alphas_cumprod()
    steps = 10
    kept, ab, c1, c2, var = respaced_tables(a, steps)
    sig = spaced_sigmas(a, steps).double().tolist()
    g = torch.Generator().manual_seed(1)
    x_T = torch.randn(1, 4, 4, 4, generator=g, dtype=torch.float64)
    noises = [torch.randn(x_T.shape, generator=g, dtype=torch.float64) for _ in range(steps)]

    def eps_model(x_t, t):
        return 0.3 * x_t + t / 1000.0

    x = x_T.clone()  # DiffBIR (unscaled)
    for i, t in enumerate(reversed(kept)):
        k = steps - i - 1
        x0 = x / ab[k].sqrt() - (1 / ab[k] - 1).sqrt() * eps_model(x, t)
        x = c1[k] * x0 + c2[k] * x + (k != 0) * var[k].sqrt() * noises[i]
    ref = x

    ts = timesteps_from_sigmas(torch.tensor(sig, dtype=torch.float32), a).tolist()
    x = x_T * math.sqrt(1 + sig[0] ** 2)  # ComfyUI (scaled)
    for i in range(steps):
        s = sig[i]
        denoised = x - s * eps_model(x / math.sqrt(1 + s ** 2), ts[i])
        x, _ = comfy_ddpm_step(x, s, sig[i + 1], denoised, noises[i])
    assert torch.allclose(x, ref, rtol=1e-4, atol=1e-4)


def test_q_sample_start():
    a = scaled_linear_alphas_cumprod()
    g = torch.Generator().manual_seed(2)
    c = torch.randn(2, 4, 5, 6, generator=g)
    n = torch.randn(2, 4, 5, 6, generator=g)
    x = q_sample_start(c, n, a)
    abar = a[999].item()
    sigma = math.sqrt((1 - abar) / abar)
    diffbir_xT = math.sqrt(abar) * c + math.sqrt(1 - abar) * n
    assert x.shape == c.shape and x.dtype == c.dtype
    assert torch.allclose(x / math.sqrt(1 + sigma ** 2), diffbir_xT, atol=1e-6)
    assert torch.allclose(x, c + spaced_sigmas(a, 50)[0] * n, atol=1e-5)
    assert torch.allclose(q_sample_start(c, n, a, t=0), c + math.sqrt((1 - a[0].item()) / a[0].item()) * n)
    with pytest.raises(ValueError, match="noise"):
        q_sample_start(c, n[:1], a)
    with pytest.raises(ValueError, match="t"):
        q_sample_start(c, n, a, t=1000)


# DiffBIR v2.1's noise augmentation and rescaled CFG (diffbir/pipeline.py and diffbir/sampler/sampler.py)
def test_noise_augment_is_q_sample_at_t():
    from modules.schedules import noise_augment

    betas = torch.linspace(0.00085 ** 0.5, 0.012 ** 0.5, 1000, dtype=torch.float64) ** 2
    abar = torch.cumprod(1 - betas, 0)
    g = torch.Generator().manual_seed(0)
    c, n = torch.randn(2, 4, 8, 8, generator=g), torch.randn(2, 4, 8, 8, generator=g)
    for t in (1, 200, 999):
        want = abar[t].sqrt() * c.double() + (1 - abar[t]).sqrt() * n.double()
        got = noise_augment(c, n, abar, t)
        assert got.dtype == c.dtype and torch.allclose(got.double(), want, atol=1e-6)
    assert noise_augment(c, n, abar, 0) is c
    with pytest.raises(ValueError, match="noise_aug"):
        noise_augment(c, n, abar, 1000)


def test_rescaled_cfg_follows_diffbir_formula():
    from modules.schedules import rescaled_cfg_scale

    for cfg in (1.5, 4.0, 7.5):
        for t in (0, 1, 250, 500, 999):
            want = 1 + cfg * (1 - math.cos(math.pi * ((1000 - t) / 1000) ** 5)) / 2
            assert rescaled_cfg_scale(cfg, t) == pytest.approx(want, abs=1e-12)
    assert rescaled_cfg_scale(4.0, 999) == pytest.approx(1.0, abs=1e-9)  # the noisiest step: ~1
    assert rescaled_cfg_scale(4.0, 0) == pytest.approx(5.0)  # the last: 1 + cfg
    assert rescaled_cfg_scale(1.0, 500) == 1.0 and rescaled_cfg_scale(0.5, 10) == 0.5  # DiffBIR: only cfg > 1
