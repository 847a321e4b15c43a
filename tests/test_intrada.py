"""The IntraDA baseline (methods/intrada.py): the entropy score and ranking on hand-worked cases, the AdvEnt input,
and its stage graph (Stage I shared with PixIntraDA is tested in test_pixintrada_pipeline.py)."""

from __future__ import annotations

import math

import pytest
import torch

from methods import intrada
from methods.adversarial import output_space_losses
from methods.base import provenance
from methods.pixintrada.config import InterConfig


def _pix(rows, h, w):
    """One probability vector per pixel, row-major over [h, w] → probs [1, C, h, w]."""
    return torch.tensor(rows, dtype=torch.float64).T.reshape(1, -1, h, w)


def test_weighted_self_information_hand_worked():
    # C = 2: p = (½, ½) → each channel −½·log2 ½ / log2 2 = ½; p = (1, 0) → 0 (the 1e-30 guard keeps 0·log 0 = 0)
    wsi = intrada.weighted_self_information(_pix([[0.5, 0.5], [1.0, 0.0]], 1, 2))
    assert wsi[0, :, 0, 0].tolist() == [0.5, 0.5] and wsi[0, :, 0, 1].abs().max() < 1e-25
    # C = 4 uniform: −¼·log2 ¼ / log2 4 = ¼ per channel, channels sum to the normalised entropy 1
    four = intrada.weighted_self_information(torch.full((1, 4, 1, 1), 0.25))
    assert four.flatten().tolist() == [0.25] * 4


def test_image_entropy_is_the_mean_over_channels_and_pixels():
    # image 0: pixels (½, ½) and (1, 0) → channel values ½, ½, 0, 0 → mean ¼
    # image 1: p = (¼, ¾) at both pixels: (−¼ log2 ¼ − ¾ log2 ¾)/2 per pixel summed over channels → mean ÷ 2
    a = _pix([[0.5, 0.5], [1.0, 0.0]], 1, 2)
    b = _pix([[0.25, 0.75], [0.25, 0.75]], 1, 2)
    h_b = -(0.25 * math.log2(0.25) + 0.75 * math.log2(0.75))
    assert intrada.image_entropy(torch.cat([a, b])).tolist() == pytest.approx([0.25, h_b / 2])


def test_entropy_ranking_hand_worked():
    scores = torch.tensor([0.3, 0.1, 0.2, 0.1, 0.5])
    # λ = 0.67: int(5 · 0.67) = int(3.35) = 3 easy = the three lowest; the two 0.1 ties keep their order
    assert intrada.entropy_ranking(scores, 0.67).tolist() == [False, True, True, True, False]
    assert intrada.entropy_ranking(scores, 0.2).tolist() == [False, True, False, False, False]  # int(1.0) = 1
    assert not intrada.entropy_ranking(scores, 0.0).any() and intrada.entropy_ranking(scores, 1.0).all()
    # ties: stable, so the earlier index is easy; int(3 · 0.34) = int(1.02) = 1
    assert intrada.entropy_ranking(torch.tensor([0.1, 0.1, 0.1]), 0.34).tolist() == [True, False, False]
    # float rounding as the code: int(3 · 0.67) = int(2.0100000000000002) = 2
    assert intrada.entropy_ranking(torch.tensor([3.0, 2.0, 1.0]), 0.67).tolist() == [False, True, True]
    for bad, match in [(torch.tensor([[0.1]]), "scores"), (torch.tensor([float("nan")]), "scores")]:
        with pytest.raises(ValueError, match=match):
            intrada.entropy_ranking(bad, 0.5)
    with pytest.raises(ValueError, match="easy_fraction"):
        intrada.entropy_ranking(scores, 1.5)


def test_rare_class_normaliser():
    # present: road 0, wall 3, fence 4 (and 3 again) → two rare classes → (11 − 2)/11 + 0.5
    assert intrada.rare_class_normaliser(torch.tensor([[0, 3], [4, 3]])) == pytest.approx(9 / 11 + 0.5)
    assert intrada.rare_class_normaliser(torch.tensor([[0, 1]])) == pytest.approx(1.5)


def test_advent_losses_feed_entropy_maps_and_upsample_d():
    """The intra stage's AdvEnt: D sees the weighted self-information of the upsampled softmax, its logits are
    upsampled to the input size (Table 4), easy = source label 0, hard = 1."""

    class Net(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = torch.nn.Conv2d(1, 2, 1)

        def forward(self, x):
            return type("Out", (), {"logits": self.conv(x)[..., ::2, ::2], "aux": None})()

    seen = []

    class D(torch.nn.Module):
        def forward(self, x):
            seen.append(x.detach())
            return torch.zeros(x.shape[0], 1, 1, 1) + 0 * x.sum()

    torch.manual_seed(0)
    g = Net()
    batch = {"easy": {"image": torch.randn(1, 1, 4, 4), "label": torch.zeros(1, 4, 4, dtype=torch.long)},
             "hard": {"image": torch.randn(1, 1, 4, 4), "label": torch.full((1, 4, 4), 255)}}
    out = output_space_losses(g, {"main": D()}, {"main": 0.5}, 0.0, source="easy", target="hard",
                              d_input=intrada.entropy_input, d_upsample=True)(batch, 0)
    expected = intrada.entropy_input(g(batch["hard"]["image"]).logits, (4, 4))
    assert seen[0].shape == (1, 2, 4, 4) and torch.allclose(seen[0], expected)
    # D = 0 logits everywhere: BCE = ln 2 for either label, after upsampling too
    assert out["segmenter"]["adv_main"].item() == pytest.approx(0.5 * math.log(2))
    assert out["discriminator"]["d_main"].item() == pytest.approx(math.log(2))


def test_stage_graph_and_lambda_endpoints():
    cfg = intrada.Config(model="small", model_options={})
    st = intrada.stages(cfg)
    assert [s.name for s in st] == ["gpa.source", "adaptsegnet.train", "intrada.rank", "intrada.train"]
    assert st[3].upstream == {"ranking": st[2]} and st[3].params["easy_fraction"] == 0.67
    assert (st[3].params["lr"], st[3].params["iters"], st[3].params["d_upsample"]) == (2.5e-4, 120_000, True)
    # λ = 0 is Table 5's Prop. = 0 column: no intra stage, G_inter is evaluated
    assert [s.name for s in intrada.stages(intrada.Config(easy_fraction=0.0))][-1] == "adaptsegnet.train"
    # λ only enters the train stage: the ranking (one pass of G_inter over the target) is shared
    other = intrada.stages(intrada.Config(model="small", model_options={}, easy_fraction=0.57))
    assert other[2].params == st[2].params and other[3].params != st[3].params
    assert intrada.stages(intrada.Config(intra_init="inter"))[-1].upstream["init"].name == "adaptsegnet.train"
    for key, value in [("easy_fraction", 1.2), ("intra_init", "coco")]:
        with pytest.raises(ValueError, match=key):
            intrada.stages(intrada.Config(**{key: value}))


def test_config_sources_and_the_stage_one_fields_it_shares():
    ledger = provenance(intrada.Config())
    assert all(src in ("paper", "code", "inferred", "harness") and (note or src != "code")
               for _, src, note in ledger.values())
    assert set(InterConfig.__dataclass_fields__) < set(ledger)  # Stage I is read from the same fields as PixIntraDA's
    assert ledger["easy_fraction"][:2] == (0.67, "paper") and ledger["normalize"][:2] == (False, "code")
