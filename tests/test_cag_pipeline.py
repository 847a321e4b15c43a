"""CAG-UDA's stages wired as the paper's Algorithm 1, sharing the source-only stage; the code variant's pieces."""

import math

import pytest
import torch

from bench.models.output import SegOutput
from bench.stage_keys import plan_stages
from methods import source_only
from methods.base import closure, make_config
from methods.cag_uda import equations as cag_mod
from methods.cag_uda import stages as pipe
from methods.cag_uda.config import TABLES

DS = {d: {"spec": {}, "fingerprint": "x"} for d in ("source", "target_train", "target_val")}
SUPERVISED = {"model": "small", "model_options": {}, "iters": 10, "horizon": None, "batch_size": 2, "lr": 0.01,
              "aux_weight": 0.0}


def cag(**kw):
    return make_config(pipe.Config, {"model": "small", "feature_layer": "decoder", "pretrain": SUPERVISED, **kw})


def test_algorithm_1_order_and_links():
    st = pipe.stages(cag())
    names = [s.name for s in closure(st[-1])]
    assert names == ["source_only.train", "adversarial.feature_warmup"] + ["cag_uda.anchors", "cag_uda.label",
                                                                           "cag_uda.train"] * 3
    k1_anchor, k1_label, k1_train = st[2:5]
    assert k1_anchor.upstream["model"] is st[1] and k1_label.upstream == {"model": st[1], "anchors": k1_anchor}
    assert k1_train.upstream == {"init": st[1], "anchors": k1_anchor, "labels": k1_label}
    k2_anchor = st[5]
    assert k2_anchor.upstream["model"] is k1_train  # anchors recomputed with M_{k-1} at every stage
    assert st[-1].params["terms"] == list(cag_mod.TERMS) and st[-1].params["lambda1"] == 0.3


def test_source_only_stage_is_shared_with_the_source_only_method():
    so = source_only.train_stage(make_config(source_only.Config, SUPERVISED))
    a = plan_stages([so], 0, DS, {})[0].key
    b = plan_stages([pipe.stages(cag())[0]], 0, DS, {})[0].key
    assert a == b
    c = plan_stages([pipe.stages(cag(pretrain={**SUPERVISED, "lr": 0.02}))[0]], 0, DS, {})[0].key
    assert c != a


def test_ablation_rows_and_switches():
    no_warm = pipe.stages(cag(warmup=False))
    assert "adversarial.feature_warmup" not in [s.name for s in no_warm]
    row = pipe.stages(cag(**TABLES["t4"].variants()["t_ce"]))
    assert [s.name for s in row][-1] == "cag_uda.train" and row[-1].params["terms"] == ["ce_s", "ce_t"]
    assert len([s for s in row if s.name == "cag_uda.train"]) == 1
    # Δd is read by the label stages only: the anchors keep their keys, labels and training do not.
    k_a = {p.name: p.key for p in plan_stages(pipe.stages(cag(num_stages=1)), 0, DS, {})}
    k_b = {p.name: p.key for p in plan_stages(pipe.stages(cag(num_stages=1, delta_d=1.0)), 0, DS, {})}
    assert k_a["cag_uda.anchors"] == k_b["cag_uda.anchors"] and k_a["cag_uda.label"] != k_b["cag_uda.label"]


def test_code_variant_wiring():
    """variant=code: one anchor stage (code rule) from the warm-up model for all stages, online labels (the label
    stage is a diagnostic upstream, not the training labels), the code's weights and one lr for all params."""
    st = pipe.stages(cag(variant="code", model_code="small", feature_layer_code="decoder"))
    names = [s.name for s in closure(st[-1])]
    assert names.count("cag_uda.anchors_code") == 1 and "cag_uda.anchors" not in names
    trains = [s for s in st if s.name == "cag_uda.train"]
    assert len(trains) == 3 and len({id(t.upstream["anchors"]) for t in trains}) == 1
    assert trains[0].upstream["anchors"].upstream["model"].name == "adversarial.feature_warmup"
    p = trains[-1].params
    assert p["online"] and p["tie_inclusive"] and "labels" not in trains[-1].upstream
    assert (p["lambda1"], p["lambda2"], p["head_lr_mult"], p["lr"], p["weight_decay"]) == (0.7, 0.5, 1.0, 1e-4, 2e-4)
    assert p["iters"] == 90_000 and p["crop"] == [896, 512] and p["dis_clamp"] == 5.0
    paper = pipe.stages(cag())[-1].params
    assert not paper["online"] and paper["head_lr_mult"] == 1.0 and not paper["tie_inclusive"]


class _Fixed(torch.nn.Module):
    """A stand-in network whose outputs are given: 1-d features and 2-class logits on a 1×2 grid."""

    def __init__(self, feats, logits):
        super().__init__()
        self.feats, self.logits = torch.tensor(feats), torch.tensor(logits)

    def forward(self, x):
        n = x.shape[0]
        return SegOutput(logits=self.logits.expand(n, -1, -1, -1), aux=None,
                         features={"f": self.feats.expand(n, -1, -1, -1)})


CODE_P = {"feature": "f", "delta_d": 1.0, "p0": 0.9, "tie_inclusive": True, "terms": ["ce_s", "ce_t", "ce_tp"],
          "dis_labels": "anchor", "lambda1": 0.7, "lambda2": 0.5, "dis_min_pixels": 1, "dis_clamp": 5.0,
          "dis_scale": 10.0, "dis_grad_rescale": True}


def test_code_online_labels_hand_case():
    """Anchors at 0 and 3 (1-d). Pixel 1 at f = 1: distances 1 and 2, margin exactly Δd = 1 → kept by the code's
    rule (class 0); pixel 2 at f = 2.5: margin 2 → class 1. Probabilities: softmax([ln 9, 0]) = 0.9 is not > P0 = 0.9
    → 255; softmax([0, ln 19]) = 0.95 → class 1."""
    labeller = _Fixed([[[[1.0, 2.5]]]], [[[[math.log(9), 0.0]], [[0.0, math.log(19)]]]])
    anchors = torch.tensor([[0.0], [3.0]])
    pa, pp = pipe.online_pseudo_labels(labeller, torch.zeros(2, 3, 4, 8), CODE_P, anchors)
    assert pa.tolist() == [[[0, 1]]] * 2 and pp.tolist() == [[[255, 1]]] * 2
    strict, _ = pipe.online_pseudo_labels(labeller, torch.zeros(1, 3, 4, 8), {**CODE_P, "tie_inclusive": False},
                                          anchors)
    assert strict.tolist() == [[[255, 1]]]


def test_code_losses_hand_case():
    """Target CE on the feature grid, no upsampling: the model's logits [0, 0] / [0, ln 3] at the two cells.
    CE_t over labels (0, 1) = (ln 2 + ln(4/3)) / 2; CE_tP over (255, 1) = ln(4/3); weights 0.5 each."""
    labeller = _Fixed([[[[1.0, 2.5]]]], [[[[math.log(9), 0.0]], [[0.0, math.log(19)]]]])
    model = _Fixed([[[[0.0, 0.0]]]], [[[[0.0, 0.0]], [[0.0, math.log(3)]]]])
    fn = pipe.code_losses(model, labeller, CODE_P, torch.tensor([[0.0], [3.0]]))
    batch = {"source": {"image": torch.zeros(1, 3, 4, 8), "label": torch.full((1, 4, 8), 255)},
             "target_train": {"image": torch.zeros(1, 3, 4, 8)}}
    out = fn(batch, 0)["segmenter"]
    assert out["ce_t"].item() == pytest.approx(0.5 * (math.log(2) + math.log(4 / 3)) / 2, rel=1e-6)
    assert out["ce_tp"].item() == pytest.approx(0.5 * math.log(4 / 3), rel=1e-6)
    assert out["ce_s"].item() == 0.0  # every source pixel ignored
