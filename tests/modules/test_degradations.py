"""Tier-1 tests of modules.degradations (CPU, small images, no ComfyUI)."""

from __future__ import annotations

import ast
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from modules.degradations import (
    CODEFORMER_PRESETS,
    CODEFORMER_RANGES,
    MILD_RANGES,
    REALESRGAN_RANGES,
    codeformer_degrade,
    codeformer_sample_params,
    mild_degrade,
    mild_sample_params,
    realesrgan_degrade,
    realesrgan_sample_params,
)
from modules.degradations.kernels import (
    KERNEL_TYPES,
    build_kernels,
    gaussian_kernels,
    pulse_kernels,
    sample_kernel_params,
    sinc_kernels,
)
from modules.degradations.ops import (
    add_gaussian_noise,
    add_poisson_noise,
    filter2d,
    jpeg,
    quantize_8bit,
    reflect_pad,
    resize,
)

PIPELINES = {"realesrgan": realesrgan_degrade, "codeformer": codeformer_degrade, "mild": mild_degrade}
EPS = 1e-9


def gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def images(b=2, h=32, w=32, seed=0) -> torch.Tensor:
    g = gen(seed)
    base = torch.rand(b, 3, 1, 1, generator=g)
    return (0.6 * base + 0.4 * torch.rand(b, 3, h, w, generator=g)).clamp(0, 1)


def within(t, rng) -> bool:
    t = torch.as_tensor(t, dtype=torch.float64)
    return bool(((t >= rng[0] - EPS) & (t <= rng[1] + EPS)).all())


def check_kernel_fields(p, prefix, cfg_types, sizes, sigma, betag, betap, rot, small, large, below):
    types, size = p[f"{prefix}_type"], p[f"{prefix}_size"]
    k = p[prefix]
    assert k.shape == (len(types), max(sizes), max(sizes))
    assert torch.allclose(k.sum((1, 2)), torch.ones(len(types), dtype=k.dtype), atol=1e-9)
    assert set(size.tolist()) <= set(sizes)
    assert set(types) <= set(cfg_types) | {"sinc"}
    assert within(p[f"{prefix}_sigma_x"], sigma) and within(p[f"{prefix}_sigma_y"], sigma)
    assert within(p[f"{prefix}_rotation"], rot)
    for i, t in enumerate(types):
        half, c = int(size[i]) // 2, max(sizes) // 2
        outside = k[i].clone()
        outside[c - half:c + half + 1, c - half:c + half + 1] = 0
        assert float(outside.abs().max()) == 0.0  # zero padding beyond the drawn size
        beta = float(p[f"{prefix}_beta"][i])
        if t.startswith("generalized"):
            assert betag[0] - EPS <= beta <= betag[1] + EPS
        elif t.startswith("plateau"):
            assert betap[0] - EPS <= beta <= betap[1] + EPS
        if t in ("iso", "generalized_iso", "plateau_iso"):
            assert float(p[f"{prefix}_sigma_y"][i]) == float(p[f"{prefix}_sigma_x"][i])
            assert float(p[f"{prefix}_rotation"][i]) == 0.0
        if t == "sinc":
            rng = small if int(size[i]) < below else large
            assert rng[0] - EPS <= float(p[f"{prefix}_omega"][i]) <= rng[1] + EPS
        else:
            assert float(k[i].min()) >= 0.0


# ----------------------------------------------------------------------------- parameter ranges (many draws)

@pytest.mark.parametrize("per_sample", [False, True])
def test_realesrgan_param_ranges(per_sample):
    r = REALESRGAN_RANGES
    for seed in range(40):  # 40 x 5 = 200 draws
        p = realesrgan_sample_params(5, gen(seed), per_sample=per_sample)
        for s in ("1", "2"):
            check_kernel_fields(p, f"kernel{s}", r["kernel_types"], r["kernel_sizes"], r[f"blur{s}_sigma_range"],
                                r[f"betag{s}_range"], r[f"betap{s}_range"], r["rotation_range"],
                                r["sinc_omega_small_range"], r["sinc_omega_large_range"], r["sinc_small_kernel_below"])
            lo, hi = r[f"resize{s}_range"]
            for d, f in zip(p[f"resize{s}_direction"], p[f"resize{s}_scale"].tolist()):
                assert {"up": 1 - EPS <= f <= hi + EPS, "down": lo - EPS <= f <= 1 + EPS, "keep": f == 1.0}[d]
            assert set(p[f"resize{s}_mode"]) <= set(r["resize_modes"])
            assert set(p[f"noise{s}_type"]) <= {"gaussian", "poisson"}
            assert within(p[f"noise{s}_gaussian_sigma"], r[f"noise{s}_sigma_range"])
            assert within(p[f"noise{s}_poisson_scale"], r[f"poisson{s}_scale_range"])
            assert p[f"noise{s}_gray"].dtype == torch.bool
            assert within(p[f"jpeg{s}_quality"], r[f"jpeg{s}_range"])
        assert set(p["final_sinc_size"].tolist()) <= set(r["kernel_sizes"])
        assert within(p["final_sinc_omega"], r["final_sinc_omega_range"])
        pulse = pulse_kernels(5, 21)
        for i, applied in enumerate(p["final_sinc_applied"].tolist()):
            assert torch.equal(p["final_sinc_kernel"][i], pulse[i]) != applied
        assert torch.all(p["scale"] == 4)
        if not per_sample:  # the reference draws these once per batch
            for key in ("resize1_scale", "resize2_scale", "blur2_applied", "sinc_first"):
                assert len(set(p[key].tolist())) == 1
            for key in ("resize1_mode", "noise1_type", "noise2_type", "final_resize_mode"):
                assert len(set(p[key])) == 1


def test_realesrgan_frequencies():
    n = 4000
    p = realesrgan_sample_params(n, gen(7), per_sample=True)
    r = REALESRGAN_RANGES
    assert abs(float(p["kernel1_sinc"].double().mean()) - r["sinc1_prob"]) < 0.03
    non_sinc = [t for t in p["kernel1_type"] if t != "sinc"]
    for t, prob in zip(KERNEL_TYPES, r["kernel1_probs"]):
        assert abs(non_sinc.count(t) / len(non_sinc) - prob) < 0.035
    assert abs(float(p["noise1_gray"].double().mean()) - 0.4) < 0.035
    assert abs(float(p["final_sinc_applied"].double().mean()) - 0.8) < 0.03
    assert abs(float(p["blur2_applied"].double().mean()) - 0.8) < 0.03
    assert abs(p["resize2_direction"].count("keep") / n - 0.3) < 0.035
    # plateau beta: half exactly 1 (reference draws U(1, 1) in the "low" half)
    plateau = [float(b) for t, b in zip(p["kernel1_type"], p["kernel1_beta"]) if t.startswith("plateau")]
    assert 0.3 < sum(b == 1.0 for b in plateau) / len(plateau) < 0.7


@pytest.mark.parametrize("preset", list(CODEFORMER_PRESETS))
def test_codeformer_param_ranges(preset):
    r = CODEFORMER_PRESETS[preset]
    for seed in range(40):
        p = codeformer_sample_params(5, gen(seed), preset=preset)
        check_kernel_fields(p, "kernel", r["kernel_types"], (r["kernel_size"],), r["blur_sigma_range"],
                            r["betag_range"], r["betap_range"], r["rotation_range"], (0, 0), (0, 0), 13)
        assert torch.all(p["kernel_size"] == 41) and bool(p["blur_applied"].all())
        assert within(p["downsample"], r["downsample_range"])
        assert within(p["noise_sigma"], r["noise_sigma_range"])
        q = p["jpeg_quality"]
        assert q.dtype == torch.int64 and within(q, (r["jpeg_range"][0], r["jpeg_range"][1] - 1))


def test_codeformer_exact_ranges():
    r = CODEFORMER_RANGES
    assert r is CODEFORMER_PRESETS["diffbir"]
    assert (r["kernel_size"], r["kernel_types"], r["kernel_probs"]) == (41, ("iso", "aniso"), (0.5, 0.5))
    assert (r["blur_sigma_range"], r["downsample_range"], r["noise_sigma_range"], r["jpeg_range"]) == \
        ((0.1, 12.0), (1.0, 12.0), (0.0, 15.0), (30.0, 100.0))
    assert CODEFORMER_PRESETS["diffbir_face"]["downsample_range"] == (0.8, 8.0)
    assert CODEFORMER_PRESETS["codeformer_large"]["jpeg_range"] == (30.0, 80.0)
    assert CODEFORMER_PRESETS["codeformer_small"]["blur_sigma_range"] == (0.1, 10.0)
    assert MILD_RANGES["kernel_sizes"] == (3, 5, 7, 9, 11) and MILD_RANGES["blur_prob"] == 0.5
    with pytest.raises(TypeError):
        REALESRGAN_RANGES["sinc1_prob"] = 0.5  # read-only
    with pytest.raises(TypeError):
        CODEFORMER_PRESETS["diffbir"]["kernel_size"] = 21


def test_mild_param_ranges_and_fixed_bugs():
    r = MILD_RANGES
    for seed in range(40):
        p = mild_sample_params(5, gen(seed))
        check_kernel_fields(p, "kernel", r["kernel_types"], r["kernel_sizes"], r["blur_sigma_range"],
                            r["betag_range"], r["betap_range"], r["rotation_range"], (0, 0), (0, 0), 13)
        assert within(p["downsample"], (0.8, 4.0)) and within(p["noise_sigma"], (0.0, 25.0))
        assert within(p["jpeg_quality"], (60, 99))
    p = mild_sample_params(4000, gen(1))
    assert abs(float(p["blur_applied"].double().mean()) - 0.5) < 0.03  # exact 0.5, not upstream's ~0.55
    sizes = p["kernel_size"].tolist()
    assert set(sizes) == {3, 5, 7, 9, 11}  # drawn per sample, not once
    assert all(abs(sizes.count(s) / 4000 - 0.2) < 0.03 for s in (3, 5, 7, 9, 11))


def test_sample_params_match_pipeline_params():
    x = images(3, 24, 24)
    for fn, sp in ((realesrgan_degrade, realesrgan_sample_params), (codeformer_degrade, codeformer_sample_params),
                   (mild_degrade, mild_sample_params)):
        _, p = fn(x, gen(5))
        q = sp(3, gen(5))
        assert p.keys() == q.keys()
        for k in p:
            assert (torch.equal(p[k], q[k]) if isinstance(p[k], torch.Tensor) else p[k] == q[k]), k


# ----------------------------------------------------------------------------- outputs

@pytest.mark.parametrize("name", list(PIPELINES))
@pytest.mark.parametrize("shape", [(1, 32, 32), (3, 37, 53), (2, 5, 7), (1, 1, 1)])
def test_output_shape_dtype_range(name, shape):
    b, h, w = shape
    x = images(b, h, w)
    before = x.clone()
    y, _ = PIPELINES[name](x, gen(3))
    assert y.shape == x.shape and y.dtype == torch.float32 and y.device == x.device
    assert float(y.min()) >= 0.0 and float(y.max()) <= 1.0 and bool(torch.isfinite(y).all())
    assert torch.equal(x, before)  # input not modified
    if name == "realesrgan":  # the reference rounds its output to 8-bit levels
        assert torch.allclose(y * 255, (y * 255).round(), atol=1e-4)


@pytest.mark.parametrize("name", list(PIPELINES))
def test_determinism(name):
    x = images(2, 40, 36)
    fn = PIPELINES[name]
    a, pa = fn(x, gen(11))
    b, pb = fn(x, gen(11))
    assert torch.equal(a, b)
    assert all(torch.equal(pa[k], pb[k]) if isinstance(pa[k], torch.Tensor) else pa[k] == pb[k] for k in pa)
    c, _ = fn(x, gen(12))
    assert not torch.equal(a, c)


def test_global_rng_untouched():
    torch.manual_seed(123)
    state = torch.get_rng_state()
    np_state = np.random.get_state()[1].copy()
    x = images(2, 24, 24)
    for fn in PIPELINES.values():
        fn(x, gen(0))
    realesrgan_degrade(x, gen(0), per_sample=True)
    assert torch.equal(torch.get_rng_state(), state)
    assert np.array_equal(np.random.get_state()[1], np_state)


def test_realesrgan_scale_and_per_sample():
    x = images(3, 33, 29)
    y1, p1 = realesrgan_degrade(x, gen(2), scale=1)
    assert y1.shape == x.shape and torch.all(p1["scale"] == 1)
    y2, p2 = realesrgan_degrade(x, gen(2), scale=(2, 4))
    assert y2.shape == x.shape and within(p2["scale"], (2, 4)) and len(set(p2["scale"].tolist())) == 1
    y3, p3 = realesrgan_degrade(x, gen(2), per_sample=True)
    y3b, _ = realesrgan_degrade(x, gen(2), per_sample=True)
    assert y3.shape == x.shape and torch.equal(y3, y3b)
    assert len(set(p3["resize1_scale"].tolist())) > 1  # drawn per sample


def test_overrides_change_behaviour():
    x = images(4, 32, 32)
    _, p = mild_degrade(x, gen(0), blur_prob=0.0)
    assert not bool(p["blur_applied"].any())
    _, p = codeformer_degrade(x, gen(0), jpeg_range=[90, 90], noise_sigma_range=(0, 0))
    assert torch.all(p["jpeg_quality"] == 90) and torch.all(p["noise_sigma"] == 0)
    p = realesrgan_sample_params(50, gen(0), sinc1_prob=1.0, kernel_sizes=(7, 9))
    assert set(p["kernel1_type"]) == {"sinc"} and p["kernel1"].shape[-1] == 9
    y, _ = codeformer_degrade(x, gen(0), preset="codeformer_large")
    assert y.shape == x.shape


# ----------------------------------------------------------------------------- kernels

def test_gaussian_kernels_match_separable_and_symmetry():
    k = gaussian_kernels(torch.tensor([0.5, 2.0, 7.0]), size=21)
    ax = torch.arange(21, dtype=torch.float64) - 10
    for i, s in enumerate((0.5, 2.0, 7.0)):
        g1 = torch.exp(-ax**2 / (2 * s * s))
        ref = torch.outer(g1, g1)
        assert torch.allclose(k[i], ref / ref.sum(), atol=1e-12)
    assert torch.allclose(k, k.transpose(1, 2)) and torch.allclose(k, k.flip(1)) and torch.allclose(k, k.flip(2))
    aniso = gaussian_kernels(torch.tensor([3.0]), torch.tensor([0.7]), torch.tensor([0.6]), size=15)
    assert torch.allclose(aniso, aniso.flip(1).flip(2))  # point-symmetric
    assert not torch.allclose(aniso, aniso.transpose(1, 2))
    assert torch.allclose(aniso.sum((1, 2)), torch.ones(1, dtype=torch.float64))


def test_sampled_kernels_sum_to_one_and_are_point_symmetric():
    kp = sample_kernel_params(300, gen(4), kernel_types=KERNEL_TYPES, kernel_probs=[1] * 6,
                              kernel_sizes=(3, 7, 13, 21), sigma_range=(0.2, 3.0), betag_range=(0.5, 4),
                              betap_range=(1, 2), sinc_prob=0.2)
    k = build_kernels(kp, 21)
    assert torch.allclose(k.sum((1, 2)), torch.ones(300, dtype=k.dtype), atol=1e-10)
    assert torch.allclose(k, k.flip(1).flip(2), atol=1e-12)
    iso = [i for i, t in enumerate(kp["type"]) if t in ("iso", "generalized_iso", "plateau_iso", "sinc")]
    assert torch.allclose(k[iso], k[iso].transpose(1, 2), atol=1e-12)


def test_sinc_kernel_properties():
    omegas = torch.tensor([math.pi / 5, math.pi / 3, 2.0, math.pi])
    k = sinc_kernels(omegas, size=13, pad_to=21)
    assert k.shape == (4, 21, 21)
    assert torch.allclose(k.sum((1, 2)), torch.ones(4, dtype=k.dtype), atol=1e-12)
    assert torch.allclose(k, k.transpose(1, 2)) and torch.allclose(k, k.flip(1)) and torch.allclose(k, k.flip(2))
    assert float(k[:, :4].abs().max()) == 0.0 and float(k[:, :, -4:].abs().max()) == 0.0  # padded 13 -> 21
    c = 10
    # ratio of neighbour to centre: omega J1(omega) / (2 pi) over omega^2 / (4 pi) = 2 J1(omega) / omega
    ratio = k[:, c, c + 1] / k[:, c, c]
    assert torch.allclose(ratio, 2 * torch.special.bessel_j1(omegas.double()) / omegas.double(), atol=1e-6)
    assert bool((k[:, c, c] == k.amax((1, 2))).all())  # peak at the centre
    assert bool((k[:, c, c].diff() > 0).all())  # lower cut-off -> wider, flatter kernel
    assert float(k[0].min()) < 0  # ringing lobes
    p = realesrgan_sample_params(200, gen(9), sinc1_prob=1.0)
    small = p["kernel1_size"] < 13
    assert within(p["kernel1_omega"][small], (math.pi / 3, math.pi))
    assert within(p["kernel1_omega"][~small], (math.pi / 5, math.pi))


# ----------------------------------------------------------------------------- ops

@pytest.mark.parametrize("pad", [0, 2, 6, 15])
def test_reflect_pad_matches_numpy_reflect(pad):
    x = torch.rand(1, 2, 7, 5, generator=gen(0))
    ref = np.pad(x.numpy(), ((0, 0), (0, 0), (pad, pad), (pad, pad)), mode="reflect")
    assert np.allclose(reflect_pad(x, pad).numpy(), ref)
    assert reflect_pad(torch.rand(1, 1, 1, 1), 3).shape == (1, 1, 7, 7)


def test_filter2d_per_sample_and_identity():
    x = torch.rand(3, 3, 30, 30, generator=gen(1))
    assert torch.equal(filter2d(x, pulse_kernels(3, 9)), x)
    k = gaussian_kernels(torch.tensor([0.8, 1.5, 3.0]), size=11)
    batched = filter2d(x, k)
    single = torch.cat([filter2d(x[i:i + 1], k[i:i + 1]) for i in range(3)])
    assert torch.allclose(batched, single, atol=1e-6)
    ref = torch.nn.functional.conv2d(torch.nn.functional.pad(x[:1], (5, 5, 5, 5), mode="reflect"),
                                     k[0].float().expand(3, 1, 11, 11), groups=3)
    assert torch.allclose(batched[:1], ref, atol=1e-6)
    assert filter2d(torch.rand(2, 3, 3, 2), gaussian_kernels(torch.tensor([2.0]), size=21)).shape == (2, 3, 3, 2)


def test_resize_clamps_to_one_pixel():
    x = torch.rand(2, 3, 10, 12)
    for mode in ("area", "bilinear", "bicubic"):
        assert resize(x, (0, 3), mode).shape == (2, 3, 1, 3)
    assert resize(x, (5, 6), "area", scale_factor=0.5).shape == (2, 3, 5, 6)


def test_noise_ops():
    x = torch.full((2, 3, 16, 16), 0.5)
    y = add_gaussian_noise(x, torch.tensor([10.0, 10.0]), torch.tensor([True, True]), gen(0))
    assert torch.equal(y[:, 0], y[:, 1]) and torch.equal(y[:, 1], y[:, 2])  # grey noise: shared by channels
    assert not torch.equal(y[0], y[1])  # ... but its own field per sample
    assert abs(float((y - x).std()) - 10 / 255) < 0.01
    z = add_gaussian_noise(x, 10.0, False, gen(0))
    assert not torch.equal(z[:, 0], z[:, 1])
    assert torch.equal(add_gaussian_noise(x, 0.0, False, gen(0)), x)
    img = torch.rand(2, 3, 16, 16, generator=gen(2)) * 0.5 + 0.25
    pn = add_poisson_noise(img, torch.tensor([1.0, 1.0]), torch.tensor([True, False]), gen(0))
    d = pn - img
    assert torch.allclose(d[0, 0], d[0, 1], atol=1e-6) and not torch.allclose(d[1, 0], d[1, 1])
    assert torch.equal(add_poisson_noise(img, 0.0, False, gen(0)), img)
    assert float(pn.min()) >= 0 and float(pn.max()) <= 1


def test_jpeg_and_quantize():
    x = images(2, 37, 53)
    hi = jpeg(x, 100.0)
    lo = jpeg(x, torch.tensor([10.0, 10.0]))
    assert hi.shape == x.shape and float(lo.min()) >= 0 and float(lo.max()) <= 1
    assert float((hi - x).abs().mean()) < float((lo - x).abs().mean())
    per = jpeg(x, torch.tensor([100.0, 10.0]))
    assert torch.allclose(per[0], hi[0], atol=1e-5) and torch.allclose(per[1], lo[1], atol=1e-5)
    q = quantize_8bit(torch.tensor([-0.1, 0.5, 1.2, 0.3]))
    assert torch.allclose(q * 255, (q * 255).round()) and float(q.min()) == 0.0 and float(q.max()) == 1.0
    with pytest.raises(ValueError, match="quality"):
        jpeg(x, 120.0)


# ----------------------------------------------------------------------------- validation

@pytest.mark.parametrize("name", list(PIPELINES))
@pytest.mark.parametrize("bad", [
    torch.rand(3, 8, 8), torch.rand(1, 4, 8, 8), torch.rand(1, 1, 8, 8), torch.full((1, 3, 8, 8), 1.5),
    torch.full((1, 3, 8, 8), -0.1), torch.full((1, 3, 8, 8), float("nan")), torch.zeros(1, 3, 8, 8, dtype=torch.uint8),
    np.zeros((1, 3, 8, 8), dtype=np.float32), torch.zeros(0, 3, 8, 8),
])
def test_invalid_images(name, bad):
    with pytest.raises(ValueError, match="images"):
        PIPELINES[name](bad, gen(0))


@pytest.mark.parametrize("name", list(PIPELINES))
def test_invalid_arguments(name):
    fn, x = PIPELINES[name], images(1, 8, 8)
    with pytest.raises(ValueError, match="generator"):
        fn(x, 0)
    with pytest.raises(ValueError, match="not_an_option"):
        fn(x, gen(0), not_an_option=1)
    key = "jpeg1_range" if name == "realesrgan" else "jpeg_range"
    with pytest.raises(ValueError, match=key):
        fn(x, gen(0), **{key: (95, 30)})
    with pytest.raises(ValueError, match="kernel_types"):
        fn(x, gen(0), kernel_types=("box",))


def test_invalid_pipeline_specific_arguments():
    x = images(1, 8, 8)
    with pytest.raises(ValueError, match="preset"):
        codeformer_degrade(x, gen(0), preset="nope")
    with pytest.raises(ValueError, match="scale"):
        realesrgan_degrade(x, gen(0), scale=0)
    with pytest.raises(ValueError, match="per_sample"):
        realesrgan_degrade(x, gen(0), per_sample="yes")
    with pytest.raises(ValueError, match="kernel1_probs"):
        realesrgan_degrade(x, gen(0), kernel1_probs=(1, 1))
    with pytest.raises(ValueError, match="resize2_probs"):
        realesrgan_degrade(x, gen(0), resize2_probs=(1, 1))
    p = realesrgan_sample_params(20, gen(0), kernel_types=("iso", "plateau_aniso"), kernel1_probs=(1, 0),
                                 kernel2_probs=(0, 1), sinc1_prob=0.0, sinc2_prob=0.0)
    assert set(p["kernel1_type"]) == {"iso"} and set(p["kernel2_type"]) == {"plateau_aniso"}
    with pytest.raises(ValueError, match="kernel_sizes"):
        mild_degrade(x, gen(0), kernel_sizes=(4,))
    with pytest.raises(ValueError, match="blur_prob"):
        mild_degrade(x, gen(0), blur_prob=1.5)
    with pytest.raises(ValueError, match="batch"):
        mild_sample_params(0, gen(0))


# ----------------------------------------------------------------------------- purity / devices

def test_sources_are_pure():
    banned = {"comfy", "comfy_api", "comfy_extras", "folder_paths", "nodes", "server", "execution", "cv2"}
    root = Path(__file__).resolve().parents[2] / "modules" / "degradations"
    for path in root.glob("*.py"):
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            assert not (isinstance(node, ast.Call) and getattr(node.func, "id", None) in ("print", "open")), path
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                names = [] if node.level else [node.module or ""]
            else:
                continue
            assert not any(n.split(".")[0] in banned for n in names), (path.name, names)
            assert not any(n.startswith("modules") for n in names), (path.name, names)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_determinism():
    x = images(2, 48, 40).cuda()
    for fn in PIPELINES.values():
        a, _ = fn(x, torch.Generator("cuda").manual_seed(1))
        b, _ = fn(x, torch.Generator("cuda").manual_seed(1))
        assert a.device.type == "cuda" and a.shape == x.shape and torch.equal(a, b)
        c, _ = fn(x, gen(1))  # CPU generator with CUDA images also works
        assert c.device.type == "cuda"
