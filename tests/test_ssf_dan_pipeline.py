"""SSF-DAN's stage: every Table 4 variant builds its losses; ρ follows Eq. 7; the stage reads its fields."""

import pytest
import torch

from bench.data.labels import IGNORE
from bench.models import build_model
from methods.base import make_config
from methods.ssf_dan import equations as ssf
from methods.ssf_dan import stages as pipe
from methods.ssf_dan.discriminator import SeparableDiscriminator

SMALL = {"model": "small", "model_options": {}, "feature_name": "layer4", "feature_channels": 80,
         "d_widths": [8, 8, 8, 4], "iters": 100, "horizon": None, "batch_size": 2, "aux_weight": 0.0}


def params(**kw):
    return pipe.stages(make_config(ssf.Config, {**SMALL, **kw}))[0].params


@pytest.mark.parametrize("ablation", sorted(ssf.SWITCHES))
def test_each_variant_builds_its_terms(ablation):
    torch.manual_seed(0)
    p = params(ablation=ablation)
    v = ssf.SWITCHES[ablation]
    model = build_model("small")
    disc = SeparableDiscriminator(19, 80, (8, 8, 8, 4)) if v.classwise else None
    gdisc = SeparableDiscriminator(1, 80, (8, 8, 8, 4)) if v.global_align else None
    batch = {"source": {"image": torch.randn(2, 3, 32, 64), "label": torch.randint(0, 19, (2, 32, 64))},
             "target_train": {"image": torch.randn(2, 3, 32, 64), "label": torch.full((2, 32, 64), IGNORE)}}
    out = pipe.ssf_losses(model, disc, gdisc, p)(batch, 50)
    want_seg = {"ce"} | ({"adv"} if v.classwise else set()) | ({"adv_global"} if v.global_align else set())
    assert set(out["segmenter"]) == want_seg
    if v.classwise or v.global_align:
        d_total = sum(out["discriminator"].values())
        grads = torch.autograd.grad(d_total, list(model.parameters()), allow_unused=True)
        assert all(g is None for g in grads)  # the discriminator step never reaches the segmenter
    for t in out["segmenter"].values():
        assert torch.isfinite(t)


def test_rho_schedule_per_variant():
    assert pipe.rho_at(params(ablation="ssd", rho_upper=0.8), 0) == ssf.kept_fraction(0, 100, 0.8)
    assert pipe.rho_at(params(ablation="ssd", rho_upper=0.8), 99) == ssf.kept_fraction(99, 100, 0.8)
    assert pipe.rho_at(params(ablation="fixed_rho", rho_upper=0.6), 3) == 0.6
    assert pipe.rho_at(params(ablation="ssd_dagger"), 3) == 1.0


def test_stage_reads_every_result_changing_field():
    a, b = params(), params(delta=0.002)
    assert a["delta"] == 0.001 and b["delta"] == 0.002
    assert "d_fast" not in a  # the fast path gives the same numbers: not part of the key
