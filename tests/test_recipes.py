"""The real suites' recipes against the papers: each training transform sampled on inputs of native size (input
scale, padded share), the BiSMAP STM encoder, and every Config field read by some stage or marked doc-only."""

import dataclasses
import json

import numpy as np
import pytest

from bench.data.datasets import _tuples
from bench.data.transforms import Transform
from bench.suite_plan import method_configs
from bench.suite_runner import load_suite
from methods.base import closure, get_method, make_config
from methods.bismap import stages as bismap_pipeline
from methods.bismap import train as bismap_train
from methods.cag_uda import stages as cag_uda_pipeline

NATIVE = {"gta5": (1914, 1052), "cityscapes": (2048, 1024), "synthia": (1280, 760), "crosscity": (2048, 1024)}
REAL = ("gta5_cityscapes", "synthia_cityscapes", "cityscapes_crosscity")
PERIOD = 64  # label stripes of this width encode the input's x coordinate


def sample(suite: dict, domain: str, override: dict, draws: int = 24):
    """(input scales relative to the native width, padded shares) of ``draws`` samples of the transform a stage
    builds for ``domain``: the suite's options merged with the stage's ``override`` as ``StageContext.dataset`` does,
    applied to a native-size image whose label has a stripe every ``PERIOD`` px (padding reads 255)."""
    spec = suite["datasets"][domain]
    w, h = NATIVE[spec["name"]]
    t = Transform(**_tuples({**(spec.get("options") or {}), **override}))
    image = np.zeros((h, w, 3), np.uint8)
    label = np.broadcast_to(((np.arange(w) // PERIOD) % 2).astype(np.uint8), (h, w)).copy()
    scales, padded = [], []
    for i in range(draws):
        _, y = t(image, label, np.random.default_rng(i))
        y = y.numpy()
        padded.append(float((y == 255).mean()))
        row = y[0][y[0] != 255]
        edges = np.flatnonzero(np.diff(row.astype(int)) != 0)
        scales.append(float(np.median(np.diff(edges))) / PERIOD)  # interior stripe width / PERIOD
    return np.array(scales), np.array(padded)


def stages_of(suite: dict, method: str, variant: str = ""):
    cfg = next(c for m, v, c in method_configs(suite) if m == method and v == variant)
    return closure(get_method(method).stages(cfg)[-1]), cfg


@pytest.mark.parametrize("name", ["gta5_cityscapes", "synthia_cityscapes"])
def test_cag_uda_scale_and_crop_apply_to_the_native_image(name):
    """Paper: ×1–1.5 of the native image, then a 1280×640 crop (never padded on GTA5, SYNTHIA, Cityscapes)."""
    suite = load_suite(name)
    st, _ = stages_of(suite, "cag_uda")
    p = next(s for s in st if s.name == "cag_uda.train").params
    for domain in ("source", "target_train"):
        scales, padded = sample(suite, domain, cag_uda_pipeline.train_options(p))
        assert scales.min() >= 0.97 and scales.max() <= 1.53 and scales.max() - scales.min() > 0.2, (domain, scales)
        assert padded.max() == 0.0, (domain, padded)


def test_cag_uda_code_width_rule_on_the_native_image():
    """Code: width U(0.5, 1.5)·2200 px of the native image (aspect kept), then 896×512: never padded."""
    suite = load_suite("gta5_cityscapes", ["methods.cag_uda.variant=code"])
    st, _ = stages_of(suite, "cag_uda")
    p = next(s for s in st if s.name == "cag_uda.train").params
    for domain in ("source", "target_train"):
        native_w = NATIVE[suite["datasets"][domain]["name"]][0]
        scales, padded = sample(suite, domain, cag_uda_pipeline.train_options(p))
        widths = scales * native_w
        assert widths.min() >= 0.5 * 2200 * 0.95 and widths.max() <= 1.5 * 2200 * 1.05, (domain, widths)
        assert padded.max() == 0.0


@pytest.mark.parametrize("name", ["gta5_cityscapes", "synthia_cityscapes"])
def test_bismap_train_stages_scale_the_native_image(name):
    """BiSMAP: ×0.5–1.5 of the native image (SYNTHIA first resized to 2048×1024), 896×512 crop, in the warm-up
    and in self-training alike."""
    suite = load_suite(name)
    st, cfg = stages_of(suite, "bismap")
    for stage in (s for s in st if s.name in ("bismap.warmup", "bismap.self_train")):
        for domain in ("source", "target_train"):
            ds_name = suite["datasets"][domain]["name"]
            scales, padded = sample(suite, domain, bismap_train.train_options(stage.params, ds_name, domain))
            pre = 2048 / NATIVE[ds_name][0] if ds_name == "synthia" else 1.0  # the paper's SYNTHIA pre-resize
            assert scales.min() >= 0.47 * pre and scales.max() <= 1.53 * pre, (stage.name, domain, scales)
            assert padded.mean() < 0.01, (stage.name, domain, padded)


def test_bismap_stm_encoder_falls_back_to_the_suites_imagenet_r101():
    for name in ("gta5_cityscapes", "synthia_cityscapes"):
        suite = load_suite(name)
        st, cfg = stages_of(suite, "bismap")
        stm = next(s for s in st if s.name == "bismap.stm")
        assert cfg.init_weights and stm.params["encoder_weights"] == cfg.init_weights
    explicit = make_config(bismap_pipeline.Config, {"init_weights": "a.pth", "stm_encoder_weights": "b.pth"})
    assert bismap_pipeline.stm_encoder_weights(explicit) == "b.pth"
    no_imagenet = make_config(bismap_pipeline.Config, {"init_weights": "a.pth", "stm_encoders": ["warmup"]})
    assert bismap_pipeline.stm_encoder_weights(no_imagenet) is None


# ------------------------------------------------------------------------------------- every field is read
HARNESS_READ = {"eval_protocol", "select", "normalize", "variant", "note"}  # read by the planner / reports
# fields with a single accepted value (validated) cannot be perturbed: their stage param is checked by name instead
SINGLE_VALUE = {"bismap": {"eta_min": ("bismap.self_train", "eta_min"), "gpa_gamma": ("gpa.source", "gamma")}}


def _reached(cfg, method: str) -> set[str]:
    """Fields whose change reaches a stage's params: each field perturbed, the stages' params compared."""
    def params(c):
        return json.dumps([[s.name, s.params] for s in closure(get_method(method).stages(c)[-1])], default=str,
                          sort_keys=True)

    base, out = params(cfg), set()
    for f in dataclasses.fields(cfg):
        for alt in _alternatives(getattr(cfg, f.name)):
            try:
                changed = dataclasses.replace(cfg, **{f.name: alt})
                if params(changed) != base:
                    out.add(f.name)
                    break
            except (ValueError, TypeError, KeyError):
                continue  # an invalid alternative: try the next
    return out


def _alternatives(v):
    if isinstance(v, bool):
        return [not v]
    if isinstance(v, int):
        return [v + 1, max(v - 1, 0)]
    if isinstance(v, float):
        return [v * 0.5 + 0.01, v + 1.0]
    if isinstance(v, tuple):
        return [tuple(x * 2 if isinstance(x, (int, float)) and not isinstance(x, bool) else x for x in v), v[:-1]]
    if isinstance(v, dict):
        return [{**v, "lr": 0.123}, {**v, "_probe": 1}]
    if v is None:
        return ["probe.pth", 0.5, 1, True]
    if isinstance(v, str):
        return ["probe.pth", "code", "paper", "ema", "ls", "imagenet", "warmup", "none", "cas", "ias", "random",
                "pixel_mean", "all", "decoder", "layer4", "feature", "prob", "anchor"]
    return []


@pytest.mark.parametrize("method,extra", [
    ("cag_uda", [{}, {"variant": "code"}, {"warmup": False}]),
    ("bismap", [{}, {"stm_entropy": "code", "distill_rounds": 2, "pla": "cas"}, {"pla": "ias"}]),
])
def test_every_config_field_reaches_a_stage_or_is_doc_only(method, extra):
    """A ledger entry must describe what runs: a field no stage reads (its change alters no stage) must be marked
    ``doc_only`` (or be one of the planner's few fields)."""
    cls = get_method(method).Config
    reached = set()
    stages = closure(get_method(method).stages(make_config(cls, {}))[-1])
    for field, (stage, key) in SINGLE_VALUE.get(method, {}).items():
        if any(s.name == stage and s.params.get(key) == getattr(cls(), field) for s in stages):
            reached.add(field)
    for over in extra:  # stages() only declares: no model is built, the defaults' real networks are fine
        reached |= _reached(make_config(cls, over), method)
    unread = sorted(f.name for f in dataclasses.fields(cls) if f.name not in reached | HARNESS_READ
                    and not f.metadata.get("doc_only"))
    assert not unread, f"{method}.Config fields no stage reads (mark doc_only or wire them): {unread}"


def test_prefixed_schedules_read_their_own_fields_then_the_shared_ones():
    """A warm-up schedule declares only what differs (CAG-UDA: iters, batch, lr); momentum, weight decay and power
    are the stages'; a config without a horizon gives None (= iters)."""
    from methods.training import schedule_params

    cfg = make_config(cag_uda_pipeline.Config, {"warmup_lr": 1e-3, "momentum": 0.8})
    p = schedule_params(cfg, "warmup_")
    assert p == {"iters": cfg.warmup_iters, "horizon": None, "batch_size": cfg.warmup_batch_size, "lr": 1e-3,
                 "momentum": 0.8, "weight_decay": cfg.weight_decay, "power": cfg.power}
    with pytest.raises(KeyError, match="stage_lr"):
        schedule_params({"iters": 1}, "stage_", ("lr",))
