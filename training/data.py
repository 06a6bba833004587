"""Training data from a folder of images: deterministic random crops addressed by step, so a resumed run sees
exactly the batches an uninterrupted run would have seen (no data-loader state to save)."""

from __future__ import annotations

import os
import warnings
from collections import OrderedDict

import torch

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".webp", ".bmp", ".tif", ".tiff")
MAX_PIXELS = 100_000_000  # larger files are skipped before decoding (PIL's own bomb guard stops at 179 MP)
MAX_UPSCALE = 4.0  # images whose short side is under crop / 4 are skipped, not blown up
CACHE_BYTES = 1 << 30  # decoded images kept (uint8) in the LRU cache


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


def _decode(path: str, crop: int | None = None):
    """uint8 (H, W, 3) RGB array of ``path`` (alpha dropped, grey repeated, 16-bit grey scaled to 8 bits).

    With ``crop``, sized for ``crop`` x ``crop`` training crops with bounded memory: a short side above
    ``4 * crop`` is box-reduced by an integer factor (JPEGs decode at that size directly); a short side under
    ``crop`` is upscaled (bicubic) to ``crop``, unless that needs more than ``MAX_UPSCALE`` x or more than
    ``64 * crop**2`` pixels (thin strips). Raises ValueError naming the file and the reason when the file cannot
    be read or is skipped (also above ``MAX_PIXELS``, checked from the header before decoding).
    """
    import numpy as np
    from PIL import Image

    try:
        with Image.open(path) as im:
            w, h = im.size
            if w * h > MAX_PIXELS:
                raise ValueError(f"data: skipped {path}: expected at most {MAX_PIXELS // 10**6} megapixels, found "
                                 f"{w}x{h}")
            if crop is not None:
                short = min(w, h)
                if short * MAX_UPSCALE < crop:
                    raise ValueError(f"data: skipped {path}: expected a short side of at least "
                                     f"{int(crop / MAX_UPSCALE)} px for {crop} px crops, found {w}x{h}")
                if short < crop and w * h * (crop / short) ** 2 > 64 * crop * crop:
                    raise ValueError(f"data: skipped {path}: expected an aspect ratio that fits upscaling to "
                                     f"{crop} px crops, found a thin {w}x{h} image")
                if short > 4 * crop and im.format == "JPEG":
                    im.draft("RGB", (max(1, w * 4 * crop // short), max(1, h * 4 * crop // short)))
            if im.mode in ("I;16", "I;16B", "I;16L", "I"):  # 16/32-bit grey: scale to 8 bits, never clip
                arr = np.asarray(im, dtype=np.float64)
                top = 65535.0 if im.mode.startswith("I;16") or arr.max() > 255 else 255.0
                im = Image.fromarray((arr.clip(0, top) * (255.0 / top) + 0.5).astype(np.uint8))
            im = im.convert("RGB")
            if crop is not None:
                short = min(im.size)
                if short // (4 * crop) >= 2:
                    im = im.reduce(short // (4 * crop))  # box filter in uint8: bounded memory for huge photos
                elif short < crop:
                    f = crop / short
                    im = im.resize((max(crop, round(im.size[0] * f)), max(crop, round(im.size[1] * f))),
                                   Image.BICUBIC)
            arr = np.asarray(im, dtype=np.uint8).copy()
    except ValueError:
        raise
    except Exception as e:  # noqa: BLE001 - any decoder failure (also PIL's bomb guard) becomes one message
        raise ValueError(f"data: could not read image {path} ({type(e).__name__}: {e})") from None
    return arr


def load_rgb(path: str) -> torch.Tensor:
    """(3, H, W) float32 RGB in [0, 1] (alpha dropped, grey repeated); ValueError naming the file if unreadable."""
    return torch.from_numpy(_decode(path)).permute(2, 0, 1).float() / 255.0


class DataWarning(UserWarning):
    """An image of the training folder was skipped (unreadable, too small, too large, too thin)."""


class CropBatches:
    """Batches of random ``crop`` x ``crop`` HQ crops from a folder, a pure function of (seed, step).

    Images are sized by :func:`_decode` (small ones upscaled to the crop, huge ones reduced); a file that cannot
    be used is skipped with a :class:`DataWarning` (once) and its draws go to the next usable file, so the
    batches stay a pure function of (seed, step, folder). Decoded images are kept as uint8 in an LRU cache of at
    most ``cache_bytes``. ``batch(step)`` returns ``(hq (B, 3, crop, crop) float32 [0, 1], generator)``; the
    generator is seeded from (seed, step) and has already drawn the crops, so the caller can draw degradations,
    noise and timesteps from it and the whole step stays reproducible.
    """

    def __init__(self, folder: str, batch_size: int, crop: int, seed: int, cache_bytes: int = CACHE_BYTES):
        if batch_size < 1 or crop < 8:
            raise ValueError(f"batch_size/crop: expected >= 1 and >= 8, found {batch_size} and {crop}")
        self.folder = folder
        self.paths = list_images(folder)
        self.batch_size, self.crop, self.seed = batch_size, crop, seed
        self._cache: OrderedDict = OrderedDict()
        self._cache_bytes = cache_bytes
        self.skipped: dict[int, str] = {}  # index -> reason

    def _load(self, i: int):
        """uint8 (3, H, W) of file ``i``, or None when it is skipped."""
        if i in self.skipped:
            return None
        if i in self._cache:
            self._cache.move_to_end(i)
            return self._cache[i]
        try:
            img = torch.from_numpy(_decode(self.paths[i], self.crop)).permute(2, 0, 1).contiguous()
        except ValueError as e:
            self.skipped[i] = str(e)
            warnings.warn(str(e), DataWarning, stacklevel=2)
            return None
        self._cache[i] = img
        while len(self._cache) > 1 and sum(t.numel() for t in self._cache.values()) > self._cache_bytes:
            self._cache.popitem(last=False)
        return img

    def _image(self, i: int) -> torch.Tensor:
        """float32 (3, H, W) [0, 1] of file ``i`` or, when it is skipped, of the next usable file."""
        n = len(self.paths)
        for j in range(n):
            img = self._load((i + j) % n)
            if img is not None:
                return img.float() / 255.0
        raise ValueError(f"data: expected usable images in {self.folder}, found none of {n} files usable "
                         f"(e.g. {next(iter(self.skipped.values()))})")

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
        """Centre crops of the first ``count`` usable images (fixed across the run), (N, 3, crop, crop)."""
        out, i = [], 0
        while len(out) < count and i < len(self.paths):
            img = self._load(i)
            i += 1
            if img is None:
                continue
            h, w = img.shape[1:]
            top, left = (h - self.crop) // 2, (w - self.crop) // 2
            out.append(img[:, top:top + self.crop, left:left + self.crop].float() / 255.0)
        if not out:
            self._image(0)  # raises the 'no usable images' error
        return torch.stack(out)
