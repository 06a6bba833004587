"""DiffBIR's stage-1 restorer: a SwinIR with a pixel-unshuffle input and a nearest+conv x8 upsampler.

The network (a re-implementation; state-dict keys and shapes are those of DiffBIR's files
``general_swinir_v1.ckpt``, ``face_swinir_v1.ckpt``, ``realesrgan_s4_swinir_100k.pth`` and
``codeformer_swinir.ckpt``, which DiffBIR loads with ``strict=True``):

- input (B, 3, H, W) RGB in [0, 1]; the fixed mean (0.4488, 0.4371, 0.4040) is subtracted (DiffBIR's
  ``img_range`` = 1.0, no other scaling) and added back at the end;
- ``conv_first`` = pixel-unshuffle by ``unshuffle_scale`` (8) then a 3x3 conv 3*8*8 = 192 -> ``embed_dim`` (180);
- ``patch_embed.norm`` (LayerNorm), then ``len(depths)`` (8) residual Swin groups ``layers.i`` of ``depths[i]`` (6)
  blocks each, ``num_heads[i]`` (6) heads, window ``window_size`` (8), MLP ratio ``mlp_ratio`` (2); odd blocks use
  windows shifted by ``window_size // 2`` with the usual -100 attention mask; each group ends with a 3x3 conv and a
  residual connection; then ``norm`` and ``conv_after_body`` plus a long skip;
- ``conv_before_upsample`` (3x3 conv to 64 features + LeakyReLU 0.01), then log2(8) = 3 steps of nearest x2 +
  ``conv_upN`` + LeakyReLU 0.2, ``conv_hr`` + LeakyReLU 0.2, ``conv_last`` to 3 channels;
- so the output has the size of the input: it is a restorer, not an upscaler.

Sizes that are not a multiple of ``window_size * unshuffle_scale`` (64) are padded at the bottom/right with zeros
(what DiffBIR's pipeline does before calling the network: ``pad_to_multiples_of(lq, 64)``, constant 0) and the
output is cropped back. The output is not clamped (DiffBIR does not clamp it either).

The stored buffers ``...attn.relative_position_index`` (int64) and, for shifted blocks, ``...attn_mask`` (the
mask for the training size ``img_size`` = 64 feature pixels, i.e. 512 image pixels) are kept under the same names
so that ``state_dict()`` has DiffBIR's keys; the forward pass computes the mask for the actual size.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import torch
from torch import nn
import torch.nn.functional as F

RGB_MEAN = (0.4488, 0.4371, 0.4040)
MASK_VALUE = -100.0

# DiffBIR configs/inference/swinir.yaml (every released SwinIR stage-1 file).
DIFFBIR_SWINIR_CONFIG = {
    "embed_dim": 180,
    "depths": (6, 6, 6, 6, 6, 6, 6, 6),
    "num_heads": (6, 6, 6, 6, 6, 6, 6, 6),
    "window_size": 8,
    "mlp_ratio": 2.0,
    "unshuffle_scale": 8,
    "in_chans": 3,
    "num_feat": 64,
    "img_size": 64,
    "resi_connection": "1conv",
    "patch_norm": True,
    "qkv_bias": True,
}

# Keys whose presence identifies this architecture (``conv_first`` is a Sequential: unshuffle, conv).
SIGNATURE_KEYS = (
    "conv_first.1.weight",
    "layers.0.residual_group.blocks.0.attn.relative_position_bias_table",
    "conv_up1.weight",
    "conv_hr.weight",
    "conv_last.weight",
)

_WRAPPERS = ("state_dict", "params_ema", "params", "model", "net", "module")


# ------------------------------------------------------------------------------------------------ state dicts


def normalize_swinir_state_dict(sd: Mapping) -> dict:
    """Return a new flat ``{key: tensor}`` dict in DiffBIR's SwinIR key layout; ``sd`` is not modified.

    Unwraps (repeatedly) a dict held under ``state_dict``, ``params_ema`` (preferred over ``params``, BasicSR's EMA
    weights), ``params``, ``model``, ``net`` or ``module`` when the top level is not itself a state dict; strips a
    ``module.`` prefix (DataParallel); keeps only tensors; drops ``lpips_metric.*`` (the LPIPS network DiffBIR
    v1's Lightning training module carried next to the restorer). For DiffBIR v1 "full" checkpoints that carry the
    restorer under ``preprocess_model.``, returns those keys without the prefix.
    """
    if not isinstance(sd, Mapping):
        raise ValueError(f"state dict: expected a mapping of names to tensors, found {type(sd).__name__}")
    cur = sd
    for _ in range(4):
        if any(isinstance(v, torch.Tensor) for v in cur.values()):
            break
        inner = next((cur[k] for k in _WRAPPERS if isinstance(cur.get(k), Mapping)), None)
        if inner is None:
            break
        cur = inner
    out = {k: v for k, v in cur.items() if isinstance(k, str) and isinstance(v, torch.Tensor)}
    if out and all(k.startswith("module.") for k in out):
        out = {k[len("module."):]: v for k, v in out.items()}
    out = {k: v for k, v in out.items() if not k.startswith("lpips_metric.")}
    if not is_diffbir_swinir_keys(out):
        pre = "preprocess_model."
        sub = {k[len(pre):]: v for k, v in out.items() if k.startswith(pre)}
        if is_diffbir_swinir_keys(sub):
            out = sub
    return out


def is_diffbir_swinir_keys(keys) -> bool:
    """True if ``keys`` (an iterable of state-dict names) contains every key of :data:`SIGNATURE_KEYS`."""
    keys = set(keys)
    return all(k in keys for k in SIGNATURE_KEYS)


def _shape(sd: Mapping, key: str) -> tuple[int, ...]:
    return tuple(sd[key].shape)


def swinir_config_from_state_dict(sd: Mapping) -> dict:
    """Infer the constructor arguments of :class:`SwinIR` from a (normalised) DiffBIR SwinIR state dict.

    Read from names and shapes: ``embed_dim`` (``conv_first.1.weight`` out channels), ``unshuffle_scale``
    (its in channels = in_chans * s^2), ``in_chans`` (``conv_last.weight`` out channels), the number of layers and
    blocks per layer (``depths``), ``num_heads`` (last dim of each layer's first ``relative_position_bias_table``),
    ``window_size`` (that table has (2w-1)^2 rows), ``mlp_ratio`` (``mlp.fc1`` out / in), ``num_feat``,
    ``resi_connection`` (1conv / 3conv), ``patch_norm``, ``qkv_bias``, and ``img_size`` (side of the stored
    attention mask's training size: sqrt(number of windows) * window; 64 when no mask is stored).

    Raises ValueError naming the key that is missing or has an unexpected shape.
    """
    missing = [k for k in SIGNATURE_KEYS if k not in sd]
    if missing:
        raise ValueError(f"state dict: expected DiffBIR SwinIR keys {list(SIGNATURE_KEYS)}, missing {missing}")
    if "absolute_pos_embed" in sd:
        raise ValueError("state dict: found 'absolute_pos_embed' (a SwinIR with absolute position embedding), "
                         "which DiffBIR's restorer does not use and this loader does not support")

    cf = _shape(sd, "conv_first.1.weight")
    if len(cf) != 4:
        raise ValueError(f"conv_first.1.weight: expected a 4-d conv weight, found shape {cf}")
    embed_dim, in_unshuffled = cf[0], cf[1]
    in_chans = _shape(sd, "conv_last.weight")[0]
    s = math.isqrt(max(in_unshuffled // max(in_chans, 1), 0))
    if in_chans < 1 or s < 1 or in_chans * s * s != in_unshuffled:
        raise ValueError(f"conv_first.1.weight: expected in_chans * s^2 input channels (in_chans = {in_chans} from "
                         f"conv_last.weight), found {in_unshuffled}")

    n_up = 0
    while f"conv_up{n_up + 1}.weight" in sd:
        n_up += 1
    if 2 ** n_up != s:
        raise ValueError(f"conv_up*: expected log2({s}) = {math.log2(s):g} nearest+conv upsampling steps to undo "
                         f"the x{s} pixel-unshuffle (output size = input size), found {n_up}")

    depths, heads = [], []
    i = 0
    while f"layers.{i}.residual_group.blocks.0.norm1.weight" in sd:
        j = 0
        while f"layers.{i}.residual_group.blocks.{j}.norm1.weight" in sd:
            j += 1
        depths.append(j)
        table = f"layers.{i}.residual_group.blocks.0.attn.relative_position_bias_table"
        if table not in sd:
            raise ValueError(f"state dict: expected '{table}', missing")
        heads.append(_shape(sd, table)[-1])
        i += 1
    if not depths:
        raise ValueError("state dict: expected 'layers.0.residual_group.blocks.0.norm1.weight', missing")

    rows = _shape(sd, "layers.0.residual_group.blocks.0.attn.relative_position_bias_table")[0]
    side = math.isqrt(rows)
    if side * side != rows or side % 2 != 1:
        raise ValueError(f"layers.0.residual_group.blocks.0.attn.relative_position_bias_table: expected "
                         f"(2*window-1)^2 rows, found {rows}")
    window = (side + 1) // 2

    fc1 = _shape(sd, "layers.0.residual_group.blocks.0.mlp.fc1.weight")
    mlp_ratio = fc1[0] / fc1[1]

    if "conv_before_upsample.0.weight" not in sd:
        raise ValueError("state dict: expected 'conv_before_upsample.0.weight' (nearest+conv upsampler), missing")
    num_feat = _shape(sd, "conv_before_upsample.0.weight")[0]

    if "conv_after_body.weight" in sd:
        resi = "1conv"
    elif "conv_after_body.0.weight" in sd:
        resi = "3conv"
    else:
        raise ValueError("state dict: expected 'conv_after_body.weight' or 'conv_after_body.0.weight', missing")

    img_size = DIFFBIR_SWINIR_CONFIG["img_size"]
    mask_key = next((f"layers.{li}.residual_group.blocks.1.attn_mask" for li in range(len(depths))
                     if f"layers.{li}.residual_group.blocks.1.attn_mask" in sd), None)
    if mask_key is not None:
        n_windows = _shape(sd, mask_key)[0]
        per_side = math.isqrt(n_windows)
        if per_side * per_side != n_windows:
            raise ValueError(f"{mask_key}: expected a square number of windows, found {n_windows}")
        img_size = per_side * window

    return {
        "embed_dim": embed_dim,
        "depths": tuple(depths),
        "num_heads": tuple(heads),
        "window_size": window,
        "mlp_ratio": float(mlp_ratio),
        "unshuffle_scale": s,
        "in_chans": in_chans,
        "num_feat": num_feat,
        "img_size": img_size,
        "resi_connection": resi,
        "patch_norm": "patch_embed.norm.weight" in sd,
        "qkv_bias": "layers.0.residual_group.blocks.0.attn.qkv.bias" in sd,
    }


# ------------------------------------------------------------------------------------------------ windows


def _to_windows(x: torch.Tensor, ws: int) -> torch.Tensor:
    """(B, H, W, C) -> (B * nW, ws * ws, C), windows in row-major order."""
    b, h, w, c = x.shape
    x = x.view(b, h // ws, ws, w // ws, ws, c).permute(0, 1, 3, 2, 4, 5)
    return x.reshape(-1, ws * ws, c)


def _from_windows(win: torch.Tensor, ws: int, b: int, h: int, w: int) -> torch.Tensor:
    """(B * nW, ws * ws, C) -> (B, H, W, C); inverse of :func:`_to_windows`."""
    c = win.shape[-1]
    x = win.view(b, h // ws, w // ws, ws, ws, c).permute(0, 1, 3, 2, 4, 5)
    return x.reshape(b, h, w, c)


def relative_position_index(ws: int, device=None) -> torch.Tensor:
    """(ws*ws, ws*ws) int64: index into the (2ws-1)^2-row bias table for every (query, key) pair of a window."""
    r = torch.arange(ws, device=device)
    coords = torch.stack(torch.meshgrid(r, r, indexing="ij")).flatten(1)  # 2, N
    d = coords[:, :, None] - coords[:, None, :] + (ws - 1)  # 2, N, N, each in [0, 2ws-2]
    return d[0] * (2 * ws - 1) + d[1]


def shifted_window_mask(h: int, w: int, ws: int, shift: int, device=None,
                        dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """Attention mask for shifted windows on an (h, w) feature map (h, w multiples of ``ws``).

    After a cyclic shift by ``-shift``, tokens of a window that came from different image regions must not attend
    to each other. Returns (nW, ws*ws, ws*ws) with 0 where allowed and -100 where not.
    """

    def region(n: int) -> torch.Tensor:
        i = torch.arange(n, device=device)
        return (i >= n - ws).long() + (i >= n - shift).long()  # 0, 1, 2 = the three bands

    ids = (region(h)[:, None] * 3 + region(w)[None, :]).to(dtype)  # h, w
    win = _to_windows(ids.view(1, h, w, 1), ws).squeeze(-1)  # nW, N
    same = win[:, :, None] == win[:, None, :]
    return torch.where(same, torch.zeros((), device=device, dtype=dtype),
                       torch.full((), MASK_VALUE, device=device, dtype=dtype))


# ------------------------------------------------------------------------------------------------ modules


class _Mlp(nn.Module):
    def __init__(self, dim: int, hidden: int, device=None, dtype=None):
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden, device=device, dtype=dtype)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden, dim, device=device, dtype=dtype)

    def forward(self, x):
        return self.fc2(self.act(self.fc1(x)))


class _WindowAttention(nn.Module):
    """Multi-head self-attention inside ws x ws windows with a learned relative position bias."""

    def __init__(self, dim: int, ws: int, heads: int, qkv_bias: bool, device=None, dtype=None):
        super().__init__()
        if dim % heads != 0:
            raise ValueError(f"num_heads: expected a divisor of embed_dim ({dim}), found {heads}")
        self.ws = ws
        self.heads = heads
        self.relative_position_bias_table = nn.Parameter(
            torch.zeros((2 * ws - 1) ** 2, heads, device=device, dtype=dtype))
        self.register_buffer("relative_position_index", relative_position_index(ws, device=device))
        self.qkv = nn.Linear(dim, 3 * dim, bias=qkv_bias, device=device, dtype=dtype)
        self.proj = nn.Linear(dim, dim, device=device, dtype=dtype)

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        """x: (B*nW, N, C); mask: (nW, N, N) additive or None."""
        bw, n, c = x.shape
        q, k, v = self.qkv(x).view(bw, n, 3, self.heads, c // self.heads).permute(2, 0, 3, 1, 4)
        bias = self.relative_position_bias_table[self.relative_position_index.reshape(-1)]
        bias = bias.view(n, n, self.heads).permute(2, 0, 1).to(q.dtype)  # heads, N, N
        if mask is None:
            add = bias.unsqueeze(0)
        else:
            nw = mask.shape[0]
            add = (bias.unsqueeze(0) + mask.to(q.dtype).unsqueeze(1))  # nW, heads, N, N
            add = add.repeat(bw // nw, 1, 1, 1)
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=add)  # B*nW, heads, N, d
        return self.proj(out.transpose(1, 2).reshape(bw, n, c))


class _SwinBlock(nn.Module):
    def __init__(self, dim, heads, ws, shift, mlp_ratio, qkv_bias, train_res, device=None, dtype=None):
        super().__init__()
        self.ws = ws
        self.shift = shift
        self.norm1 = nn.LayerNorm(dim, device=device, dtype=dtype)
        self.attn = _WindowAttention(dim, ws, heads, qkv_bias, device=device, dtype=dtype)
        self.norm2 = nn.LayerNorm(dim, device=device, dtype=dtype)
        self.mlp = _Mlp(dim, int(dim * mlp_ratio), device=device, dtype=dtype)
        if shift > 0:
            # Kept for state-dict compatibility (DiffBIR stores the mask of its training size).
            self.register_buffer("attn_mask", shifted_window_mask(train_res, train_res, ws, shift, device=device,
                                                                  dtype=dtype or torch.get_default_dtype()))
        else:
            self.attn_mask = None

    def forward(self, x: torch.Tensor, size: tuple[int, int], mask: torch.Tensor | None) -> torch.Tensor:
        h, w = size
        b, _, c = x.shape
        y = self.norm1(x).view(b, h, w, c)
        if self.shift:
            y = torch.roll(y, shifts=(-self.shift, -self.shift), dims=(1, 2))
        y = self.attn(_to_windows(y, self.ws), mask if self.shift else None)
        y = _from_windows(y, self.ws, b, h, w)
        if self.shift:
            y = torch.roll(y, shifts=(self.shift, self.shift), dims=(1, 2))
        x = x + y.reshape(b, h * w, c)
        return x + self.mlp(self.norm2(x))


class _ResidualGroup(nn.Module):
    def __init__(self, blocks: list[nn.Module]):
        super().__init__()
        self.blocks = nn.ModuleList(blocks)


def _resi_conv(dim: int, kind: str, device=None, dtype=None) -> nn.Module:
    if kind == "1conv":
        return nn.Conv2d(dim, dim, 3, 1, 1, device=device, dtype=dtype)
    if kind == "3conv":
        return nn.Sequential(
            nn.Conv2d(dim, dim // 4, 3, 1, 1, device=device, dtype=dtype), nn.LeakyReLU(0.2),
            nn.Conv2d(dim // 4, dim // 4, 1, 1, 0, device=device, dtype=dtype), nn.LeakyReLU(0.2),
            nn.Conv2d(dim // 4, dim, 3, 1, 1, device=device, dtype=dtype))
    raise ValueError(f"resi_connection: expected '1conv' or '3conv', found {kind!r}")


class _RSTB(nn.Module):
    """Residual Swin Transformer group: blocks, then a conv on the (B, C, H, W) map, plus the group's input."""

    def __init__(self, dim, depth, heads, ws, shift, mlp_ratio, qkv_bias, train_res, resi, device=None,
                 dtype=None):
        super().__init__()
        self.residual_group = _ResidualGroup([
            _SwinBlock(dim, heads, ws, 0 if i % 2 == 0 else shift, mlp_ratio, qkv_bias, train_res, device=device,
                       dtype=dtype) for i in range(depth)])
        self.conv = _resi_conv(dim, resi, device=device, dtype=dtype)

    def forward(self, x: torch.Tensor, size: tuple[int, int], mask: torch.Tensor | None) -> torch.Tensor:
        y = x
        for blk in self.residual_group.blocks:
            y = blk(y, size, mask)
        b, _, c = y.shape
        y = y.transpose(1, 2).reshape(b, c, size[0], size[1])
        return self.conv(y).flatten(2).transpose(1, 2) + x


class SwinIR(nn.Module):
    """DiffBIR's stage-1 SwinIR restorer (pixel-unshuffle in, nearest+conv out; output size = input size).

    Args (defaults = :data:`DIFFBIR_SWINIR_CONFIG`, the released files):
        embed_dim: token width (180).
        depths: blocks per residual group, one entry per group ((6,) * 8).
        num_heads: attention heads per group ((6,) * 8); each must divide ``embed_dim``.
        window_size: attention window in feature pixels (8).
        mlp_ratio: MLP hidden width / embed_dim (2).
        unshuffle_scale: pixel-unshuffle factor at the input, undone by log2 of it nearest x2 steps (8; power of 2).
        in_chans: image channels (3; the RGB mean is subtracted only for 3 channels).
        num_feat: width of the upsampler convs (64).
        img_size: feature-map side of DiffBIR's training size (64); only sets the stored ``attn_mask`` buffers
            (and, as in SwinIR, disables window shifting when it is <= window_size).
        resi_connection: ``"1conv"`` (DiffBIR) or ``"3conv"``.
        patch_norm: LayerNorm after patch embedding (True).
        qkv_bias: bias in the qkv projection (True).
        device, dtype: where and in which floating dtype to create parameters (``device="meta"`` allocates
            nothing).

    ``forward(x)``: x (B, in_chans, H, W) floating, nominally in [0, 1], any H, W >= 1 -> (B, in_chans, H, W) of
    the same dtype (approximately [0, 1], not clamped). ``x`` is not modified.
    """

    def __init__(self, embed_dim: int = 180, depths=(6,) * 8, num_heads=(6,) * 8, window_size: int = 8,
                 mlp_ratio: float = 2.0, unshuffle_scale: int = 8, in_chans: int = 3, num_feat: int = 64,
                 img_size: int = 64, resi_connection: str = "1conv", patch_norm: bool = True,
                 qkv_bias: bool = True, device=None, dtype=None):
        super().__init__()
        depths, num_heads = tuple(int(d) for d in depths), tuple(int(h) for h in num_heads)
        if not depths or len(depths) != len(num_heads) or min(depths) < 1:
            raise ValueError(f"depths/num_heads: expected equally long non-empty lists of positive integers, "
                             f"found {depths} and {num_heads}")
        s = int(unshuffle_scale)
        if s < 2 or s & (s - 1):
            raise ValueError(f"unshuffle_scale: expected a power of two >= 2, found {unshuffle_scale}")
        if window_size < 1:
            raise ValueError(f"window_size: expected >= 1, found {window_size}")
        self.config = {
            "embed_dim": int(embed_dim), "depths": depths, "num_heads": num_heads, "window_size": int(window_size),
            "mlp_ratio": float(mlp_ratio), "unshuffle_scale": s, "in_chans": int(in_chans),
            "num_feat": int(num_feat), "img_size": int(img_size), "resi_connection": resi_connection,
            "patch_norm": bool(patch_norm), "qkv_bias": bool(qkv_bias)}
        # As in SwinIR: a training size not larger than the window means one window and no shifting.
        ws = min(img_size, window_size)
        shift = ws // 2 if img_size > window_size else 0
        self.window_size = ws
        self.shift_size = shift
        self.unshuffle_scale = s
        self.in_chans = in_chans
        kw = {"device": device, "dtype": dtype}

        mean = RGB_MEAN if in_chans == 3 else (0.0,) * in_chans
        self.register_buffer("mean", torch.tensor(mean, device=device, dtype=dtype or torch.get_default_dtype())
                             .view(1, in_chans, 1, 1), persistent=False)

        self.conv_first = nn.Sequential(nn.PixelUnshuffle(s), nn.Conv2d(in_chans * s * s, embed_dim, 3, 1, 1, **kw))
        if patch_norm:
            self.patch_embed = nn.Module()
            self.patch_embed.norm = nn.LayerNorm(embed_dim, **kw)
        else:
            self.patch_embed = None
        self.layers = nn.ModuleList([
            _RSTB(embed_dim, d, h, ws, shift, mlp_ratio, qkv_bias, img_size, resi_connection, **kw)
            for d, h in zip(depths, num_heads)])
        self.norm = nn.LayerNorm(embed_dim, **kw)
        self.conv_after_body = _resi_conv(embed_dim, resi_connection, **kw)

        self.conv_before_upsample = nn.Sequential(nn.Conv2d(embed_dim, num_feat, 3, 1, 1, **kw), nn.LeakyReLU())
        self.n_up = int(math.log2(s))
        for i in range(1, self.n_up + 1):
            setattr(self, f"conv_up{i}", nn.Conv2d(num_feat, num_feat, 3, 1, 1, **kw))
        self.conv_hr = nn.Conv2d(num_feat, num_feat, 3, 1, 1, **kw)
        self.conv_last = nn.Conv2d(num_feat, in_chans, 3, 1, 1, **kw)
        self.lrelu = nn.LeakyReLU(0.2)

    @property
    def pad_multiple(self) -> int:
        """Image sizes are padded to a multiple of this (window_size * unshuffle_scale; 64 for DiffBIR)."""
        return self.window_size * self.unshuffle_scale

    def _features(self, x: torch.Tensor) -> torch.Tensor:
        b, c, h, w = x.shape
        t = x.flatten(2).transpose(1, 2)  # B, L, C
        if self.patch_embed is not None:
            t = self.patch_embed.norm(t)
        mask = None
        if self.shift_size:
            mask = shifted_window_mask(h, w, self.window_size, self.shift_size, device=x.device, dtype=x.dtype)
        for layer in self.layers:
            t = layer(t, (h, w), mask)
        t = self.norm(t)
        return t.transpose(1, 2).reshape(b, c, h, w)

    def forward(self, x: torch.Tensor, pad_mode: str = "constant") -> torch.Tensor:
        """Restore (B, in_chans, H, W) in [0, 1] -> same shape and dtype. ``pad_mode``: how sizes that are not a
        multiple of :attr:`pad_multiple` are padded (bottom/right) before the network and cropped after:
        ``"constant"`` (zeros, DiffBIR), ``"replicate"`` or ``"reflect"``."""
        if not isinstance(x, torch.Tensor) or x.ndim != 4 or x.shape[1] != self.in_chans:
            found = tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__
            raise ValueError(f"x: expected a (B, {self.in_chans}, H, W) tensor, found {found}")
        if not x.is_floating_point():
            raise ValueError(f"x: expected a floating-point image in [0, 1], found dtype {x.dtype}")
        h, w = x.shape[-2:]
        m = self.pad_multiple
        ph, pw = (-h) % m, (-w) % m
        if ph or pw:
            mode = pad_mode
            if mode == "reflect" and (ph >= h or pw >= w):
                mode = "replicate"
            x = F.pad(x, (0, pw, 0, ph), mode=mode) if mode != "constant" else F.pad(x, (0, pw, 0, ph))
        mean = self.mean.to(x.dtype)
        f = self.conv_first(x - mean)
        f = self.conv_after_body(self._features(f)) + f
        y = self.conv_before_upsample(f)
        for i in range(1, self.n_up + 1):
            y = self.lrelu(getattr(self, f"conv_up{i}")(F.interpolate(y, scale_factor=2, mode="nearest")))
        y = self.conv_last(self.lrelu(self.conv_hr(y))) + mean
        return y[:, :, :h, :w]


def build_swinir(sd: Mapping, device=None, dtype=None) -> SwinIR:
    """Build a :class:`SwinIR` from a DiffBIR SwinIR state dict (wrapped/prefixed dicts are normalised first).

    Buffers that can be recomputed (``relative_position_index``, ``attn_mask``) may be missing from ``sd``; every
    parameter must be present with the inferred shape and no unknown key may remain. Returns the network in eval
    mode on ``device`` with floating weights in ``dtype`` (default float32). Raises ValueError otherwise.
    """
    flat = normalize_swinir_state_dict(sd)
    cfg = swinir_config_from_state_dict(flat)
    net = SwinIR(**cfg, device=device, dtype=dtype or torch.float32)
    expected = net.state_dict()
    unexpected = sorted(k for k in flat if k not in expected)
    missing = sorted(k for k in expected if k not in flat
                     and not k.endswith((".relative_position_index", ".attn_mask")))
    if unexpected or missing:
        parts = []
        if missing:
            parts.append(f"missing {len(missing)} (e.g. {missing[:3]})")
        if unexpected:
            parts.append(f"unexpected {len(unexpected)} (e.g. {unexpected[:3]})")
        raise ValueError(f"state dict: expected the keys of a DiffBIR SwinIR with {_describe(cfg)}, found "
                         f"{' and '.join(parts)}")
    bad = [f"{k}: expected {tuple(expected[k].shape)}, found {tuple(v.shape)}" for k, v in flat.items()
           if tuple(v.shape) != tuple(expected[k].shape)]
    if bad:
        raise ValueError(f"state dict: unexpected tensor shapes for a DiffBIR SwinIR with {_describe(cfg)}: "
                         f"{'; '.join(bad[:3])}")
    net.load_state_dict(flat, strict=False)
    return net.eval().requires_grad_(False)


def _describe(cfg: dict) -> str:
    return (f"embed_dim {cfg['embed_dim']}, {len(cfg['depths'])} groups x {cfg['depths'][0]} blocks, "
            f"window {cfg['window_size']}, unshuffle x{cfg['unshuffle_scale']}")


def describe_config(cfg: dict) -> str:
    """One-line human summary of a config from :func:`swinir_config_from_state_dict`."""
    return _describe(cfg) + f", heads {cfg['num_heads'][0]}, mlp ratio {cfg['mlp_ratio']:g}"
