"""bench.domain_probe: chance when the domains' features agree, near 100 % when one map carries the domain."""

import torch

from bench.domain_probe import domain_probe
from bench.models.output import SegOutput


class TwoMaps(torch.nn.Module):
    """'same' = a fixed random projection of the pixels (same law in both domains); 'shifted' adds the image's
    mean brightness, which the target's offset makes differ between domains."""

    def __init__(self):
        super().__init__()
        self.proj = torch.nn.Conv2d(3, 8, 1)

    def forward(self, x):
        same = self.proj(x - x.mean((2, 3), keepdim=True))  # per-image centring removes the domain offset
        shifted = self.proj(x)
        return SegOutput(logits=same[:, :2], aux=None, features={"same": same, "shifted": shifted})


def _domain(offset: float, seed: int) -> list[dict]:
    g = torch.Generator().manual_seed(seed)
    return [{"image": torch.randn(3, 8, 8, generator=g) + offset} for _ in range(16)]


def test_probe_is_at_chance_for_aligned_features_and_high_for_a_domain_offset():
    torch.manual_seed(0)
    acc = domain_probe(TwoMaps(), _domain(0.0, 1), _domain(1.5, 2), features=("same", "shifted"), images=16,
                       cells=20)
    assert 35 < acc["same"] < 65, acc
    assert acc["shifted"] > 90, acc


def test_probe_names_a_missing_map_and_too_few_images():
    import pytest

    with pytest.raises(ValueError, match="'layer9'"):
        domain_probe(TwoMaps(), _domain(0, 1), _domain(1, 2), features=("layer9",), images=8)
    with pytest.raises(ValueError, match="lower --images"):
        domain_probe(TwoMaps(), _domain(0, 1), _domain(1, 2), features=("same",), images=40)
