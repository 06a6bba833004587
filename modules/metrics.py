"""Full-reference pixel metrics (no learned weights): PSNR and SSIM, for checks against known ground truth."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def psnr(x: torch.Tensor, ref: torch.Tensor) -> torch.Tensor:
    """PSNR in dB per image of (B, C, H, W) tensors in [0, 1] (values clamped to it); (B,) float32, inf where equal."""
    mse = ((x.float().clamp(0, 1) - ref.float().clamp(0, 1)) ** 2).flatten(1).mean(1)
    return 10 * torch.log10(1.0 / mse)


def ssim(x: torch.Tensor, ref: torch.Tensor, window: int = 11, sigma: float = 1.5) -> torch.Tensor:
    """SSIM per image (Wang et al. 2004: Gaussian window 11, sigma 1.5, K1 0.01, K2 0.03, data range 1) of
    (B, C, H, W) tensors in [0, 1], averaged over channels and valid window positions; (B,) float32 in [-1, 1].
    Images smaller than the window use a window of their smaller side."""
    x, ref = x.float().clamp(0, 1), ref.float().clamp(0, 1)
    window = max(1, min(window, x.shape[-1], x.shape[-2]))
    c = x.shape[1]
    g = torch.exp(-((torch.arange(window, dtype=torch.float32) - (window - 1) / 2) ** 2) / (2 * sigma**2))
    g = g / g.sum()
    k = (g[:, None] * g[None, :]).expand(c, 1, window, window).to(x.device)

    def blur(t):
        return F.conv2d(t, k, groups=c)

    mu_x, mu_y = blur(x), blur(ref)
    var_x = blur(x * x) - mu_x**2
    var_y = blur(ref * ref) - mu_y**2
    cov = blur(x * ref) - mu_x * mu_y
    c1, c2 = 0.01**2, 0.03**2
    s = ((2 * mu_x * mu_y + c1) * (2 * cov + c2)) / ((mu_x**2 + mu_y**2 + c1) * (var_x + var_y + c2))
    return s.flatten(1).mean(1)
