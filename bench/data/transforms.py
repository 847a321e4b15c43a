"""Paired image/label transforms for the papers' recipes, driven by an explicit per-item seed.

Order: resize → random scale → random crop → random flip → normalise. The image is resized with Pillow
(bicubic by default, as AdaptSegNet/ADVENT do), the label always with nearest neighbour. ``resize=None`` keeps
the file's native size (what CAG-UDA's and BiSMAP's recipes scale from). ``scale_base`` switches the random
scale to the official codes' width rule: width = U(lo, hi) · scale_base px, aspect kept (CAG-UDA ``rsize`` 2200,
BiSMAP 2200 source / 2048 target), instead of a factor of the current size.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from PIL import Image

from bench.data.labels import IGNORE

# Caffe DeepLab inits expect BGR 0–255 minus this mean (AdaptSegNet/ADVENT IMG_MEAN).
CAFFE_MEAN_BGR = np.array([104.00698793, 116.66876762, 122.67891434], dtype=np.float32)
IMAGENET_MEAN = np.array([0.485, 0.456, 0.406], dtype=np.float32)
IMAGENET_STD = np.array([0.229, 0.224, 0.225], dtype=np.float32)
NORMALIZATIONS = ("caffe", "imagenet", "unit")
_INTERP = {"bicubic": Image.BICUBIC, "bilinear": Image.BILINEAR}


@dataclass(frozen=True)
class Transform:
    """What ``build_dataset(**options)`` accepts. Sizes are (width, height) like the papers write them."""

    resize: tuple[int, int] | None = None
    interpolation: str = "bicubic"
    scale: tuple[float, float] | None = None
    scale_base: int | None = None
    crop: tuple[int, int] | None = None
    flip: bool = False
    normalize: str = "imagenet"

    def __post_init__(self):
        if self.normalize not in NORMALIZATIONS:
            raise ValueError(f"normalize={self.normalize!r}; valid: {NORMALIZATIONS}")
        if self.scale_base is not None and not self.scale_base > 0:  # without ``scale`` it is unused (plain reads)
            raise ValueError(f"scale_base={self.scale_base!r}: expected a width in pixels > 0")
        if self.interpolation not in _INTERP:
            raise ValueError(f"interpolation={self.interpolation!r}; valid: {sorted(_INTERP)}")

    @property
    def random(self) -> bool:
        return bool(self.scale or self.crop or self.flip)

    def __call__(self, image: np.ndarray, label: np.ndarray, rng: np.random.Generator):
        """uint8 RGB ``[H,W,3]`` + uint8 trainIds ``[H,W]`` → float32 ``[3,H,W]`` tensor, int64 ``[H,W]``."""
        if self.resize is not None:
            image, label = resize_pair(image, label, self.resize, self.interpolation)
        if self.scale is not None:
            s = rng.uniform(*self.scale)
            h, w = label.shape
            if self.scale_base is not None:  # width rule: the drawn factor applies to a fixed width
                s *= self.scale_base / w
            image, label = resize_pair(image, label, (round(w * s), round(h * s)), self.interpolation)
        if self.crop is not None:
            image, label = random_crop(image, label, self.crop, rng)
        if self.flip and rng.random() < 0.5:
            image, label = image[:, ::-1], label[:, ::-1]
        return normalize(image, self.normalize), torch.from_numpy(label.astype(np.int64))


def resize_pair(image, label, size: tuple[int, int], interpolation: str = "bicubic"):
    """Resize to (width, height): image with the given filter, label with nearest neighbour."""
    size = (int(size[0]), int(size[1]))
    if image.shape[1] != size[0] or image.shape[0] != size[1]:
        image = np.asarray(Image.fromarray(image).resize(size, _INTERP[interpolation]))
    return image, resize_label(label, size)


def resize_label(label: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Nearest-neighbour resize of a label map to (width, height)."""
    if label.shape[1] == size[0] and label.shape[0] == size[1]:
        return label
    return np.asarray(Image.fromarray(label).resize(size, Image.NEAREST))


def random_crop(image, label, crop: tuple[int, int], rng: np.random.Generator):
    """Random (width, height) crop; pads with 0 / ignore when the input is smaller."""
    cw, ch = crop
    h, w = label.shape
    if h < ch or w < cw:
        ph, pw = max(ch - h, 0), max(cw - w, 0)
        image = np.pad(image, ((0, ph), (0, pw), (0, 0)))
        label = np.pad(label, ((0, ph), (0, pw)), constant_values=IGNORE)
        h, w = label.shape
    y = int(rng.integers(0, h - ch + 1))
    x = int(rng.integers(0, w - cw + 1))
    return image[y : y + ch, x : x + cw], label[y : y + ch, x : x + cw]


def normalize(image: np.ndarray, mode: str) -> torch.Tensor:
    """uint8 RGB ``[H,W,3]`` → float32 ``[3,H,W]`` in the convention the network's init expects."""
    x = np.ascontiguousarray(image, dtype=np.float32)
    if mode == "caffe":
        x = x[..., ::-1] - CAFFE_MEAN_BGR
    elif mode == "imagenet":
        x = (x / 255.0 - IMAGENET_MEAN) / IMAGENET_STD
    elif mode == "unit":
        x = x / 255.0
    else:
        raise ValueError(f"normalize={mode!r}; valid: {NORMALIZATIONS}")
    return torch.from_numpy(np.ascontiguousarray(x.transpose(2, 0, 1)))
