"""BiSMAP's stages: order and links, sharing across the Table 3-5 variants, the source-only key untouched, the
EMA teacher and the augmentations on hand cases, and one end-to-end run on a tiny MiniCity."""

import math

import pytest
import torch
from fixtures import tiny_minicity_suite, write_suite

from bench.data.labels import IGNORE
from bench.stage_keys import plan_stages
from bench.suite_runner import run_suite
from methods import source_only
from methods.base import closure, make_config
from methods.bismap import augment as aug
from methods.bismap import stages as pipe
from methods.bismap import train as bt
from methods.bismap.config import STUDIES, TABLES

DS = {d: {"spec": {}, "fingerprint": "x"} for d in ("source", "target_train", "target_val")}
SMALL = {"model": "small", "model_options": {}, "gmm_feature": "decoder"}


pytestmark = pytest.mark.usefixtures("one_torch_thread")


TABLE3, TABLE4 = ({label: over for label, over in TABLES[t].rows.values()} for t in ("t3", "t4"))
TABLE5 = {f"{name} {v:g}": {**STUDIES[name].fixed, STUDIES[name].param: v}  # the Table 5 studies' points
          for name in ("bismap_delta", "bismap_cas_delta_d") for v in STUDIES[name].values}


def cfg(**kw):
    return make_config(pipe.Config, {**SMALL, **kw})


def keys(c):
    return {p.stage.name + ":" + ",".join(sorted(p.stage.upstream)): p.key for p in plan_stages(pipe.stages(c), 0,
                                                                                               DS, {})}


def test_stage_order_and_links():
    st = pipe.stages(cfg())
    names = [s.name for s in closure(st[-1])]
    assert names == ["gpa.source", "bismap.warmup", "bismap.maps", "bismap.label", "bismap.stm",
                     "bismap.self_train", "bismap.distill_label", "bismap.distill"]
    by = {s.name: s for s in st}
    gpa, warm, label, stm, st_ = by["gpa.source"], by["bismap.warmup"], by["bismap.label"], by["bismap.stm"], \
        by["bismap.self_train"]
    assert warm.upstream == {"source_tree": gpa} and warm.params["lr"] == 5e-4 and warm.params["batch_source"] == 8
    # W has the self-training's augmentation and head lr (paper ×0.5–1.5, 896×512, jitter; one lr)
    assert warm.params["crop"] == [896, 512] and warm.params["scale_range"] == [0.5, 1.5]
    assert warm.params["jitter_source"] == st_.params["jitter_source"] and warm.params["head_lr_mult"] == 1.0
    assert by["bismap.maps"].upstream == {"model": warm, "source_tree": gpa}
    assert label.upstream == {"model": warm, "maps": by["bismap.maps"]} and label.params["pla"] == "maps"
    assert stm.upstream == {"warmup": warm, "labels": label, "source_tree": gpa}
    assert st_.upstream == {"source_tree": gpa, "labels": label, "stm": stm}  # from ImageNet: no "init"
    assert st_.params["consistency"] and st_.params["consistency_weight"] == 20.0
    d = st[-1]
    assert d.upstream["teacher"] is st_ and d.upstream["labels"] is by["bismap.distill_label"]
    assert d.params["kd"] == "paper" and not d.params["consistency"] and "consistency_weight" not in d.params
    assert len([s for s in pipe.stages(cfg(distill_rounds=2)) if s.name == "bismap.distill"]) == 2
    assert d.params["init"] == "imagenet" and d.params["student_weights"] is None  # no SimCLRv2 file given
    warm_start = pipe.stages(cfg(st_init="warmup", distill_student_init="warmup"))
    assert warm_start[-1].upstream["init"] is warm_start[1] and warm_start[-3].upstream["init"] is warm_start[1]
    assert warm_start[-3].name == "bismap.self_train" and warm_start[-3].params["init"] == "warmup"


def test_source_only_key_unchanged_and_warmup_differs():
    plain = make_config(source_only.Config, {"model": "small", "model_options": {}, "iters": 10, "horizon": None,
                                             "batch_size": 2, "lr": 0.01, "aux_weight": 0.0})
    s = source_only.train_stage(plain)
    assert s.upstream == {} and s.params == {k: getattr(plain, k) for k in source_only.TRAIN_FIELDS}
    # the stage as it was before the source_tree option: same name, params, datasets, version → same key
    from methods.base import Stage
    legacy = Stage("source_only.train", "train", source_only.train_supervised, dict(s.params), datasets=("source",),
                   version=source_only.VERSION)
    assert plan_stages([s], 0, DS, {})[0].key == plan_stages([legacy], 0, DS, {})[0].key
    from methods.gpa import gpa_stage
    on_gpa = source_only.train_stage(plain, source_tree=gpa_stage())
    assert plan_stages([on_gpa], 0, DS, {})[-1].key != plan_stages([s], 0, DS, {})[0].key
    with pytest.raises(ValueError, match="train_domain"):
        source_only.train_stage(make_config(source_only.Config, {"train_domain": "target_train"}), gpa_stage())


def test_variants_share_the_warmup_and_only_change_what_they_feed():
    base = keys(cfg())
    for name, over in {**TABLE3, **TABLE4, **TABLE5}.items():
        k = keys(cfg(**over))
        assert k["bismap.warmup:source_tree"] == base["bismap.warmup:source_tree"], name
        if "bismap.maps:model,source_tree" in k:
            assert k["bismap.maps:model,source_tree"] == base["bismap.maps:model,source_tree"], name
    # Table 3: one STM for the three PLAs (e_c from the MAPs labels); their label stages differ
    t3 = {n: keys(cfg(**o)) for n, o in TABLE3.items()}
    assert len({k["bismap.stm:labels,source_tree,warmup"] for k in t3.values()}) == 1
    assert "bismap.label_ias:model" in t3["IAS-PLA"]  # IAS reads the warm-up's softmax only
    assert t3["CAs-PLA"]["bismap.label:maps,model"] == t3["MAPs-PLA"]["bismap.label:maps,model"]  # the STM's labels
    # Table 4: the baseline is the warm-up model itself; +STM trains the source only
    baseline = pipe.stages(cfg(**TABLE4["baseline"]))[-1]
    assert baseline.name == "bismap.warmup"
    plus_stm = pipe.stages(cfg(**TABLE4["+STM"]))[-1]
    assert plus_stm.name == "bismap.self_train" and set(plus_stm.upstream) == {"source_tree", "stm"}
    # "+STM" is the baseline's recipe plus the STM: no other setting differs
    diff = {k for k in baseline.params.keys() | plus_stm.params.keys()
            if baseline.params.get(k) != plus_stm.params.get(k)}
    assert diff == {"mode"}, diff
    # ... also when self-training starts from the warm-up (MiniCity): "+STM" must not train W's schedule twice
    warm_cfg = {"st_init": "warmup"}
    plus_stm_w = pipe.stages(cfg(**TABLE4["+STM"], **warm_cfg))[-1]
    base_w = pipe.stages(cfg(**TABLE4["baseline"], **warm_cfg))[-1]
    assert plus_stm_w.params["init"] == base_w.params["init"] == "imagenet" and "init" not in plus_stm_w.upstream
    assert pipe.stages(cfg(**TABLE4["+STM +MAPs-PLA"], **warm_cfg))[-1].upstream["init"] is not None
    no_stm = pipe.stages(cfg(**TABLE4["+MAPs-PLA"]))
    assert "bismap.stm" not in [s.name for s in no_stm] and "stm" not in no_stm[-1].upstream
    # a term's settings enter the key only when the term is on
    off = cfg(**TABLE4["+STM +MAPs-PLA"])
    assert keys(off) == keys(make_config(pipe.Config, {**SMALL, **TABLE4["+STM +MAPs-PLA"],
                                                       "consistency_weight": 30.0}))
    assert keys(cfg(consistency_weight=30.0))["bismap.self_train:labels,source_tree,stm"] != \
        base["bismap.self_train:labels,source_tree,stm"]


def test_a_sweep_reports_the_labels_its_self_training_reads():
    """A sweep's PL columns read ``Trial.label_stage``: the labels the self-training trains on (IAS's, not the MAPs
    labels the STM reads), and none with ``pla: none``."""
    from bench.sweep_trials import Trial

    def trial(**over):
        return Trial(0, None, 0, plan_stages(pipe.stages(cfg(**over)), 0, DS, {}))

    assert trial(pla="maps").label_stage("bismap.label").name == "bismap.label"
    assert trial(pla="ias").label_stage("bismap.label").name == "bismap.label_ias"
    assert trial(pla="cas").label_stage("bismap.label").name == "bismap.label_cas"
    assert trial(pla="none").label_stage("bismap.label") is None  # its MAPs labels feed only the STM
    assert trial(pla="maps").label_stage(None) is None


def test_bad_values_name_the_key():
    for key, bad in (("pla", "xyz"), ("kd", "log"), ("consistency_views", "both"), ("st_init", "coco"),
                     ("distill_student_init", "moco")):
        with pytest.raises(ValueError, match=key):
            pipe.stages(cfg(**{key: bad}))
    with pytest.raises(ValueError, match="eta_min"):
        pipe.stages(cfg(eta_min=1e-7))


def test_ema_update_hand_case():
    """m = 0.9: θ' = 0.9·1 + 0.1·3 = 1.2; the BN running mean is copied, not averaged."""
    student, teacher = torch.nn.BatchNorm1d(1), torch.nn.BatchNorm1d(1)
    with torch.no_grad():
        student.weight.fill_(3.0)
        teacher.weight.fill_(1.0)
        student.running_mean.fill_(5.0)
    bt.ema_update(teacher, student, 0.9)
    assert teacher.weight.item() == pytest.approx(1.2) and teacher.running_mean.item() == 5.0


def test_teacher_is_frozen_with_dropout_off():
    net = torch.nn.Sequential(torch.nn.Conv2d(1, 1, 1), torch.nn.Dropout2d(0.5), torch.nn.BatchNorm2d(1))
    t = bt.make_teacher(net)
    assert t.training and not t[1].training and t[2].training
    assert not any(p.requires_grad for p in t.parameters())


def test_cutout_box_and_unit_roundtrip():
    gen = torch.Generator().manual_seed(0)
    y0, y1, x0, x1 = aug.cutout_box(32, 100, 0.2, gen)
    assert x1 - x0 <= 20 and y1 - y0 <= 20 and 0 <= x0 < 100 and 0 <= y0 < 32  # side int(0.2·100) = 20
    x = torch.rand(2, 3, 4, 5)
    for mode in ("imagenet", "caffe", "unit"):
        assert torch.allclose(aug.to_unit(aug.from_unit(x, mode), mode), x, atol=1e-5)


def test_strong_view_zeroes_a_cutout_rectangle():
    gen = torch.Generator().manual_seed(3)
    x = aug.from_unit(torch.full((1, 3, 8, 10), 0.5), "imagenet")
    view, mask = aug.strong_view(x, "imagenet", 2, 10, 0.5, gen)
    unit = aug.to_unit(view, "imagenet")
    rows, cols = mask[0].any(1), mask[0].any(0)
    assert torch.equal(mask[0], rows[:, None] & cols[None, :])  # one rectangle
    assert 0 < rows.sum() <= 5 and 0 < cols.sum() <= 5  # side int(0.5·10) = 5, clipped at the border
    assert unit[0][:, mask[0]].abs().max() < 1e-6  # black inside the cut-out
    assert view.shape == x.shape


def test_randaugment_solarize_hand_case():
    """Solarize at v = 1: threshold 256 − int(1·256/10) = 231; 240 → 15, 100 stays."""
    name, op, max_v, bias = aug.RANDAUGMENT_POOL[-1]
    img = torch.tensor([240, 100], dtype=torch.uint8).reshape(1, 1, 2).expand(3, 1, 2)
    assert name == "Solarize" and op(img, 1, max_v, bias)[0, 0].tolist() == [15, 100]


def test_label_scores_and_thresholds_hand_case():
    """MAPs: class 0 ~ N(0, 1), class 1 ~ N(3, 1) (1-d, one component). At f = 0: log p_0 = −½ ln 2π = −0.9189,
    log p_1 = −0.9189 − 4.5 → score −0.9189, kept (class 0) for δ = −1, not for δ = −0.5. CAs: anchors 0 and 3;
    f = 1 → distances 1, 2 → margin 1; f = 2.5 → 2.5, 0.5 → margin 2 (class 1): Δd = 1.5 keeps the second only."""
    from methods.bismap import equations as bm
    from methods.bismap import labels as bl

    g = bm.ClassGMMs(torch.ones(2, 1), torch.tensor([[[0.0]], [[3.0]]]), torch.ones(2, 1, 1), *[None] * 4)
    score = bl.pixel_scores("maps", torch.zeros(1, 1), g, None)
    assert score.tolist() == pytest.approx([-0.5 * math.log(2 * math.pi)])
    f = torch.zeros(1, 1, 1, 1)
    p = {"pla": "maps", "full_resolution": True}
    assert bl.pseudo_labels(p, f, (1, 2), g, None, -1.0).tolist() == [[0, 0]]
    assert bl.pseudo_labels(p, f, (1, 2), g, None, -0.5).tolist() == [[IGNORE, IGNORE]]
    anchors = torch.tensor([[0.0], [3.0]])
    assert bl.pixel_scores("cas", torch.tensor([[1.0], [2.5]]), None, anchors).tolist() == pytest.approx([1.0, 2.0])
    feats = torch.tensor([1.0, 2.5]).reshape(1, 1, 1, 2)
    lab = bl.pseudo_labels({"pla": "cas", "full_resolution": False}, feats, (2, 4), None, anchors, 1.5)
    assert lab.tolist() == [[IGNORE, IGNORE, 1, 1]] * 2  # the feature grid nearest-upsampled


def test_label_stage_records_where_the_threshold_sits():
    """The scores a fixed threshold met, as quantiles (hand cases above): MAPs' one score −0.9189 everywhere;
    CAs' margins 1 and 2 (linear quantiles: median 1.5, 5 % = 1.05)."""
    from methods.bismap import equations as bm
    from methods.bismap import labels as bl

    g = bm.ClassGMMs(torch.ones(2, 1), torch.tensor([[[0.0]], [[3.0]]]), torch.ones(2, 1, 1), *[None] * 4)
    maps = bl.ScoreSample(0)
    bl.pseudo_labels({"pla": "maps", "full_resolution": True}, torch.zeros(1, 1, 1, 1), (1, 2), g, None, 5.0, maps)
    assert list(maps.quantiles().values()) == pytest.approx([-0.5 * math.log(2 * math.pi)] * 5)
    cas = bl.ScoreSample(0)
    feats = torch.tensor([1.0, 2.5]).reshape(1, 1, 1, 2)
    bl.pseudo_labels({"pla": "cas", "full_resolution": False}, feats, (2, 4), None, torch.tensor([[0.0], [3.0]]),
                     1.5, cas)
    assert cas.quantiles() == pytest.approx({"q0": 1.0, "q5": 1.05, "q50": 1.5, "q95": 1.95, "q100": 2.0})
    assert bl.ScoreSample(0).quantiles() == {}  # nothing seen: no quantiles, not NaN


def test_a_label_stage_that_labelled_nothing_says_where_delta_should_be(tmp_path):
    """The STM's e_c needs MAPs labels; when δ labelled none, the error gives δ against the recorded score range
    and the two ways to set δ in the features' units. A stage cached before the quantiles existed gets the how."""
    import json
    from types import SimpleNamespace

    from methods.bismap import stm

    torch.save(torch.full((19,), float("nan"), dtype=torch.float64), tmp_path / "class_entropy.pt")
    ctx = SimpleNamespace(inputs={"labels": tmp_path})
    (tmp_path / "result.json").write_text(json.dumps({"threshold": 100.0, "pl_ratio": 0.0}))
    with pytest.raises(ValueError, match=r"labelled no target pixel.*delta_override.*bismap_delta.*pl_ratio_target"):
        stm._class_entropy({"entropy": "pseudo_labels"}, ctx)
    q = {"pl_score_q0": -31.5, "pl_score_q5": -26.0, "pl_score_q50": -21.25, "pl_score_q95": -17.0,
         "pl_score_q100": -12.0}
    (tmp_path / "result.json").write_text(json.dumps({"threshold": 100.0, "pl_ratio": 0.0, **q}))
    with pytest.raises(ValueError) as err:
        stm._class_entropy({"entropy": "pseudo_labels"}, ctx)
    assert ("δ = 100, while the target pixels' max log-density lies in [-31.50, -12.00] (5 / 50 / 95 %: -26.00 / "
            "-21.25 / -17.00); δ is in the log-density units") in str(err.value)


def test_losses_terms_per_configuration():
    torch.manual_seed(0)
    from bench.models import build_model

    model = build_model("small")
    p = {**pipe.train_params(cfg(), "self_train", True, True), "pseudo_labels": True}
    teacher = bt.make_teacher(model)
    lab = torch.randint(0, 19, (2, 32, 64))
    batch = {"source": {"image": torch.randn(2, 3, 32, 64), "label": lab, "weight": torch.ones(2, 32, 64)},
             "target_train": {"image": torch.randn(2, 3, 32, 64), "label": lab.clone()}}
    out = bt.bismap_losses(model, p, 0, "imagenet", teacher=teacher)(batch, 0)["segmenter"]
    assert set(out) == {"ce_s", "sce_t", "consist"}
    lam0 = 20.0 * math.exp(-5.0)  # the ramp-up at iteration 0
    assert out["consist"].item() >= 0 and lam0 > 0
    p_kd = {**pipe.train_params(cfg(), "distill", False, True), "pseudo_labels": True}
    out = bt.bismap_losses(model, p_kd, 0, "imagenet", kd_teacher=teacher)(batch, 0)["segmenter"]
    assert set(out) == {"ce_s", "sce_t", "kd"}
    src_only = {"source": {"image": torch.randn(1, 3, 32, 64), "label": torch.full((1, 32, 64), IGNORE)}}
    assert set(bt.bismap_losses(model, p, 0, "imagenet")(src_only, 0)["segmenter"]) == {"ce_s"}


# ---------------------------------------------------------------------------------------------- end to end
@pytest.fixture(scope="module")
def tiny_suite(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("suite")
    suite = tiny_minicity_suite(tmp, {"gta5": 12, "synthia": 2, "cityscapes_train": 12, "cityscapes_val": 4})
    suite["methods"] = {"bismap": {
        **SMALL, "warmup_iters": 3, "warmup_batch_size": 2, "warmup_lr": 0.01, "st_iters": 3, "distill_iters": 2,
        "st_batch_source": 2, "st_batch_target": 2, "lr": 0.01, "crop": None, "scale_range": None,
        "gmm_components": 2, "gmm_min_samples": 4, "gmm_sample_rates": [1.0] * 19, "pl_ratio_target": 0.6,
        "stm_input_size": [64, 32], "stm_clusters": 4, "rampup_iters": 2, "distill_pl_scales": [1.0],
        "variants": {"ias": {"pla": "ias", "use_consistency": False, "distill_rounds": 0},
                     # fixed thresholds: δ below every density (MAPs labels all), Δd = 0; the code's recipe
                     "cas_code": {"pla": "cas", "pl_ratio_target": None, "delta_override": -1.0e30,
                                  "cas_delta_d": 0.0, "distill_rounds": 0, "consistency_views": "code",
                                  "stm_d_mean": "ema", "st_init": "warmup"}}}}
    suite["paper"] = {}
    return write_suite(suite, tmp / "tiny.yaml"), tmp / "results"


@pytest.mark.slow
def test_bismap_runs_on_tiny_minicity(tiny_suite):
    path, results = tiny_suite
    out = run_suite(str(path), results_root=results, executor="local")
    assert {o.status for o in out["outcomes"].values()} == {"done"}
    by = {}
    for o in out["outcomes"].values():
        by.setdefault(o.name, []).append(o.result)
    assert len(by["gpa.source"]) == 1 and len(by["bismap.warmup"]) == 1  # one warm-up for every variant
    assert len(by["bismap.maps"]) == 1
    maps = sorted(r["pl_ratio"] for r in by["bismap.label"])
    assert len(maps) == 2 and abs(maps[0] - 0.6) < 0.15  # δ from the ratio target (sampled pixel scores)
    assert maps[1] == 1.0 and by["bismap.label_cas"][0]["pl_ratio"] > 0.5  # δ = -1e30: all; Δd = 0: all but ties
    for r in by["bismap.label"] + by["bismap.label_cas"]:  # the scores the threshold met, in their own units
        assert r["pl_score_q0"] <= r["pl_score_q5"] <= r["pl_score_q50"] <= r["pl_score_q95"] <= r["pl_score_q100"]
    assert min(r["threshold"] for r in by["bismap.label"]) == -1.0e30 < by["bismap.label"][0]["pl_score_q0"]
    assert not any(k.startswith("pl_score") for r in by["bismap.label_ias"] for k in r)  # IAS has no threshold
    assert [r["pla"] for r in by["bismap.label_ias"]] == ["ias"] and len(by["bismap.label_cas"]) == 1
    labels = by["bismap.label"] + by["bismap.label_cas"] + by["bismap.label_ias"]
    # precision where some pseudo-label lies on a class pixel, none otherwise (an untrained IAS may label nothing)
    on_class = [r["pl_ratio"] * (1 - r["pl_void"]) > 0 for r in labels]
    assert any(on_class) and all(0.0 <= r["pl_precision"] <= 1.0 if c else "pl_precision" not in r
                                 for r, c in zip(labels, on_class, strict=True))
    assert len(by["bismap.stm"]) == 2  # one for base and ias (same MAPs labels), one for cas_code
    assert all(r["stm_encoder"] == "warmup" and 0.0 <= r["stm_weight_mean"] <= 1.0 for r in by["bismap.stm"])
    terms = sorted(tuple(r["terms"]) for r in by["bismap.self_train"])
    assert terms == [("ce_s", "consist", "sce_t")] * 2 + [("ce_s", "sce_t")]
    assert {r["init"] for r in by["bismap.self_train"]} == {"random", "warmup"}  # small net: no ImageNet file
    assert [r["terms"] for r in by["bismap.distill"]] == [["ce_s", "kd", "sce_t"]]
    assert {r["variant"] for r in out["results"]} == {"", "ias", "cas_code"}


def test_cli_perf_gmm_prints_both_fits(capsys):
    """Tiny sizes: both fits run from the same start and reach the same mean log-likelihood."""
    from bench.cli import main

    assert main(["perf", "gmm", "--classes", "2", "--components", "2", "--dim", "3", "--samples", "300",
                 "--device", "cpu"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert "2 classes x 2 diagonal components, 3-d, 300 samples" in lines[0]
    ll = {line.split("(")[0].strip(): float(line.rsplit(" ", 1)[1]) for line in lines[1:]}
    assert set(ll) == {"torch", "sklearn"} and ll["torch"] == pytest.approx(ll["sklearn"], abs=1e-3)
