"""Training data from a folder of images: deterministic random crops addressed by step, so a resumed run sees
exactly the batches an uninterrupted run would have seen (no data-loader state to save)."""

from __future__ import annotations

import os
from collections import OrderedDict

import torch
import torch.nn.functional as F

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".webp", ".bmp", ".tif", ".tiff")


def list_images(folder: str) -> list[str]:
    """Image files under ``folder`` (recursive), sorted by relative path; raises ValueError when there are none."""
    if not os.path.isdir(folder):
        raise ValueError(f"data: expected a folder of images, found no folder at {folder}")
    found = []
    for root, _, files in os.walk(folder):
        found += [os.path.join(root, f) for f in files if f.lower().endswith(IMAGE_EXTENSIONS)]
    if not found:
        raise ValueError(f"data: expected image files ({', '.join(IMAGE_EXTENSIONS)}) in {folder}, found none")
    return sorted(found, key=lambda p: os.path.relpath(p, folder))


def load_rgb(path: str) -> torch.Tensor:
    """(3, H, W) float32 RGB in [0, 1] (alpha dropped, grey repeated); ValueError naming the file if unreadable."""
    import numpy as np
    from PIL import Image

    try:
        with Image.open(path) as im:
            arr = np.asarray(im.convert("RGB"), dtype=np.uint8).copy()
    except Exception as e:  # noqa: BLE001 - any decoder failure becomes one message
        raise ValueError(f"data: could not read image {path} ({type(e).__name__}: {e})") from None
    return torch.from_numpy(arr).permute(2, 0, 1).float() / 255.0


# An image smaller than the crop is upscaled to it; a thin one is first centre-cropped to at most this aspect
# ratio, so no upscale is longer than MAX_UPSCALE_ASPECT x crop (a 1x400 px image would otherwise become a
# 512x204800 px float image, 1.2 GB).
MAX_UPSCALE_ASPECT = 4


def cap_aspect(img: torch.Tensor, max_aspect: float) -> torch.Tensor:
    """(C, H, W) centre-cropped on its long side to at most ``max_aspect`` x its short side (itself if within)."""
    h, w = img.shape[1:]
    short = min(h, w)
    keep = max(1, int(short * max_aspect))
    if h > keep:
        top = (h - keep) // 2
        return img[:, top:top + keep, :]
    if w > keep:
        left = (w - keep) // 2
        return img[:, :, left:left + keep]
    return img


class CropBatches:
    """Batches of random ``crop`` x ``crop`` HQ crops from a folder, a pure function of (seed, step).

    Images smaller than the crop are first resized (bicubic, short side = crop; a thin one centre-cropped to at most
    :data:`MAX_UPSCALE_ASPECT`:1 before, so the upscale stays bounded). Decoded images are kept in a
    small LRU cache. ``batch(step)`` returns ``(hq (B, 3, crop, crop) float32 [0, 1], generator)``; the generator
    is seeded from (seed, step) and has already drawn the crops, so the caller can draw degradations, noise and
    timesteps from it and the whole step stays reproducible.
    """

    def __init__(self, folder: str, batch_size: int, crop: int, seed: int, cache_images: int = 64):
        if batch_size < 1 or crop < 8:
            raise ValueError(f"batch_size/crop: expected >= 1 and >= 8, found {batch_size} and {crop}")
        self.paths = list_images(folder)
        self.batch_size, self.crop, self.seed = batch_size, crop, seed
        self._cache: OrderedDict = OrderedDict()
        self._cache_size = cache_images

    def _image(self, i: int) -> torch.Tensor:
        if i in self._cache:
            self._cache.move_to_end(i)
            return self._cache[i]
        img = load_rgb(self.paths[i])
        short = min(img.shape[1:])
        if short < self.crop:
            img = cap_aspect(img, MAX_UPSCALE_ASPECT)
            h, w = img.shape[1:]
            size = (max(self.crop, round(h * self.crop / short)), max(self.crop, round(w * self.crop / short)))
            img = F.interpolate(img[None], size=size, mode="bicubic", align_corners=False)[0].clamp(0, 1)
        self._cache[i] = img
        if len(self._cache) > self._cache_size:
            self._cache.popitem(last=False)
        return img

    def generator(self, step: int) -> torch.Generator:
        return torch.Generator().manual_seed((self.seed * 1_000_003 + step) % (2**63))

    def batch(self, step: int):
        g = self.generator(step)
        idx = torch.randint(len(self.paths), (self.batch_size,), generator=g).tolist()
        crops = []
        for i in idx:
            img = self._image(i)
            h, w = img.shape[1:]
            top = int(torch.randint(h - self.crop + 1, (1,), generator=g))
            left = int(torch.randint(w - self.crop + 1, (1,), generator=g))
            crops.append(img[:, top:top + self.crop, left:left + self.crop])
        return torch.stack(crops).contiguous(), g

    def validation(self, count: int) -> torch.Tensor:
        """Centre crops of the first ``count`` images (fixed across the run), (N, 3, crop, crop)."""
        out = []
        for i in range(min(count, len(self.paths))):
            img = self._image(i)
            h, w = img.shape[1:]
            top, left = (h - self.crop) // 2, (w - self.crop) // 2
            out.append(img[:, top:top + self.crop, left:left + self.crop])
        return torch.stack(out)
