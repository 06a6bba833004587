"""Overlapping-tile evaluation of image -> image functions, blended with Gaussian (or uniform) weights.

Used for stage-1 restorers (DiffBIR's ``--cleaner_tiled``): the image is cut into ``tile`` x ``tile`` windows that
start every ``stride`` pixels, the last window of a row/column is moved back so that it ends flush with the border
(no padding, every window lies inside the image), each window is processed on its own and the outputs are blended
with per-tile weights.

Weights. ``"gaussian"``: a separable Gaussian centred on the tile, ``w(i) = exp(-(i - c)^2 / (2 sigma^2))`` with
``c = (n - 1) / 2`` and ``sigma = sigma_frac * n`` per axis (n = tile height or width, ``sigma_frac`` = 0.1 by
default). This is DiffBIR's/CCSR's "var = 0.01 in units of the tile size" (sigma = 0.1 x tile), but centred
symmetrically in both axes (DiffBIR centres y at n/2 and x at (n-1)/2). ``"uniform"``: every pixel weighs 1, i.e.
plain averaging of overlaps.

Exactness. Accumulation is done in float64 and divided by the summed weights before casting back to the function's
output dtype, so a function that is applied pixel by pixel comes back unchanged up to the rounding of that dtype,
and the identity comes back bit for bit. A tile that covers the whole image returns ``fn(x)`` itself.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

import torch

WEIGHTS = ("gaussian", "uniform")
DEFAULT_SIGMA_FRAC = 0.1


class Tile(NamedTuple):
    """One window of a tiled evaluation: ``(top, left, height, width)`` inside a ``full_height`` x ``full_width``
    grid (pixels or latent cells, whatever the tiled tensor's last two axes are)."""

    top: int
    left: int
    height: int
    width: int
    full_height: int
    full_width: int

    def crop(self, t: torch.Tensor, what: str = "tensor") -> torch.Tensor:
        """The tile's window of ``t`` (..., full_height, full_width) as a view; ValueError naming ``what`` when
        ``t`` is not of the full grid's size."""
        if tuple(t.shape[-2:]) != (self.full_height, self.full_width):
            raise ValueError(f"{what}: expected spatial size {self.full_height}x{self.full_width} (the tiled "
                             f"tensor's), found {tuple(t.shape[-2:])}")
        return t[..., self.top:self.top + self.height, self.left:self.left + self.width]


def tile_starts(size: int, tile: int, stride: int) -> list[int]:
    """Start offsets of windows of length ``tile`` along an axis of length ``size``.

    Windows start at 0, stride, 2*stride, ...; if they do not end exactly at ``size`` one more window is added
    that ends flush with the border (``size - tile``). ``tile >= size`` gives one window at 0 (of length ``size``).
    """
    _check_tile_stride(tile, stride)
    if size < 1:
        raise ValueError(f"size: expected >= 1, found {size}")
    if tile >= size:
        return [0]
    starts = list(range(0, size - tile + 1, stride))
    if starts[-1] != size - tile:
        starts.append(size - tile)
    return starts


def tile_boxes(height: int, width: int, tile: int, stride: int) -> list[tuple[int, int, int, int]]:
    """All windows of an ``height`` x ``width`` image as ``(top, left, tile_h, tile_w)``, row by row.

    ``tile_h = min(tile, height)`` and ``tile_w = min(tile, width)``: a tile larger than the image is clipped.
    """
    th, tw = min(tile, height), min(tile, width)
    return [(t, l, th, tw) for t in tile_starts(height, tile, stride) for l in tile_starts(width, tile, stride)]


def count_tiles(height: int, width: int, tile: int, stride: int) -> int:
    """Number of windows :func:`tiled_apply` evaluates for one (B, C, height, width) input (for progress bars)."""
    return len(tile_starts(height, tile, stride)) * len(tile_starts(width, tile, stride))


def tile_weights(height: int, width: int, weight: str = "gaussian", sigma_frac: float = DEFAULT_SIGMA_FRAC,
                 device=None, dtype: torch.dtype = torch.float64) -> torch.Tensor:
    """Blending weights of one ``height`` x ``width`` tile, shape (height, width), peak value 1, all > 0.

    ``"gaussian"``: separable, centre ``(n - 1) / 2``, sigma ``sigma_frac * n`` per axis; ``"uniform"``: ones.
    """
    if weight not in WEIGHTS:
        raise ValueError(f"weight: expected one of {WEIGHTS}, found {weight!r}")
    if weight == "uniform":
        return torch.ones(height, width, device=device, dtype=dtype)
    if not sigma_frac > 0:
        raise ValueError(f"sigma_frac: expected > 0, found {sigma_frac}")

    def axis(n: int) -> torch.Tensor:  # computed on the CPU in float64 (MPS has no float64), then moved
        i = torch.arange(n, dtype=torch.float64)
        c = (n - 1) / 2.0
        s = sigma_frac * n
        return torch.exp(-((i - c) ** 2) / (2.0 * s * s))

    return torch.outer(axis(height), axis(width)).to(device=device, dtype=dtype)


def _check_tile_stride(tile, stride) -> None:
    if isinstance(tile, bool) or not isinstance(tile, int) or tile < 1:
        raise ValueError(f"tile: expected an integer >= 1 (pixels), found {tile!r}")
    if isinstance(stride, bool) or not isinstance(stride, int) or stride < 1:
        raise ValueError(f"stride: expected an integer >= 1 (pixels), found {stride!r}")
    if stride > tile:
        raise ValueError(f"stride: expected at most the tile size ({tile}) so that tiles leave no gaps, "
                         f"found {stride}")


def tiled_apply(fn: Callable[..., torch.Tensor], x: torch.Tensor, tile: int, stride: int,
                weight: str = "gaussian", check: Callable[[], None] | None = None,
                callback: Callable[[int, int], None] | None = None,
                sigma_frac: float = DEFAULT_SIGMA_FRAC, pass_tile: bool = False,
                acc_dtype: torch.dtype = torch.float64) -> torch.Tensor:
    """Evaluate ``fn`` on overlapping tiles of ``x`` and blend the results.

    Args:
        fn: maps a (B, C, h, w) tile to a (B, C', h, w) tensor (same batch and spatial size; C' may differ from C;
            any floating dtype/device). It receives views of ``x`` and must not modify them. With
            ``pass_tile=True`` it is called as ``fn(part, tile)`` with the :class:`Tile` it covers.
        x: (B, C, H, W) tensor, any dtype; not modified.
        tile: tile side in pixels (>= 1). Along an axis shorter than ``tile`` the tile is clipped to the image.
        stride: distance between tile starts (1 <= stride <= tile); the last tile is flush with the border.
        weight: ``"gaussian"`` (sigma = ``sigma_frac`` x tile side, see module docstring) or ``"uniform"``.
        check: called before every tile (e.g. an interrupt check that raises).
        callback: called after every tile as ``callback(done, total)`` (e.g. a progress bar).
        sigma_frac: Gaussian sigma as a fraction of the tile side (default 0.1, DiffBIR's value).
        pass_tile: call ``fn(part, tile)`` instead of ``fn(part)``.
        acc_dtype: dtype of the blending accumulators: float64 (default; exact to the output's rounding) or
            float32 (for sampling paths, where float64 is avoided).

    Returns:
        (B, C', H, W) in the dtype of ``fn``'s output, on the device of ``fn``'s output (CPU if that is MPS and the
        accumulation is float64, which MPS lacks). If one tile covers the whole image it is exactly ``fn(x)``.
    """
    if not isinstance(x, torch.Tensor) or x.ndim != 4:
        found = tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__
        raise ValueError(f"x: expected a (B, C, H, W) tensor, found {found}")
    b, _, h, w = x.shape
    if b == 0 or h == 0 or w == 0:
        raise ValueError(f"x: expected a non-empty (B, C, H, W) tensor, found shape {tuple(x.shape)}")
    _check_tile_stride(tile, stride)
    if weight not in WEIGHTS:
        raise ValueError(f"weight: expected one of {WEIGHTS}, found {weight!r}")

    boxes = tile_boxes(h, w, tile, stride)
    total = len(boxes)

    def run(part: torch.Tensor, box: tuple[int, int, int, int]) -> torch.Tensor:
        size = box[2:]
        y = fn(part, Tile(*box, h, w)) if pass_tile else fn(part)
        if not isinstance(y, torch.Tensor) or y.ndim != 4 or y.shape[0] != b or tuple(y.shape[-2:]) != size:
            found = tuple(y.shape) if isinstance(y, torch.Tensor) else type(y).__name__
            raise ValueError(f"fn: expected a (B={b}, C, {size[0]}, {size[1]}) output for a tile of that size, "
                             f"found {found}")
        if not y.is_floating_point():
            raise ValueError(f"fn: expected a floating-point output, found dtype {y.dtype}")
        return y

    if total == 1:
        if check is not None:
            check()
        y = run(x, (0, 0, h, w))
        if callback is not None:
            callback(1, 1)
        return y

    acc = wsum = None
    weights: dict[tuple[int, int], torch.Tensor] = {}
    out_dtype = None
    for i, (top, left, th, tw) in enumerate(boxes):
        if check is not None:
            check()
        y = run(x[:, :, top:top + th, left:left + tw], (top, left, th, tw))
        if acc is None:
            dev = y.device if y.device.type != "mps" or acc_dtype != torch.float64 else torch.device("cpu")
            acc = torch.zeros((b, y.shape[1], h, w), dtype=acc_dtype, device=dev)
            wsum = torch.zeros((1, 1, h, w), dtype=acc_dtype, device=dev)
            out_dtype = y.dtype
        if (th, tw) not in weights:
            weights[(th, tw)] = tile_weights(th, tw, weight, sigma_frac, device=acc.device, dtype=acc_dtype)
        wt = weights[(th, tw)]
        acc[:, :, top:top + th, left:left + tw] += y.to(device=acc.device, dtype=acc_dtype) * wt
        wsum[:, :, top:top + th, left:left + tw] += wt
        del y
        if callback is not None:
            callback(i + 1, total)
    return (acc / wsum).to(out_dtype)
