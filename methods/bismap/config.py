"""BiSMAP's settings: every hyper-parameter with its source (paper / code / inferred / harness), and the
per-source density threshold δ. The equations are in ``methods.bismap.equations``."""

from __future__ import annotations

from dataclasses import dataclass

from methods import ias
from methods.base import PaperTable, Study, param
from methods.training import schedule

_GTA5_ENTROPY_CODE = (0.1502, 0.2935, 0.1362, 0.4436, 0.4393, 0.2795, 0.3139, 0.3106, 0.1068, 0.3195, 0.0719,
                      0.2364, 0.4754, 0.0986, 0.3673, 0.4127, 0.4826, 0.5645, 0.6694)
_SYNTHIA_ENTROPY_CODE = (0.1039, 0.1333, 0.0960, 0.4322, 0.4646, 0.2801, 0.3994, 0.3480, 0.1437, 0.0, 0.1032,
                         0.2556, 0.4076, 0.1399, 0.0, 0.3501, 0.0, 0.5117, 0.4416)
_GTA5_SAMPLE_RATES_CODE = (0.002, 0.01, 0.003, 0.1, 0.1, 0.1, 1.0, 1.0, 0.01, 0.05, 0.01, 0.5, 1.0, 0.05, 0.1, 0.2,
                           1.0, 1.0, 1.0)


# the paper's one optimiser setting (SGD, poly 0.9), for every train stage; the stages' lengths and batches below
Optimiser = schedule(lr=5e-4, momentum=0.9, weight_decay=5e-4, power=0.9)
# stage W, the warm-up: its own batch, lr and length
WarmupSchedule = schedule("warmup_", iters=90_000, batch_size=8, lr=5e-4, notes={
    "batch_size": "no warm-up code released; the checkpoint is. Table 4's '+STM' row trains with W's batch, lr and "
                  "iterations (it has no target term), so it differs from the baseline by the STM alone; rows with a "
                  "target term use st_batch_*",
    "lr": "SGD 5e-4, poly 0.9 (the paper's one optimiser setting), head_lr_mult as self-training; W uses the "
          "self-training's scale, crop, flip and colour jitter (inferred: the paper states one augmentation, no code)"})


@dataclass
class Config(ias.config_fields("code"), Optimiser, WarmupSchedule):  # ias_*: IAS-PLA (Table 3) as IAST's code
    # -- variants (Tables 3-5)
    pla: str = param("maps", "paper", "pseudo-label assignment: maps | cas (CAG anchors) | ias (IAST selector) | "
                     "none (no target labels: Table 4's baseline and +STM rows); Table 3 compares the first three "
                     "on one warm-up model, all with STM")
    use_stm: bool = param(True, "paper", "Table 4 ablation switch")
    use_consistency: bool = param(True, "paper", "Table 4 ablation switch")
    distill_rounds: int = param(1, "paper", "'an additional distillation stage'; the README runs 2; 0 = none")
    cas_delta_d: float = param(1.0, "paper", "CAs-PLA distance threshold for Table 3/5; best of {0.5,1,1.5,2} "
                               "(Table 5); CAG's own 2.5 is for its features")
    cas_anchor_pixels: str = param("correct", "inferred", "CAs anchors = class means of the MAPs feature pool "
                                   "(GT = prediction, after the code's subsampling), so only the density model "
                                   "differs from MAPs-PLA | all (CAG paper Eq. 4: every GT pixel)")
    pl_ratio_target: float | None = param(None, "harness", "MAPs/CAs only: set δ (Δd) so that this fraction of "
                                          "target-train pixels is labelled (a label-free quantile of the scores; "
                                          "e.g. 0.613, the ratio of the paper's δ = 100); None = the fixed value")
    # -- network and GPA warm-up (stage W; its schedule: WarmupSchedule)
    model: str = param("deeplabv3plus_r101", "paper", "DeepLab-v3+ R101 (OS16), ImageNet init; code agrees")
    normalize: str | None = param("imagenet", "code", "RGB/255 with ImageNet mean/std, for every stage and the "
                                  "evaluation (overrides the suite's, e.g. Caffe for DeepLab-v2); None = the suite's")
    model_options: dict = param({"bn_mode": "train", "aspp_dropout": 0.0, "decoder_dropout": [0.0, 0.1]}, "code",
                                "trainable BN, no ASPP dropout, Dropout2d(0.1) before the classifier")
    init_weights: str | None = param(None, "harness", "local ImageNet ResNet-101 weights")
    gpa: bool = param(True, "paper", "every stage trains on GPA-stylised source (Ma et al. CVPR 2021)")
    gpa_gamma: str = param("mean_L", "inferred", "L gamma chosen so mean(L/100) matches the target's; GPA's "
                           "paper gives no rule and no code (the only rule implemented)")
    gpa_pair_seed: int | None = param(None, "harness", "seed of the random source→target pairing "
                                      "(methods.gpa.pair_targets): None = the run's seed (one GPA tree per seed); "
                                      "an int fixes the pairing and shares one tree across seeds")
    native_resolution: bool = param(True, "code", "labelling, STM and every train stage (warm-up included) read "
                                    "source and target at their native size (GTA5 1914x1052, Cityscapes 2048x1024; "
                                    "SYNTHIA resized to synthia_resize), not the suite's resize")
    # -- MAPs (stage P2): Eq. 3-6
    gmm_components: int = param(8, "paper", "K diagonal-covariance Gaussians per class (paper and code)")
    gmm_max_samples: int = param(300_000, "paper", "features per class fed to EM (paper and code)")
    gmm_max_iter: int = param(100, "code", "gmm_torch loops up to n_iter+1 = 101 times")
    gmm_tol: float = param(1e-3, "code", "stop when the mean log-likelihood moves less than this; the code also "
                           "reverts μ/σ² (not π) on a non-improving step, which we do not")
    gmm_reg_covar: float = param(1e-6, "code", "variance floor added in every M-step (gmm_torch eps)")
    gmm_init: str = param("kmeans", "code", "k-means (here k-means++-seeded Lloyd) | random; the code picks the "
                          "best of 20 random centre sets, then Lloyd to 1e-3 on min-max scaled data")
    gmm_min_samples: int = param(80, "inferred", "a class with fewer correct source features gets no GMM "
                                 "(NaN rows, never pseudo-labelled); 10·K")
    gmm_feature: str = param("decoder", "code", "256-d decoder feature after Dropout2d (stride 4): E of G = F∘E, "
                             "all but the final 1×1 classifier")
    gmm_sample_rates: tuple = param(_GTA5_SAMPLE_RATES_CODE, "code", "per-class keep rate of correct source "
                                    "features before pooling (GTA5; code only; pools capped at 1e6)")
    gmm_pool_cap: int = param(1_000_000, "code", "features kept per class pool, in image order (the code's first "
                              "pool file); memory cap·D·4 bytes per class")
    delta_gta5: float = param(100.0, "paper", "Eq. 6 log-density threshold δ for GTA5 (code default too)")
    delta_synthia: float = param(-50.0, "paper", "δ for SYNTHIA (paper only; no SYNTHIA config in the code)")
    delta_override: float | None = param(None, "harness", "any other source (MiniCity): δ re-chosen on source "
                                         "features only, recorded in the run")
    pl_full_resolution: bool = param(True, "paper", "features bilinearly upsampled to 2048×1024 before labelling "
                                     "(footnote 1; code agrees)")
    pl_flip: bool = param(False, "code", "flip-averaged features: --flip exists, unused in the README")
    # -- STM (stage P1): Eq. 7-9
    stm_encoders: tuple = param(("simclrv2_r152", "imagenet_r101", "warmup"), "inferred",
                                "first available wins, recorded in the run: paper SimCLRv2 R152 (not available "
                                "offline), a local ImageNet backbone, then the warm-up encoder; 'backbone' = "
                                "the suite's model from a pretrained file (MiniCity)")
    stm_encoder_weights: str | None = param(None, "harness", "local weights file for the STM encoder; None = "
                                            "init_weights (the suite's ImageNet R101: the documented fallback for "
                                            "SimCLRv2 R152), else the warm-up encoder. The stm stage records the "
                                            "encoder used (stm_encoder)")
    stm_input_size: tuple = param((256, 128), "code", "W×H fed to the encoder, RGB in [0,1], no normalisation")
    stm_grid: tuple = param((4, 4), "code", "stride-32 map (4×8) avg-pooled (1×2) to a 4×4 cell grid")
    stm_clusters: int = param(40, "code", "J target prototypes (paper: unspecified)")
    stm_kmeans_samples: int = param(1_000_000, "code", "random target cells clustered")
    stm_kmeans_seed: int = param(5, "code", "sklearn KMeans random_state, n_init 1")
    stm_d_mean: str = param("dataset", "paper", "d_mean: dataset mean of D | ema (code: EMA 0.99 of per-image "
                            "means in glob order)")
    stm_entropy: str = param("pseudo_labels", "paper", "e_c from the warm-up model on target pseudo-labels | "
                             "code (the hard-coded lists below)")
    stm_entropy_gta5_code: tuple = param(_GTA5_ENTROPY_CODE, "code", "GTA5 e_c constants in the released STM")
    stm_entropy_synthia_code: tuple = param(_SYNTHIA_ENTROPY_CODE, "code", "SYNTHIA e_c constants (0 = absent)")
    # -- self-training (stage S): Eq. 10-13
    st_init: str = param("imagenet", "code", "retrained from ImageNet (init_weights), not from the warm-up "
                         "(resume_flag False) | warmup")
    st_iters: int = param(90_000, "paper")
    st_batch_source: int = param(4, "paper")
    st_batch_target: int = param(4, "paper")
    head_lr_mult: float = param(1.0, "paper", "every train stage (warm-up, self-training, distillation); the paper "
                                "states one lr; code: 10 (head_10x_lr)")
    lr_warmup_iters: int = param(0, "paper", "code: 400 linear warm-up iterations (from 0)")
    eta_min: float = param(0.0, "paper", "code: poly decays to 1e-7; the harness's poly ends at 0, so only 0 is "
                           "accepted")
    hflip: bool = param(True, "code", "random horizontal flip (p 0.5) of source and target crops")
    crop: tuple = param((896, 512), "paper", "W×H random crop")
    scale_range: tuple = param((0.5, 1.5), "paper", "random rescale; code draws the width from U(0.5,1.5)·2200 "
                               "(source) / ·2048 (target)")
    synthia_resize: tuple = param((2048, 1024), "paper", "SYNTHIA resized before the random scale (paper only)")
    jitter_source: tuple = param((0.5, 0.5, 0.5, 0.2), "code", "brightness, contrast, saturation, hue")
    jitter_target: tuple = param((0.1, 0.5, 0.5, 0.1), "code", "brightness, contrast, saturation, hue")
    sce_alpha: float = param(0.1, "paper", "Eq. 11 CE weight")
    sce_beta: float = param(1.0, "paper", "Eq. 11 reverse-CE weight")
    sce_clamp: float = param(1e-4, "paper", "one-hot clamped to [1e-4, 1]")
    consistency_weight: float = param(20.0, "paper", "λ of Eq. 13; code config gta5_st.yml: 30")
    consistency_reduction: str = param("element_mean", "code", "nn.KLDivLoss() mean over pixels×classes; the λ "
                                       "values were tuned with it (Eq. 12's plain sum would scale λ by ~19·HW)")
    consistency_views: str = param("paper", "paper", "paper: teacher sees φ(x) | code: teacher the weak crop, "
                                   "student RandAugment+CutOut, KL outside the cut-out only")
    ema_momentum: float = param(0.999, "paper", "EMA teacher, updated before each forward; BN buffers copied")
    randaugment: tuple = param((2, 10), "code", "RandAugment (n, m); the paper names RandAugment only")
    cutout_fraction: float = param(0.2, "code", "CutOut square side = 0.2·W, zeroed")
    rampup_iters: int = param(4000, "code", "λ × exp(-5(1-t/T)^2) over the first T iterations")
    # -- distillation (stage D)
    kd: str = param("paper", "inferred", "the paper names a distillation stage, not its loss: KL(teacher‖student) "
                    "with log-softmax is ProDA's intended form (its maintainer, ProDA#20/#43) | code: ProDA's "
                    "kl_div(softmax, softmax) bug, kept by BiSMAP's code")
    kd_weight: float = param(1.0, "code")
    distill_iters: int = param(90_000, "code")
    distill_student_init: str = param("simclrv2_r101", "code", "simclrv2_r101 (distill_student_weights; without "
                                      "the file, ImageNet: recorded) | imagenet | warmup")
    distill_student_weights: str | None = param(None, "harness", "local SimCLRv2 R101 backbone in torchvision "
                                                "layout for the distillation student; None = init_weights (recorded)")
    distill_pl_scales: tuple = param((0.75, 1.0, 1.5), "code", "teacher labels: multi-scale + flip, argmax")
    distill_pl_threshold: float = param(0.0, "code", "every pixel labelled")
    # -- evaluation
    eval_protocol: str | None = param(None, "harness", "None: the suite's protocol (one per table); the code: full "
                                      "2048×1024 input, single scale (protocol B)")
    select: str = param("final", "harness", "final iterate; the code keeps best-on-val (a labelled protocol)")


def delta_for(cfg: Config, source: str) -> float:
    """The Eq. 6 threshold δ for a source domain (``gta5`` | ``synthia``), or ``cfg.delta_override``."""
    if cfg.delta_override is not None:
        return float(cfg.delta_override)
    table = {"gta5": cfg.delta_gta5, "synthia": cfg.delta_synthia}
    if source not in table:
        raise ValueError(f"source {source!r}: no paper δ; set delta_override (valid sources: {sorted(table)})")
    return float(table[source])


# Tables 4 and 3 (results/paper/bismap_t{4,3}_*.csv): our variant → (printed row, Config overrides). Table 3's
# MAPs-PLA is Table 4's +STM +MAPs-PLA run.
_NO_CONSISTENCY = {"use_consistency": False, "distill_rounds": 0}
TABLES = {
    "t4": PaperTable("bismap", 4, {
        "baseline": ("baseline", {"pla": "none", "use_stm": False, **_NO_CONSISTENCY}),
        "stm": ("+STM", {"pla": "none", **_NO_CONSISTENCY}),
        "maps": ("+MAPs-PLA", {"use_stm": False, **_NO_CONSISTENCY}),
        "stm_maps": ("+STM +MAPs-PLA", dict(_NO_CONSISTENCY)),
        "no_distill": ("+STM +MAPs-PLA +consistency", {"distill_rounds": 0}),
        "": ("+STM +MAPs-PLA +consistency +distillation", {}),
    }, benchmark="gta5_cityscapes", base="baseline"),
    "t3": PaperTable("bismap", 3, {
        "cas": ("CAs-PLA", {"pla": "cas", **_NO_CONSISTENCY}),
        "ias": ("IAS-PLA", {"pla": "ias", **_NO_CONSISTENCY}),
        "stm_maps": ("MAPs-PLA", dict(_NO_CONSISTENCY)),
    }, benchmark="gta5_cityscapes", base="stm_maps", name="pla"),
}

# Table 5 (δ, Δd) as parameter studies (`bench sweep NAME`)
_NO_ST = {"pl_ratio_target": None, **_NO_CONSISTENCY}  # BiSMAP Table 5's setting
STUDIES = {
    "bismap_delta": Study("bismap", "delta_override", (0.0, 50.0, 100.0, 150.0), _NO_ST, "bismap.label",
                          ("bismap", 5, "MAPs-PLA", "threshold", "PL ratio", 1.0),
                          "BiSMAP Table 5 (STM + MAPs-PLA); δ is in log-density units of the network's features"),
    "bismap_cas_delta_d": Study("bismap", "cas_delta_d", (0.5, 1.0, 1.5, 2.0), {**_NO_ST, "pla": "cas"},
                                "bismap.label_cas", ("bismap", 5, "CAs-PLA", "threshold", "PL ratio", 1.0),
                                "BiSMAP Table 5 (STM + CAs-PLA)"),
    # Table 5 in label-share form, for features whose log-densities / distances are not the paper's (MiniCity's
    # 32-d decoder: the paper's δ = 100 labels nothing there): each trial sets δ (Δd) label-free so that the paper's
    # PL ratio of a Table 5 row is labelled, and is compared with that row
    "bismap_ratio": Study("bismap", "pl_ratio_target", (0.876, 0.775, 0.613, 0.443), _NO_CONSISTENCY,
                          "bismap.label", ("bismap", 5, "MAPs-PLA", "PL ratio", "PL ratio", 1.0, 0.01),
                          "BiSMAP Table 5 (STM + MAPs-PLA) at the paper's PL ratios; δ from a label-free quantile"),
    "bismap_cas_ratio": Study("bismap", "pl_ratio_target", (0.827, 0.678, 0.545, 0.422),
                              {**_NO_CONSISTENCY, "pla": "cas"}, "bismap.label_cas",
                              ("bismap", 5, "CAs-PLA", "PL ratio", "PL ratio", 1.0, 0.01),
                              "BiSMAP Table 5 (STM + CAs-PLA) at the paper's PL ratios; Δd from a label-free quantile"),
}


def rehearsal_settings(values: dict) -> list[str]:
    """The ``rehearsal`` hook: a 2-iteration model's log-densities are not the paper's, so δ = 100 can label nothing
    and the STM's e_c needs labelled pixels; δ from the label share the paper's δ = 100 gives (``pl_ratio_target``)
    keeps each stage's work the same."""
    if values.get("pl_ratio_target") is not None:
        return []
    values["pl_ratio_target"] = 0.613
    return ["bismap.pl_ratio_target: 0.613 (δ from the label share of the paper's δ = 100) for the rehearsal's "
            "untrained features"]
