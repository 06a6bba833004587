"""modules/metrics.py against second implementations: PSNR/SSIM vs scikit-image (and pyiqa), LPIPS vs pyiqa's
LPIPS network on the same random AlexNet + heads (nothing downloaded)."""

import numpy as np
import pytest
import torch

from modules import metrics

skimage_metrics = pytest.importorskip("skimage.metrics")


def seeded_pairs(seed=0, b=3, h=48, w=40):
    """Reference images (smooth + texture) and restorations (reference + noise + a shift), (B, 3, H, W) in [0,1]."""
    g = torch.Generator().manual_seed(seed)
    yy, xx = torch.meshgrid(torch.linspace(0, 1, h), torch.linspace(0, 1, w), indexing="ij")
    base = torch.stack([xx, yy, (xx + yy) / 2]).unsqueeze(0).repeat(b, 1, 1, 1)
    ref = (0.6 * base + 0.4 * torch.rand(b, 3, h, w, generator=g)).clamp(0, 1)
    noise = torch.randn(b, 3, h, w, generator=g) * torch.tensor([0.02, 0.05, 0.1])[:b].view(b, 1, 1, 1)
    restored = (ref + noise + 0.01).clamp(0, 1)
    return restored, ref


def y_numpy(x):
    """BT.601 Y on [16, 235] of (3, H, W) in [0, 1] (BasicSR's rgb2ycbcr y_only), computed in numpy."""
    r, g, b = (x[i].numpy().astype(np.float64) for i in range(3))
    return 65.481 * r + 128.553 * g + 24.966 * b + 16.0


@pytest.mark.parametrize("crop", [0, 4])
@pytest.mark.parametrize("y", [False, True])
def test_psnr_and_ssim_match_scikit_image(crop, y):
    restored, ref = seeded_pairs()
    ours_p = metrics.psnr(restored, ref, crop_border=crop, y_channel=y)
    ours_s = metrics.ssim(restored, ref, crop_border=crop, y_channel=y)
    for i in range(restored.shape[0]):
        a, b = restored[i], ref[i]
        if y:
            a, b = y_numpy(a), y_numpy(b)
        else:
            a, b = a.permute(1, 2, 0).double().numpy() * 255, b.permute(1, 2, 0).double().numpy() * 255
        if crop:
            a, b = a[crop:-crop, crop:-crop], b[crop:-crop, crop:-crop]
        p = skimage_metrics.peak_signal_noise_ratio(b, a, data_range=255)
        s = skimage_metrics.structural_similarity(b, a, data_range=255, gaussian_weights=True, sigma=1.5,
                                                  use_sample_covariance=False, channel_axis=None if y else 2)
        assert abs(float(ours_p[i]) - p) < 1e-4, (i, float(ours_p[i]), p)
        assert abs(float(ours_s[i]) - s) < 1e-4, (i, float(ours_s[i]), s)
    # the three images differ, so a metric that ignored its input would fail above
    assert len({round(float(v), 3) for v in ours_p}) == 3


def test_psnr_matches_pyiqa_y_channel_with_border_crop():
    from pyiqa.archs.psnr_arch import PSNR

    restored, ref = seeded_pairs(seed=1)
    theirs = PSNR(test_y_channel=True, crop_border=4, color_space="ycbcr")(restored.double(), ref.double())
    ours = metrics.psnr(restored, ref, crop_border=4, y_channel=True)
    assert torch.allclose(ours, theirs.double().flatten(), atol=1e-4), (ours, theirs)


def test_identical_images_and_bad_shapes():
    _, ref = seeded_pairs()
    assert torch.isinf(metrics.psnr(ref, ref)).all()
    assert torch.allclose(metrics.ssim(ref, ref), torch.ones(3, dtype=torch.float64))
    with pytest.raises(ValueError, match="same size"):
        metrics.psnr(ref, ref[..., :-2])
    with pytest.raises(ValueError, match="crop_border"):
        metrics.psnr(ref, ref, crop_border=20)
    with pytest.raises(ValueError, match="at least 11x11"):
        metrics.ssim(ref[..., :10, :10], ref[..., :10, :10])


@pytest.fixture(scope="module")
def pyiqa_lpips():
    """pyiqa's LPIPS (AlexNet, v0.1) with a random torchvision AlexNet and random heads (no downloads)."""
    import torchvision
    from pyiqa.archs import lpips_arch

    real = torchvision.models.alexnet
    mp = pytest.MonkeyPatch()
    mp.setattr(lpips_arch.models, "alexnet", lambda *a, **k: real(weights=None))
    try:
        torch.manual_seed(3)
        net = lpips_arch.LPIPS(pretrained=False, net="alex", version="0.1", pnet_rand=True).eval()
    finally:
        mp.undo()
    for k in range(5):  # pyiqa leaves the heads at their conv init; make them positive like trained heads
        lin = getattr(net, f"lin{k}").model[1]
        lin.weight.data = torch.rand(lin.weight.shape, generator=torch.Generator().manual_seed(k)) * 0.1
    return net


def test_lpips_matches_pyiqa_on_the_same_random_weights(pyiqa_lpips):
    ours = metrics.build_lpips(metrics.lpips_state_dict(pyiqa_lpips.state_dict()))
    restored, ref = seeded_pairs(seed=2, h=64, w=72)
    with torch.no_grad():
        theirs = pyiqa_lpips(restored, ref, normalize=True).flatten()
        mine = ours(restored, ref)
    assert torch.allclose(mine, theirs, atol=1e-4), (mine, theirs)
    assert (mine > 0).all() and len({round(float(v), 5) for v in mine}) == 3
    assert torch.allclose(ours(ref, ref), torch.zeros(3), atol=1e-6)


def test_lpips_from_torchvision_trunk_plus_heads_only_file(pyiqa_lpips):
    """The two released files: torchvision's AlexNet (features.N.*) and the lpips heads (linK.model.1.weight)."""
    sd = pyiqa_lpips.state_dict()
    heads = {k: v for k, v in sd.items() if k.startswith("lin")}
    trunk = {}
    for k, v in sd.items():
        if k.startswith("net.slice"):
            _, _, idx, name = k.split(".")
            trunk[f"features.{idx}.{name}"] = v
    trunk["classifier.1.weight"] = torch.zeros(2, 2)  # ignored
    built = metrics.lpips_state_dict(heads, trunk)
    assert set(built) == set(metrics.LPIPS().state_dict())
    restored, ref = seeded_pairs(seed=4, h=64, w=64)
    with torch.no_grad():
        assert torch.allclose(metrics.build_lpips(built)(restored, ref),
                              pyiqa_lpips(restored, ref).flatten(), atol=1e-4)
    with pytest.raises(ValueError, match="AlexNet trunk"):
        metrics.lpips_state_dict(heads)


def test_table_and_means():
    rows = [{"image": "a", "psnr": 20.0, "ssim": 0.5, "lpips": None}, {"image": "b", "psnr": 30.0, "ssim": 0.7}]
    mean = metrics.mean_row(rows)
    assert mean["psnr"] == 25.0 and abs(mean["ssim"] - 0.6) < 1e-12 and mean["lpips"] is None
    text = metrics.format_table(rows + [{"image": "mean", **mean}])
    assert text.splitlines()[0].split() == ["image", "PSNR↑", "SSIM↑"]
    assert "25.00" in text and "0.6000" in text
