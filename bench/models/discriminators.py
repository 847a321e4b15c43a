"""Domain discriminators: AdaptSegNet's output-space D and CAG-UDA's feature-level warm-up D.

Both are five stride-2 convs ``in → 64 → 128 → 256 → 512 → 1`` without normalisation and return patch logits
(apply ``BCEWithLogits`` or, for LS-GAN, MSE). Neither upsamples; PixIntraDA's per-pixel D is the same net
with its output upsampled by the method.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

CHANNELS = (64, 128, 256, 512)


class OutputSpaceDiscriminator(nn.Module):
    """AdaptSegNet ``FCDiscriminator`` / ADVENT ``get_fc_discriminator``.

    4×4 convs, stride 2, padding 1; LeakyReLU(0.2) after the first four. Input: the (softmax or, for AdvEnt,
    self-information) map of ``in_channels`` classes; output ``[N,1,~H/32,~W/32]``.
    """

    def __init__(self, in_channels: int, channels: Sequence[int] = CHANNELS, negative_slope: float = 0.2):
        super().__init__()
        layers: list[nn.Module] = []
        cin = in_channels
        for c in channels:
            layers += [nn.Conv2d(cin, c, 4, stride=2, padding=1), nn.LeakyReLU(negative_slope, inplace=True)]
            cin = c
        layers.append(nn.Conv2d(cin, 1, 4, stride=2, padding=1))
        self.net = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class FeatureDiscriminator(nn.Module):
    """CAG-UDA's warm-up feature-level D (paper §4.2 "Implementation details"; no code was released).

    Five 3×3 convs, stride 2, padding 1, filters 64/128/256/512/1. The paper puts a **ReLU after the first
    three** convs and a **LeakyReLU(0.2) after the fourth**; ``all_leaky=True`` uses LeakyReLU(0.2)
    everywhere instead (the AdaptSegNet convention). Output ``[N,1,~H/32,~W/32]`` of the feature map.
    """

    def __init__(self, in_channels: int, channels: Sequence[int] = CHANNELS, all_leaky: bool = False,
                 negative_slope: float = 0.2):
        super().__init__()
        layers: list[nn.Module] = []
        cin = in_channels
        for i, c in enumerate(channels):
            leaky = all_leaky or i == len(channels) - 1
            act = nn.LeakyReLU(negative_slope, inplace=True) if leaky else nn.ReLU(inplace=True)
            layers += [nn.Conv2d(cin, c, 3, stride=2, padding=1), act]
            cin = c
        layers.append(nn.Conv2d(cin, 1, 3, stride=2, padding=1))
        self.net = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)
