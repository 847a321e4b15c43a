"""CAG-UDA's stages wired as the paper's Algorithm 1, sharing the source-only stage."""

import pytest

from bench.pipeline import plan_stages
from methods import cag_uda as cag_mod
from methods import cag_uda_pipeline as pipe
from methods import source_only
from methods.base import closure, make_config

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
    no_warm = pipe.stages(cag(**cag_mod.ABLATIONS["no warm-up"]))
    assert "adversarial.feature_warmup" not in [s.name for s in no_warm]
    row = pipe.stages(cag(**cag_mod.ABLATIONS["+L^t_CE"]))
    assert [s.name for s in row][-1] == "cag_uda.train" and row[-1].params["terms"] == ["ce_s", "ce_t"]
    assert len([s for s in row if s.name == "cag_uda.train"]) == 1
    # Δd is read by the label stages only: the anchors keep their keys, labels and training do not.
    k_a = {p.name: p.key for p in plan_stages(pipe.stages(cag(num_stages=1)), 0, DS, {})}
    k_b = {p.name: p.key for p in plan_stages(pipe.stages(cag(num_stages=1, delta_d=1.0)), 0, DS, {})}
    assert k_a["cag_uda.anchors"] == k_b["cag_uda.anchors"] and k_a["cag_uda.label"] != k_b["cag_uda.label"]
    with pytest.raises(NotImplementedError, match="variant='code'"):
        pipe.stages(cag(variant="code"))
