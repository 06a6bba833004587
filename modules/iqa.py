"""Image-quality assessment for AdaptBIR: MUSIQ scores and the score -> (class, k, w) mapping.

Pure torch. The MUSIQ network is :mod:`.musiq` (our implementation, loading pyiqa's released weight files); pyiqa
itself is not needed at run time (it is the reference of the tests).

AdaptBIR's released inference code (``inference_stage3.py``) maps a KonIQ-trained MUSIQ score (about 0..100,
higher is better) to two coefficients:

* ``k`` mixes the SD VAE latent into the restoration-encoder latent (dual encoder; 0 = trust the restoration
  encoder only, larger = keep more of the input's own detail);
* ``w`` scales the CSFT layers (0 = off).

with ``s = score / score_scale``:

* ``s <= t_low``              -> severe, ``k = 0``, ``w = 0``
* ``t_low < s <= t_high``     -> medium, ``k = s``, ``w = s / t_high``
* ``s > t_high``              -> mild,   ``k = k_max``, ``w = w_max``

The paper's text instead describes three classes with a fixed ``(k, w)`` each (``classes`` mode).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

# name -> (pyiqa pretrained key, weights file name published by pyiqa, score scale, number of classes of the head)
MUSIQ_VARIANTS: dict[str, tuple[str, str, float, int]] = {
    "musiq": ("koniq10k", "musiq_koniq_ckpt-e95806b9.pth", 100.0, 1),
    "musiq-spaq": ("spaq", "musiq_spaq_ckpt-358bb6af.pth", 100.0, 1),
    "musiq-paq2piq": ("paq2piq", "musiq_paq2piq_ckpt-364c0c84.pth", 100.0, 1),
    "musiq-ava": ("ava", "musiq_ava_ckpt-e8d3f067.pth", 10.0, 10),
}

MAPPING_MODES = ("adaptbir", "classes")
QUALITY_CLASSES = ("severe", "medium", "mild")

# Fixed (k, w) per class for the paper's `classes` mode. The paper gives the classes and their roles (severe: no
# SD-encoder latent and no CSFT; mild: the most of both); the middle class uses the centre of the medium band of
# the released code's continuous mapping.
PAPER_CLASS_COEFFICIENTS: dict[str, tuple[float, float]] = {
    "severe": (0.0, 0.0),
    "medium": (0.55, 0.55 / 0.70),
    "mild": (0.7, 1.0),
}


@dataclass(frozen=True)
class RestorationParams:
    """Per-image restoration parameters chosen from an IQA score.

    All tuples have one entry per image of the batch, in batch order.

    Attributes:
        scores: raw metric scores (MUSIQ KonIQ: about 0..100; AVA: 1..10), higher is better.
        classes: ``"severe"``, ``"medium"`` or ``"mild"``.
        k: dual-encoder mix coefficient in [0, 1] (0 = restoration encoder only).
        w: CSFT strength, >= 0 (0 = CSFT off).
        metric: the metric that produced the scores.
        mode: the mapping mode used (``"adaptbir"`` or ``"classes"``).
    """

    scores: tuple[float, ...]
    classes: tuple[str, ...]
    k: tuple[float, ...]
    w: tuple[float, ...]
    metric: str = "musiq"
    mode: str = "adaptbir"

    def __post_init__(self):
        n = len(self.scores)
        for name in ("classes", "k", "w"):
            if len(getattr(self, name)) != n:
                raise ValueError(f"RestorationParams.{name}: expected {n} entries (one per score), "
                                 f"found {len(getattr(self, name))}")

    def __len__(self) -> int:
        return len(self.scores)

    def k_tensor(self, batch: int, *, dtype=torch.float32, device=None) -> torch.Tensor:
        """``k`` as a (batch,) tensor. A single set of parameters is broadcast; otherwise lengths must match."""
        return _per_image(self.k, batch, "k", dtype, device)

    def w_tensor(self, batch: int, *, dtype=torch.float32, device=None) -> torch.Tensor:
        """``w`` as a (batch,) tensor. A single set of parameters is broadcast; otherwise lengths must match."""
        return _per_image(self.w, batch, "w", dtype, device)

    def summary(self) -> str:
        """One line per image: ``#i score=.. class k=.. w=..``."""
        return "\n".join(f"#{i} {self.metric}={s:.2f} {c} k={k:.3f} w={w:.3f}"
                         for i, (s, c, k, w) in enumerate(zip(self.scores, self.classes, self.k, self.w)))


def _per_image(values, batch, name, dtype, device) -> torch.Tensor:
    if len(values) == 1:
        values = tuple(values) * batch
    if len(values) != batch:
        raise ValueError(f"restoration params: '{name}' has {len(values)} per-image values but the batch has "
                         f"{batch} images; score the same batch you restore (or a single image to broadcast)")
    return torch.tensor(values, dtype=dtype, device=device)


def map_score(score: float, *, mode: str = "adaptbir", score_scale: float = 100.0, t_low: float = 0.40,
              t_high: float = 0.70, k_max: float = 0.7, w_max: float = 1.0) -> tuple[str, float, float]:
    """Map one IQA score to ``(class, k, w)``.

    Args:
        score: metric score (finite float), higher is better.
        mode: ``"adaptbir"`` (released code, continuous in the medium band) or ``"classes"`` (paper: fixed
            ``(k, w)`` per class, scaled by ``k_max / 0.7`` and ``w_max``).
        score_scale: divisor that brings the score to about [0, 1] (100 for KonIQ/SPAQ/PaQ-2-PiQ MUSIQ, 10 for AVA).
        t_low, t_high: class thresholds on ``s = score / score_scale``; ``s <= t_low`` is severe,
            ``s > t_high`` is mild. Need ``0 <= t_low < t_high``.
        k_max: ``k`` of the mild class; in ``adaptbir`` mode also the upper clamp of ``k``.
        w_max: ``w`` of the mild class; in ``adaptbir`` mode the medium band's ``w = w_max * s / t_high``.

    Returns:
        ``(class_name, k, w)`` with ``k`` in [0, 1] and ``w`` in [0, w_max].
    """
    if mode not in MAPPING_MODES:
        raise ValueError(f"mode: expected one of {MAPPING_MODES}, found {mode!r}")
    if not math.isfinite(score):
        raise ValueError(f"score: expected a finite number, found {score!r}")
    if not (score_scale > 0):
        raise ValueError(f"score_scale: expected > 0, found {score_scale!r}")
    if not (0.0 <= t_low < t_high):
        raise ValueError(f"thresholds: expected 0 <= t_low < t_high, found t_low={t_low}, t_high={t_high}")
    if not (0.0 <= k_max <= 1.0):
        raise ValueError(f"k_max: expected a value in [0, 1], found {k_max}")
    if not (w_max >= 0.0):
        raise ValueError(f"w_max: expected >= 0, found {w_max}")
    s = score / score_scale
    if s <= t_low:
        cls = "severe"
    elif s <= t_high:
        cls = "medium"
    else:
        cls = "mild"
    if mode == "classes":
        k, w = PAPER_CLASS_COEFFICIENTS[cls]
        return cls, min(1.0, k * k_max / 0.7), w * w_max
    if cls == "severe":
        return cls, 0.0, 0.0
    if cls == "medium":
        return cls, min(s, k_max), w_max * s / t_high
    return cls, k_max, w_max


def params_from_scores(scores, *, metric: str = "musiq", mode: str = "adaptbir", **mapping) -> RestorationParams:
    """Build :class:`RestorationParams` from a sequence of scores with :func:`map_score` (same keywords)."""
    scores = tuple(float(s) for s in scores)
    if not scores:
        raise ValueError("scores: expected at least one score, found an empty batch")
    mapped = [map_score(s, mode=mode, **mapping) for s in scores]
    return RestorationParams(scores=scores, classes=tuple(m[0] for m in mapped), k=tuple(m[1] for m in mapped),
                             w=tuple(m[2] for m in mapped), metric=metric, mode=mode)


def build_musiq(variant: str = "musiq", state_dict: dict | None = None) -> torch.nn.Module:
    """Build the MUSIQ network for ``variant`` (:class:`.musiq.MUSIQ`) and load ``state_dict`` if given.

    Args:
        variant: a key of :data:`MUSIQ_VARIANTS`.
        state_dict: tensors with pyiqa's MUSIQ key names, as in pyiqa's released files (optionally nested under
            ``"params"`` or prefixed with ``"module."``/``"net."``). ``None`` leaves a random initialisation
            (tests and benchmarks only).

    Returns:
        The network in eval mode, on CPU, float32. Its ``forward(x)`` takes (B, 3, H, W) RGB in [0, 1] and
        returns (B, 1) scores (KonIQ/SPAQ/PaQ-2-PiQ about 0..100, AVA 1..10).
    """
    if variant not in MUSIQ_VARIANTS:
        raise ValueError(f"metric: expected one of {sorted(MUSIQ_VARIANTS)}, found {variant!r}")
    from .musiq import MUSIQ

    num_class = MUSIQ_VARIANTS[variant][3]
    net = MUSIQ(num_class=num_class)
    if state_dict is not None:
        sd = normalize_musiq_state_dict(state_dict)
        expected = net.state_dict()
        missing = sorted(set(expected) - set(sd))
        unexpected = sorted(set(sd) - set(expected))
        bad_shape = [k for k in expected if k in sd and tuple(sd[k].shape) != tuple(expected[k].shape)]
        if missing or unexpected or bad_shape:
            raise ValueError(
                f"MUSIQ weights ({variant}): expected pyiqa MUSIQ keys ({len(expected)} tensors, head with "
                f"{num_class} output(s)); found {len(missing)} missing (e.g. {missing[:3]}), {len(unexpected)} "
                f"unexpected (e.g. {unexpected[:3]}), {len(bad_shape)} with other shapes (e.g. {bad_shape[:3]})")
        net.load_state_dict(sd, strict=True)
    return net.eval().requires_grad_(False)


def normalize_musiq_state_dict(state_dict: dict) -> dict:
    """Unwrap ``{"params": ...}`` / ``{"state_dict": ...}`` and strip ``module.`` / ``net.`` prefixes."""
    sd = state_dict
    for wrapper in ("params", "params_ema", "state_dict"):
        if wrapper in sd and isinstance(sd[wrapper], dict):
            sd = sd[wrapper]
            break
    out = {}
    for key, value in sd.items():
        if not isinstance(value, torch.Tensor):
            raise ValueError(f"MUSIQ weights: expected tensors only, found {type(value).__name__} at {key!r}")
        for prefix in ("module.", "net."):
            if key.startswith(prefix):
                key = key[len(prefix):]
        out[key] = value
    return out


def score_images(net: torch.nn.Module, images: torch.Tensor, *, check=None, done=None) -> list[float]:
    """Score each image of a batch with MUSIQ, one image at a time.

    Args:
        net: a network from :func:`build_musiq` (already on the compute device).
        images: (B, 3, H, W) float RGB in [0, 1], any device; moved to the net's device and float32.
        check: optional callable run before each image (e.g. an interrupt check).
        done: optional callable run after each image (e.g. a progress bar update).

    Returns:
        B Python floats, higher is better.
    """
    if images.ndim != 4 or images.shape[1] != 3:
        raise ValueError(f"images: expected (B, 3, H, W), found shape {tuple(images.shape)}")
    device = next(net.parameters()).device
    scores = []
    with torch.no_grad():
        for i in range(images.shape[0]):
            if check is not None:
                check()
            x = images[i:i + 1].to(device=device, dtype=torch.float32).clamp(0.0, 1.0)
            scores.append(float(net(x).reshape(-1)[0]))
            if done is not None:
                done()
    return scores
