"""Discrete diffusion schedules bridging DiffBIR's spaced DDPM sampler and ComfyUI sigmas.

Conventions (ComfyUI, eps/v models with a discrete 1000-step table):
    sigma_t = sqrt((1 - abar_t) / abar_t),  abar_t = 1 / (sigma_t**2 + 1)
    x (what a ComfyUI sampler carries) = x_t * sqrt(1 + sigma**2) = x0 + sigma * eps
    x_t (what DiffBIR carries)        = sqrt(abar) * x0 + sqrt(1 - abar) * eps
With zero terminal SNR abar[-1] == 0 and sigma would be infinite; every function that turns
abar into sigma clamps abar from below by ``min_alpha_cumprod`` (default: the value ComfyUI's
``rescale_zero_terminal_snr_sigmas`` writes into its last table entry, so the result equals the
model's own ``sigma_max``; DiffBIR's EDM path uses 1e-8 instead).
"""
from __future__ import annotations

import math
from typing import Sequence, Union

import torch

COMFY_ZSNR_MIN_ALPHA_CUMPROD = 4.8973451890853435e-08


def _check_abar(alphas_cumprod: torch.Tensor) -> torch.Tensor:
    if not isinstance(alphas_cumprod, torch.Tensor) or alphas_cumprod.ndim != 1 or alphas_cumprod.numel() < 1:
        raise ValueError(f"alphas_cumprod: expected a non-empty 1-D tensor, found {type(alphas_cumprod).__name__} "
                         f"with shape {getattr(alphas_cumprod, 'shape', None)}")
    if not alphas_cumprod.is_floating_point():
        raise ValueError(f"alphas_cumprod: expected a floating tensor, found dtype {alphas_cumprod.dtype}")
    a = alphas_cumprod.detach().to(torch.float64)
    if not bool(torch.isfinite(a).all()) or bool((a < 0).any()) or bool((a > 1).any()):
        raise ValueError(f"alphas_cumprod: expected finite values in [0, 1], found min {a.min().item()} max {a.max().item()}")
    if a.numel() > 1 and bool((a[1:] > a[:-1]).any()):
        raise ValueError("alphas_cumprod: expected a non-increasing sequence, found an increase")
    return a


def _sigma_table(alphas_cumprod: torch.Tensor, min_alpha_cumprod: float) -> torch.Tensor:
    """float64 sigma for every timestep, abar clamped below by min_alpha_cumprod."""
    if not (isinstance(min_alpha_cumprod, (int, float)) and 0.0 < float(min_alpha_cumprod) < 1.0):
        raise ValueError(f"min_alpha_cumprod: expected a float in (0, 1), found {min_alpha_cumprod!r}")
    a = _check_abar(alphas_cumprod).clamp(min=float(min_alpha_cumprod))
    return ((1.0 - a) / a).sqrt()


def scaled_linear_alphas_cumprod(num_timesteps: int = 1000, beta_start: float = 0.00085, beta_end: float = 0.012,
                                 zero_terminal_snr: bool = False) -> torch.Tensor:
    """Cumulative alpha products of the Stable Diffusion "scaled linear" schedule.

    betas = linspace(sqrt(beta_start), sqrt(beta_end), T) ** 2 (float64), abar = cumprod(1 - betas).
    With ``zero_terminal_snr`` sqrt(abar) is shifted so its last entry is exactly 0 and rescaled so its
    first entry is unchanged (Lin et al., "Common Diffusion Noise Schedules and Sample Steps are Flawed").

    Returns: float64 tensor of shape (T,), non-increasing, values in (0, 1] (last entry exactly 0.0 when
    zero_terminal_snr).
    """
    if isinstance(num_timesteps, bool) or not isinstance(num_timesteps, int) or num_timesteps < 2:
        raise ValueError(f"num_timesteps: expected an int >= 2, found {num_timesteps!r}")
    if not (0.0 < beta_start <= beta_end < 1.0):
        raise ValueError(f"beta_start/beta_end: expected 0 < beta_start <= beta_end < 1, found {beta_start!r}, {beta_end!r}")
    betas = torch.linspace(beta_start ** 0.5, beta_end ** 0.5, num_timesteps, dtype=torch.float64) ** 2
    abar = torch.cumprod(1.0 - betas, dim=0)
    if zero_terminal_snr:
        root = abar.sqrt()
        first, last = root[0].clone(), root[-1].clone()
        root = (root - last) * (first / (first - last))
        abar = root ** 2
        abar[-1] = 0.0
    return abar


def space_timesteps(num_timesteps: int, section_counts: Union[int, str, Sequence[int]]) -> list[int]:
    """IDDPM timestep respacing (improved-diffusion ``space_timesteps``), sorted ascending.

    The T steps are cut into len(section_counts) nearly equal sections (the first T % n sections get one
    extra step); section i of size s keeps n_i indices start + round(k * (s-1)/(n_i-1)), where the
    fractional index is accumulated by repeated float addition and rounded with Python's round()
    (half to even), exactly as IDDPM does. ``"ddimN"`` keeps range(0, T, k) for the smallest integer
    stride k in [1, T) giving exactly N steps. Duplicates collapse (IDDPM returns a set).

    Args: num_timesteps int >= 1; section_counts an int N, a list of ints, or a string "N",
        "10,20,5" or "ddimN".
    Returns: list of ints in [0, T), strictly increasing.
    """
    if isinstance(num_timesteps, bool) or not isinstance(num_timesteps, int) or num_timesteps < 1:
        raise ValueError(f"num_timesteps: expected an int >= 1, found {num_timesteps!r}")
    if isinstance(section_counts, str):
        text = section_counts.strip()
        if text.startswith("ddim"):
            try:
                wanted = int(text[4:])
            except ValueError:
                raise ValueError(f"section_counts: expected 'ddimN' with an integer N, found {section_counts!r}") from None
            for stride in range(1, num_timesteps):
                if len(range(0, num_timesteps, stride)) == wanted:
                    return list(range(0, num_timesteps, stride))
            raise ValueError(f"section_counts: cannot take exactly {wanted} steps from {num_timesteps} "
                             f"with an integer stride, found {section_counts!r}")
        try:
            counts = [int(part) for part in text.split(",")]
        except ValueError:
            raise ValueError(f"section_counts: expected comma-separated integers, found {section_counts!r}") from None
    elif isinstance(section_counts, int) and not isinstance(section_counts, bool):
        counts = [section_counts]
    elif isinstance(section_counts, (list, tuple)) and all(isinstance(c, int) and not isinstance(c, bool) for c in section_counts):
        counts = list(section_counts)
    else:
        raise ValueError(f"section_counts: expected an int, a list of ints or a string, found {section_counts!r}")
    if not counts or any(c < 0 for c in counts) or sum(counts) == 0:
        raise ValueError(f"section_counts: expected non-negative counts with a positive total, found {section_counts!r}")
    base, extra = divmod(num_timesteps, len(counts))
    kept: set[int] = set()
    start = 0
    for i, count in enumerate(counts):
        size = base + (1 if i < extra else 0)
        if size < count:
            raise ValueError(f"section_counts: section {i} has {size} timesteps, fewer than the {count} requested")
        stride = 1 if count <= 1 else (size - 1) / (count - 1)
        position = 0.0
        for _ in range(count):
            kept.add(start + round(position))
            position += stride
        start += size
    return sorted(kept)


def spaced_sigmas(alphas_cumprod: torch.Tensor, steps: int,
                  min_alpha_cumprod: float = COMFY_ZSNR_MIN_ALPHA_CUMPROD) -> torch.Tensor:
    """ComfyUI SIGMAS that make ComfyUI's ``ddpm`` sampler take DiffBIR's spaced-sampler steps.

    The kept timesteps are space_timesteps(T, str(steps)); sigma_k = sqrt((1 - abar_k) / abar_k) with abar
    clamped below by min_alpha_cumprod (zero-SNR: finite, see module doc), listed from the highest
    timestep down, followed by 0.0. Between consecutive entries ComfyUI's ddpm step uses
    alpha = abar_k / abar_prev, i.e. exactly the respaced beta of IDDPM/DiffBIR, its fixed-small posterior
    variance, and no noise on the last step (sigma_next == 0 gives abar_prev = 1).

    Args: alphas_cumprod (T,) float in [0, 1], non-increasing; steps int in [1, T].
    Returns: float32 tensor (steps + 1,), strictly decreasing, finite, last entry 0.0.
    """
    table = _sigma_table(alphas_cumprod, min_alpha_cumprod)
    total = table.numel()
    if isinstance(steps, bool) or not isinstance(steps, int) or not 1 <= steps <= total:
        raise ValueError(f"steps: expected an int in [1, {total}], found {steps!r}")
    kept = space_timesteps(total, str(steps))
    if len(kept) != steps:
        raise ValueError(f"steps: respacing gave {len(kept)} distinct timesteps, expected {steps}")
    sig = table[torch.tensor(kept[::-1], dtype=torch.long)].to(torch.float32)
    return torch.cat([sig, sig.new_zeros(1)])


def timesteps_from_sigmas(sigmas: torch.Tensor, alphas_cumprod: torch.Tensor,
                          min_alpha_cumprod: float = COMFY_ZSNR_MIN_ALPHA_CUMPROD) -> torch.Tensor:
    """Model timestep for each nonzero sigma: nearest entry of the float32 log-sigma table (ComfyUI rule).

    Args: sigmas 1-D float tensor >= 0 (zeros are skipped); alphas_cumprod (T,) as in spaced_sigmas.
    Returns: int64 CPU tensor (number of nonzero sigmas,), values in [0, T), in the order of ``sigmas``.
    """
    if not isinstance(sigmas, torch.Tensor) or sigmas.ndim != 1 or not sigmas.is_floating_point():
        raise ValueError(f"sigmas: expected a 1-D floating tensor, found {type(sigmas).__name__} "
                         f"{getattr(sigmas, 'shape', '')} {getattr(sigmas, 'dtype', '')}")
    if not bool(torch.isfinite(sigmas).all()) or bool((sigmas < 0).any()):
        raise ValueError("sigmas: expected finite values >= 0, found negative or non-finite entries")
    log_table = _sigma_table(alphas_cumprod, min_alpha_cumprod).log().to(torch.float32)
    query = sigmas[sigmas != 0].detach().to(torch.float32).cpu().log()
    return (query[None, :] - log_table[:, None]).abs().argmin(dim=0).to(torch.long)


def _sigma_pair(sigma, sigma_next) -> tuple[torch.Tensor, torch.Tensor]:
    s = torch.as_tensor(sigma)
    n = torch.as_tensor(sigma_next, device=s.device)
    dtype = torch.promote_types(s.dtype, n.dtype)
    if not dtype.is_floating_point:
        dtype = torch.get_default_dtype()
    s, n = s.to(dtype), n.to(dtype)
    if not bool(torch.isfinite(s).all()) or bool((s <= 0).any()):
        raise ValueError("sigma: expected finite values > 0, found zero, negative or non-finite entries")
    if not bool(torch.isfinite(n).all()) or bool((n < 0).any()):
        raise ValueError("sigma_next: expected finite values >= 0, found negative or non-finite entries")
    if bool((n >= s).any()):
        raise ValueError("sigma_next: expected sigma_next < sigma, found sigma_next >= sigma")
    return s, n


def posterior_mean_coef1(sigma, sigma_next) -> torch.Tensor:
    """DDPM posterior coefficient of x0 for the step sigma -> sigma_next (x_t unscaled, see module doc).

    c1 = beta * sqrt(abar_prev) / (1 - abar), beta = 1 - abar/abar_prev, abar = 1/(sigma^2+1),
    abar_prev = 1/(sigma_next^2+1); evaluated stably as (s^2 - n^2) / (s^2 * sqrt(1 + n^2)).
    Args: sigma > 0 and 0 <= sigma_next < sigma, floats or tensors of broadcastable shapes.
    Returns: float tensor of the broadcast shape (promoted dtype; default dtype for Python numbers),
        values in (0, 1]; exactly 1 when sigma_next == 0.
    """
    s, n = _sigma_pair(sigma, sigma_next)
    s2, n2 = s * s, n * n
    return (s2 - n2) / (s2 * torch.sqrt(1.0 + n2))


def posterior_mean_coef2(sigma, sigma_next) -> torch.Tensor:
    """DDPM posterior coefficient of the unscaled x_t for the step sigma -> sigma_next.

    c2 = (1 - abar_prev) * sqrt(alpha) / (1 - abar), alpha = abar/abar_prev; evaluated stably as
    n^2 * sqrt(1 + s^2) / (s^2 * sqrt(1 + n^2)). Same arguments and result layout as
    posterior_mean_coef1; values in [0, 1); exactly 0 when sigma_next == 0.
    """
    s, n = _sigma_pair(sigma, sigma_next)
    s2, n2 = s * s, n * n
    return n2 * torch.sqrt(1.0 + s2) / (s2 * torch.sqrt(1.0 + n2))


def q_sample_start(cond_latent: torch.Tensor, noise: torch.Tensor, alphas_cumprod: torch.Tensor, t: int = 999,
                   min_alpha_cumprod: float = COMFY_ZSNR_MIN_ALPHA_CUMPROD) -> torch.Tensor:
    """DiffBIR's "start from the condition" point, in ComfyUI's scaled convention.

    DiffBIR: x_T = sqrt(abar_t) * c + sqrt(1 - abar_t) * noise. Multiplied by sqrt(1 + sigma_t^2) this is
    exactly ``c + sigma_t * noise`` (abar clamped as in spaced_sigmas), which is returned.
    To start a ComfyUI sampler there with sigmas[0] == sigma_t: give it this tensor as the latent with
    zero noise (add_noise off), passing ``latent_format.process_out(result)`` because the sampler applies
    process_latent_in to the LATENT. Giving noise=n and latent=c instead yields c + sigma_t*n only when
    sigma_t < the model's sigma_max; at sigma_max (t = 999) ComfyUI uses c + sqrt(1 + sigma_t^2)*n,
    which differs by about n / (2 sigma_t) (0.034 * n for SD, whose sigma_max is 14.61).

    Args: cond_latent, noise float tensors of equal shape (any), c in model latent space (x 0.18215
        for SD); alphas_cumprod (T,); t int in [0, T).
    Returns: tensor of cond_latent's shape and dtype.
    """
    if not isinstance(cond_latent, torch.Tensor) or not cond_latent.is_floating_point():
        raise ValueError(f"cond_latent: expected a floating tensor, found {type(cond_latent).__name__}")
    if not isinstance(noise, torch.Tensor) or noise.shape != cond_latent.shape:
        raise ValueError(f"noise: expected a tensor of shape {tuple(cond_latent.shape)}, "
                         f"found {tuple(getattr(noise, 'shape', ()))}")
    table = _sigma_table(alphas_cumprod, min_alpha_cumprod)
    if isinstance(t, bool) or not isinstance(t, int) or not 0 <= t < table.numel():
        raise ValueError(f"t: expected an int in [0, {table.numel()}), found {t!r}")
    sigma = float(table[t])
    if not math.isfinite(sigma):
        raise ValueError(f"t: sigma at timestep {t} is not finite")
    return cond_latent + sigma * noise.to(cond_latent.dtype)


def noise_augment(cond_latent: torch.Tensor, noise: torch.Tensor, alphas_cumprod: torch.Tensor,
                  t: int) -> torch.Tensor:
    """DiffBIR v2.1's noise augmentation of the condition latent: the forward process q(x_t | x_0) at ``t``,
    sqrt(abar_t) * c + sqrt(1 - abar_t) * noise (DiffBIR ``noise_aug``; v2.1 was trained with t = 200). ``t`` = 0
    returns ``cond_latent`` unchanged.

    Args: cond_latent, noise float tensors of equal shape (the hint latent, e.g. 0.18215 x the VAE latent for
        DiffBIR weights); alphas_cumprod (T,) of the model's schedule; t int in [0, T).
    Returns: a tensor of cond_latent's shape and dtype.
    """
    if t <= 0:
        return cond_latent
    if not 0 < t < alphas_cumprod.numel():
        raise ValueError(f"noise_aug: expected a timestep in [0, {alphas_cumprod.numel() - 1}], found {t}")
    abar = float(alphas_cumprod[int(t)])
    out = math.sqrt(abar) * cond_latent.double() + math.sqrt(1.0 - abar) * noise.double()
    return out.to(cond_latent.dtype)


def rescaled_cfg_scale(cfg: float, t: float, num_timesteps: int = 1000) -> float:
    """DiffBIR v2.1's rescaled CFG: at model timestep ``t`` (0 = clean, T - 1 = noisiest) the scale is
    1 + cfg * (1 - cos(pi * ((T - t) / T) ** 5)) / 2, so it starts near 1 at the noisy end and reaches about
    1 + cfg at the clean end. DiffBIR applies it only when cfg > 1; otherwise ``cfg`` is returned."""
    if cfg <= 1:
        return float(cfg)
    frac = (num_timesteps - float(t)) / num_timesteps
    return 1.0 + cfg * (1.0 - math.cos(math.pi * frac ** 5.0)) / 2.0
