"""Evaluation protocols: how a model and one image become a full-resolution prediction.

- ``A``  input resized to 1024×512 (bilinear on the normalised tensor), logits upsampled bilinearly
         (align_corners=True, as AdaptSegNet's and ADVENT's evaluation scripts) to the label size.
         AdaptSegNet/ADVENT/SSF-DAN.
- ``B``  full-resolution input; logits upsampled to the label size. CAG-UDA/BiSMAP.
- ``ms`` multi-scale + horizontal flip: softmax probabilities averaged over scales and flips.
The protocol name and its settings are recorded next to every number.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F

PROTOCOLS = ("A", "B", "ms")


def _logits(model, x: torch.Tensor) -> torch.Tensor:
    out = model(x)
    return out.logits if hasattr(out, "logits") else out


def _upsample(t: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    return t if t.shape[-2:] == size else F.interpolate(t, size=size, mode="bilinear", align_corners=True)


@torch.no_grad()
def predict_a(model, image: torch.Tensor, label_size: tuple[int, int], input_size=(1024, 512)) -> torch.Tensor:
    """Protocol A. ``image [N,3,H,W]`` normalised; ``input_size`` is (width, height); → logits at label size."""
    x = F.interpolate(image, size=(input_size[1], input_size[0]), mode="bilinear", align_corners=False)
    return _upsample(_logits(model, x).float(), label_size)


@torch.no_grad()
def predict_b(model, image: torch.Tensor, label_size: tuple[int, int]) -> torch.Tensor:
    """Protocol B: full-resolution input, logits upsampled to the label size."""
    return _upsample(_logits(model, image).float(), label_size)


@torch.no_grad()
def predict_ms(model, image: torch.Tensor, label_size: tuple[int, int],
               scales: Sequence[float] = (0.5, 0.75, 1.0, 1.25, 1.5), flip: bool = True) -> torch.Tensor:
    """Multi-scale + flip: mean of softmax probabilities at label size (returned as log-probabilities)."""
    h, w = image.shape[-2:]
    acc = None
    for s in scales:
        x = F.interpolate(image, size=(round(h * s), round(w * s)), mode="bilinear", align_corners=False)
        for flipped in (False, True) if flip else (False,):
            xi = x.flip(-1) if flipped else x
            p = _upsample(_logits(model, xi).float(), label_size).softmax(1)
            p = p.flip(-1) if flipped else p
            acc = p if acc is None else acc + p
    return (acc / (len(scales) * (2 if flip else 1))).log()


def get_protocol(name: str, **settings) -> Callable:
    """The predict function for a protocol name, with its settings bound."""
    if name == "A":
        return lambda m, x, size: predict_a(m, x, size, **settings)
    if name == "B":
        return lambda m, x, size: predict_b(m, x, size)
    if name == "ms":
        return lambda m, x, size: predict_ms(m, x, size, **settings)
    raise KeyError(f"unknown evaluation protocol {name!r}; valid: {PROTOCOLS}")
