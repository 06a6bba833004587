"""SUPIR's connectors (ZeroSFT, ZeroCrossAttn), their layout, key handling and sampling formulas, in pure torch.

SUPIR (``SUPIR/modules/SUPIR_v0.py``) runs an SDXL UNet whose decoder is steered by the 10 features of GLVControl,
a trained copy of the SDXL encoder (9 input-block outputs ``c[0..8]`` and the middle ``c[9]``). The released
``LightGLVUNet`` does, with ``s`` the control scale::

    h = middle_block(h);  h = ZeroSFT_mid(c[9], h)                     # no skip: raw = h
    for j in 0..8:                                                     # output block j
        h = ZeroSFT_j(c[8 - j], skip = hs.pop(), decoder = h)          # *replaces* cat(h, skip)
        if output block j ends with an Upsample (SDXL: j = 2 and 5):
            h = upsample(ZeroCrossAttn_j(c[8 - j], resblocks_and_attention_of_block_j(h)))
        else:
            h = output_block_j(h)

    ZeroSFT(c, skip, decoder, s):  raw = cat(decoder, skip)
                                   m   = cat(decoder, skip + zero_conv(c))
                                   a   = SiLU(Conv3x3(c -> 128))
                                   out = GroupNorm32(m) * (1 + zero_mul(a)) + zero_add(a)
                                   return s * out + (1 - s) * raw
    ZeroCrossAttn(c, x, s):        x + s * CrossAttention(GroupNorm32(x) as queries, GroupNorm32(c) as keys/values)

All ``zero_*`` convolutions start at zero, so an untrained adapter is the identity (ZeroCrossAttn is not zeroed:
its output projection was left trainable from random init in SUPIR, so the *released* weights decide).

The 12 ``project_modules`` are stored in SUPIR's order: for input level i = 0..N-1 (j = N-1-i the output block
that uses ``c[i]``) a ZeroCrossAttn first when block j ends with an Upsample, then the ZeroSFT of block j; the
middle ZeroSFT last (SDXL: indices 3 and 7 are the cross-attentions, 11 the middle). :func:`supir_layout` derives
all channel counts from the UNet config, so the same code builds the full SDXL adapter and tiny test ones.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

SFT_HIDDEN = 128
NUM_GROUPS = 32
NORM_EPS = 1e-5
HEAD_DIM = 64

# Where the three parts of a SUPIR file live: the original training checkpoints (model./first_stage_model.) and
# the bare layout some re-exports use. The first prefix set that finds control_model keys wins.
_PREFIXES = (
    ("model.control_model.", "model.diffusion_model.project_modules.", "first_stage_model.denoise_encoder."),
    ("control_model.", "project_modules.", "denoise_encoder."),
)
TRAINING_ONLY = ("mask_LQ",)


def _group_norm(norm: nn.Module, x: torch.Tensor) -> torch.Tensor:
    # SUPIR's GroupNorm32 runs in float32 and casts back.
    return norm(x.float()).to(x.dtype)


def _scale_tensor(scale, x: torch.Tensor):
    """A control scale as a number or a (B,1,1,1) tensor on x's device/dtype."""
    if isinstance(scale, torch.Tensor):
        return scale.to(device=x.device, dtype=x.dtype).reshape(-1, 1, 1, 1)
    return float(scale)


def _all_zero(scale) -> bool:
    if isinstance(scale, torch.Tensor):
        return not bool(scale.ne(0).any())
    return float(scale) == 0.0


class ZeroSFT(nn.Module):
    """SUPIR's ZeroSFT connector (parameter names as SUPIR's).

    ``control_channels``: channels of the GLVControl feature c. ``skip_channels``: channels of the tensor it
    modulates (the UNet skip, or at the middle the decoder feature itself). ``decoder_channels``: channels of the
    decoder feature concatenated in front of the skip (0 at the middle block).
    """

    def __init__(self, control_channels: int, skip_channels: int, decoder_channels: int = 0, device=None,
                 dtype=None, operations=None):
        super().__init__()
        ops = nn if operations is None else operations
        out = skip_channels + decoder_channels
        self.decoder_channels = decoder_channels
        self.param_free_norm = ops.GroupNorm(NUM_GROUPS, out, eps=NORM_EPS, affine=True, device=device, dtype=dtype)
        self.mlp_shared = nn.Sequential(
            ops.Conv2d(control_channels, SFT_HIDDEN, kernel_size=3, padding=1, device=device, dtype=dtype),
            nn.SiLU())
        self.zero_mul = ops.Conv2d(SFT_HIDDEN, out, kernel_size=3, padding=1, device=device, dtype=dtype)
        self.zero_add = ops.Conv2d(SFT_HIDDEN, out, kernel_size=3, padding=1, device=device, dtype=dtype)
        self.zero_conv = ops.Conv2d(control_channels, skip_channels, kernel_size=1, device=device, dtype=dtype)

    def forward(self, c: torch.Tensor, h: torch.Tensor, h_dec: torch.Tensor | None = None, scale=1.0):
        """Fuse.

        Args:
            c: (B, control_channels, H, W) GLVControl feature (cast to h's dtype).
            h: (B, skip_channels, H, W) skip (or the middle feature).
            h_dec: (B, decoder_channels, H, W) decoder feature, required iff ``decoder_channels`` > 0.
            scale: control scale s, a number or one per image ((B,) / (B,1,1,1) tensor).

        Returns:
            (B, decoder_channels + skip_channels, H, W) in h's dtype; exactly ``cat(h_dec, h)`` (or ``h``) when
            every s is 0.
        """
        if (h_dec is not None) != (self.decoder_channels > 0):
            raise ValueError(f"h_dec: expected a decoder feature with {self.decoder_channels} channels"
                             if self.decoder_channels else "h_dec: this ZeroSFT takes no decoder feature")
        raw = h if h_dec is None else torch.cat([h_dec, h], dim=1)
        if _all_zero(scale):
            return raw
        c = c.to(dtype=h.dtype)
        m = h + self.zero_conv(c)
        if h_dec is not None:
            m = torch.cat([h_dec, m], dim=1)
        a = self.mlp_shared(c)
        out = _group_norm(self.param_free_norm, m) * (1 + self.zero_mul(a)) + self.zero_add(a)
        s = _scale_tensor(scale, out)
        return out * s + raw * (1 - s)


class CrossAttention(nn.Module):
    """Plain multi-head cross-attention with LDM key names (``to_q``, ``to_k``, ``to_v``, ``to_out.0``).

    Constructor signature as ComfyUI's ``comfy.ldm.modules.attention.CrossAttention``, which the ComfyUI adapter
    passes instead (its optimised attention); this one serves pure-torch use and tests.
    """

    def __init__(self, query_dim: int, context_dim: int, heads: int, dim_head: int, dtype=None, device=None,
                 operations=None):
        super().__init__()
        ops = nn if operations is None else operations
        inner = heads * dim_head
        self.heads = heads
        self.to_q = ops.Linear(query_dim, inner, bias=False, dtype=dtype, device=device)
        self.to_k = ops.Linear(context_dim, inner, bias=False, dtype=dtype, device=device)
        self.to_v = ops.Linear(context_dim, inner, bias=False, dtype=dtype, device=device)
        self.to_out = nn.Sequential(ops.Linear(inner, query_dim, dtype=dtype, device=device), nn.Dropout(0.0))

    def forward(self, x: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        b, n, _ = x.shape

        def split(t):
            return t.reshape(b, t.shape[1], self.heads, -1).transpose(1, 2)

        q, k, v = split(self.to_q(x)), split(self.to_k(context)), split(self.to_v(context))
        out = F.scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape(b, n, -1)
        return self.to_out(out)


class ZeroCrossAttn(nn.Module):
    """SUPIR's ZeroCrossAttn: ``x + s * attn(norm1(x), norm2(c))`` with heads = query_channels // 64, 64 wide."""

    def __init__(self, context_channels: int, query_channels: int, device=None, dtype=None, operations=None,
                 attention_cls=None):
        super().__init__()
        ops = nn if operations is None else operations
        heads = max(1, query_channels // HEAD_DIM)
        cls = CrossAttention if attention_cls is None else attention_cls
        self.attn = cls(query_dim=query_channels, context_dim=context_channels, heads=heads, dim_head=HEAD_DIM,
                        dtype=dtype, device=device, operations=ops)
        self.norm1 = ops.GroupNorm(NUM_GROUPS, query_channels, eps=NORM_EPS, affine=True, device=device, dtype=dtype)
        self.norm2 = ops.GroupNorm(NUM_GROUPS, context_channels, eps=NORM_EPS, affine=True, device=device,
                                   dtype=dtype)

    def forward(self, c: torch.Tensor, x: torch.Tensor, scale=1.0) -> torch.Tensor:
        """x (B, query_channels, H, W), c (B, context_channels, H', W') -> (B, query_channels, H, W), x's dtype;
        ``x`` itself when every s is 0."""
        if _all_zero(scale):
            return x
        b, ch, hh, ww = x.shape
        q = _group_norm(self.norm1, x).flatten(2).transpose(1, 2)
        k = _group_norm(self.norm2, c.to(x.dtype)).flatten(2).transpose(1, 2)
        a = self.attn(q.contiguous(), k.contiguous())
        a = a.transpose(1, 2).reshape(b, ch, hh, ww)
        return x + a * _scale_tensor(scale, x)


@dataclass(frozen=True)
class SUPIRLayout:
    """Channel plan of a SUPIR adapter for one UNet config.

    ``feature_channels``: the N + 1 GLVControl features (input blocks 0..N-1, then the middle).
    ``decoder_channels``: per output block j (0..N-1), the channels of h entering it.
    ``upsample_blocks``: the output blocks j that end with an Upsample.
    """

    feature_channels: tuple
    decoder_channels: tuple
    upsample_blocks: tuple

    @property
    def num_blocks(self) -> int:
        return len(self.decoder_channels)


def supir_layout(model_channels: int, channel_mult: Sequence[int], num_res_blocks) -> SUPIRLayout:
    """The adapter layout for a UNet with ``model_channels`` (SDXL 320), ``channel_mult`` (SDXL (1, 2, 4)) and
    ``num_res_blocks`` (an int or one per level; SDXL 2)."""
    levels = len(channel_mult)
    nrb = [num_res_blocks] * levels if isinstance(num_res_blocks, int) else list(num_res_blocks)
    if levels < 1 or len(nrb) != levels or model_channels < 1:
        raise ValueError(f"unet config: expected channel_mult and num_res_blocks per level, found {channel_mult} "
                         f"and {num_res_blocks}")
    feats = [model_channels]
    ch = model_channels
    for level, mult in enumerate(channel_mult):
        for _ in range(nrb[level]):
            ch = mult * model_channels
            feats.append(ch)
        if level != levels - 1:
            feats.append(ch)
    feats.append(ch)  # middle
    dec, ups = [], []
    for level in reversed(range(levels)):
        for i in range(nrb[level] + 1):
            dec.append(ch)
            ch = channel_mult[level] * model_channels
            if level and i == nrb[level]:
                ups.append(len(dec) - 1)
    return SUPIRLayout(tuple(feats), tuple(dec), tuple(ups))


class SUPIRConnectors(nn.Module):
    """The 12 (SDXL) ``project_modules`` in SUPIR's order, with the index of each connector.

    ``sft_index[j]``: the ZeroSFT fusing output block j's skip; ``xattn_index[j]``: the ZeroCrossAttn before
    block j's Upsample; ``mid_index``: the middle ZeroSFT.
    """

    def __init__(self, layout: SUPIRLayout, device=None, dtype=None, operations=None, attention_cls=None):
        super().__init__()
        self.layout = layout
        n = layout.num_blocks
        mods, sft, xattn = [], [None] * n, {}
        for i in range(n):
            j = n - 1 - i
            c = layout.feature_channels[i]
            if j in layout.upsample_blocks:
                xattn[j] = len(mods)
                mods.append(ZeroCrossAttn(c, layout.decoder_channels[j], device=device, dtype=dtype,
                                          operations=operations, attention_cls=attention_cls))
            sft[j] = len(mods)
            mods.append(ZeroSFT(c, c, layout.decoder_channels[j], device=device, dtype=dtype, operations=operations))
        self.mid_index = len(mods)
        mids = layout.feature_channels[n]
        mods.append(ZeroSFT(mids, mids, 0, device=device, dtype=dtype, operations=operations))
        self.project_modules = nn.ModuleList(mods)
        self.sft_index = tuple(sft)
        self.xattn_index = xattn

    def middle(self, c: Sequence[torch.Tensor], h: torch.Tensor, scale=1.0) -> torch.Tensor:
        """After the middle block: h (B,C,H,W) -> ZeroSFT(c[N], h)."""
        return self.project_modules[self.mid_index](c[self.layout.num_blocks], h, scale=scale)

    def fuse_skip(self, j: int, c: Sequence[torch.Tensor], h: torch.Tensor, skip: torch.Tensor,
                  scale=1.0) -> torch.Tensor:
        """In place of output block j's ``cat(h, skip)``: (B, Ch + Cs, H, W)."""
        n = self.layout.num_blocks
        return self.project_modules[self.sft_index[j]](c[n - 1 - j], skip, h, scale=scale)

    def before_upsample(self, j: int, c: Sequence[torch.Tensor], h: torch.Tensor, scale=1.0) -> torch.Tensor:
        """Right before output block j's Upsample (j in ``layout.upsample_blocks``)."""
        n = self.layout.num_blocks
        return self.project_modules[self.xattn_index[j]](c[n - 1 - j], h, scale=scale)


def split_supir_state_dict(sd: dict) -> tuple[dict, dict]:
    """Split a SUPIR file into the adapter and the denoise encoder.

    Accepted: SUPIR-v0Q/v0F original checkpoints (``{"state_dict": ...}`` or their content) and fp16 pruned
    re-exports (``model.control_model.*``, ``model.diffusion_model.project_modules.*``,
    ``first_stage_model.denoise_encoder.*``), or the bare ``control_model.*`` / ``project_modules.*`` /
    ``denoise_encoder.*`` layout. SDXL UNet, VAE and text-encoder weights a full checkpoint may carry are ignored,
    as are training-only tensors (``mask_LQ``). Tensors are not copied.

    Returns:
        ``(adapter_sd, denoise_sd)``: ``adapter_sd`` keyed ``control_model.*`` and ``project_modules.*``;
        ``denoise_sd`` keyed like a VAE encoder (``conv_in.weight`` ...), empty when the file has none.

    Raises:
        ValueError: no SUPIR control model or connectors in ``sd``.
    """
    while isinstance(sd.get("state_dict"), dict):
        sd = sd["state_dict"]
    for control, project, denoise in _PREFIXES:
        adapter, enc = {}, {}
        for k, v in sd.items():
            if not isinstance(k, str) or k.rsplit(".", 1)[-1] in TRAINING_ONLY:
                continue
            if k.startswith(control):
                adapter["control_model." + k[len(control):]] = v
            elif k.startswith(project):
                adapter["project_modules." + k[len(project):]] = v
            elif k.startswith(denoise):
                enc[k[len(denoise):]] = v
        has_control = any(k.startswith("control_model.") for k in adapter)
        has_project = any(k.startswith("project_modules.") for k in adapter)
        if has_control and has_project:
            return adapter, enc
    raise ValueError("expected SUPIR weights (model.control_model.* and model.diffusion_model.project_modules.*, "
                     "as in SUPIR-v0Q/v0F)")


def linear_in_sigma(sigma: torch.Tensor, sigma_max: float, start: float, end: float) -> torch.Tensor:
    """SUPIR's linear schedules over sigma: ``end + (start - end) * sigma / sigma_max`` (start at sigma_max, end
    as sigma -> 0); used for the control scale (linear_s_stage2) and CFG (linear_CFG). Same shape as ``sigma``."""
    return end + (start - end) * (sigma / sigma_max)


def restore_toward_center(denoised: torch.Tensor, x_center: torch.Tensor, sigma: torch.Tensor, sigma_max: float,
                          strength: float) -> torch.Tensor:
    """SUPIR's restoration guidance (``restore_cfg``): ``D - (D - x_center) * (sigma / sigma_max) ** strength``.

    ``denoised`` (B,C,h,w), ``x_center`` (B or 1,C,h,w) in the same (scaled latent) space, ``sigma`` (B,) or a
    number; returns a new tensor in ``denoised``'s dtype.
    """
    sigma = torch.as_tensor(sigma, dtype=torch.float32, device=denoised.device).reshape(-1, 1, 1, 1)
    weight = (sigma / sigma_max) ** strength
    d = denoised.float()
    return (d - (d - x_center.to(device=d.device, dtype=d.dtype)) * weight).to(denoised.dtype)
