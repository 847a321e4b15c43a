"""A small dilated ResNet segmenter for MiniCity on a CPU, with the same interface as the R101 models.

Layout (``widths=(16, 32, 48, 80)``): 3×3/2 stem → four stages of basic residual blocks at strides
4, 8, 8, 8 (stages 3 and 4 dilated 2 and 4 instead of strided, like DeepLab) → output stride 8. A light
context head (1×1, two dilated 3×3 branches and image pooling, summed after a shared projection) sits on
layer4; a DeepLab-v3+-style decoder fuses it with layer1 at stride 4 and the classifier runs there.
``features``: ``"layer4"`` (stride 8, ``widths[3]``-d) and ``"decoder"`` (stride 4, ``decoder_channels``-d);
``aux=True`` adds a 1×1 classifier on layer3 (stride 8). Train with ImageNet-normalised RGB (no init exists;
any consistent normalisation works).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from bench.models.output import SegOutput
from bench.models.resnet import BNModeMixin, check_bn_mode, init_backbone, split_parameter_groups


def cbr(cin: int, cout: int, k: int = 3, stride: int = 1, dilation: int = 1) -> nn.Sequential:
    pad = dilation * (k // 2)
    return nn.Sequential(
        nn.Conv2d(cin, cout, k, stride=stride, padding=pad, dilation=dilation, bias=False),
        nn.BatchNorm2d(cout),
        nn.ReLU(inplace=True),
    )


def _bn_to_gn(module: nn.Module, groups: int = 8) -> None:
    """Replace every BatchNorm2d under ``module`` by a GroupNorm over the same channels (per-image statistics)."""
    for name, child in module.named_children():
        if isinstance(child, nn.BatchNorm2d):
            setattr(module, name, nn.GroupNorm(groups, child.num_features))
        else:
            _bn_to_gn(child, groups)


class BasicBlock(nn.Module):
    """ResNet-18 basic block (two 3×3 convs) with dilation; 1×1 projection when the shape changes."""

    def __init__(self, cin: int, cout: int, stride: int = 1, dilation: int = 1):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride=stride, padding=dilation, dilation=dilation, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, padding=dilation, dilation=dilation, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = None
        if stride != 1 or cin != cout:
            self.downsample = nn.Sequential(
                nn.Conv2d(cin, cout, 1, stride=stride, bias=False), nn.BatchNorm2d(cout)
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        return self.relu(self.bn2(self.conv2(out)) + identity)


def stage(cin: int, cout: int, blocks: int, stride: int, dilation: int) -> nn.Sequential:
    return nn.Sequential(*[BasicBlock(cin if i == 0 else cout, cout, stride if i == 0 else 1, dilation)
                           for i in range(blocks)])


class ContextHead(nn.Module):
    """Light ASPP: 1×1, 3×3 at two dilations and image pooling, each ``channels``-d, summed, then BN+ReLU."""

    def __init__(self, cin: int, channels: int, rates: Sequence[int] = (2, 4)):
        super().__init__()
        self.reduce = cbr(cin, channels, 1)
        self.branches = nn.ModuleList(
            nn.Conv2d(channels, channels, 3, padding=r, dilation=r, bias=False) for r in rates
        )
        self.pool = nn.Conv2d(channels, channels, 1, bias=False)
        self.bn = nn.BatchNorm2d(channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.reduce(x)
        # Summing (not concatenating) keeps the head cheap; pooled context is broadcast over the map.
        out = x + self.pool(x.mean(dim=(2, 3), keepdim=True))
        for conv in self.branches:
            out = out + conv(x)
        return F.relu(self.bn(out), inplace=True)


class SmallSeg(BNModeMixin, nn.Module):
    """Narrow dilated ResNet-18-like segmenter, output stride 8, logits at stride 4.

    Args:
        num_classes: classifier outputs.
        widths: channels of the four stages (the stem has ``widths[0]``).
        blocks: basic blocks per stage.
        head_channels / decoder_channels: width of the context head and of the decoder.
        aux: add a 1×1 classifier on layer3 → ``SegOutput.aux``.
        bn_mode: ``"train"`` (default), ``"frozen_affine"`` or ``"frozen"`` (see ``BNModeMixin``).
        channels_last: keep weights and activations in NHWC inside the network, which oneDNN runs ~15%
            faster on a CPU; the returned tensors are ordinary contiguous NCHW either way.
        bn_scope: ``"all"`` (default) or ``"backbone"``: the BN layers ``bn_mode`` governs. MiniCity freezes
            only the backbone's (the pretraining's statistics, as DeepLab-v2 keeps ImageNet's); its head has no
            pretrained statistics, and without normalisation it diverged at the 10× head lr.
        head_norm: ``"bn"`` (default) or ``"gn"``: GroupNorm (8 groups) instead of BN in the context head and
            decoder. Per-image statistics treat a source and a target batch alike, so a batch of target images
            cannot re-normalise the head towards the target (the AdaBN effect every train-mode BN has).
    """

    output_stride = 8
    logits_stride = 4
    feature_strides = {"layer4": 8, "decoder": 4}
    normalization = "imagenet"

    def __init__(
        self,
        num_classes: int = 19,
        widths: Sequence[int] = (16, 32, 48, 80),
        blocks: Sequence[int] = (1, 1, 1, 1),
        head_channels: int = 40,
        decoder_channels: int = 32,
        aux: bool = False,
        bn_mode: str = "train",
        channels_last: bool = True,
        bn_scope: str = "all",
        head_norm: str = "bn",
    ):
        super().__init__()
        self.num_classes = num_classes
        self.bn_mode = check_bn_mode(bn_mode)
        if bn_scope not in ("all", "backbone"):  # checked before any layer is built
            raise ValueError(f"bn_scope={bn_scope!r}; valid: 'all', 'backbone'")
        if head_norm not in ("bn", "gn"):
            raise ValueError(f"head_norm={head_norm!r}; valid: 'bn', 'gn'")
        w1, w2, w3, w4 = widths
        self.stem = cbr(3, w1, 3, stride=2)
        self.layer1 = stage(w1, w1, blocks[0], stride=2, dilation=1)
        self.layer2 = stage(w1, w2, blocks[1], stride=2, dilation=1)
        self.layer3 = stage(w2, w3, blocks[2], stride=1, dilation=2)
        self.layer4 = stage(w3, w4, blocks[3], stride=1, dilation=4)
        self.context = ContextHead(w4, head_channels)
        self.low = cbr(w1, 16, 1)
        # 1×1 then 3×3: cheaper than one 3×3 over the concatenation at stride 4.
        self.fuse = nn.Sequential(
            cbr(head_channels + 16, decoder_channels, 1), cbr(decoder_channels, decoder_channels, 3)
        )
        self.classifier = nn.Conv2d(decoder_channels, num_classes, 1)
        self.aux_classifier = nn.Conv2d(w3, num_classes, 1) if aux else None
        if head_norm == "gn":
            for part in (self.context, self.low, self.fuse):
                _bn_to_gn(part)
        init_backbone(self)
        self._apply_bn_mode(*(self.backbone_modules() if bn_scope == "backbone" else (self,)))
        self.channels_last = channels_last
        if channels_last:
            self.to(memory_format=torch.channels_last)

    def backbone_modules(self) -> list[nn.Module]:
        return [self.stem, self.layer1, self.layer2, self.layer3, self.layer4]

    def head_modules(self) -> list[nn.Module]:
        mods = [self.context, self.low, self.fuse, self.classifier]
        return mods + ([self.aux_classifier] if self.aux_classifier is not None else [])

    def forward(self, x: torch.Tensor) -> SegOutput:
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        low = self.layer1(self.stem(x))
        f3 = self.layer3(self.layer2(low))
        f4 = self.layer4(f3)
        ctx = self.context(f4)
        low = self.low(low)
        ctx = F.interpolate(ctx, size=low.shape[-2:], mode="bilinear", align_corners=False)
        feat = self.fuse(torch.cat([ctx, low], dim=1))
        aux = self.aux_classifier(f3).contiguous() if self.aux_classifier is not None else None
        # Outputs go back to plain NCHW so callers may .view() them like any other model's.
        return SegOutput(
            logits=self.classifier(feat).contiguous(),
            aux=aux,
            features={"layer4": f4.contiguous(), "decoder": feat.contiguous()},
        )

    def parameter_groups(self) -> list[dict]:
        """Backbone (stem, layer1–4) at 1×, context head + decoder + classifiers at 10×."""
        return split_parameter_groups(self.backbone_modules(), self.head_modules())
