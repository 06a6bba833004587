"""PSNR and SSIM against their definitions and scikit-image's implementation."""

import numpy as np
import pytest
import torch

from modules.metrics import psnr, ssim


def test_psnr_of_a_known_error_and_of_equal_images():
    ref = torch.full((2, 3, 16, 16), 0.5)
    x = ref + torch.tensor([0.1, 0.01]).view(2, 1, 1, 1)
    assert psnr(x, ref).tolist() == pytest.approx([20.0, 40.0], abs=1e-3)
    assert torch.isinf(psnr(ref, ref)).all()


def test_ssim_equals_scikit_image():
    from skimage.metrics import structural_similarity

    g = torch.Generator().manual_seed(0)
    ref = torch.rand(1, 3, 40, 48, generator=g)
    x = (ref + 0.1 * torch.randn(ref.shape, generator=g)).clamp(0, 1)
    ours = ssim(x, ref).item()
    theirs = structural_similarity(x[0].permute(1, 2, 0).numpy().astype(np.float64),
                                   ref[0].permute(1, 2, 0).numpy().astype(np.float64), channel_axis=2,
                                   data_range=1.0, gaussian_weights=True, sigma=1.5, use_sample_covariance=False)
    assert ours == pytest.approx(theirs, abs=1e-4)
    assert ssim(ref, ref).item() == pytest.approx(1.0, abs=1e-5)
