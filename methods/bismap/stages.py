"""BiSMAP's stages (paper §3.5, code luyvlei/BiSMAPs, reference/methods.md §3.3):

    gpa.source ─▶ bismap.warmup (W: source CE on the GPA source, the self-training's augmentation and optimiser)
                    ├─▶ bismap.maps (P2: GMMs, CAs anchors) ─▶ bismap.label (MAPs; _cas, _ias: Table 3's rules)
                    └─▶ bismap.stm (P1: source transferability map; e_c from the MAPs labels)
    bismap.self_train (S: from ImageNet; Eq. 13) ─▶ [bismap.distill_label ─▶ bismap.distill] × distill_rounds

The switches of Tables 3–5 (``pla``, ``use_stm``, ``use_consistency``, ``distill_rounds``, δ / Δd) only change
the stages they feed, so every variant shares the GPA tree, the warm-up, the MAPs fit and (Table 3) the STM.
Stage functions: ``methods.bismap.labels`` / ``bismap_stm`` / ``bismap_train``; equations: ``methods.bismap.equations``.
"""

from __future__ import annotations

from operator import attrgetter

from methods import source_only
from methods.base import Method, Paper, Stage, make_config
from methods.bismap.config import STUDIES, TABLES, Config, rehearsal_settings
from methods.bismap.labels import distill_labels, fit_maps, label_target
from methods.bismap.stm import build_stm
from methods.bismap.train import train_bismap
from methods.training import schedule_params

VERSION = "1"
CHOICES = {"pla": ("maps", "cas", "ias", "none"), "kd": ("paper", "code"), "consistency_views": ("paper", "code"),
           "consistency_reduction": ("element_mean", "pixel_mean"), "stm_d_mean": ("dataset", "ema"),
           "stm_entropy": ("pseudo_labels", "code"), "cas_anchor_pixels": ("correct", "all"),
           "st_init": ("imagenet", "warmup"), "distill_student_init": ("simclrv2_r101", "imagenet", "warmup"),
           "gmm_init": ("kmeans", "random"), "select": ("final",)}

# Config overrides of the paper's rows (results/paper/bismap_t{3,4,5}_*.csv; the suites' variants use them).
TABLE4 = {
    "baseline": {"pla": "none", "use_stm": False, "use_consistency": False, "distill_rounds": 0},
    "+STM": {"pla": "none", "use_consistency": False, "distill_rounds": 0},
    "+MAPs-PLA": {"use_stm": False, "use_consistency": False, "distill_rounds": 0},
    "+STM +MAPs-PLA": {"use_consistency": False, "distill_rounds": 0},
    "+STM +MAPs-PLA +consistency": {"distill_rounds": 0},
    "+STM +MAPs-PLA +consistency +distillation": {},
}
TABLE3 = {name: {"pla": pla, "use_consistency": False, "distill_rounds": 0}
          for name, pla in (("CAs-PLA", "cas"), ("IAS-PLA", "ias"), ("MAPs-PLA", "maps"))}
TABLE5 = {**{f"MAPs-PLA {d:g}": {"delta_override": float(d), "use_consistency": False, "distill_rounds": 0}
             for d in (0, 50, 100, 150)},
          **{f"CAs-PLA {d:g}": {"pla": "cas", "cas_delta_d": d, "use_consistency": False, "distill_rounds": 0}
             for d in (0.5, 1.0, 1.5, 2.0)}}


def check(cfg: Config) -> None:
    """One clear error per bad value, naming the key."""
    for key, valid in CHOICES.items():
        if getattr(cfg, key) not in valid:
            raise ValueError(f"bismap: {key}={getattr(cfg, key)!r}; valid: {list(valid)}")
    if cfg.distill_rounds < 0:
        raise ValueError(f"bismap: distill_rounds={cfg.distill_rounds}; expected >= 0")
    if cfg.pl_ratio_target is not None and not 0 < cfg.pl_ratio_target < 1:
        raise ValueError(f"bismap: pl_ratio_target={cfg.pl_ratio_target}; expected a fraction in (0, 1)")
    if cfg.eta_min != 0:
        raise ValueError(f"bismap: eta_min={cfg.eta_min}; the harness's poly schedule decays to 0 (only 0 accepted)")


def warmup_config(cfg: Config) -> source_only.Config:
    """The plain source-only recipe of stage W (suite resize, no crop or jitter, the model's 10× head): no longer
    BiSMAP's warm-up (``warmup_stage``); kept for comparisons with the older wiring."""
    return make_config(source_only.Config, {
        "model": cfg.model, "model_options": dict(cfg.model_options), "init_weights": cfg.init_weights,
        **schedule_params(cfg, "warmup_"), "aux_weight": 0.0})


def warmup_stage(cfg: Config, gpa: Stage | None) -> Stage:
    """Stage W (paper §4.1, Table 4 "baseline"): source CE (Eq. 2) on the GPA source from ImageNet, with the
    paper's warm-up batch, lr and iterations and the same native-resolution scale, crop, flip, colour jitter and
    head lr as self-training — so Table 4's "+STM" row (the same recipe with STM weights) differs only by the STM."""
    p = train_params(cfg, "warmup", False, False)
    return Stage("bismap.warmup", "train", train_bismap, p, upstream={"source_tree": gpa} if gpa else {},
                 datasets=("source",), version=VERSION)


def label_stage(cfg: Config, pla: str, warm: Stage, maps: Stage) -> Stage:
    p = {"pla": pla, "native_resolution": cfg.native_resolution}
    if pla != "ias":  # IAS thresholds the warm-up's softmax at full resolution: no features
        p.update(feature=cfg.gmm_feature, full_resolution=cfg.pl_full_resolution, flip=cfg.pl_flip)
    if pla == "maps":
        p.update(ratio_target=cfg.pl_ratio_target, delta_gta5=cfg.delta_gta5, delta_synthia=cfg.delta_synthia,
                 delta_override=cfg.delta_override)
    elif pla == "cas":
        p.update(ratio_target=cfg.pl_ratio_target, delta_d=cfg.cas_delta_d, anchor_pixels=cfg.cas_anchor_pixels)
    else:
        p.update(ias_alpha=cfg.ias_alpha, ias_beta=cfg.ias_beta, ias_gamma=cfg.ias_gamma, ias_init=cfg.ias_init,
                 ias_cap=cfg.ias_cap)
    upstream = {"model": warm} if pla == "ias" else {"model": warm, "maps": maps}
    name = "bismap.label" if pla == "maps" else f"bismap.label_{pla}"  # one name per rule (cache ls, sweeps)
    return Stage(name, "label", label_target, p, upstream=upstream, datasets=("target_train",), version=VERSION)


def train_params(cfg: Config, mode: str, consistency: bool, labels: bool) -> dict:
    """What a train stage reads: a term's settings enter its key only when the term is on."""
    distill = mode == "distill"
    # the warm-up, and a self-training with no target term (Table 4 "+STM"), train the source only with W's
    # batch, lr and iterations: "+STM" then differs from the baseline (= W) by the STM weights alone
    source_only_recipe = mode == "warmup" or (mode == "self_train" and not labels and not consistency)
    # "+STM" starts where W started whatever st_init says: from the warm-up it would train W's schedule twice, and
    # the row would measure the longer schedule with the STM (MiniCity seed 0: W 800 + 800 more without any STM
    # weights already gave most of that row's gain)
    init = "imagenet" if source_only_recipe else cfg.st_init
    if distill:  # SimCLRv2 R101 is a local file or nothing: without it, the ImageNet init (recorded)
        init = "warmup" if cfg.distill_student_init == "warmup" else "imagenet"
    simclr = distill and cfg.distill_student_init == "simclrv2_r101"
    prefix = "distill_" if distill else "warmup_" if source_only_recipe else "st_"  # iters (and W's lr) by stage
    p = {"mode": mode, "model": cfg.model, "model_options": dict(cfg.model_options), "init": init,
         "init_weights": cfg.init_weights, "student_weights": cfg.distill_student_weights if simclr else None,
         **schedule_params(cfg, prefix, ("iters", "lr", "momentum", "weight_decay", "power")),
         "batch_source": cfg.warmup_batch_size if source_only_recipe else cfg.st_batch_source,
         "batch_target": cfg.st_batch_target, "head_lr_mult": cfg.head_lr_mult,
         "lr_warmup_iters": cfg.lr_warmup_iters, "eta_min": cfg.eta_min, "crop": _list(cfg.crop),
         "scale_range": _list(cfg.scale_range), "hflip": cfg.hflip, "native_resolution": cfg.native_resolution,
         "synthia_resize": _list(cfg.synthia_resize), "jitter_source": _list(cfg.jitter_source),
         "jitter_target": _list(cfg.jitter_target), "consistency": consistency}
    if labels:
        p.update(sce_alpha=cfg.sce_alpha, sce_beta=cfg.sce_beta, sce_clamp=cfg.sce_clamp)
    if consistency:
        p.update(consistency_weight=cfg.consistency_weight, consistency_reduction=cfg.consistency_reduction,
                 consistency_views=cfg.consistency_views, ema_momentum=cfg.ema_momentum,
                 randaugment=_list(cfg.randaugment), cutout_fraction=cfg.cutout_fraction,
                 rampup_iters=cfg.rampup_iters)
    if distill:
        p.update(kd=cfg.kd, kd_weight=cfg.kd_weight)
    return p


def stm_encoder_weights(cfg: Config) -> str | None:
    """The STM encoder's weights file: ``stm_encoder_weights``, else — the paper's SimCLRv2 R152 having no loader —
    the suite's ImageNet R101 (``init_weights``), the documented fallback, when "imagenet_r101" is among
    ``stm_encoders`` (or the suite model's pretrained backbone, "backbone": MiniCity's generic pretraining); None
    leaves the warm-up encoder (a suite without an init file)."""
    if cfg.stm_encoder_weights or not {"imagenet_r101", "backbone"} & set(cfg.stm_encoders):
        return cfg.stm_encoder_weights
    return cfg.init_weights


def _list(v):
    return list(v) if isinstance(v, (tuple, list)) else v


def maps_stage(cfg: Config, warm: Stage, src: dict) -> Stage:
    """Stage P2: the class GMMs (MAPs) of the warm-up's source features."""
    fit = {"feature": cfg.gmm_feature, "components": cfg.gmm_components, "max_samples": cfg.gmm_max_samples,
           "max_iter": cfg.gmm_max_iter, "tol": cfg.gmm_tol, "reg_covar": cfg.gmm_reg_covar,
           "init": cfg.gmm_init, "min_samples": cfg.gmm_min_samples, "sample_rates": list(cfg.gmm_sample_rates),
           "pool_cap": cfg.gmm_pool_cap, "native_resolution": cfg.native_resolution,
           "synthia_resize": _list(cfg.synthia_resize)}
    return Stage("bismap.maps", "fit", fit_maps, fit, upstream={"model": warm, **src}, datasets=("source",),
                 version=VERSION)


def stm_stage(cfg: Config, warm: Stage, src: dict, maps_labels: Stage | None) -> Stage:
    """Stage P1: the source transferability map; one per warm-up, e_c from the MAPs labels whatever the PLA (so
    Table 3's rows share it) or the code's constants."""
    sp = {"encoders": list(cfg.stm_encoders), "encoder_weights": stm_encoder_weights(cfg),
          "input_size": list(cfg.stm_input_size), "grid": list(cfg.stm_grid), "clusters": cfg.stm_clusters,
          "kmeans_samples": cfg.stm_kmeans_samples, "kmeans_seed": cfg.stm_kmeans_seed, "d_mean": cfg.stm_d_mean,
          "entropy": cfg.stm_entropy}
    if "backbone" in cfg.stm_encoders:  # only then, so the other suites' keys stay as they were
        sp.update(model=cfg.model)
    up = {"warmup": warm, **src}
    if cfg.stm_entropy == "pseudo_labels":
        up["labels"] = maps_labels
    else:
        sp.update(entropy_gta5_code=list(cfg.stm_entropy_gta5_code),
                  entropy_synthia_code=list(cfg.stm_entropy_synthia_code))
    return Stage("bismap.stm", "fit", build_stm, sp, upstream=up, datasets=("source", "target_train"),
                 version=VERSION)


def distill_stages(cfg: Config, model: Stage, warm: Stage, src: dict, stm: Stage | None) -> list[Stage]:
    """Stage D, ``distill_rounds`` times: the previous model's multi-scale labels, then a student trained on them
    with the KD term against that model."""
    out = []
    for _ in range(cfg.distill_rounds):
        dl = Stage("bismap.distill_label", "label", distill_labels,
                   {"scales": list(cfg.distill_pl_scales), "threshold": cfg.distill_pl_threshold,
                    "native_resolution": cfg.native_resolution}, upstream={"model": model},
                   datasets=("target_train",), version=VERSION)
        dp = train_params(cfg, "distill", False, True)
        up = {**src, "labels": dl, "teacher": model, **({"stm": stm} if stm else {}),
              **({"init": warm} if dp["init"] == "warmup" else {})}
        model = Stage("bismap.distill", "train", train_bismap, dp, upstream=up, datasets=("source", "target_train"),
                      version=VERSION)
        out += [dl, model]
    return out


def stages(cfg: Config) -> list[Stage]:
    """Every stage of one BiSMAP configuration, upstream first; the last is the model the harness evaluates."""
    from methods.gpa import gpa_stage

    check(cfg)
    gpa = gpa_stage(cfg.gpa_gamma, cfg.gpa_pair_seed) if cfg.gpa else None
    src = {"source_tree": gpa} if gpa else {}
    warm = warmup_stage(cfg, gpa)
    out: list[Stage] = [s for s in (gpa, warm) if s is not None]
    stm_labels = cfg.use_stm and cfg.stm_entropy == "pseudo_labels"  # e_c needs the MAPs pseudo-labels
    maps = maps_labels = labels = stm = None
    if cfg.pla in ("maps", "cas") or stm_labels:
        maps = maps_stage(cfg, warm, src)
        out.append(maps)
    if cfg.pla == "maps" or stm_labels:
        maps_labels = label_stage(cfg, "maps", warm, maps)
        out.append(maps_labels)
    if cfg.pla != "none":
        labels = maps_labels if cfg.pla == "maps" else label_stage(cfg, cfg.pla, warm, maps)
        if labels is not maps_labels:
            out.append(labels)
    if cfg.use_stm:
        stm = stm_stage(cfg, warm, src, maps_labels)
        out.append(stm)
    model = warm
    if labels is not None or cfg.use_stm or cfg.use_consistency:
        sp = train_params(cfg, "self_train", cfg.use_consistency, labels is not None)
        up = {**src, **({"labels": labels} if labels else {}), **({"stm": stm} if stm else {}),
              **({"init": warm} if sp["init"] == "warmup" else {})}
        model = Stage("bismap.self_train", "train", train_bismap, sp, upstream=up,
                      datasets=("source", "target_train"), version=VERSION)
        out.append(model)
    return out + distill_stages(cfg, model, warm, src, stm)


METHOD = Method("bismap", Config, stages, paper=Paper("bismap", "BiSMAP"), tables=TABLES, studies=STUDIES,
                input_normalize=attrgetter("normalize"), eval_protocol=attrgetter("eval_protocol"),
                rehearsal=rehearsal_settings)
