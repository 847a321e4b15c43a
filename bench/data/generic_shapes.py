"""A third, generic image domain for pretraining MiniCity's small network (issue 15, item 2).

Real pipelines start from an ImageNet backbone: features learnt on images that are neither source nor
target. The small net has no such file, so from scratch it learns the source's colours. This domain stands in
for ImageNet: random shapes (ellipse, rectangle, triangle, band, ring) with random textures (flat, gradient,
noise, stripes, checker) in random colours, on textured backgrounds, each image under its own random global
style (gains, gamma, contrast, blur, noise). The proxy task labels each pixel with its shape *kind*, which no
colour predicts: features must come from shape, edges and texture. No street content, no MiniCity palette.
Deterministic per (seed, index); nothing is written to disk.
"""

from __future__ import annotations

import numpy as np
import torch
from PIL import Image, ImageFilter
from torch.utils.data import Dataset

from bench.data.transforms import normalize

KINDS = ("background", "ellipse", "rectangle", "triangle", "band", "ring")
TEXTURES = ("flat", "gradient", "noise", "stripes", "checker")
VERSION = 1


def _colour(rng: np.random.Generator) -> np.ndarray:
    return rng.uniform(0, 255, 3).astype(np.float32)


def _texture(rng: np.random.Generator, yy: np.ndarray, xx: np.ndarray) -> np.ndarray:
    """An H×W×3 float image of one random texture in two random colours."""
    a, b = _colour(rng), _colour(rng)
    kind = TEXTURES[rng.integers(len(TEXTURES))]
    h, w = yy.shape
    if kind == "flat":
        t = np.zeros((h, w), np.float32)
    elif kind == "gradient":
        ang = rng.uniform(0, np.pi)
        t = (np.cos(ang) * xx + np.sin(ang) * yy) / max(h, w)
        t = (t - t.min()) / max(float(np.ptp(t)), 1e-6)
    elif kind == "noise":
        cells = int(rng.integers(4, 33))
        small = rng.uniform(0, 1, (max(2, h // cells), max(2, w // cells))).astype(np.float32)
        t = np.asarray(Image.fromarray(small).resize((w, h), Image.BILINEAR), np.float32)
    elif kind == "stripes":
        ang, period = rng.uniform(0, np.pi), rng.uniform(4, 24)
        t = (np.sin((np.cos(ang) * xx + np.sin(ang) * yy) * 2 * np.pi / period) > 0).astype(np.float32)
    else:  # checker
        s = rng.uniform(4, 20)
        t = ((np.floor(xx / s) + np.floor(yy / s)) % 2).astype(np.float32)
    return a + t[..., None] * (b - a)


def _mask(kind: str, rng: np.random.Generator, yy: np.ndarray, xx: np.ndarray) -> np.ndarray:
    h, w = yy.shape
    cx, cy = rng.uniform(0, w), rng.uniform(0, h)
    r = rng.uniform(0.05, 0.3) * h
    if kind == "ellipse":
        ax, ay = r * rng.uniform(0.6, 2.5), r
        return ((xx - cx) / ax) ** 2 + ((yy - cy) / ay) ** 2 <= 1
    if kind == "ring":
        d = np.hypot(xx - cx, yy - cy)
        return (d <= r) & (d >= r * rng.uniform(0.4, 0.75))
    if kind == "rectangle":
        ang = rng.uniform(0, np.pi)
        u, v = (xx - cx) * np.cos(ang) + (yy - cy) * np.sin(ang), -(xx - cx) * np.sin(ang) + (yy - cy) * np.cos(ang)
        return (np.abs(u) <= r * rng.uniform(0.5, 2.0)) & (np.abs(v) <= r * rng.uniform(0.3, 1.0))
    if kind == "band":
        ang = rng.uniform(0, np.pi)
        return np.abs(-(xx - cx) * np.sin(ang) + (yy - cy) * np.cos(ang)) <= rng.uniform(2, 8)
    # triangle: inside three half-planes of three random vertices around the centre
    angles = np.sort(rng.uniform(0, 2 * np.pi, 3))
    p = [(cx + 1.5 * r * np.cos(a), cy + 1.5 * r * np.sin(a)) for a in angles]
    inside = np.ones((h, w), bool)
    for (x0, y0), (x1, y1) in zip(p, p[1:] + p[:1]):
        inside &= (x1 - x0) * (yy - y0) - (y1 - y0) * (xx - x0) >= 0
    return inside


def _style(img: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """One random global look per image: gains, gamma, contrast, optional blur and noise."""
    x = np.clip(img * rng.uniform(0.7, 1.3, 3), 0, 255) / 255.0
    x = x ** rng.uniform(0.7, 1.4)
    x = 0.5 + (x - 0.5) * rng.uniform(0.6, 1.3)
    out = Image.fromarray((np.clip(x, 0, 1) * 255).astype(np.uint8))
    if rng.random() < 0.5:
        out = out.filter(ImageFilter.GaussianBlur(rng.uniform(0.3, 1.5)))
    arr = np.asarray(out, np.float32) + rng.normal(0, rng.uniform(0, 8), img.shape)
    return np.clip(arr, 0, 255).astype(np.uint8)


def make_generic(seed: int, index: int, size: tuple[int, int] = (256, 128)) -> tuple[np.ndarray, np.ndarray]:
    """Image (H×W×3 uint8) and shape-kind labels (H×W uint8, ``KINDS`` indices) of sample ``index``."""
    rng = np.random.default_rng([VERSION, int(seed), int(index)])
    w, h = size
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    img, label = _texture(rng, yy, xx), np.zeros((h, w), np.uint8)
    for _ in range(int(rng.integers(5, 15))):  # later shapes occlude earlier ones
        k = int(rng.integers(1, len(KINDS)))
        m = _mask(KINDS[k], rng, yy, xx)
        img[m] = _texture(rng, yy, xx)[m]
        label[m] = k
    return _style(img, rng), label


class GenericShapes(Dataset):
    """``count`` generic samples as the trainer's batches: ``{"image": normalised CHW, "label": long HW}``."""

    def __init__(self, count: int, seed: int = 0, size: tuple[int, int] = (256, 128), norm: str = "imagenet"):
        self.count, self.seed, self.size, self.norm = int(count), int(seed), tuple(size), norm
        self._memo: dict[int, tuple[np.ndarray, np.ndarray]] = {}  # ~130 kB a sample; rendering is ~20 ms

    def __len__(self) -> int:
        return self.count

    def __getitem__(self, key) -> dict:
        i, aug_seed = key if isinstance(key, tuple) else (key, None)  # the trainer's sampler gives both
        if i not in self._memo:
            self._memo[i] = make_generic(self.seed, i, self.size)
        img, label = self._memo[i]
        if (i if aug_seed is None else aug_seed) % 2:  # horizontal flip, decided by the stream position
            img, label = img[:, ::-1], label[:, ::-1]
        return {"image": normalize(np.ascontiguousarray(img), self.norm),
                "label": torch.from_numpy(np.ascontiguousarray(label).astype(np.int64))}
