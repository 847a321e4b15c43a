"""Shared ResNet pieces: the bottleneck block in both layouts, BN modes and parameter groups.

Two ResNet-101 layouts exist in the papers' code and their weights are *not* interchangeable even though
every tensor has the same name and shape:

- **Caffe layout** (DeepLab-v2 as in AdaptSegNet/ADVENT): the stride sits on the first 1×1 conv of a block.
- **torchvision layout** (DeepLab-v3+ as in CAG-UDA/BiSMAP): the stride sits on the 3×3 conv.

``Bottleneck(stride_on_1x1=...)`` builds either; module names (conv1/bn1/.../downsample.0/.1) match both
checkpoint families so state dicts load by name.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import torch
from torch import nn

BN_MODES = ("train", "frozen_affine", "frozen")


class Bottleneck(nn.Module):
    """ResNet bottleneck 1×1 → 3×3 (dilated) → 1×1 ×4, with an optional 1×1+BN projection shortcut."""

    expansion = 4

    def __init__(
        self,
        inplanes: int,
        planes: int,
        stride: int = 1,
        dilation: int = 1,
        downsample: nn.Module | None = None,
        stride_on_1x1: bool = False,
    ):
        super().__init__()
        s1, s3 = (stride, 1) if stride_on_1x1 else (1, stride)
        self.conv1 = nn.Conv2d(inplanes, planes, 1, stride=s1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride=s3, padding=dilation, dilation=dilation, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3 = nn.Conv2d(planes, planes * self.expansion, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(planes * self.expansion)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = downsample

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return self.relu(out + identity)


def make_layer(
    inplanes: int,
    planes: int,
    dilations: Sequence[int],
    stride: int = 1,
    stride_on_1x1: bool = False,
    force_downsample: bool = False,
) -> nn.Sequential:
    """One ResNet stage; ``dilations`` gives each block's dilation (its length is the block count).

    ``force_downsample`` adds the projection shortcut even when shapes would allow identity: the Caffe
    DeepLab-v2 layout has one on every stage's first block, so its checkpoints carry those keys.
    """
    out = planes * Bottleneck.expansion
    downsample = None
    if stride != 1 or inplanes != out or force_downsample:
        downsample = nn.Sequential(
            nn.Conv2d(inplanes, out, 1, stride=stride, bias=False), nn.BatchNorm2d(out)
        )
    blocks = [Bottleneck(inplanes, planes, stride, dilations[0], downsample, stride_on_1x1)]
    blocks += [Bottleneck(out, planes, 1, d, None, stride_on_1x1) for d in dilations[1:]]
    return nn.Sequential(*blocks)


def init_backbone(module: nn.Module) -> None:
    """He init for convs, unit γ / zero β for BN (a random start; real runs load an ImageNet init)."""
    for m in module.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)


def check_bn_mode(bn_mode: str, allowed: Iterable[str] = BN_MODES) -> str:
    allowed = tuple(allowed)
    if bn_mode not in allowed:
        raise ValueError(f"bn_mode={bn_mode!r}; valid: {allowed}")
    return bn_mode


def batchnorms(module: nn.Module) -> list[nn.modules.batchnorm._BatchNorm]:
    return [m for m in module.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]


class BNModeMixin:
    """Gives a segmenter the three BN behaviours the papers' codes differ on.

    - ``"train"``: ordinary BN (CAG/BiSMAP code).
    - ``"frozen_affine"``: γ/β have ``requires_grad=False`` but BN still normalises with batch statistics and
      updates its running stats in train mode — what AdaptSegNet/ADVENT actually do under "frozen BN".
    - ``"frozen"``: γ/β frozen *and* BN layers stay in eval mode (running stats) even after ``.train()`` —
      the truly frozen BN of CAG's paper.

    The subclass sets ``self.bn_mode`` and calls ``self._apply_bn_mode(modules)`` at the end of ``__init__``
    with the sub-modules whose BN the mode governs (``self._bn_scope``).
    """

    bn_mode: str = "train"
    _bn_scope: tuple[nn.Module, ...] = ()

    def _apply_bn_mode(self, *scope: nn.Module) -> None:
        self._bn_scope = scope
        frozen = self.bn_mode in ("frozen_affine", "frozen")
        for part in scope:
            for bn in batchnorms(part):
                for p in bn.parameters():
                    p.requires_grad_(not frozen)
        self.train(self.training)

    def train(self, mode: bool = True):
        super().train(mode)  # type: ignore[misc]
        if mode and self.bn_mode == "frozen":
            for part in self._bn_scope:
                for bn in batchnorms(part):
                    bn.eval()
        return self


def split_parameter_groups(backbone: Iterable[nn.Module], head: Iterable[nn.Module]) -> list[dict]:
    """The papers' two optimiser groups: backbone at 1× LR, classifier/ASPP/decoder at 10×.

    Only parameters with ``requires_grad`` are listed (so frozen BN γ/β are left out, as AdaptSegNet's
    ``get_1x_lr_params_NOscale`` does); empty groups are dropped because optimisers reject them.
    """
    groups = []
    for name, mult, modules in (("backbone", 1.0, backbone), ("head", 10.0, head)):
        params = [p for m in modules for p in m.parameters() if p.requires_grad]
        if params:
            groups.append({"params": params, "lr_mult": mult, "name": name})
    return groups
