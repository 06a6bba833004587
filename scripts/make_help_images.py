"""Draw the pictures of the per-node help pages (``web/docs/images/*.png``) with the pack's own modules.

    .venv/bin/python scripts/make_help_images.py

Nothing is downloaded and no model file is needed: the IQA chart plots ``modules.iqa.map_score`` (what the IQA
Classifier computes from a score), the degradation strip runs ``modules.degradations`` (what Degrade Image runs)
on a synthetic test picture drawn here, and the tiling picture uses ``modules.tiling``'s tile boxes and Gaussian
weights (what Tiled Diffusion blends). Output: small PNGs, deterministic for a given torch version.
"""

from __future__ import annotations

import math
import os
import sys

import numpy as np
import torch
from PIL import Image, ImageDraw

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
OUT = os.path.join(REPO, "web", "docs", "images")
INK, GRID, BG = (40, 40, 40), (215, 215, 215), (255, 255, 255)
COLOURS = {"k": (33, 102, 172), "w": (214, 96, 77)}
CLASS_BG = {"severe": (253, 224, 221), "medium": (255, 247, 205), "mild": (217, 240, 211)}


def pack():
    """The pack's modules as the package ``adaptbir_restoration`` (its ``__init__``, ComfyUI's side, not run)."""
    sys.path.insert(0, REPO)
    from _launcher import package

    package(REPO, run_init=False)
    from adaptbir_restoration.modules import degradations, iqa, tiling

    return iqa, degradations, tiling


def iqa_chart(iqa, path: str) -> None:
    """k and w against the MUSIQ score (mode adaptbir, default thresholds), with the three classes shaded."""
    w_px, h_px, left, right, top, bottom = 640, 300, 50, 20, 20, 40
    img = Image.new("RGB", (w_px, h_px), BG)
    d = ImageDraw.Draw(img)

    def x_of(score):
        return left + (w_px - left - right) * score / 100.0

    def y_of(v):
        return h_px - bottom - (h_px - top - bottom) * v / 1.05

    for lo, hi, name in ((0, 40, "severe"), (40, 70, "medium"), (70, 100, "mild")):
        d.rectangle([x_of(lo), top, x_of(hi), h_px - bottom], fill=CLASS_BG[name])
        d.text(((x_of(lo) + x_of(hi)) / 2 - 3 * len(name), top + 4), name, fill=INK)
    for v in (0.0, 0.25, 0.5, 0.75, 1.0):
        d.line([left, y_of(v), w_px - right, y_of(v)], fill=GRID)
        d.text((8, y_of(v) - 6), f"{v:.2f}", fill=INK)
    for s in range(0, 101, 10):
        d.text((x_of(s) - 6, h_px - bottom + 6), str(s), fill=INK)
    d.text((w_px // 2 - 40, h_px - 18), "MUSIQ score", fill=INK)
    for idx, key in enumerate(("k", "w")):
        pts = [(x_of(s / 4), y_of(iqa.map_score(s / 4)[1 + idx])) for s in range(401)]
        for a, b in zip(pts, pts[1:]):
            if abs(a[1] - b[1]) < 40:  # no vertical line at a class border (the mapping jumps there)
                d.line([a, b], fill=COLOURS[key], width=3)
        d.text((left + 10 + 60 * idx, h_px - bottom - 20), f"-- {key}", fill=COLOURS[key])
    img.save(path, optimize=True)


def test_picture(size: int = 192) -> torch.Tensor:
    """A synthetic photo-like picture (1, 3, size, size) in [0, 1]: sky gradient, sun, hills, stripes, a grid."""
    y, x = torch.meshgrid(torch.linspace(0, 1, size), torch.linspace(0, 1, size), indexing="ij")
    img = torch.stack([0.45 + 0.3 * y, 0.65 + 0.2 * y, 0.95 - 0.1 * y])
    sun = ((x - 0.75) ** 2 + (y - 0.22) ** 2) < 0.012
    img[:, sun] = torch.tensor([1.0, 0.85, 0.3])[:, None]
    hill = y > 0.62 + 0.08 * torch.sin(x * 2 * math.pi * 1.5)
    img[:, hill] = torch.stack([0.2 + 0.1 * x, 0.5 - 0.1 * y, 0.2 + 0 * x])[:, hill]
    stripes = (y > 0.78) & (x < 0.45)
    shade = 0.15 + 0.7 * ((torch.sin(x * 2 * math.pi * 18) > 0).float())
    img[:, stripes] = shade[stripes].expand(3, -1)
    box = (y > 0.78) & (x > 0.55) & (x < 0.95)
    grid = ((torch.remainder(x * size, 8) < 1) | (torch.remainder(y * size, 8) < 1)).float()
    img[:, box] = torch.stack([0.9 - 0.7 * grid, 0.9 - 0.7 * grid, 0.9 - 0.7 * grid])[:, box]
    return img.unsqueeze(0).clamp(0, 1)


def degrade_strip(degradations, path: str) -> None:
    """The test picture, then each pipeline's result with seed 0, side by side with their names below."""
    clean = test_picture()
    runs = [("clean", clean)]
    for name, fn in (("realesrgan x4", lambda x, g: degradations.realesrgan_degrade(x, g, scale=4.0)),
                     ("codeformer_diffbir", lambda x, g: degradations.codeformer_degrade(x, g, preset="diffbir")),
                     ("mild_adaptbir", degradations.mild_degrade)):
        out, _ = fn(clean, torch.Generator().manual_seed(0))
        runs.append((name, out.clamp(0, 1)))
    s, pad, label = clean.shape[-1], 8, 18
    img = Image.new("RGB", (len(runs) * (s + pad) + pad, s + 2 * pad + label), BG)
    d = ImageDraw.Draw(img)
    for i, (name, t) in enumerate(runs):
        arr = (t[0].permute(1, 2, 0).numpy() * 255 + 0.5).astype(np.uint8)
        x0 = pad + i * (s + pad)
        img.paste(Image.fromarray(arr), (x0, pad))
        d.text((x0, s + pad + 4), name, fill=INK)
    img.save(path, optimize=True)


def tiling_picture(tiling, path: str, height: int = 896, width: int = 1280, tile: int = 512,
                   stride: int = 256, scale: float = 0.4) -> None:
    """Tiled Diffusion's tiles over an image (grey), two neighbours highlighted with their overlap, and the
    Gaussian blending weight of the first of them."""
    w_px, h_px = int(width * scale), int(height * scale)
    img = Image.new("RGB", (w_px + 20, h_px + 40), BG)
    d = ImageDraw.Draw(img)
    boxes = tiling.tile_boxes(height, width, tile, stride)
    starts_x = tiling.tile_starts(width, tile, stride)

    def rect(top, left, th, tw, inset=0):
        return [10 + left * scale + inset, 10 + top * scale + inset, 10 + (left + tw) * scale - inset,
                10 + (top + th) * scale - inset]

    for top, left, th, tw in boxes:
        d.rectangle(rect(top, left, th, tw, 1), outline=GRID, width=1)
    a = (0, starts_x[1], tile, tile)
    b = (0, starts_x[2], tile, tile)
    d.rectangle(rect(0, b[1], tile, a[1] + tile - b[1]), fill=(232, 222, 240))  # the blended overlap
    weight = tiling.tile_weights(tile, tile).numpy()
    side = (int(tile * scale),) * 2
    dark = Image.new("RGB", side, (90, 90, 90))
    img.paste(dark, (10 + int(a[1] * scale), 10), Image.fromarray((255 * weight).astype(np.uint8)).resize(side))
    d = ImageDraw.Draw(img)
    d.rectangle(rect(*a), outline=COLOURS["k"], width=3)
    d.rectangle(rect(*b, 3), outline=COLOURS["w"], width=3)
    d.rectangle([10, 10, 10 + w_px, 10 + h_px], outline=INK, width=2)
    d.text((10, h_px + 14), f"{width}x{height} image: {len(boxes)} tiles of {tile} px at stride {stride}", fill=INK)
    d.text((10, h_px + 26), f"two neighbours overlap by {tile - stride} px (violet); grey = the blue tile's "
           f"blending weight", fill=INK)
    img.save(path, optimize=True)


def main() -> int:
    iqa, degradations, tiling = pack()
    os.makedirs(OUT, exist_ok=True)
    torch.manual_seed(0)
    iqa_chart(iqa, os.path.join(OUT, "iqa_mapping.png"))
    degrade_strip(degradations, os.path.join(OUT, "degrade_pipelines.png"))
    tiling_picture(tiling, os.path.join(OUT, "tiled_diffusion.png"))
    for name in sorted(os.listdir(OUT)):
        print(os.path.join("web", "docs", "images", name), os.path.getsize(os.path.join(OUT, name)), "bytes")
    return 0


if __name__ == "__main__":
    sys.exit(main())
