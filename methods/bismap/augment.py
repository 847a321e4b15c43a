"""BiSMAP's photometric augmentations on a batch already on the device (the harness's dataset transforms do
geometry only): colour jitter of the weak views (paper §4.1 "standard color-jittering", the code's strengths) and
the strong view φ of the consistency loss (Eq. 12: RandAugment + CutOut, the code's ``RandAugmentMC`` pool).

Images arrive normalised as the suite's dataset gives them (``normalize`` mode of ``bench.data.transforms``);
each function maps to RGB in [0, 1], transforms, and maps back. Every random draw comes from the ``generator``
passed in, so a training step is reproducible from (seed, iteration) and a resumed run draws the same views.
Photometric only: the views stay pixel-aligned with the labels and with each other.
"""

from __future__ import annotations

import torch
import torchvision.transforms.v2.functional as TF

from bench.data.transforms import CAFFE_MEAN_BGR, IMAGENET_MEAN, IMAGENET_STD


def _stats(mode: str, x: torch.Tensor):
    if mode == "imagenet":
        return (torch.as_tensor(IMAGENET_MEAN, device=x.device)[:, None, None],
                torch.as_tensor(IMAGENET_STD, device=x.device)[:, None, None])
    if mode == "unit":
        return torch.zeros(3, 1, 1, device=x.device), torch.ones(3, 1, 1, device=x.device)
    if mode == "caffe":
        return None
    raise ValueError(f"normalize: unknown mode {mode!r}; valid: caffe, imagenet, unit")


def to_unit(x: torch.Tensor, mode: str) -> torch.Tensor:
    """Normalised float [B,3,H,W] (``mode`` of ``bench.data.transforms.normalize``) → RGB in [0, 1]."""
    st = _stats(mode, x)
    if st is None:  # caffe: BGR, 0-255, minus the BGR mean
        bgr = x.float() + torch.as_tensor(CAFFE_MEAN_BGR, device=x.device)[:, None, None]
        return (bgr.flip(-3) / 255.0).clamp(0.0, 1.0)
    mean, std = st
    return (x.float() * std + mean).clamp(0.0, 1.0)


def from_unit(x: torch.Tensor, mode: str) -> torch.Tensor:
    """The inverse of :func:`to_unit`."""
    st = _stats(mode, x)
    if st is None:
        return x.flip(-3) * 255.0 - torch.as_tensor(CAFFE_MEAN_BGR, device=x.device)[:, None, None]
    mean, std = st
    return (x - mean) / std


def _uniform(gen: torch.Generator, lo: float, hi: float) -> float:
    return lo + (hi - lo) * float(torch.rand((), generator=gen))


def color_jitter(x: torch.Tensor, strengths, mode: str, gen: torch.Generator) -> torch.Tensor:
    """torchvision ``ColorJitter(brightness, contrast, saturation, hue)`` per image of a normalised batch
    [B,3,H,W]: factors U[max(0, 1−s), 1+s] (hue U[−h, h]), the four ops in a random order. ``strengths``
    None or all zero: the batch unchanged."""
    if not strengths or not any(strengths):
        return x
    b, c, s, h = (float(v) for v in strengths)
    unit = to_unit(x, mode)
    out = []
    for img in unit:
        ops = [(TF.adjust_brightness, _uniform(gen, max(0.0, 1 - b), 1 + b)) if b else None,
               (TF.adjust_contrast, _uniform(gen, max(0.0, 1 - c), 1 + c)) if c else None,
               (TF.adjust_saturation, _uniform(gen, max(0.0, 1 - s), 1 + s)) if s else None,
               (TF.adjust_hue, _uniform(gen, -h, h)) if h else None]
        for i in torch.randperm(4, generator=gen).tolist():
            if ops[i] is not None:
                img = ops[i][0](img, ops[i][1])
        out.append(img)
    return from_unit(torch.stack(out), mode).to(x.dtype)


# The code's RandAugmentMC pool (FixMatch's): (op, max_v, bias); the magnitude is v·max_v/10 + bias.
def _enhance(fn):
    return lambda img, v, max_v, bias: fn(img, v * max_v / 10 + bias)


RANDAUGMENT_POOL = (
    ("AutoContrast", lambda img, v, max_v, bias: TF.autocontrast(img), None, None),
    ("Brightness", _enhance(TF.adjust_brightness), 0.9, 0.05),
    ("Color", _enhance(TF.adjust_saturation), 0.9, 0.05),
    ("Contrast", _enhance(TF.adjust_contrast), 0.9, 0.05),
    ("Equalize", lambda img, v, max_v, bias: TF.equalize(img), None, None),
    ("Identity", lambda img, v, max_v, bias: img, None, None),
    ("Posterize", lambda img, v, max_v, bias: TF.posterize(img, int(v * max_v / 10) + bias), 4, 4),
    ("Sharpness", _enhance(TF.adjust_sharpness), 0.9, 0.05),
    ("Solarize", lambda img, v, max_v, bias: TF.solarize(img, 256 - (int(v * max_v / 10) + bias)), 256, 0),
)


def randaugment(img: torch.Tensor, n: int, m: int, gen: torch.Generator) -> tuple[torch.Tensor, list[str]]:
    """The code's ``RandAugmentMC(n, m)`` on one uint8 image [3,H,W]: n ops drawn with replacement from
    ``RANDAUGMENT_POOL``, each with magnitude v ~ U{1, …, m−1} and applied with probability 0.5, on uint8 as PIL
    does. Returns the image and the names of the ops applied."""
    if img.dtype != torch.uint8 or img.ndim != 3:
        raise ValueError(f"img: expected a uint8 [3,H,W] tensor, got {img.dtype} {tuple(img.shape)}")
    if n < 1 or not 1 < m <= 10:
        raise ValueError(f"randaugment: expected n >= 1 and 1 < m <= 10, got ({n}, {m})")
    applied = []
    for _ in range(n):
        name, op, max_v, bias = RANDAUGMENT_POOL[int(torch.randint(len(RANDAUGMENT_POOL), (), generator=gen))]
        v = int(torch.randint(1, m, (), generator=gen))
        if float(torch.rand((), generator=gen)) < 0.5:
            img = op(img, v, max_v, bias)
            applied.append(name)
    return img, applied


def cutout_box(height: int, width: int, fraction: float, gen: torch.Generator) -> tuple[int, int, int, int]:
    """The code's CutOut square: side v = int(fraction·W), centre (x0, y0) ~ U[0, W) × U[0, H), clipped to the
    image → (y0, y1, x0, x1), the box [y0:y1, x0:x1]."""
    v = int(fraction * width)
    x0 = int(max(0.0, _uniform(gen, 0, width) - v / 2.0))
    y0 = int(max(0.0, _uniform(gen, 0, height) - v / 2.0))
    return y0, min(height, y0 + v), x0, min(width, x0 + v)


def strong_view(x: torch.Tensor, mode: str, n: int, m: int, fraction: float,
                gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """φ of Eq. 12 as the code builds it: RandAugment(n, m) then a CutOut square zeroed (black, before
    normalisation), per image of a normalised batch [B,3,H,W] → (normalised view, bool cut-out mask [B,H,W])."""
    unit = to_unit(x, mode)
    bsz, _, h, w = x.shape
    mask = torch.zeros(bsz, h, w, dtype=torch.bool, device=x.device)
    out = []
    for i, img in enumerate(unit):
        u8 = (img * 255.0).round().to(torch.uint8)
        u8, _ = randaugment(u8, n, m, gen)
        y0, y1, x0, x1 = cutout_box(h, w, fraction, gen)
        mask[i, y0:y1, x0:x1] = True
        out.append(u8.float() / 255.0)
    view = torch.stack(out).masked_fill(mask[:, None], 0.0)
    return from_unit(view, mode).to(x.dtype), mask
