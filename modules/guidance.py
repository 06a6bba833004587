"""Region-adaptive restoration guidance of DiffBIR v2.0.0, as pure functions.

At every guided step the predicted clean latent x0 is moved so that the DDPM posterior mean
c1 * x0 + c2 * x_t shifts by delta = -(scale * 3000) * d loss / d x0, with
loss = sum_b mean_{C,H,W}(W * (decode(x0) - target)^2). W comes from Sobel gradients of the
guidance image (flat regions ~1, edges/texture ~0). ``decode`` is the identity in latent space
and the (differentiable) VAE decoder in rgb space; back-propagating through it is the same as
DiffBIR's vector-Jacobian product of the rgb-space delta.

Memory: :func:`guidance_grad` can decode and back-propagate per latent tile with a halo (each output pixel enters
the loss exactly once, with the untiled normalisation), :class:`Checkpointed` / :func:`checkpoint_blocks` trade
recomputation for stored activations, and :func:`fp16_grad_scaling` keeps an fp16 backward from underflowing.
"""
from __future__ import annotations

import math
from typing import Callable, Optional, Sequence, Tuple, Union

import torch
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint as _checkpoint

GUIDANCE_SCALE_FACTOR = 3000.0


def _check_image(name: str, x, channels: Optional[int] = None) -> None:
    if not isinstance(x, torch.Tensor) or x.ndim != 4 or not x.is_floating_point():
        raise ValueError(f"{name}: expected a 4-D floating tensor (B,C,H,W), found {type(x).__name__} "
                         f"{tuple(getattr(x, 'shape', ()))} {getattr(x, 'dtype', '')}")
    if channels is not None and x.shape[1] != channels:
        raise ValueError(f"{name}: expected {channels} channels, found shape {tuple(x.shape)}")


def sobel_weight_map(image: torch.Tensor, block_size: int = 2) -> torch.Tensor:
    """Region-adaptive weight map W = 1 - G of DiffBIR's w_mse loss.

    grey = 0.2989 R + 0.5870 G + 0.1140 B; Sobel Gx = [[1,0,-1],[2,0,-2],[1,0,-1]],
    Gy = [[1,2,1],[0,0,0],[-1,-2,-1]] (cross-correlation) on the replicate-padded grey image;
    magnitude sqrt(Gx^2 + Gy^2); G = tanh(sum of magnitudes in each non-overlapping
    block_size x block_size block), broadcast back to the block's pixels. When H or W is not a
    multiple of block_size, the last row/column of blocks is partial and sums only the pixels it has
    (as if the magnitude were zero-padded); DiffBIR itself requires multiples.

    Args: image (B,3,H,W) float in [0,1]; block_size int >= 1 (DiffBIR: 2).
    Returns: (B,1,H,W) in [0,1], image's dtype and device (computed in float32 for half types).
    """
    _check_image("image", image, 3)
    if isinstance(block_size, bool) or not isinstance(block_size, int) or block_size < 1:
        raise ValueError(f"block_size: expected an int >= 1, found {block_size!r}")
    work = image if image.dtype == torch.float64 else image.float()
    rgb = torch.tensor([0.2989, 0.5870, 0.1140], dtype=work.dtype, device=work.device)
    grey = F.pad((work * rgb.view(1, 3, 1, 1)).sum(dim=1, keepdim=True), (1, 1, 1, 1), mode="replicate")
    # Separable Sobel (difference, then [1,2,1] smoothing): same values as the 3x3 kernels, exact 0 on flat areas.
    dx = grey[..., :, :-2] - grey[..., :, 2:]
    gx = dx[..., :-2, :] + 2.0 * dx[..., 1:-1, :] + dx[..., 2:, :]
    dy = grey[..., :-2, :] - grey[..., 2:, :]
    gy = dy[..., :, :-2] + 2.0 * dy[..., :, 1:-1] + dy[..., :, 2:]
    mag = (gx * gx + gy * gy).sqrt()
    b, _, h, w = mag.shape
    ph, pw = (-h) % block_size, (-w) % block_size
    mag = F.pad(mag, (0, pw, 0, ph))
    hb, wb = (h + ph) // block_size, (w + pw) // block_size
    sums = mag.view(b, 1, hb, block_size, wb, block_size).sum(dim=(3, 5))
    g = sums.tanh().repeat_interleave(block_size, dim=2).repeat_interleave(block_size, dim=3)
    return (1.0 - g[:, :, :h, :w]).to(image.dtype)


def resize_weight_map(weight: torch.Tensor, size: Union[int, Sequence[int]], mode: str = "area") -> torch.Tensor:
    """Resize a weight map to another grid, e.g. the latent grid (H/8, W/8) for latent-space w_mse.

    ``area`` (default) averages the weights of the pixels each latent cell covers (exact mean for
    integer factors); ``bilinear`` uses align_corners=False with antialiasing when shrinking.
    Both are convex combinations, so values stay in [0,1] (the result is clamped to be safe).
    Args: weight (B,1,H,W) float in [0,1]; size int or (h, w) with positive ints; mode "area"|"bilinear".
    Returns: (B,1,h,w), weight's dtype.
    """
    _check_image("weight", weight, 1)
    if isinstance(size, int) and not isinstance(size, bool):
        size = (size, size)
    if (not isinstance(size, (tuple, list)) or len(size) != 2
            or not all(isinstance(s, int) and not isinstance(s, bool) and s > 0 for s in size)):
        raise ValueError(f"size: expected a positive int or a pair of positive ints, found {size!r}")
    if mode == "area":
        out = F.interpolate(weight, size=tuple(size), mode="area")
    elif mode == "bilinear":
        out = F.interpolate(weight, size=tuple(size), mode="bilinear", align_corners=False, antialias=True)
    else:
        raise ValueError(f"mode: expected 'area' or 'bilinear', found {mode!r}")
    return out.clamp(0.0, 1.0)


def guidance_loss(pred: torch.Tensor, target: torch.Tensor, weight: Optional[torch.Tensor] = None) -> torch.Tensor:
    """(Weighted) MSE of DiffBIR's guidance: sum over the batch of per-sample means over C*H*W.

    Args: pred, target (B,C,H,W) float, same shape (any value range, DiffBIR uses [-1,1] or latents);
        weight None (plain mse) or a tensor broadcastable to pred, typically (B,1,H,W) or (1,1,H,W)
        in [0,1] (broadcast over channels).
    Returns: scalar (0-D) tensor >= 0 in the promoted dtype; differentiable w.r.t. pred.
    """
    _check_image("pred", pred)
    if not isinstance(target, torch.Tensor) or target.shape != pred.shape:
        raise ValueError(f"target: expected shape {tuple(pred.shape)}, found {tuple(getattr(target, 'shape', ()))}")
    err = (pred - target).pow(2)
    if weight is not None:
        if not isinstance(weight, torch.Tensor) or weight.ndim != 4:
            raise ValueError(f"weight: expected a 4-D tensor or None, found {tuple(getattr(weight, 'shape', ()))}")
        try:
            torch.broadcast_shapes(weight.shape, pred.shape)
        except RuntimeError:
            raise ValueError(f"weight: expected a shape broadcastable to {tuple(pred.shape)}, "
                             f"found {tuple(weight.shape)}") from None
        err = err * weight
        if err.shape != pred.shape:
            raise ValueError(f"weight: must not enlarge pred's shape {tuple(pred.shape)}, found {tuple(weight.shape)}")
    return err.mean(dim=(1, 2, 3)).sum()


def guidance_delta_scale(scale: float) -> float:
    """Effective gradient step size: scale * 3000, DiffBIR v2.0.0's hard-coded factor
    (``Guidance.__init__``), so user scales of 0..1 are meaningful. Args: scale finite float >= 0.
    Returns: Python float >= 0.
    """
    if isinstance(scale, bool) or not isinstance(scale, (int, float)) or not math.isfinite(scale) or scale < 0:
        raise ValueError(f"scale: expected a finite number >= 0, found {scale!r}")
    return float(scale) * GUIDANCE_SCALE_FACTOR


def _coef_view(coef1, like: torch.Tensor) -> Union[float, torch.Tensor]:
    if isinstance(coef1, torch.Tensor):
        c = coef1.to(device=like.device)
        if c.ndim == 1 and c.numel() in (1, like.shape[0]) and like.ndim > 1:
            c = c.view(-1, *([1] * (like.ndim - 1)))
        try:
            if c.ndim not in (0, like.ndim) or torch.broadcast_shapes(c.shape, like.shape) != like.shape:
                raise RuntimeError
        except RuntimeError:
            raise ValueError(f"coef1: expected a scalar, a (B,) tensor or a shape broadcastable to "
                             f"{tuple(like.shape)}, found {tuple(coef1.shape)}") from None
        if not bool(torch.isfinite(c).all()) or bool((c <= 0).any()):
            raise ValueError("coef1: expected finite values > 0, found zero, negative or non-finite entries")
        return c
    if isinstance(coef1, bool) or not isinstance(coef1, (int, float)) or not math.isfinite(coef1) or coef1 <= 0:
        raise ValueError(f"coef1: expected a finite number > 0, found {coef1!r}")
    return float(coef1)


def apply_guidance_step(x0: torch.Tensor, grad: torch.Tensor, scale: float, coef1) -> torch.Tensor:
    """x0 + delta / coef1 with delta = -(scale * 3000) * grad, so c1*x0 + c2*x_t moves by exactly delta.

    Args: x0, grad float tensors of equal shape (B,...); scale float >= 0; coef1 the posterior-mean
        coefficient c1 > 0 of this step: a number, a (B,) tensor (per sample) or broadcastable tensor.
    Returns: new tensor of x0's shape (inputs are not modified).
    """
    if not isinstance(x0, torch.Tensor) or not x0.is_floating_point():
        raise ValueError(f"x0: expected a floating tensor, found {type(x0).__name__}")
    if not isinstance(grad, torch.Tensor) or grad.shape != x0.shape:
        raise ValueError(f"grad: expected shape {tuple(x0.shape)}, found {tuple(getattr(grad, 'shape', ()))}")
    step = guidance_delta_scale(scale)
    return x0 + (-step * grad) / _coef_view(coef1, x0)


def guidance_active(t: int, g_start: int, g_stop: int) -> bool:
    """DiffBIR's guidance window over model timesteps t in [0, T): active iff g_stop < t + 1 < g_start
    (defaults g_start=1001, g_stop=-1 keep every step). Args: ints. Returns: bool."""
    for name, v in (("t", t), ("g_start", g_start), ("g_stop", g_stop)):
        if isinstance(v, bool) or not isinstance(v, int):
            raise ValueError(f"{name}: expected an int, found {v!r}")
    return g_stop < t + 1 < g_start


class Checkpointed(torch.nn.Module):
    """Runs ``block`` under gradient checkpointing: its intermediate activations are not kept for the backward
    pass but recomputed there (``torch.utils.checkpoint``, ``use_reentrant=False``).

    Same outputs and gradients as ``block`` itself (any positional/keyword arguments, tensors of any shape and
    dtype); the backward pass costs about one extra forward of the block. Without autograd recording
    (``torch.no_grad``) it calls the block directly.
    """

    def __init__(self, block: torch.nn.Module):
        super().__init__()
        self.block = block

    def forward(self, *args, **kwargs):
        if torch.is_grad_enabled():
            return _checkpoint(self.block, *args, use_reentrant=False, **kwargs)
        return self.block(*args, **kwargs)


def checkpoint_blocks(root: torch.nn.Module, classes) -> int:
    """Replace, in place, every submodule of ``root`` that is an instance of ``classes`` (a class or a tuple of
    classes) by ``Checkpointed(submodule)``. Only the outermost match of a branch is wrapped, modules already
    wrapped are left alone and ``root`` itself is never replaced. The parents' forward code is unchanged: they
    call the wrapper as they called the block.

    Returns: the number of blocks wrapped (int >= 0).
    """
    count = 0
    for name, child in list(root.named_children()):
        if isinstance(child, Checkpointed):
            continue
        if isinstance(child, classes):
            setattr(root, name, Checkpointed(child))
            count += 1
        else:
            count += checkpoint_blocks(child, classes)
    return count


class _GradMul(torch.autograd.Function):
    """Identity in the forward pass; the backward pass multiplies the gradient by ``state[key]``."""

    @staticmethod
    def forward(ctx, x, state, key):
        ctx.state, ctx.key = state, key
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad):
        return grad * ctx.state[ctx.key], None, None


def fp16_grad_scaling(decode: Callable[[torch.Tensor], torch.Tensor]) -> Callable[[torch.Tensor], torch.Tensor]:
    """Wrap a decoder that computes in float16 but takes and returns float32 tensors so that its backward pass
    does not underflow: the gradient arriving at the (float32) output is multiplied by k = 2^floor(log2(numel of
    one decoded sample)) before it enters the float16 graph, and the gradient leaving the graph at the (float32)
    input is divided by k again. The guidance loss is a mean over C*H*W, so the unscaled per-pixel gradients
    (~1e-7 at 1024 px) would fall below float16's normal range. k is a power of two, so the scaling is exact.

    Args: decode callable (B,C,h,w) float32 -> (B,C',H,W) float32 (computing in float16 inside).
    Returns: a callable with the same forward values and the same gradients up to float16 rounding.
    """

    def wrapped(z: torch.Tensor) -> torch.Tensor:
        state = {"k": 1.0, "inv": 1.0}
        out = decode(_GradMul.apply(z, state, "inv"))
        k = 2.0 ** math.floor(math.log2(max(1, out[0].numel())))
        state["k"], state["inv"] = k, 1.0 / k
        return _GradMul.apply(out, state, "k")
    return wrapped


def _int_arg(name: str, v, low: int) -> int:
    if isinstance(v, bool) or not isinstance(v, int) or v < low:
        raise ValueError(f"{name}: expected an int >= {low}, found {v!r}")
    return v


def _crop(t: Optional[torch.Tensor], ys: slice, xs: slice, full_hw) -> Optional[torch.Tensor]:
    """Crop the spatial dims of ``t`` that have the full image's size (size-1 dims broadcast and are kept)."""
    if t is None:
        return None
    return t[..., ys if t.shape[-2] == full_hw[0] else slice(None), xs if t.shape[-1] == full_hw[1] else slice(None)]


def guidance_grad(x0: torch.Tensor, target: torch.Tensor, decode: Callable[[torch.Tensor], torch.Tensor],
                  weight: Optional[torch.Tensor] = None, tile: int = 0, halo: int = 8,
                  check: Optional[Callable[[], None]] = None) -> Tuple[torch.Tensor, torch.Tensor]:
    """Guidance loss and its gradient d loss / d x0, for the whole latent or per latent tile.

    loss = guidance_loss(decode(x0) cast to x0's dtype, target, weight). With ``tile`` > 0 the latent is split
    into core tiles of ``tile`` x ``tile`` latent px (the last row/column may be smaller); each core is extended
    by ``halo`` latent px on every side (clipped at the border), the haloed patch is decoded, and only the core's
    decoded pixels enter the loss, normalised by the FULL image's C*H*W, so the tile losses sum to the untiled
    loss and every output pixel counts once. Each patch's gradient is added into the full-size gradient. For a
    decoder whose receptive field fits in the halo this equals the untiled result; otherwise the gradient is
    approximate near tile borders. The pixel scale factor s (decoded size / latent size) is taken from the first
    decoded patch. ``tile`` == 0, or a tile covering the whole latent, is the untiled computation.

    Safe under ``torch.no_grad()`` / ``torch.inference_mode()`` (runs in ``inference_mode(False)`` +
    ``enable_grad()`` on detached copies); x0, target and weight are never modified.

    Args:
        x0: (B,C,h,w) floating latent; its dtype is the dtype of the leaf, the loss and the gradient.
        target: (B,C',s*h,s*w) floating, shaped like decode(x0) (any value range).
        decode: differentiable callable (B,C,h',w') -> (B,C',s*h',s*w'), any floating dtype.
        weight: None or a 4-D tensor broadcastable to target, typically (B or 1,1,s*h,s*w) in [0,1].
        tile: core tile size in latent px, int >= 0 (0 = untiled). halo: latent px, int >= 0.
        check: None or a callable called before every tile (e.g. an interrupt check); an exception from it stops
            the loop.
    Returns:
        (loss, grad): a 0-D detached tensor >= 0 and a detached tensor of x0's shape, both in x0's dtype/device.
    """
    _check_image("x0", x0)
    _check_image("target", target)
    if not callable(decode):
        raise ValueError(f"decode: expected a callable, found {type(decode).__name__}")
    if weight is not None and (not isinstance(weight, torch.Tensor) or weight.ndim != 4):
        raise ValueError(f"weight: expected a 4-D tensor or None, found {tuple(getattr(weight, 'shape', ()))}")
    tile, halo = _int_arg("tile", tile, 0), _int_arg("halo", halo, 0)
    if check is not None and not callable(check):
        raise ValueError(f"check: expected a callable or None, found {type(check).__name__}")
    b, _, h, w = x0.shape
    if target.shape[0] != b:
        raise ValueError(f"target: expected a batch of {b} (x0's), found shape {tuple(target.shape)}")
    whole = tile == 0 or (tile >= h and tile >= w)
    step_h, step_w = (h, w) if whole else (tile, tile)
    full_hw = tuple(target.shape[-2:])
    with torch.inference_mode(False), torch.enable_grad():
        x = x0.detach().clone()
        grad = torch.zeros_like(x)
        total = x.new_zeros(())
        per_sample = target[0].numel()
        s = None
        for ty0 in range(0, h, step_h):
            for tx0 in range(0, w, step_w):
                if check is not None:
                    check()
                ty1, tx1 = min(h, ty0 + step_h), min(w, tx0 + step_w)
                hy0, hy1 = (0, h) if whole else (max(0, ty0 - halo), min(h, ty1 + halo))
                hx0, hx1 = (0, w) if whole else (max(0, tx0 - halo), min(w, tx1 + halo))
                leaf = x[..., hy0:hy1, hx0:hx1].detach().requires_grad_(True)
                pred = decode(leaf)
                if not isinstance(pred, torch.Tensor) or pred.ndim != 4 or pred.shape[0] != b:
                    raise ValueError(f"decode: expected a (B,C,H,W) tensor with B={b}, found "
                                     f"{tuple(getattr(pred, 'shape', ()))}")
                if s is None:
                    s = pred.shape[-2] // (hy1 - hy0)
                    if s < 1 or full_hw != (s * h, s * w):
                        raise ValueError(f"target: expected the decoded size {s * w}x{s * h} (the {w}x{h} latent "
                                         f"scaled by the decoder's factor {s}), found {tuple(target.shape)}")
                if pred.shape[1:] != (target.shape[1], s * (hy1 - hy0), s * (hx1 - hx0)):
                    raise ValueError(f"decode: expected {target.shape[1]} channels of {s * (hx1 - hx0)}x"
                                     f"{s * (hy1 - hy0)} px for a {hx1 - hx0}x{hy1 - hy0} latent patch, found "
                                     f"{tuple(pred.shape)}")
                core = pred[..., s * (ty0 - hy0):s * (ty1 - hy0), s * (tx0 - hx0):s * (tx1 - hx0)].to(x.dtype)
                ys, xs = slice(s * ty0, s * ty1), slice(s * tx0, s * tx1)
                tgt = _crop(target, ys, xs, full_hw).detach().to(x.dtype).clone()
                wt = _crop(weight, ys, xs, full_hw)
                wt = None if wt is None else wt.detach().clone()
                loss = guidance_loss(core, tgt, wt)
                if not whole:
                    loss = loss * (core[0].numel() / per_sample)
                (g_patch,) = torch.autograd.grad(loss, leaf)
                grad[..., hy0:hy1, hx0:hx1] += g_patch
                total = total + loss.detach()
                del pred, core, loss, g_patch, leaf
    return total, grad


def guided_x0(x0: torch.Tensor, target: torch.Tensor, decode: Callable[[torch.Tensor], torch.Tensor], scale: float,
              coef1, weight: Optional[torch.Tensor] = None, repeat: int = 1, tile: int = 0, halo: int = 8,
              check: Optional[Callable[[], None]] = None) -> torch.Tensor:
    """One full guidance update of the predicted clean latent, repeated ``repeat`` times.

    Each repeat: (loss, grad) = guidance_grad(x0, target, decode, weight, tile, halo, check), then
    x0 = apply_guidance_step(x0, grad, scale, coef1). Safe under the caller's torch.no_grad() or
    torch.inference_mode() (see guidance_grad; decode's parameters must themselves not be inference tensors).
    scale == 0 returns a clone of x0 without calling decode.

    Args: x0 (B,C,h,w) float latent (model space); target float tensor shaped like decode(x0)
        ([-1,1] image for rgb space, latent for latent space); decode differentiable callable;
        scale float >= 0; coef1 as in apply_guidance_step; weight as in guidance_loss; repeat int >= 1;
        tile, halo (latent px) and check as in guidance_grad (tile 0 = untiled).
    Returns: detached tensor of x0's shape, dtype and device; x0 is never modified.
    """
    _check_image("x0", x0)
    if not callable(decode):
        raise ValueError(f"decode: expected a callable, found {type(decode).__name__}")
    if isinstance(repeat, bool) or not isinstance(repeat, int) or repeat < 1:
        raise ValueError(f"repeat: expected an int >= 1, found {repeat!r}")
    if guidance_delta_scale(scale) == 0.0:
        return x0.detach().clone()
    _coef_view(coef1, x0)
    with torch.inference_mode(False), torch.enable_grad():
        cur = x0.detach().clone()
        coef = coef1.detach().clone() if isinstance(coef1, torch.Tensor) else coef1
        for _ in range(repeat):
            _, grad = guidance_grad(cur, target, decode, weight, tile=tile, halo=halo, check=check)
            cur = apply_guidance_step(cur.detach(), grad, scale, coef)
        return cur.detach()
