"""AdaptBIR's CSFT (controllable spatial feature transform) layers, as a pure-torch module.

AdaptBIR's stage-3 UNet modulates the frozen SD decoder with the IRControlNet's *raw* features (the outputs of the
control branch's input blocks and middle block, before its zero convolutions, multiplied by the control strength):

    F' = F + w * (GroupNorm(F) * alpha + beta),   a = ReLU(Conv3x3(Fc -> 128)),  alpha = Conv3x3(a -> C),
                                                  beta = Conv3x3(a -> C)

with F the decoder feature, Fc the control feature of the mirrored level, GroupNorm 32 groups (eps 1e-5, affine,
computed in float32 like LDM's ``GroupNorm32``) and w the per-image CSFT weight (AdaptBIR: w = min(musiq/70, 1),
and 0 when musiq <= 40).

Order of operations in the UNet forward (for SD 2.1: 12 input blocks, middle block, 12 output blocks, 13 raw
control features ``feat[0..11]`` = control input blocks 0..11, ``feat[12]`` = control middle block; ``ctrl[j]`` the
zero-conv residuals; ``hs[j]`` the UNet's skip tensors)::

    h = middle_block(h)
    h = h + ctrl[12]                                  # the middle control residual first,
    h = cft_blocks[0](h, feat[12])                    # then CSFT 0
    for i in 0..11:
        h = output_blocks[i](cat(h, hs[11 - i] + ctrl[11 - i]))   # incl. its Upsample for i in 2, 5, 8
        f = feat[11 - i]
        if i in (2, 5, 8): f = upsample_layers[(i + 1) // 3 - 1](f)  # the feature comes from a downsampling
        h = cft_blocks[i + 1](h, f)                                   # input block: half h's size
    out(h)

So CSFT ``j`` (j = 0..11) acts on h right before output block ``j`` concatenates its skip (nothing happens in
between: a hook on h before each output block's concat, such as ComfyUI's ``output_block_patch``, can host it), and
CSFT 12 right before the UNet's final ``out`` layers (after the last output block; needs a hook there).
:func:`csft_plan` states this schedule as data; :meth:`CSFT.modulate` applies one step of it. State-dict
keys match AdaptBIR's (``cft_blocks.{i}.*``, ``upsample_layers.{j}.conv.*``), so weights from an AdaptBIR
checkpoint's ``model.diffusion_model.`` subtree load with ``strict=True``.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

SFT_CHANNELS = 128
NUM_GROUPS = 32
NORM_EPS = 1e-5

_CKPT_PREFIXES = ("model.diffusion_model.", "diffusion_model.", "")
_BLOCK_KEYS = ("fd_norm.weight", "fd_norm.bias", "mlp_shared.0.weight", "mlp_shared.0.bias", "scale.weight",
               "scale.bias", "shift.weight", "shift.bias")


# --------------------------------------------------------------------------------------------------------------
# argument checks
# --------------------------------------------------------------------------------------------------------------

def _check_int(name: str, value, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"{name}: expected an int >= {minimum}, found {value!r}")
    return value


def _check_feature(name: str, x, channels: int) -> None:
    if not isinstance(x, torch.Tensor) or x.ndim != 4 or not x.is_floating_point():
        raise ValueError(f"{name}: expected a 4-D floating tensor (B,C,H,W), found {type(x).__name__} "
                         f"{tuple(getattr(x, 'shape', ()))} {getattr(x, 'dtype', '')}".rstrip())
    if x.shape[1] != channels:
        raise ValueError(f"{name}: expected {channels} channels, found shape {tuple(x.shape)}")


def _resolve_ops(operations):
    ops = nn if operations is None else operations
    missing = [a for a in ("Conv2d", "GroupNorm") if not callable(getattr(ops, a, None))]
    if missing:
        raise ValueError(f"operations: expected torch.nn or an ops namespace with Conv2d and GroupNorm classes, found "
                         f"{ops!r} without {', '.join(missing)}")
    return ops


def csft_weights(w, batch: int) -> torch.Tensor:
    """Normalise a CSFT weight argument to one float64 value per image, on the CPU.

    Args:
        w: a Python/NumPy number, a sequence of numbers, or a tensor with 1 or ``batch`` elements (any shape, e.g.
            (), (1,), (B,), or AdaptBIR's (B,1,1,1)). A single value applies to every image. Finite; AdaptBIR's
            values are in [0, 1] (0 = CSFT off, 1 = full strength), other finite values are accepted.
        batch: the batch size B >= 1 of the feature being modulated.

    Returns:
        A (B,) float64 CPU tensor.

    Raises:
        ValueError: ``w`` is not numeric, has a count other than 1 or B, or holds NaN/inf.
    """
    if isinstance(w, bool) or (isinstance(w, torch.Tensor) and w.dtype == torch.bool):
        raise ValueError(f"w: expected a number or 1 or {batch} numbers, found a boolean {w!r}")
    try:
        t = w.detach() if isinstance(w, torch.Tensor) else torch.as_tensor(w, dtype=torch.float64)
        t = t.to(device="cpu", dtype=torch.float64).reshape(-1)
    except (TypeError, ValueError, RuntimeError) as exc:
        raise ValueError(f"w: expected a number, a sequence of numbers or a tensor, found {type(w).__name__} "
                         f"{w!r}") from exc
    if t.numel() == 1:
        t = t.expand(batch).clone()
    if t.numel() != batch:
        raise ValueError(f"w: expected 1 or {batch} values (one per image), found {t.numel()}")
    if not bool(torch.isfinite(t).all()):
        raise ValueError(f"w: expected finite values, found {t.tolist()}")
    return t


# --------------------------------------------------------------------------------------------------------------
# layers
# --------------------------------------------------------------------------------------------------------------

class FuseSFTBlock(nn.Module):
    """One CSFT layer (AdaptBIR's ``Fuse_sft_block``); parameter names as AdaptBIR's.

    Parameters (C = ``channels``, S = ``sft_channels``):
        ``fd_norm``: GroupNorm(``num_groups``, C, eps 1e-5, affine) applied to the decoder feature h.
        ``mlp_shared``: Sequential(Conv2d(C -> S, 3x3, pad 1), ReLU) on the control feature (one shared trunk).
        ``scale``, ``shift``: Conv2d(S -> C, 3x3, pad 1) each: alpha and beta.

    ``forward(h, control_feature, w) = h + w * (fd_norm(h) * scale(a) + shift(a))``, a = mlp_shared(control_feature).
    AdaptBIR sizes the norm and the trunk input by one channel count, so decoder and control feature have the same
    number of channels.
    """

    def __init__(self, channels: int, sft_channels: int = SFT_CHANNELS, num_groups: int = NUM_GROUPS,
                 device=None, dtype=None, operations=None):
        """
        Args:
            channels: C, the channel count of both the decoder feature and the control feature (int >= 1).
            sft_channels: S, width of the shared trunk (AdaptBIR: 128).
            num_groups: GroupNorm groups, must divide ``channels`` (AdaptBIR: 32).
            device, dtype: passed to the layer constructors (``device="meta"`` builds without memory).
            operations: namespace with ``Conv2d`` and ``GroupNorm`` classes (ComfyUI's ops); default ``torch.nn``.
        """
        super().__init__()
        _check_int("channels", channels, 1)
        _check_int("sft_channels", sft_channels, 1)
        _check_int("num_groups", num_groups, 1)
        if channels % num_groups:
            raise ValueError(f"channels: expected a multiple of num_groups={num_groups}, found {channels}")
        ops = _resolve_ops(operations)
        self.channels = channels
        self.sft_channels = sft_channels
        self.fd_norm = ops.GroupNorm(num_groups, channels, eps=NORM_EPS, affine=True, device=device, dtype=dtype)
        self.mlp_shared = nn.Sequential(
            ops.Conv2d(channels, sft_channels, kernel_size=3, padding=1, device=device, dtype=dtype),
            nn.ReLU(),
        )
        self.scale = ops.Conv2d(sft_channels, channels, kernel_size=3, padding=1, device=device, dtype=dtype)
        self.shift = ops.Conv2d(sft_channels, channels, kernel_size=3, padding=1, device=device, dtype=dtype)

    def _normalise(self, h: torch.Tensor) -> torch.Tensor:
        # LDM's GroupNorm32 runs the norm in float32 and casts back. With float32 weights we do the same; with
        # low-precision weights (a model loaded in fp16/bf16) the norm runs in h's dtype, as ComfyUI's own UNet does.
        weight = self.fd_norm.weight
        if weight is None or weight.dtype == torch.float32:
            return self.fd_norm(h.float()).to(h.dtype)
        return self.fd_norm(h)

    def forward(self, h: torch.Tensor, control_feature: torch.Tensor, w=1.0) -> torch.Tensor:
        """Modulate a decoder feature with a control feature.

        Args:
            h: (B, C, H, W) floating decoder feature (any range). Its dtype and device are those of the result.
            control_feature: (B, C, H, W) floating raw control feature (the control branch's block output times the
                control strength); cast to h's dtype and device.
            w: CSFT weight, a number or one per image (see :func:`csft_weights`).

        Returns:
            (B, C, H, W) tensor, h's dtype: ``h + w * (GroupNorm(h) * alpha + beta)``. When every w is 0 this is
            ``h`` itself (the same object, nothing computed); images whose w is 0 are bit-identical to their h.

        Raises:
            ValueError: shapes that do not match the block, or a bad ``w``.
        """
        _check_feature("h", h, self.channels)
        _check_feature("control_feature", control_feature, self.channels)
        if control_feature.shape[0] != h.shape[0] or control_feature.shape[2:] != h.shape[2:]:
            raise ValueError(f"control_feature: expected the batch size and spatial size of h "
                             f"{tuple(h.shape)}, found {tuple(control_feature.shape)}")
        weights = csft_weights(w, h.shape[0])
        active = weights != 0
        if not bool(active.any()):
            return h
        a = self.mlp_shared(control_feature.to(device=h.device, dtype=h.dtype))
        alpha = self.scale(a)
        beta = self.shift(a)
        wt = weights.to(device=h.device, dtype=h.dtype).view(-1, 1, 1, 1)
        out = h + wt * (self._normalise(h) * alpha + beta)
        if not bool(active.all()):
            out = torch.where(active.to(h.device).view(-1, 1, 1, 1), out, h)
        return out


class UpsampleLayer(nn.Module):
    """AdaptBIR's resolution-alignment layer: nearest-neighbour x2, then Conv2d(in -> out, 3x3, pad 1) ``conv``."""

    def __init__(self, in_channels: int, out_channels: int, device=None, dtype=None, operations=None):
        """
        Args:
            in_channels, out_channels: ints >= 1 (AdaptBIR SD 2.1: 1280->1280, 640->1280, 320->640).
            device, dtype, operations: as for :class:`FuseSFTBlock`.
        """
        super().__init__()
        _check_int("in_channels", in_channels, 1)
        _check_int("out_channels", out_channels, 1)
        ops = _resolve_ops(operations)
        self.in_channels = in_channels
        self.out_channels = out_channels
        self.conv = ops.Conv2d(in_channels, out_channels, kernel_size=3, padding=1, device=device, dtype=dtype)

    def forward(self, x: torch.Tensor, output_size: Sequence[int] | None = None) -> torch.Tensor:
        """Upsample a feature.

        Args:
            x: (B, in_channels, H, W) floating tensor.
            output_size: None for exactly (2H, 2W) (AdaptBIR), or (H', W') for nearest resizing to that size
                (the UNet's own upsample does this for sizes that are not multiples of 8; for (2H, 2W) the two
                agree bit for bit).

        Returns:
            (B, out_channels, 2H, 2W) or (B, out_channels, H', W'), x's dtype.
        """
        _check_feature("x", x, self.in_channels)
        if output_size is None:
            x = F.interpolate(x, scale_factor=2, mode="nearest")
        else:
            size = tuple(output_size)
            if len(size) != 2 or not all(isinstance(s, int) and not isinstance(s, bool) and s >= 1 for s in size):
                raise ValueError(f"output_size: expected None or two ints >= 1 (H, W), found {output_size!r}")
            x = F.interpolate(x, size=size, mode="nearest")
        return self.conv(x)


# --------------------------------------------------------------------------------------------------------------
# schedule
# --------------------------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class CSFTStep:
    """One CSFT application in the UNet forward.

    Attributes:
        block: index into ``cft_blocks`` (0 = after the middle block, i + 1 = after output block i).
        output_block: the UNet output block whose result is modulated, or None for the middle block.
        feature: index into the raw control features (0..N-1 = control input blocks, N = control middle block).
        upsample: index into ``upsample_layers`` applied to that feature first, or None.
        skip: the input block whose skip tensor (plus its control residual) output block ``output_block``
            concatenates before running, or None for the middle step. Always equal to ``feature`` for output steps.
        where: the position in words.
    """

    block: int
    output_block: int | None
    feature: int
    upsample: int | None
    skip: int | None
    where: str


def csft_plan(num_input_blocks: int = 12, num_res_blocks: int = 2) -> list:
    """AdaptBIR's CSFT schedule for a UNet with ``num_input_blocks`` input and as many output blocks.

    Args:
        num_input_blocks: N = levels * (num_res_blocks + 1) (SD 2.1: 12).
        num_res_blocks: res blocks per encoder level (SD 2.1: 2); output blocks per level are one more.

    Returns:
        A list of N + 1 :class:`CSFTStep`, in execution order:

        * step 0: after the middle block and after the middle control residual has been added to h, feature N
          (the control middle block), no upsample.
        * step i + 1 (output block i = 0..N-1): after output block i has run on cat(h, skip[N-1-i] + control
          residual) (so after that block's own Upsample when it has one), feature N-1-i. When output block i ends a
          level other than the top one ((i + 1) % (num_res_blocks + 1) == 0 and i != N-1; SD 2.1: i = 2, 5, 8)
          the feature comes from a downsampling input block, half h's size, and ``upsample_layers[u]`` is applied
          to it first, u counting those blocks from 0.

    Raises:
        ValueError: N is not a positive multiple of num_res_blocks + 1.
    """
    _check_int("num_res_blocks", num_res_blocks, 1)
    _check_int("num_input_blocks", num_input_blocks, num_res_blocks + 1)
    per_level = num_res_blocks + 1
    if num_input_blocks % per_level:
        raise ValueError(f"num_input_blocks: expected a multiple of num_res_blocks + 1 = {per_level}, found "
                         f"{num_input_blocks}")
    n = num_input_blocks
    plan = [CSFTStep(block=0, output_block=None, feature=n, upsample=None, skip=None,
                     where="after the middle block, after the middle control residual is added")]
    up = 0
    for i in range(n):
        upsample = None
        if (i + 1) % per_level == 0 and i != n - 1:
            upsample, up = up, up + 1
        where = f"after output block {i}" + (" (after its Upsample)" if upsample is not None else "")
        plan.append(CSFTStep(block=i + 1, output_block=i, feature=n - 1 - i, upsample=upsample, skip=n - 1 - i,
                             where=where))
    return plan


def _block_channels(model_channels: int, channel_mult: Sequence[int], num_res_blocks: int) -> list:
    # cft_blocks[0] sits on the middle block (deepest width); then num_res_blocks + 1 blocks per level, deepest first.
    chans = [model_channels * channel_mult[-1]]
    for mult in reversed(channel_mult):
        chans += [model_channels * mult] * (num_res_blocks + 1)
    return chans


def _upsample_channels(model_channels: int, channel_mult: Sequence[int]) -> list:
    # One per level except the top, deepest first: (width of the level above, width of this level).
    return [(model_channels * channel_mult[level - 1], model_channels * channel_mult[level])
            for level in range(len(channel_mult) - 1, 0, -1)]


class CSFT(nn.Module):
    """All CSFT layers of AdaptBIR's stage-3 UNet: ``cft_blocks`` (N + 1) and ``upsample_layers`` (levels - 1).

    For SD 2.1 (defaults): 13 blocks with channels [1280] * 7 + [640] * 3 + [320] * 3 (middle first, then output
    blocks 0..11) and 3 upsample layers 1280->1280, 640->1280, 320->640 (for output blocks 2, 5, 8); 64,932,864
    parameters (40.97 M in the blocks, 23.96 M in the upsample layers). Keys:
    ``cft_blocks.{i}.{fd_norm,mlp_shared.0,scale,shift}.{weight,bias}``, ``upsample_layers.{j}.conv.{weight,bias}``.
    """

    def __init__(self, model_channels: int = 320, channel_mult: Sequence[int] = (1, 2, 4, 4), num_res_blocks: int = 2,
                 sft_channels: int = SFT_CHANNELS, num_groups: int = NUM_GROUPS, device=None, dtype=None,
                 operations=None):
        """
        Args:
            model_channels: the UNet's base width (SD 2.1: 320).
            channel_mult: per-level multipliers, a non-empty sequence of ints >= 1 (SD 2.1: (1, 2, 4, 4)).
            num_res_blocks: res blocks per encoder level, an int (SD 2.1: 2).
            sft_channels: trunk width of every block (AdaptBIR: 128).
            num_groups: GroupNorm groups (AdaptBIR: 32); must divide every level's width.
            device, dtype, operations: as for :class:`FuseSFTBlock` (operations: ComfyUI's ops or torch.nn).

        Raises:
            ValueError: any argument of the wrong type or range.
        """
        super().__init__()
        _check_int("model_channels", model_channels, 1)
        _check_int("num_res_blocks", num_res_blocks, 1)
        try:
            mults = tuple(channel_mult)
        except TypeError:
            mults = None
        if not mults or not all(isinstance(m, int) and not isinstance(m, bool) and m >= 1 for m in mults):
            raise ValueError(f"channel_mult: expected a non-empty sequence of ints >= 1, found {channel_mult!r}")
        ops = _resolve_ops(operations)
        self.model_channels = model_channels
        self.channel_mult = mults
        self.num_res_blocks = num_res_blocks
        self.sft_channels = sft_channels
        self.num_groups = num_groups
        self.num_input_blocks = len(mults) * (num_res_blocks + 1)
        self.block_channels = tuple(_block_channels(model_channels, mults, num_res_blocks))
        self.upsample_channels = tuple(_upsample_channels(model_channels, mults))
        self.plan = tuple(csft_plan(self.num_input_blocks, num_res_blocks))
        self.cft_blocks = nn.ModuleList([
            FuseSFTBlock(c, sft_channels, num_groups, device=device, dtype=dtype, operations=ops)
            for c in self.block_channels
        ])
        self.upsample_layers = nn.ModuleList([
            UpsampleLayer(i, o, device=device, dtype=dtype, operations=ops) for i, o in self.upsample_channels
        ])

    @property
    def num_features(self) -> int:
        """Number of raw control features expected: input blocks + middle block (SD 2.1: 13)."""
        return self.num_input_blocks + 1

    def feature_channels(self) -> tuple:
        """Channels of the raw control features 0..N (SD 2.1: 320 x3, 640 x3, 1280 x3, 1280 x3, 1280)."""
        chans = [self.model_channels]
        for level, mult in enumerate(self.channel_mult):
            chans += [self.model_channels * mult] * self.num_res_blocks
            if level != len(self.channel_mult) - 1:
                chans.append(self.model_channels * mult)
        return tuple(chans + [self.model_channels * self.channel_mult[-1]])

    def modulate(self, index: int, h: torch.Tensor, features: Sequence[torch.Tensor], w=1.0) -> torch.Tensor:
        """Apply CSFT step ``index`` of :attr:`plan` to h.

        Args:
            index: 0 = after the middle block (after its control residual was added), 1..N = after output block
                index - 1 (after that block's Upsample, if any).
            h: (B, C, H, W) floating decoder feature at that point; C = ``block_channels[index]``.
            features: the N + 1 raw control features in the control branch's order (input blocks 0..N-1, then the
                middle block), each (B, C_k, H_k, W_k) and already multiplied by the control strength, as AdaptBIR
                does. Only ``features[plan[index].feature]`` is read; the sequence is not modified.
            w: CSFT weight, a number or one per image (see :func:`csft_weights`).

        Returns:
            The modulated h (same shape and dtype); ``h`` itself when every w is 0.

        Raises:
            ValueError: a bad index, feature count, shape or w. A feature that needs the upsample must be
            ((H + 1) // 2, (W + 1) // 2) in size (the downsampled level; it is resized to (H, W)), any other
            feature must be (H, W).
        """
        if isinstance(index, bool) or not isinstance(index, int) or not 0 <= index < len(self.plan):
            raise ValueError(f"index: expected an int in [0, {len(self.plan) - 1}], found {index!r}")
        if isinstance(features, torch.Tensor) or not isinstance(features, Sequence):
            raise ValueError(f"features: expected a list of {self.num_features} tensors, found "
                             f"{type(features).__name__}")
        if len(features) != self.num_features:
            raise ValueError(f"features: expected {self.num_features} control features (input blocks then middle "
                             f"block), found {len(features)}")
        step = self.plan[index]
        block = self.cft_blocks[index]
        _check_feature("h", h, block.channels)
        weights = csft_weights(w, h.shape[0])
        feature = features[step.feature]
        name = f"features[{step.feature}]"
        if step.upsample is None:
            _check_feature(name, feature, block.channels)
            expected = tuple(h.shape[2:])
        else:
            _check_feature(name, feature, self.upsample_layers[step.upsample].in_channels)
            expected = ((h.shape[2] + 1) // 2, (h.shape[3] + 1) // 2)
        if feature.shape[0] != h.shape[0] or tuple(feature.shape[2:]) != expected:
            raise ValueError(f"{name}: expected batch {h.shape[0]} and spatial size {expected} for CSFT step {index} "
                             f"({step.where}, h {tuple(h.shape)}), found {tuple(feature.shape)}")
        if not bool((weights != 0).any()):
            return h
        feature = feature.to(device=h.device, dtype=h.dtype)
        if step.upsample is not None:
            feature = self.upsample_layers[step.upsample](feature, output_size=tuple(h.shape[2:]))
        return block(h, feature, weights)

    def forward(self, index: int, h: torch.Tensor, features: Sequence[torch.Tensor], w=1.0) -> torch.Tensor:
        """Same as :meth:`modulate`."""
        return self.modulate(index, h, features, w)


# --------------------------------------------------------------------------------------------------------------
# checkpoints
# --------------------------------------------------------------------------------------------------------------

def _unwrap(sd) -> dict:
    if not isinstance(sd, dict):
        raise ValueError(f"sd: expected a state dict (dict of tensors), found {type(sd).__name__}")
    while isinstance(sd.get("state_dict"), dict):
        sd = sd["state_dict"]
    if any(isinstance(k, str) and k.startswith("module.") for k in sd):
        sd = {k[len("module."):] if isinstance(k, str) and k.startswith("module.") else k: v for k, v in sd.items()}
    return sd


def _describe(sd: dict) -> str:
    keys = sorted(k for k in sd if isinstance(k, str))
    if not keys:
        return "no tensors"
    control = any(k.startswith("control_model.") for k in keys)
    unet = any(k.startswith("model.diffusion_model.") for k in keys)
    if control and unet:
        return ("a ControlLDM checkpoint (control_model.*, model.diffusion_model.*) without CSFT layers, e.g. an "
                "AdaptBIR stage-2 or a DiffBIR v1 checkpoint")
    if unet:
        return "a Stable Diffusion checkpoint (model.diffusion_model.*) without CSFT layers"
    if any(k.startswith("zero_convs.") for k in keys):
        return "an IRControlNet alone (zero_convs.*), which holds no CSFT layers"
    prefixes = sorted({k.split(".", 1)[0] for k in keys})
    return f"{len(keys)} tensors with top-level names {', '.join(prefixes[:6])} (e.g. {', '.join(keys[:3])})"


def csft_state_dict_from_checkpoint(sd: dict) -> dict:
    """Extract the CSFT weights (``cft_blocks.*``, ``upsample_layers.*``, no prefix) from a state dict.

    Accepted: an AdaptBIR stage-3 Lightning checkpoint (``{"state_dict": {...}}`` or its content; the layers live
    under ``model.diffusion_model.``), the same with DDP's ``module.`` prefix, a ``diffusion_model.``-prefixed UNet
    dict, or our own flat files whose keys are already ``cft_blocks.*`` / ``upsample_layers.*``. Other keys
    (control net, VAE, text encoder, MUSIQ, ...) are ignored. The tensors are returned as they are (not copied).

    Args:
        sd: a dict of tensors (torch.load / safetensors output; meta tensors are fine).

    Returns:
        ``{"cft_blocks.…": tensor, "upsample_layers.…": tensor}``, ready for ``CSFT.load_state_dict(strict=True)``.

    Raises:
        ValueError: no ``cft_blocks.*`` key under any accepted prefix; the message says what the dict holds.
    """
    sd = _unwrap(sd)
    for prefix in _CKPT_PREFIXES:
        heads = (prefix + "cft_blocks.", prefix + "upsample_layers.")
        out = {k[len(prefix):]: v for k, v in sd.items() if isinstance(k, str) and k.startswith(heads)}
        if any(k.startswith("cft_blocks.") for k in out):
            return out
    raise ValueError(f"sd: expected AdaptBIR CSFT weights (model.diffusion_model.cft_blocks.* and "
                     f"upsample_layers.*, as in an AdaptBIR stage-3 checkpoint), found {_describe(sd)}")


def _shape(sd: dict, key: str) -> tuple:
    return tuple(sd[key].shape)


def csft_config_from_state_dict(sd: dict) -> dict:
    """Infer the :class:`CSFT` constructor arguments from the weights' shapes.

    Args:
        sd: a flat CSFT dict (``cft_blocks.*``, ``upsample_layers.*``) or anything
            :func:`csft_state_dict_from_checkpoint` accepts.

    Returns:
        ``{"model_channels": int, "channel_mult": tuple, "num_res_blocks": int, "sft_channels": int}`` (SD 2.1
        AdaptBIR: 320, (1, 2, 4, 4), 2, 128). ``channel_mult[0]`` is 1 by construction (the top level's width is
        taken as ``model_channels``); ``num_groups`` cannot be read from shapes and is left to its default 32.

    Raises:
        ValueError: missing keys, or shapes that do not form AdaptBIR's layout; the message names the key.
    """
    if not any(isinstance(k, str) and k.startswith("cft_blocks.") for k in sd):
        sd = csft_state_dict_from_checkpoint(sd)
    blocks, ups = set(), set()
    for k in sd:
        m = re.match(r"^(cft_blocks|upsample_layers)\.(\d+)\.", k) if isinstance(k, str) else None
        if m:
            (blocks if m.group(1) == "cft_blocks" else ups).add(int(m.group(2)))
    n, m_up = len(blocks), len(ups)
    if blocks != set(range(n)) or ups != set(range(m_up)):
        raise ValueError(f"sd: expected cft_blocks.0..N and upsample_layers.0..M numbered without gaps, found "
                         f"cft_blocks {sorted(blocks)} and upsample_layers {sorted(ups)}")
    chans, hidden = [], None
    for i in range(n):
        for suffix in _BLOCK_KEYS:
            if f"cft_blocks.{i}.{suffix}" not in sd:
                raise ValueError(f"sd: expected key cft_blocks.{i}.{suffix}, found it missing")
        scale_shape = _shape(sd, f"cft_blocks.{i}.scale.weight")
        if len(scale_shape) != 4:
            raise ValueError(f"sd: expected cft_blocks.{i}.scale.weight to be a 4-D conv weight, found shape "
                             f"{scale_shape}")
        c, s = scale_shape[:2]
        hidden = s if hidden is None else hidden
        expected = {"fd_norm.weight": (c,), "fd_norm.bias": (c,), "mlp_shared.0.weight": (hidden, c, 3, 3),
                    "mlp_shared.0.bias": (hidden,), "scale.weight": (c, hidden, 3, 3), "scale.bias": (c,),
                    "shift.weight": (c, hidden, 3, 3), "shift.bias": (c,)}
        for suffix, shape in expected.items():
            if _shape(sd, f"cft_blocks.{i}.{suffix}") != shape:
                raise ValueError(f"sd: expected cft_blocks.{i}.{suffix} of shape {shape}, found "
                                 f"{_shape(sd, f'cft_blocks.{i}.{suffix}')}")
        chans.append(c)
    levels = m_up + 1
    if n < 1 + 2 * levels or (n - 1) % levels:
        raise ValueError(f"sd: expected 1 + levels * (num_res_blocks + 1) cft_blocks with levels = upsample layers + "
                         f"1 = {levels} and num_res_blocks >= 1, found {n} cft_blocks")
    per_level = (n - 1) // levels
    widths = []  # deepest level first
    for r in range(levels):
        group = chans[1 + r * per_level: 1 + (r + 1) * per_level]
        if len(set(group)) != 1:
            raise ValueError(f"sd: expected equal widths for cft_blocks {1 + r * per_level}..{(r + 1) * per_level} "
                             f"(one decoder level), found {group}")
        widths.append(group[0])
    model_channels = widths[-1]
    if any(wd % model_channels for wd in widths) or chans[0] != widths[0]:
        raise ValueError(f"sd: expected level widths that are multiples of the top width {model_channels} and a "
                         f"middle block as wide as the deepest level, found middle {chans[0]}, levels {widths}")
    channel_mult = tuple(wd // model_channels for wd in reversed(widths))
    for j, (ich, och) in enumerate(_upsample_channels(model_channels, channel_mult)):
        key = f"upsample_layers.{j}.conv.weight"
        if key not in sd or f"upsample_layers.{j}.conv.bias" not in sd:
            raise ValueError(f"sd: expected {key} and its bias, found them missing")
        if _shape(sd, key) != (och, ich, 3, 3):
            raise ValueError(f"sd: expected {key} of shape {(och, ich, 3, 3)}, found {_shape(sd, key)}")
    return {"model_channels": model_channels, "channel_mult": channel_mult, "num_res_blocks": per_level - 1,
            "sft_channels": hidden}
