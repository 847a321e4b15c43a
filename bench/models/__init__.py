"""Segmentation models, discriminators and weight import.

Every segmenter's ``forward(x)`` returns a ``SegOutput`` and exposes ``parameter_groups()`` (backbone 1×,
head 10× learning rate), ``output_stride`` (the encoder's), ``logits_stride``, ``feature_strides`` (stride of
each entry of ``SegOutput.features``) and ``normalization`` (the input convention of its init).

=====================  ==========================================================================
``deeplabv2_r101``     DeepLab-v2 R101, Caffe layout (AdaptSegNet/ADVENT/SSF-DAN/PixIntraDA)
``deeplabv3plus_r101`` DeepLab-v3+ R101, torchvision layout (CAG-UDA/BiSMAP code)
``small``              narrow dilated ResNet-18-like net for MiniCity on a CPU
=====================  ==========================================================================
"""

from __future__ import annotations

import inspect
import os

from torch import nn

from bench.models.deeplab_v2 import ClassifierModule, DeepLabV2
from bench.models.deeplab_v3plus import DeepLabV3Plus
from bench.models.discriminators import FeatureDiscriminator, OutputSpaceDiscriminator
from bench.models.output import SegOutput
from bench.models.small import SmallSeg
from bench.models.weights import FORMATS, InitReport, load_init, warn_random_init

MODELS: dict[str, type[nn.Module]] = {
    "deeplabv2_r101": DeepLabV2,
    "deeplabv3plus_r101": DeepLabV3Plus,
    "small": SmallSeg,
}
DISCRIMINATORS: dict[str, type[nn.Module]] = {
    "output_space": OutputSpaceDiscriminator,
    "feature": FeatureDiscriminator,
}
DEFAULT_INIT_FORMAT = {
    "deeplabv2_r101": "caffe_deeplab",
    "deeplabv3plus_r101": "torchvision",
    "small": "native",
}
_PAPER_MODELS = ("deeplabv2_r101", "deeplabv3plus_r101")

__all__ = [
    "DISCRIMINATORS", "FORMATS", "MODELS", "ClassifierModule", "DeepLabV2", "DeepLabV3Plus",
    "FeatureDiscriminator", "InitReport", "OutputSpaceDiscriminator", "SegOutput", "SmallSeg",
    "build_discriminator", "build_model", "load_init", "warn_random_init",
]


def _check_options(cls: type, options: dict, what: str) -> None:
    valid = [p for p in inspect.signature(cls.__init__).parameters if p != "self"]
    unknown = sorted(set(options) - set(valid))
    if unknown:
        raise ValueError(f"{what}: unknown option(s) {unknown}; valid: {valid}")


def build_model(
    name: str,
    num_classes: int = 19,
    init_weights: str | os.PathLike | None = None,
    init_format: str | None = None,
    **options,
) -> nn.Module:
    """Build a segmenter by name, optionally loading a local init (see ``bench.models.weights``).

    ``init_format`` defaults to the model's usual init (``caffe_deeplab`` for DeepLab-v2, ``torchvision`` for
    v3+, ``native`` for ``small``). Without ``init_weights`` the R101 models warn that results will not match
    the papers. The ``InitReport`` (or ``None``) is kept as ``model.init_report``.
    """
    if name not in MODELS:
        raise ValueError(f"unknown model {name!r}; valid: {sorted(MODELS)}")
    cls = MODELS[name]
    _check_options(cls, options, f"model {name!r}")
    model = cls(num_classes=num_classes, **options)
    report = None
    if init_weights is not None:
        report = load_init(model, init_weights, init_format or DEFAULT_INIT_FORMAT[name])
    elif name in _PAPER_MODELS:
        warn_random_init(name)
    model.init_report = report
    return model


def build_discriminator(name: str, in_channels: int, **kw) -> nn.Module:
    """``"output_space"`` (AdaptSegNet, 4×4 convs) or ``"feature"`` (CAG-UDA warm-up, 3×3 convs)."""
    if name not in DISCRIMINATORS:
        raise ValueError(f"unknown discriminator {name!r}; valid: {sorted(DISCRIMINATORS)}")
    cls = DISCRIMINATORS[name]
    _check_options(cls, kw, f"discriminator {name!r}")
    return cls(in_channels, **kw)
