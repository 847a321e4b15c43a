"""DeepLab-v2 ResNet-101 in the Caffe layout used by AdaptSegNet, ADVENT, SSF-DAN and PixIntraDA.

Structure and module names follow AdaptSegNet's ``DeeplabMulti`` (``model/deeplab_multi.py``) so that the
Caffe-converted init and released checkpoints load by name:

- ``conv1``/``bn1``/``layer1``..``layer4``: ResNet-101 with the stride on each block's first 1×1 conv, a
  ``ceil_mode=True`` max-pool, layer3/4 at stride 1 with dilation 2/4 → output stride 8 (no multi-grid).
- ``layer6``: the main ASPP-v2 classifier on layer4 (2048-d); ``layer5``: the optional auxiliary classifier
  on layer3 (1024-d). Both are ``ClassifierModule``s with a ``conv2d_list``. (AdaptSegNet's single-level
  ``deeplab.py`` calls its main head ``layer5``; the multi-level naming is used here because the released
  DeeplabMulti/SSF-DAN checkpoints and ADVENT use it. The Caffe init's ``layer5`` is a 21-class COCO head and
  is never loaded — see ``bench.models.weights``.)

Input convention of the Caffe init: **BGR**, 0–255, minus the Caffe mean, no std division
(``bench.data.transforms.normalize(..., "caffe")``); ``DeepLabV2.normalization`` names it.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from bench.models.output import SegOutput
from bench.models.resnet import BNModeMixin, check_bn_mode, init_backbone, make_layer, split_parameter_groups

ASPP_V2_DILATIONS = (6, 12, 18, 24)


class ClassifierModule(nn.Module):
    """ASPP-v2: parallel 3×3 convs (bias) at dilations 6/12/18/24 whose outputs are **summed**.

    No BN, ReLU or projection. ``two_branch=True`` reproduces AdaptSegNet's bug (``return`` inside the loop):
    only the first two branches (dilations 6 and 12) contribute; branches 18/24 still exist (their weights are
    in the checkpoint and the optimiser, where they only see weight decay).
    """

    def __init__(self, in_channels: int, num_classes: int, dilations: Sequence[int] = ASPP_V2_DILATIONS,
                 two_branch: bool = False):
        super().__init__()
        self.two_branch = two_branch
        self.conv2d_list = nn.ModuleList(
            nn.Conv2d(in_channels, num_classes, 3, padding=d, dilation=d, bias=True) for d in dilations
        )
        for conv in self.conv2d_list:
            nn.init.normal_(conv.weight, 0.0, 0.01)  # as in DeepLab/AdaptSegNet; biases keep torch's default

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        branches = self.conv2d_list[:2] if self.two_branch else self.conv2d_list
        out = branches[0](x)
        for conv in branches[1:]:
            out = out + conv(x)
        return out


class DeepLabV2(BNModeMixin, nn.Module):
    """DeepLab-v2 ResNet-101 (Caffe layout), output stride 8.

    Args:
        num_classes: classifier outputs.
        aux: add the layer3 auxiliary head (``layer5``) → ``SegOutput.aux``.
        aspp_two_branch: reproduce AdaptSegNet's/SSF-DAN's 2-branch ASPP bug (dilations 6 and 12 only).
        bn_mode: ``"frozen_affine"`` (default, what AdaptSegNet/ADVENT do), ``"frozen"`` or ``"train"``; see
            ``BNModeMixin``. It governs the backbone's BN (the heads have none).
        layers: blocks per stage; ResNet-101 is ``(3, 4, 23, 3)`` (smaller values only for quick tests).

    ``forward(x)`` returns ``SegOutput(logits [N,C,⌈H/8⌉,⌈W/8⌉], aux, {"layer3": 1024-d, "layer4": 2048-d})``.
    """

    output_stride = 8
    logits_stride = 8
    feature_strides = {"layer3": 8, "layer4": 8}
    normalization = "caffe"

    def __init__(
        self,
        num_classes: int = 19,
        aux: bool = False,
        aspp_two_branch: bool = False,
        bn_mode: str = "frozen_affine",
        layers: Sequence[int] = (3, 4, 23, 3),
    ):
        super().__init__()
        self.num_classes = num_classes
        self.bn_mode = check_bn_mode(bn_mode)
        self.aspp_two_branch = aspp_two_branch
        self.conv1 = nn.Conv2d(3, 64, 7, stride=2, padding=3, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(3, stride=2, padding=1, ceil_mode=True)
        # Caffe layout: stride on the 1×1, every stage starts with a projection shortcut.
        stage = dict(stride_on_1x1=True, force_downsample=True)
        self.layer1 = make_layer(64, 64, [1] * layers[0], stride=1, **stage)
        self.layer2 = make_layer(256, 128, [1] * layers[1], stride=2, **stage)
        self.layer3 = make_layer(512, 256, [2] * layers[2], stride=1, **stage)
        self.layer4 = make_layer(1024, 512, [4] * layers[3], stride=1, **stage)
        init_backbone(self)
        self.layer5 = ClassifierModule(1024, num_classes, two_branch=aspp_two_branch) if aux else None
        self.layer6 = ClassifierModule(2048, num_classes, two_branch=aspp_two_branch)
        self._apply_bn_mode(*self.backbone_modules())

    def backbone_modules(self) -> list[nn.Module]:
        return [self.conv1, self.bn1, self.layer1, self.layer2, self.layer3, self.layer4]

    def head_modules(self) -> list[nn.Module]:
        return [m for m in (self.layer5, self.layer6) if m is not None]

    @property
    def classifier(self) -> ClassifierModule:
        """The main head (``layer6``)."""
        return self.layer6

    def forward(self, x: torch.Tensor) -> SegOutput:
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        x = self.layer2(self.layer1(x))
        f3 = self.layer3(x)
        f4 = self.layer4(f3)
        aux = self.layer5(f3) if self.layer5 is not None else None
        return SegOutput(logits=self.layer6(f4), aux=aux, features={"layer3": f3, "layer4": f4})

    def parameter_groups(self) -> list[dict]:
        """Backbone (1×; frozen BN γ/β excluded) and ``layer5``/``layer6`` (10×), as AdaptSegNet/ADVENT."""
        return split_parameter_groups(self.backbone_modules(), self.head_modules())
