"""MUSIQ (Ke et al., ICCV 2021) in plain torch, loading the weight files that pyiqa publishes.

The network scores an image from a multi-scale set of 32x32 patches: the image itself plus copies whose longer
side is 224 and 384 pixels. Each patch goes through a small ResNet stem (weight-standardised convolutions with
TensorFlow "SAME" padding, group norms, one bottleneck block), becomes one token, gets a hashed 10x10 spatial
position embedding and a per-scale embedding, and a 14-layer pre-norm transformer reads the class token. The head
gives one score (KonIQ, SPAQ, PaQ-2-PiQ: about 0..100) or a 10-bin distribution whose mean is the score (AVA: 1..10).

Parameter names follow pyiqa's ``MUSIQ`` (``pyiqa/archs/musiq_arch.py``) so its released ``.pth`` files load
unchanged, and the preprocessing follows pyiqa's ``get_multiscale_patches`` (bicubic resize without antialiasing,
centred zero padding to whole patches, padded token slots for the two fixed scales, all patches at the original
resolution). Inference only: no dropout, no training-mode path.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

PATCH = 32              # patch side in pixels
GRID = 10               # hashed spatial position grid (GRID x GRID embeddings)
SCALES = (224, 384)     # longer sides of the resized copies; the original resolution is the last scale
STEM_CHANNELS = 64
HIDDEN = 384
MLP_DIM = 1152
HEADS = 6
LAYERS = 14
MASKED_LOGIT = -1e3     # attention logit given to padded token slots (pyiqa's value, not -inf)


def _same_pad(x: torch.Tensor, kernel: int, stride: int) -> torch.Tensor:
    """Zero-pad (N, C, H, W) like TensorFlow's SAME: output size ceil(size / stride), the odd pixel at the end."""
    pads = []
    for size in (x.shape[-1], x.shape[-2]):  # F.pad order: width first
        total = (math.ceil(size / stride) - 1) * stride + kernel - size
        pads += [total // 2, total - total // 2]
    return F.pad(x, pads)


class StandardizedConv(nn.Conv2d):
    """Conv2d whose kernel is standardised per output channel (mean 0, unbiased std 1, eps 1e-5) at every call,
    with SAME padding. Parameter: ``weight`` (out, in, k, k); no bias."""

    def __init__(self, cin: int, cout: int, kernel: int, stride: int = 1):
        super().__init__(cin, cout, kernel, stride, bias=False)

    def forward(self, x):
        w = self.weight
        w = (w - w.mean(dim=(1, 2, 3), keepdim=True)) / (w.std(dim=(1, 2, 3), keepdim=True) + 1e-5)
        return F.conv2d(_same_pad(x, self.kernel_size[0], self.stride[0]), w, None, self.stride)


class Bottleneck(nn.Module):
    """1x1 -> 3x3 -> 1x1 standardised convolutions with group norms (32 groups, eps 1e-4) and a projected skip."""

    def __init__(self, cin: int, cout: int):
        super().__init__()
        self.conv1, self.gn1 = StandardizedConv(cin, cin, 1), nn.GroupNorm(32, cin, eps=1e-4)
        self.conv2, self.gn2 = StandardizedConv(cin, cin, 3), nn.GroupNorm(32, cin, eps=1e-4)
        self.conv3, self.gn3 = StandardizedConv(cin, cout, 1), nn.GroupNorm(32, cout, eps=1e-4)
        self.conv_proj, self.gn_proj = StandardizedConv(cin, cout, 1), nn.GroupNorm(32, cout, eps=1e-4)

    def forward(self, x):
        skip = self.gn_proj(self.conv_proj(x))
        y = F.relu(self.gn1(self.conv1(x)))
        y = F.relu(self.gn2(self.conv2(y)))
        return F.relu(self.gn3(self.conv3(y)) + skip)


class Attention(nn.Module):
    """Multi-head self-attention; ``mask`` (B, N) bool marks real tokens. A logit between two tokens of which
    either is padding is replaced by -1e3 (so padded keys get a weight of about exp(-1000) = 0)."""

    def __init__(self, dim: int, heads: int):
        super().__init__()
        self.heads = heads
        self.query, self.key, self.value, self.out = (nn.Linear(dim, dim) for _ in range(4))

    def forward(self, x, mask):
        b, n, c = x.shape

        def split(t):
            return t.reshape(b, n, self.heads, c // self.heads).transpose(1, 2)

        q, k, v = split(self.query(x)), split(self.key(x)), split(self.value(x))
        logits = (q @ k.transpose(-1, -2)) * (c // self.heads) ** -0.5
        pair = mask[:, None, :, None] & mask[:, None, None, :]
        weights = logits.masked_fill(~pair, MASKED_LOGIT).softmax(dim=-1)
        return self.out((weights @ v).transpose(1, 2).reshape(b, n, c))


class Mlp(nn.Module):
    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.fc1, self.fc2 = nn.Linear(dim, hidden), nn.Linear(hidden, dim)

    def forward(self, x):
        return self.fc2(F.gelu(self.fc1(x)))


class EncoderBlock(nn.Module):
    """Pre-norm transformer block (LayerNorm eps 1e-6, exact GELU)."""

    def __init__(self, dim: int, mlp_dim: int, heads: int):
        super().__init__()
        self.norm1, self.norm2 = nn.LayerNorm(dim, eps=1e-6), nn.LayerNorm(dim, eps=1e-6)
        self.attention = Attention(dim, heads)
        self.mlp = Mlp(dim, mlp_dim)

    def forward(self, x, mask):
        x = x + self.attention(self.norm1(x), mask)
        return x + self.mlp(self.norm2(x))


class PositionEmbedding(nn.Module):
    """Learned table of GRID^2 hashed spatial positions: ``position_emb`` (1, GRID^2, D)."""

    def __init__(self, cells: int, dim: int):
        super().__init__()
        self.position_emb = nn.Parameter(torch.randn(1, cells, dim) * 0.02)

    def forward(self, index: torch.Tensor) -> torch.Tensor:
        return self.position_emb[0][index]


class ScaleEmbedding(nn.Module):
    """Learned table of one embedding per scale: ``scale_emb`` (scales, D)."""

    def __init__(self, scales: int, dim: int):
        super().__init__()
        self.scale_emb = nn.Parameter(torch.randn(scales, dim) * 0.02)

    def forward(self, index: torch.Tensor) -> torch.Tensor:
        return self.scale_emb[index]


class Encoder(nn.Module):
    """Token embeddings + class token + transformer. Input tokens (B, N, D), positions (B, N) long in
    [0, GRID^2), scale ids (B, N) long in [0, 3), mask (B, N) bool; returns the normalised tokens (B, N + 1, D)."""

    def __init__(self, dim: int = HIDDEN, mlp_dim: int = MLP_DIM, heads: int = HEADS, layers: int = LAYERS,
                 scales: int = len(SCALES) + 1, grid: int = GRID):
        super().__init__()
        self.posembed_input = PositionEmbedding(grid * grid, dim)
        self.scaleembed_input = ScaleEmbedding(scales, dim)
        self.cls = nn.Parameter(torch.zeros(1, 1, dim))
        self.encoder_norm = nn.LayerNorm(dim, eps=1e-6)
        self.transformer = nn.ModuleDict({f"encoderblock_{i}": EncoderBlock(dim, mlp_dim, heads)
                                          for i in range(layers)})

    def forward(self, tokens, positions, scale_ids, mask):
        x = tokens + self.posembed_input(positions) + self.scaleembed_input(scale_ids)
        x = torch.cat([self.cls.expand(x.shape[0], -1, -1), x], dim=1)
        mask = torch.cat([mask.new_ones(mask.shape[0], 1), mask], dim=1)
        for block in self.transformer.values():
            x = block(x, mask)
        return self.encoder_norm(x)


def _hashed_index(count: int, grid: int) -> torch.Tensor:
    """Grid cell (0..grid-1) of each of ``count`` patches along one side: nearest-neighbour resampling of
    0..grid-1 to ``count`` entries (torch's 'nearest' rule, as pyiqa computes it). (count,) long."""
    cells = torch.arange(grid, dtype=torch.float32).reshape(1, 1, grid)
    return F.interpolate(cells, size=count, mode="nearest").reshape(-1).long()


def _patches(image: torch.Tensor, scale_id: int, slots: int | None):
    """Cut (B, 3, H, W) into 32x32 patches after centred SAME zero padding.

    Returns patches (B, N, 3, 32, 32), positions (B, N) long, scale ids (B, N) long and mask (B, N) bool. With
    ``slots`` the sequence is zero-padded (mask False, position 0, scale 0) or cut to exactly that many tokens.
    """
    b, c = image.shape[:2]
    rows, cols = math.ceil(image.shape[-2] / PATCH), math.ceil(image.shape[-1] / PATCH)
    x = _same_pad(image, PATCH, PATCH)
    p = x.reshape(b, c, rows, PATCH, cols, PATCH).permute(0, 2, 4, 1, 3, 5).reshape(b, rows * cols, c, PATCH, PATCH)
    pos = (_hashed_index(rows, GRID)[:, None] * GRID + _hashed_index(cols, GRID)[None, :]).reshape(1, -1)
    pos = pos.to(image.device).expand(b, -1)
    sid = torch.full_like(pos, scale_id)
    mask = torch.ones_like(pos, dtype=torch.bool)
    if slots is not None:
        n = p.shape[1]
        if n < slots:
            extra = slots - n
            p = torch.cat([p, p.new_zeros(b, extra, c, PATCH, PATCH)], dim=1)
            pos, sid = (torch.cat([t, t.new_zeros(b, extra)], dim=1) for t in (pos, sid))
            mask = torch.cat([mask, mask.new_zeros(b, extra)], dim=1)
        p, pos, sid, mask = p[:, :slots], pos[:, :slots], sid[:, :slots], mask[:, :slots]
    return p, pos, sid, mask


def multiscale_tokens(images: torch.Tensor):
    """pyiqa's multi-scale input of MUSIQ for (B, 3, H, W) images in [-1, 1].

    Scales 0 and 1: bicubic resizes (align_corners=False, no antialias) to longer side 224 / 384 (other side
    ``round(side * ratio)``), each in ceil(L / 32)^2 token slots. Scale 2: every patch of the image as given.
    Returns (patches (B, N, 3, 32, 32), positions, scale ids, mask), the last three (B, N).
    """
    h, w = images.shape[-2:]
    parts = []
    for scale_id, longer in enumerate(sorted(SCALES)):
        ratio = longer / max(h, w)
        resized = F.interpolate(images, (round(h * ratio), round(w * ratio)), mode="bicubic", align_corners=False)
        parts.append(_patches(resized, scale_id, math.ceil(longer / PATCH) ** 2))
    parts.append(_patches(images, len(SCALES), None))
    return tuple(torch.cat(group, dim=1) for group in zip(*parts))


class MUSIQ(nn.Module):
    """MUSIQ scorer with pyiqa's parameter names.

    Args:
        num_class: 1 for a direct score (KonIQ, SPAQ, PaQ-2-PiQ) or 10 for AVA's rating distribution (softmax;
            the score is its mean over ratings 1..10).

    ``forward(x)``: (B, 3, H, W) float RGB in [0, 1], any H, W >= 1 -> (B, 1) scores.
    """

    def __init__(self, num_class: int = 1):
        super().__init__()
        self.num_class = num_class
        self.conv_root = StandardizedConv(3, STEM_CHANNELS, 7, 2)
        self.gn_root = nn.GroupNorm(32, STEM_CHANNELS, eps=1e-6)
        self.block1 = Bottleneck(STEM_CHANNELS, STEM_CHANNELS * 4)
        self.embedding = nn.Linear(STEM_CHANNELS * 4 * (PATCH // 4) ** 2, HIDDEN)
        self.transformer_encoder = Encoder()
        linear = nn.Linear(HIDDEN, num_class)
        self.head = nn.Sequential(linear) if num_class > 1 else linear  # files name it head.0.* when > 1

    def tokens(self, patches: torch.Tensor) -> torch.Tensor:
        """(B, N, 3, 32, 32) patches -> (B, N, HIDDEN) token embeddings (channel-last flattening, as TF)."""
        b, n = patches.shape[:2]
        x = patches.reshape(b * n, 3, PATCH, PATCH)
        x = F.relu(self.gn_root(self.conv_root(x)))
        x = F.max_pool2d(_same_pad(x, 3, 2), 3, 2)
        x = self.block1(x)
        return self.embedding(x.permute(0, 2, 3, 1).reshape(b, n, -1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        patches, positions, scale_ids, mask = multiscale_tokens((x - 0.5) * 2)
        encoded = self.transformer_encoder(self.tokens(patches), positions, scale_ids, mask)
        out = self.head(encoded[:, 0])
        if self.num_class > 1:
            ratings = torch.arange(1, self.num_class + 1, dtype=out.dtype, device=out.device)
            return (out.softmax(dim=-1) * ratings).sum(dim=-1, keepdim=True)
        return out
