"""DeepLab-v3+ ResNet-101 as in CAG-UDA's and BiSMAP's code (torchvision-layout backbone).

- ``backbone``: torchvision ResNet-101 layout (stride on the 3×3 conv, max-pool without ``ceil_mode``); module
  names equal torchvision's, so ``resnet101`` ImageNet weights load as ``backbone.<key>``. Strides are
  replaced by dilation as in CAG's code: OS 16 → layer3 stride 2, layer4 stride 1 with base dilation 2 and
  multi-grid (1,2,4) (block dilations 2/4/8); OS 8 → layer3 stride 1 / dilation 2 in every block, layer4 base
  dilation 4 (4/8/16).
- ``aspp``: 1×1 + three 3×3 branches at rates 6/12/18 (12/24/36 at OS 8) + image pooling, each 256-d with
  BN+ReLU; concat → 1×1 256 + BN + ReLU → dropout (0.5 in CAG's code, none in BiSMAP's).
- ``decoder``: layer1 (stride 4) → 1×1 48 + BN + ReLU; ASPP output bilinearly upsampled (align_corners) and
  concatenated; 3×3 256 + BN + ReLU + dropout 0.5; 3×3 256 + BN + ReLU + dropout 0.1.
- ``classifier``: 1×1 (bias) → classes, at stride 4.

``features["decoder"]`` is the 256-d decoder output right before the classifier (post-ReLU, after the last
dropout, as CAG's anchors use it), stride 4. Input: RGB; torchvision's init expects ImageNet mean/std,
CAG's released checkpoints RGB/255 without mean or std (``normalization`` is the init's convention).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from bench.models.output import SegOutput
from bench.models.resnet import BNModeMixin, check_bn_mode, init_backbone, make_layer, split_parameter_groups


def conv_bn_relu(cin: int, cout: int, k: int = 1, dilation: int = 1) -> nn.Sequential:
    pad = dilation * (k // 2)
    return nn.Sequential(
        nn.Conv2d(cin, cout, k, padding=pad, dilation=dilation, bias=False),
        nn.BatchNorm2d(cout),
        nn.ReLU(inplace=True),
    )


class ResNetBackbone(nn.Module):
    """torchvision-layout ResNet (no ``avgpool``/``fc``) with dilation instead of stride at OS 16 or 8."""

    def __init__(self, layers: Sequence[int] = (3, 4, 23, 3), output_stride: int = 16,
                 multi_grid: Sequence[int] = (1, 2, 4)):
        super().__init__()
        if output_stride not in (8, 16):
            raise ValueError(f"output_stride={output_stride}; valid: 8, 16")
        if len(multi_grid) != layers[3]:
            raise ValueError(f"multi_grid {tuple(multi_grid)} needs one entry per layer4 block ({layers[3]})")
        self.conv1 = nn.Conv2d(3, 64, 7, stride=2, padding=3, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(3, stride=2, padding=1)
        s3, d3 = (2, 1) if output_stride == 16 else (1, 2)
        d4 = 2 * d3
        self.layer1 = make_layer(64, 64, [1] * layers[0])
        self.layer2 = make_layer(256, 128, [1] * layers[1], stride=2)
        self.layer3 = make_layer(512, 256, [d3] * layers[2], stride=s3)
        self.layer4 = make_layer(1024, 512, [d4 * g for g in multi_grid], stride=1)
        init_backbone(self)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """→ (layer1 output, stride 4; layer4 output, stride OS)."""
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        low = self.layer1(x)
        return low, self.layer4(self.layer3(self.layer2(low)))


class ASPP(nn.Module):
    """ASPP-v3: 1×1, three dilated 3×3, image pooling; concat → 1×1 projection (+ dropout)."""

    def __init__(self, in_channels: int, rates: Sequence[int], channels: int = 256, dropout: float = 0.5):
        super().__init__()
        branches = [conv_bn_relu(in_channels, channels, 1)]
        branches += [conv_bn_relu(in_channels, channels, 3, r) for r in rates]
        self.branches = nn.ModuleList(branches)
        self.pool = nn.Sequential(nn.AdaptiveAvgPool2d(1), conv_bn_relu(in_channels, channels, 1))
        self.project = conv_bn_relu(channels * (len(rates) + 2), channels, 1)
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pool_bn = self.pool[1][1]
        if pool_bn.training and x.shape[0] == 1:
            # BN over a 1×1 map with batch 1 has no statistics; torch's own error does not say why.
            raise ValueError("DeepLab-v3+ image pooling needs batch >= 2 in train mode; "
                             "use bn_mode='frozen' (BN in eval) for batch-1 training")
        outs = [b(x) for b in self.branches]
        outs.append(F.interpolate(self.pool(x), size=x.shape[-2:], mode="bilinear", align_corners=True))
        return self.dropout(self.project(torch.cat(outs, dim=1)))


class Decoder(nn.Module):
    """DeepLab-v3+ decoder: 48-d low-level projection, two 3×3 256 convs; returns the 256-d features."""

    def __init__(self, low_channels: int = 256, aspp_channels: int = 256, channels: int = 256,
                 dropout: Sequence[float] = (0.5, 0.1)):
        super().__init__()
        self.low = conv_bn_relu(low_channels, 48, 1)
        self.conv1 = conv_bn_relu(48 + aspp_channels, channels, 3)
        self.drop1 = nn.Dropout(dropout[0])
        self.conv2 = conv_bn_relu(channels, channels, 3)
        self.drop2 = nn.Dropout(dropout[1])

    def forward(self, low: torch.Tensor, high: torch.Tensor) -> torch.Tensor:
        low = self.low(low)
        high = F.interpolate(high, size=low.shape[-2:], mode="bilinear", align_corners=True)
        x = self.drop1(self.conv1(torch.cat([high, low], dim=1)))
        return self.drop2(self.conv2(x))


class DeepLabV3Plus(BNModeMixin, nn.Module):
    """DeepLab-v3+ ResNet-101, encoder output stride 16 (default) or 8; logits at stride 4.

    Args:
        num_classes: classifier outputs.
        output_stride: 16 (CAG/BiSMAP) or 8; ASPP rates are (6,12,18) × (16 / output_stride).
        bn_mode: ``"train"`` (default, the codes), ``"frozen"`` (the CAG paper) or ``"frozen_affine"``; it
            governs every BN in the network (backbone, ASPP, decoder).
        aspp_dropout: dropout after the ASPP projection (0.5 CAG code; 0 BiSMAP code).
        decoder_dropout: dropouts after the decoder's two 3×3 convs ((0.5, 0.1) CAG; (0, 0.1) BiSMAP).
        multi_grid: layer4 per-block dilation multipliers.
        layers: blocks per stage; ResNet-101 is ``(3, 4, 23, 3)``.

    ``forward(x)`` → ``SegOutput(logits [N,C,H/4,W/4], None, {"decoder": 256-d stride 4,
    "layer4": 2048-d stride OS})``. ``output_stride`` is the encoder's; ``logits_stride`` is 4.
    """

    logits_stride = 4
    normalization = "imagenet"

    def __init__(
        self,
        num_classes: int = 19,
        output_stride: int = 16,
        bn_mode: str = "train",
        aspp_dropout: float = 0.5,
        decoder_dropout: Sequence[float] = (0.5, 0.1),
        multi_grid: Sequence[int] = (1, 2, 4),
        layers: Sequence[int] = (3, 4, 23, 3),
    ):
        super().__init__()
        self.num_classes = num_classes
        self.bn_mode = check_bn_mode(bn_mode)
        self.output_stride = output_stride
        self.feature_strides = {"decoder": 4, "layer4": output_stride}
        self.backbone = ResNetBackbone(layers, output_stride, multi_grid)
        rates = [r * 16 // output_stride for r in (6, 12, 18)]
        self.aspp = ASPP(2048, rates, 256, aspp_dropout)
        self.decoder = Decoder(256, 256, 256, decoder_dropout)
        self.classifier = nn.Conv2d(256, num_classes, 1)
        init_backbone(self.aspp)
        init_backbone(self.decoder)
        self._apply_bn_mode(self)

    def backbone_modules(self) -> list[nn.Module]:
        return [self.backbone]

    def head_modules(self) -> list[nn.Module]:
        return [self.aspp, self.decoder, self.classifier]

    def forward(self, x: torch.Tensor) -> SegOutput:
        low, f4 = self.backbone(x)
        feat = self.decoder(low, self.aspp(f4))
        return SegOutput(logits=self.classifier(feat), features={"decoder": feat, "layer4": f4})

    def parameter_groups(self) -> list[dict]:
        """Backbone at 1×, ASPP + decoder + classifier at 10× (BiSMAP's ``head_10x_lr``)."""
        return split_parameter_groups(self.backbone_modules(), self.head_modules())
