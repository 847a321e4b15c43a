"""The one output structure every segmentation model returns."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch


@dataclass
class SegOutput:
    """What a segmenter's forward returns.

    logits:   main classifier logits ``[N, C, h, w]`` at the network's output stride (not upsampled).
    aux:      auxiliary-head logits (e.g. DeepLab-v2's layer3 head) or ``None``.
    features: named feature maps the methods read (e.g. ``"layer4"``, ``"decoder"``); each model documents
              its names and strides in ``feature_strides``.
    """

    logits: torch.Tensor
    aux: torch.Tensor | None = None
    features: dict[str, torch.Tensor] = field(default_factory=dict)
