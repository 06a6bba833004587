"""Random blur kernels for synthetic degradations, batched and drawn from a ``torch.Generator``.

Kernel families (the ones Real-ESRGAN / DiffBIR / AdaptBIR train with). With a pixel offset ``v = (x, y)`` from the
kernel centre (``x`` = column, ``y`` = row), a rotation ``theta`` and standard deviations ``sigma_x``, ``sigma_y``,
the quadratic form is ``q = (x cos t + y sin t)^2 / sigma_x^2 + (-x sin t + y cos t)^2 / sigma_y^2`` and

* ``iso`` / ``aniso`` (Gaussian):               ``exp(-q / 2)``
* ``generalized_iso`` / ``generalized_aniso``:   ``exp(-q^beta / 2)`` (beta = 1 is the Gaussian)
* ``plateau_iso`` / ``plateau_aniso``:           ``1 / (1 + q^beta)``
* ``sinc`` (circular low-pass, cut-off ``omega`` rad/pixel): ``omega J1(omega r) / (2 pi r)``, centre
  ``omega^2 / (4 pi)``, where ``J1`` is the Bessel function of the first kind and ``r = |v|``.

Isotropic variants use ``sigma_y = sigma_x`` and ``theta = 0``. A kernel of odd size ``k`` is evaluated on its own
``k x k`` window, normalised to sum 1 there and zero-padded (centred) to the common batch size ``pad_to``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch

KERNEL_TYPES = ("iso", "aniso", "generalized_iso", "generalized_aniso", "plateau_iso", "plateau_aniso")
"""Names accepted in ``kernel_types``; ``"sinc"`` is chosen separately with its own probability."""


def check_generator(generator) -> torch.Generator:
    """Return ``generator`` if it is a ``torch.Generator``; raise ValueError naming ``generator`` otherwise."""
    if not isinstance(generator, torch.Generator):
        raise ValueError(f"generator: expected a torch.Generator, found {type(generator).__name__}")
    return generator


def rand_uniform(shape: Sequence[int] | int, generator: torch.Generator) -> torch.Tensor:
    """Uniform draws in [0, 1) from ``generator``.

    Args:
        shape: output shape (an int is a 1-D length).
        generator: the only source of randomness; draws happen on its device.

    Returns:
        float64 CPU tensor of ``shape`` with values in [0, 1) (24-bit resolution: drawn as float32 so that every
        device type can produce it, then widened).
    """
    check_generator(generator)
    shape = (shape,) if isinstance(shape, int) else tuple(shape)
    u = torch.rand(shape, generator=generator, device=generator.device, dtype=torch.float32)
    return u.cpu().to(torch.float64)


def uniform_in(u: torch.Tensor, lo: float, hi: float) -> torch.Tensor:
    """Map uniform draws ``u`` in [0, 1) to [lo, hi] (float64, same shape as ``u``; ``lo == hi`` gives ``lo``)."""
    return lo + u * (hi - lo)


def choose_index(u: torch.Tensor, probs: Sequence[float]) -> torch.Tensor:
    """Categorical draw: index ``i`` with probability ``probs[i] / sum(probs)`` for each uniform ``u`` in [0, 1).

    Returns an int64 tensor shaped like ``u`` with values in ``[0, len(probs))``.
    """
    p = torch.tensor([float(x) for x in probs], dtype=torch.float64)
    cdf = torch.cumsum(p, 0) / p.sum()
    idx = torch.searchsorted(cdf, u.to(torch.float64).contiguous(), right=True)
    return idx.clamp_max(len(probs) - 1)


def sample_kernel_params(
    batch: int,
    generator: torch.Generator,
    *,
    kernel_types: Sequence[str],
    kernel_probs: Sequence[float],
    kernel_sizes: Sequence[int],
    sigma_range: Sequence[float],
    rotation_range: Sequence[float] = (-math.pi, math.pi),
    betag_range: Sequence[float] = (0.5, 8.0),
    betap_range: Sequence[float] = (0.5, 8.0),
    sinc_prob: float = 0.0,
    sinc_omega_small_range: Sequence[float] = (math.pi / 3, math.pi),
    sinc_omega_large_range: Sequence[float] = (math.pi / 5, math.pi),
    sinc_small_kernel_below: int = 13,
) -> dict:
    """Draw per-sample parameters of a random mixed kernel (BasicSR ``random_mixed_kernels`` semantics).

    Every draw comes from ``generator`` and the number of draws does not depend on the outcome (9 uniform vectors of
    length ``batch``), so the same seed always yields the same parameters.

    Sampling: a sample is ``sinc`` with probability ``sinc_prob``, otherwise its type is drawn from
    ``kernel_types`` with weights ``kernel_probs``. Size: uniform over ``kernel_sizes`` (odd ints). ``sigma_x`` and
    ``sigma_y`` ~ U(sigma_range), ``rotation`` ~ U(rotation_range); isotropic types then set ``sigma_y = sigma_x``
    and ``rotation = 0``. ``beta``: as in the reference, with probability 1/2 U(lo, 1) else U(1, hi) of
    ``betag_range`` (generalized) or ``betap_range`` (plateau) -- so with ``betap_range = (1, 2)`` half of the
    plateau kernels get beta = 1 exactly; Gaussian and sinc kernels record ``beta = 1``. ``omega`` ~
    U(sinc_omega_small_range) when the size is below ``sinc_small_kernel_below`` else U(sinc_omega_large_range).

    Args:
        batch: number of samples, >= 1.
        generator: source of randomness.
        kernel_types: subset of :data:`KERNEL_TYPES`; kernel_probs: same length, non-negative weights.
        kernel_sizes: odd sizes >= 1 to pick from; the other arguments are ``(lo, hi)`` ranges.

    Returns:
        dict of per-sample values: ``type`` (list of str, incl. ``"sinc"``), ``size`` (int64, (B,)),
        ``sigma_x``, ``sigma_y``, ``rotation``, ``beta``, ``omega`` (float64, (B,)), ``sinc`` (bool, (B,)).
        Fields that a type does not use hold the value drawn (or the neutral value above) and are ignored by
        :func:`build_kernels`. All tensors are on the CPU.
    """
    if not isinstance(batch, int) or batch < 1:
        raise ValueError(f"batch: expected an int >= 1, found {batch!r}")
    if not kernel_types or any(t not in KERNEL_TYPES for t in kernel_types) or len(kernel_probs) != len(kernel_types):
        raise ValueError(f"kernel_types/kernel_probs: expected names from {KERNEL_TYPES} with one weight each, "
                         f"found {tuple(kernel_types)} / {tuple(kernel_probs)}")
    if not kernel_sizes or any(int(s) < 1 or int(s) % 2 == 0 for s in kernel_sizes):
        raise ValueError(f"kernel_sizes: expected odd sizes >= 1, found {tuple(kernel_sizes)}")
    u = rand_uniform((9, batch), generator)
    sinc = u[0] < float(sinc_prob)
    kinds = [kernel_types[i] for i in choose_index(u[1], kernel_probs).tolist()]
    sizes_t = torch.tensor([int(s) for s in kernel_sizes], dtype=torch.int64)
    size = sizes_t[(u[2] * len(kernel_sizes)).long().clamp_max(len(kernel_sizes) - 1)]
    sigma_x = uniform_in(u[3], *sigma_range)
    sigma_y = uniform_in(u[4], *sigma_range)
    rotation = uniform_in(u[5], *rotation_range)
    iso = torch.tensor([k.endswith("iso") and not k.endswith("aniso") for k in kinds])
    sigma_y = torch.where(iso, sigma_x, sigma_y)
    rotation = torch.where(iso, torch.zeros_like(rotation), rotation)
    low_half = u[6] < 0.5
    beta = torch.ones(batch, dtype=torch.float64)
    for prefix, (lo, hi) in (("generalized", betag_range), ("plateau", betap_range)):
        mask = torch.tensor([k.startswith(prefix) for k in kinds])
        drawn = torch.where(low_half, uniform_in(u[7], lo, 1.0), uniform_in(u[7], 1.0, hi))
        beta = torch.where(mask, drawn, beta)
    small = size < int(sinc_small_kernel_below)
    omega = torch.where(small, uniform_in(u[8], *sinc_omega_small_range), uniform_in(u[8], *sinc_omega_large_range))
    kinds = ["sinc" if s else k for s, k in zip(sinc.tolist(), kinds)]
    return {"type": kinds, "size": size, "sigma_x": sigma_x, "sigma_y": sigma_y, "rotation": rotation,
            "beta": beta, "omega": omega, "sinc": sinc}


def _centred_grid(pad_to: int) -> tuple[torch.Tensor, torch.Tensor]:
    ax = torch.arange(pad_to, dtype=torch.float64) - (pad_to - 1) / 2
    yy, xx = torch.meshgrid(ax, ax, indexing="ij")
    return xx, yy


def build_kernels(params: dict, pad_to: int | None = None) -> torch.Tensor:
    """Evaluate kernels from :func:`sample_kernel_params` (or any dict with the same fields).

    Args:
        params: ``type`` (list of B names from :data:`KERNEL_TYPES` or ``"sinc"``), ``size`` (B odd ints),
            ``sigma_x``, ``sigma_y`` (> 0), ``rotation`` (rad), ``beta`` (> 0), ``omega`` (rad/pixel, > 0).
        pad_to: odd output size >= max(size); default max(size).

    Returns:
        float64 CPU tensor (B, pad_to, pad_to): each kernel sums to 1 over its centred ``size x size`` window
        and is zero outside it. Gaussian-family kernels are non-negative and point-symmetric; sinc kernels have
        small negative lobes and are symmetric under flips and transposition.
    """
    kinds = list(params["type"])
    size = torch.as_tensor(params["size"]).to(torch.int64).cpu()
    if len(kinds) != size.numel() or size.numel() == 0:
        raise ValueError(f"params: expected 'type' and 'size' with the same batch length >= 1, found "
                         f"{len(kinds)} and {size.numel()}")
    if bool((size % 2 == 0).any()) or bool((size < 1).any()):
        raise ValueError(f"params['size']: expected odd sizes >= 1, found {size.tolist()}")
    bad = sorted(set(kinds) - set(KERNEL_TYPES) - {"sinc"})
    if bad:
        raise ValueError(f"params['type']: expected names from {KERNEL_TYPES + ('sinc',)}, found {bad}")
    pad_to = int(size.max()) if pad_to is None else int(pad_to)
    if pad_to % 2 == 0 or pad_to < int(size.max()):
        raise ValueError(f"pad_to: expected an odd size >= {int(size.max())}, found {pad_to}")

    def field(name):
        return torch.as_tensor(params[name], dtype=torch.float64).cpu().view(-1, 1, 1)

    xx, yy = _centred_grid(pad_to)
    sx, sy, th, beta, omega = (field(n) for n in ("sigma_x", "sigma_y", "rotation", "beta", "omega"))
    shaped = torch.tensor([k.startswith(("generalized", "plateau")) for k in kinds]).view(-1, 1, 1)
    beta = torch.where(shaped, beta, torch.ones_like(beta))  # plain Gaussians ignore ``beta``
    iso = torch.tensor([k.endswith("_iso") or k == "iso" for k in kinds]).view(-1, 1, 1)
    sy, th = torch.where(iso, sx, sy), torch.where(iso, torch.zeros_like(th), th)  # isotropic: sigma_x only
    c, s = torch.cos(th), torch.sin(th)
    q = (xx * c + yy * s) ** 2 / sx**2 + (-xx * s + yy * c) ** 2 / sy**2
    qb = q.clamp_min(0) ** beta
    r = torch.sqrt(xx**2 + yy**2).expand_as(q)
    safe_r = torch.where(r > 0, r, torch.ones_like(r))
    sinc = torch.where(r > 0, omega * torch.special.bessel_j1(omega * safe_r) / (2 * math.pi * safe_r),
                       omega**2 / (4 * math.pi))
    is_sinc = torch.tensor([k == "sinc" for k in kinds]).view(-1, 1, 1)
    is_plateau = torch.tensor([k.startswith("plateau") for k in kinds]).view(-1, 1, 1)
    k = torch.where(is_plateau, 1.0 / (1.0 + qb), torch.exp(-0.5 * qb))
    k = torch.where(is_sinc, sinc, k)
    half = (size.view(-1, 1, 1) - 1) / 2
    k = k * ((xx.abs() <= half) & (yy.abs() <= half))
    return k / k.sum(dim=(-2, -1), keepdim=True)


def pulse_kernels(batch: int, size: int) -> torch.Tensor:
    """Identity kernels: float64 (batch, size, size) with a single 1 at the centre (``size`` odd >= 1)."""
    if size < 1 or size % 2 == 0:
        raise ValueError(f"size: expected an odd int >= 1, found {size}")
    k = torch.zeros(batch, size, size, dtype=torch.float64)
    k[:, size // 2, size // 2] = 1.0
    return k


def gaussian_kernels(sigma_x, sigma_y=None, rotation=None, size: int = 21) -> torch.Tensor:
    """Deterministic (an)isotropic Gaussian kernels, float64 (B, size, size), each summing to 1.

    Args:
        sigma_x: (B,) or scalar, > 0, in pixels; sigma_y: same (default ``sigma_x``: isotropic);
        rotation: radians (default 0); size: odd kernel size >= 1.
    """
    sx = torch.as_tensor(sigma_x, dtype=torch.float64).reshape(-1)
    sy = sx if sigma_y is None else torch.as_tensor(sigma_y, dtype=torch.float64).reshape(-1).expand_as(sx)
    th = torch.zeros_like(sx) if rotation is None else torch.as_tensor(rotation, dtype=torch.float64).reshape(-1)
    if bool((sx <= 0).any()) or bool((sy <= 0).any()):
        raise ValueError(f"sigma_x/sigma_y: expected values > 0, found {sx.tolist()} / {sy.tolist()}")
    n = sx.numel()
    p = {"type": ["aniso"] * n, "size": torch.full((n,), int(size)), "sigma_x": sx, "sigma_y": sy,
         "rotation": th.expand_as(sx), "beta": torch.ones(n), "omega": torch.ones(n)}
    return build_kernels(p)


def sinc_kernels(omega, size: int = 21, pad_to: int | None = None) -> torch.Tensor:
    """Deterministic circular low-pass (sinc) kernels, float64 (B, pad_to, pad_to), each summing to 1.

    Args:
        omega: (B,) or scalar cut-off in rad/pixel, in (0, pi] (pi keeps all frequencies);
        size: odd window size >= 1; pad_to: odd output size >= size (default ``size``).
    """
    om = torch.as_tensor(omega, dtype=torch.float64).reshape(-1)
    if bool((om <= 0).any()):
        raise ValueError(f"omega: expected cut-offs > 0, found {om.tolist()}")
    n = om.numel()
    p = {"type": ["sinc"] * n, "size": torch.full((n,), int(size)), "sigma_x": torch.ones(n),
         "sigma_y": torch.ones(n), "rotation": torch.zeros(n), "beta": torch.ones(n), "omega": om}
    return build_kernels(p, pad_to)
