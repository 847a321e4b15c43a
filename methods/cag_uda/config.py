"""CAG-UDA's configuration: every setting with its source (paper / code / inferred / harness), the code
variant's values (``*_code``, resolved by :func:`effective`) and the Table 4 rows as config overrides
(:data:`TABLES`). The equations are in ``methods.cag_uda.equations``, the stages in ``methods.cag_uda.stages``."""

from __future__ import annotations

from dataclasses import dataclass

from methods.base import PaperTable, Study, param
from methods.training import schedule

VARIANTS = ("paper", "code")
TERMS = ("ce_s", "dis_s", "dis_t", "ce_t", "ce_tp")  # Eq. 12: L^s_CE, L^s_dis, L^t_dis, L^t_CE, L^tP_CE
DIS_LABELS = ("anchor", "prob")


# stages 1..K (§4.1); their momentum, weight decay and poly power serve the warm-up too
StageSchedule = schedule(batch_size=1, lr=2.5e-4, momentum=0.9, weight_decay=1e-4, power=0.9, notes={
    "batch_size": "§4.1; one source + one target image per iteration", "momentum": "code: 0.9 too",
    "power": "poly; code: 0.9 over its 90k iterations"})
# stage 0b: the warm-up (no code released, issue #9)
WarmupSchedule = schedule("warmup_", iters=59_500, batch_size=1, lr=2.5e-4, source="inferred",
                          sources={"batch_size": "paper"}, notes={
                              "iters": "'20 epochs' read as 20 × 2,975 Cityscapes train images at batch 1 (20 GTA5 "
                                       "epochs would be 499,320)",
                              "batch_size": "§4.1 batch 1 (one source + one target image)",
                              "lr": "paper gives the lr for the stages only"})


@dataclass
class Config(StageSchedule, WarmupSchedule):
    variant: str = param("paper", "harness", "paper | code: code uses every *_code value and the code's rules "
                         "(class-mean SmoothL1 distance, anchors from correct predictions, online labels)")
    # network
    model: str = param("deeplabv2_r101", "paper", "§3.2 DeepLab-v2, ResNet-101, ASPP")
    model_code: str = param("deeplabv3plus_r101", "code", "DeepLab-v3+ OS16; the author calls 'v2' a mistake (#6)")
    feature_layer: str = param("layer4", "inferred", "f_D = decoder minus last classifier; DeepLab-v2's ASPP is "
                               "the classifier, so f_D is its 2048-d input (stride 8). Δd=2.5 was set on the code's "
                               "features: re-tune it for these")
    feature_layer_code: str = param("decoder", "code", "256-d decoder output before the 1×1 classifier, stride 4")
    normalize: str | None = param(None, "paper", "input normalisation: None = the suite's (Caffe, as DeepLab-v2's "
                                  "init expects); the code variant always uses 'unit' (RGB/255, no mean or std)")
    bn_mode: str = param("frozen_affine", "paper", "§4.1 'weights of all BN layers were frozen' (γ/β; whether "
                         "running statistics were also fixed is not said)")
    bn_mode_code: str = param("train", "code", "trainable SyncBN (freeze_bn: False)")
    init_weights: str | None = param(None, "harness", "local ImageNet init of the backbone")
    # stage 0a: source-only pre-training
    pretrain: dict = param({}, "inferred", "Alg. 1 step 1 'according to [4]', no schedule given: overrides of "
                           "methods.source_only.Config (model/bn_mode/init from this config); equal values share "
                           "the stage with the source_only method")
    # stage 0b: warm-up (its schedule: WarmupSchedule)
    warmup: bool = param(True, "paper", "Alg. 1 step 2; §4.3: without it −6.3 mIoU")
    warmup_discriminator: str = param("feature", "paper", "§4.1: 5 convs 3×3 stride 2, [64,128,256,512,1], ReLU "
                                      "after the first three, LeakyReLU(0.2) after the 4th; on f_D features. Only "
                                      "'feature' is implemented (checked)", doc_only=True)
    warmup_adv_weight: float = param(1e-2, "paper", "§4.1; CE + adversarial on source and target (Alg. 1 omits X_t:"
                                     " a typo per the author, #11)")
    warmup_d_lr: float = param(1e-4, "inferred", "AdaptSegNet's discriminator: Adam, betas (0.9, 0.99), poly 0.9")
    warmup_gan: str = param("vanilla", "inferred", "BCE with logits; target features labelled as source for G "
                            "(vanilla | ls)")
    warmup_head_lr_mult: float | None = param(None, "inferred", "no warm-up code: None keeps the model's own head "
                                              "multiplier (DeepLab-v2's 10× ASPP classifier, as AdaptSegNet trains "
                                              "it); 1.0 = one lr for all, as the code's stages")
    warmup_d_channels: tuple = param((64, 128, 256, 512), "paper", "§4.1 discriminator widths")
    # stages 1..K (their schedule: StageSchedule, the code's below)
    num_stages: int = param(3, "paper", "K = 3; a 4th stage saturates at 50.2 (§4.2)")
    stage_iters: int = param(59_500, "inferred", "'20 epochs' per stage, read as for the warm-up")
    stage_iters_code: int = param(90_000, "code", "configs/adaptation_from_gta_to_city.yml train_iters")
    batch_size_code: int = param(4, "code", "4 source + 4 target; author: 4 'for quick convergence' (#4)")
    crop: tuple = param((1280, 640), "paper", "W×H random crop after the random resize")
    crop_code: tuple = param((896, 512), "code", "rcrop; the code's 1/4-res label path hard-codes it")
    resize_scale: tuple = param((1.0, 1.5), "paper", "random resize ×1–×1.5 of the image")
    resize_scale_code: tuple = param((0.5, 1.5), "code", "width = U(0.5, 1.5) × scale_width_code px (rsize), "
                                     "aspect kept")
    scale_width_code: int = param(2200, "code", "rsize: the width the code's random scale multiplies")
    native_resolution: bool = param(True, "paper", "the random resize (and the anchors, labels) start from the "
                                    "native image (GTA5 1914×1052, Cityscapes 2048×1024, SYNTHIA 1280×760), not "
                                    "the suite's resize; the code resizes GTA5 to 1914×1052 (native) too. False = "
                                    "the suite's resize (crops then pad: a 1024×512 target under a 1280×640 crop)")
    hflip: float = param(0.5, "code", "paper silent")
    lr_code: float = param(1e-4, "code")
    weight_decay_code: float = param(2e-4, "code")
    head_lr_mult: float = param(1.0, "code", "paper silent; the code uses one lr for all parameters "
                                "(get_10x_lr_params is unused). MiniCity: 10× lost the warm-up's gain on held-out "
                                "target train (stage 1 19.9 vs warm-up 20.9 mIoU), 1× kept it (21.6)")
    lambda1: float = param(0.3, "paper", "Eq. 12 weight of L^s_dis + L^t_dis")
    lambda1_code: float = param(0.7, "code", "cls_feature_weight, on the distance terms")
    lambda2: float = param(0.7, "paper", "Eq. 12 weight of L^t_CE + L^tP_CE")
    lambda2_code: float = param(0.5, "code", "(CE_t + CE_tP) / 2")
    delta_d: float = param(2.5, "inferred", "Eq. 6 margin. 2.5 is the paper's and the code's value, set on the "
                           "code's 256-d DeepLab-v3+ decoder features; applied unchanged to feature_layer (2048-d "
                           "layer4 here) it is our carry-over. Distances scale with the features: choose it "
                           "label-free with `bench sweep cag_delta_d SUITE --holdout` (held-out target train) and "
                           "check the anchors stage's anchor_norm_mean / anchor_nearest_other_mean against 2.5 "
                           "(released anchors: norms 6.8–12.4, nearest other 4.8–7.9). With variant=code (the "
                           "code's decoder features) 2.5 is the code's clu_threshold as-is")
    p0: float = param(0.95, "paper", "probability pseudo-label threshold (code: class_threshold 0.95)")
    terms: tuple = param(TERMS, "paper", "the Eq. 12 terms switched on; Table 4 rows switch some off (TABLES)")
    dis_labels: str = param("anchor", "paper", "active set of the distance terms: anchor (Eq. 6–7) | prob (Table 4 "
                            "L^P_dis row)")
    # the code variant's rules
    anchor_min_pixels_code: int = param(10, "code", "an (image, class) pair needs ≥10 correctly predicted pixels")
    anchor_count_cap_code: int = param(3000, "code", "running-mean count capped at 3000 images per class")
    dis_min_pixels_code: int = param(10, "code", "distance loss: ≥10 pixels per (image, class)")
    dis_clamp_code: float = param(5.0, "code", "a pair's SmoothL1 is divided by 10 while > 5")
    dis_scale_code: float = param(10.0, "code", "mean over pairs × 10")
    dis_grad_rescale_code: bool = param(True, "code", "normalisation_pooling: gradient × 2·count/(h·w)")
    eval_protocol: str | None = param(None, "harness", "None: the suite's protocol (one per table); the code's "
                                      "test.py evaluates at full resolution (protocol B)")

    def __post_init__(self) -> None:
        if self.variant not in VARIANTS:
            raise ValueError(f"variant={self.variant!r}; valid: {VARIANTS}")
        if not set(self.terms) <= set(TERMS) or "ce_s" not in self.terms:
            raise ValueError(f"terms={self.terms!r}: a subset of {TERMS} that includes 'ce_s'")
        if self.dis_labels not in DIS_LABELS:
            raise ValueError(f"dis_labels={self.dis_labels!r}; valid: {DIS_LABELS}")
        if self.warmup_discriminator != "feature":
            raise ValueError(f"warmup_discriminator={self.warmup_discriminator!r}; only 'feature' is implemented")
        if self.warmup_gan not in ("vanilla", "ls"):
            raise ValueError(f"warmup_gan={self.warmup_gan!r}; valid: ['vanilla', 'ls']")
        if not (self.delta_d >= 0 and 0 <= self.p0 < 1 and self.num_stages >= 0):
            raise ValueError(f"need delta_d ≥ 0, 0 ≤ p0 < 1, num_stages ≥ 0; got {self.delta_d}, {self.p0}, "
                             f"{self.num_stages}")



def input_normalize(cfg: Config) -> str | None:
    """The method's ``input_normalize`` hook: the inputs this variant's network expects."""
    return "unit" if cfg.variant == "code" else cfg.normalize


_CODE_VALUES = ("model", "feature_layer", "bn_mode", "stage_iters", "batch_size", "crop", "resize_scale", "lr",
                "weight_decay", "lambda1", "lambda2")


def effective(cfg: Config) -> dict:
    """The settings a stage uses for ``cfg.variant``: each ``x`` or, for ``code``, ``x_code``; plus the rules
    the variant implies (distance loss, anchor rule, when labels are made, tie rule at exactly Δd)."""
    code = cfg.variant == "code"
    out = {k: getattr(cfg, f"{k}_code" if code else k) for k in _CODE_VALUES}
    out.update(
        scale_base=cfg.scale_width_code if code else None,
        distance_loss="class_mean_smoothl1" if code else "pixel_l2",
        anchor_rule="gt_and_pred_image_mean" if code else "gt_pixel_mean",
        anchors_per_stage=not code,  # code: one anchor file for all stages
        online_labels=code,  # code: labels recomputed every iteration on the augmented crop
        tie_inclusive=code,  # code drops a pixel only where margin < Δd, so margin == Δd stays labelled
    )
    return out


# Table 4 (results/paper/cag_uda_t4_ablation.csv): our variant → (printed row, Config overrides). Every row keeps
# L^s_CE (inferred: "combining L^t_CE with different losses" reads as a typo for L^s_CE). For L^sP_dis we read the
# source active set as GT pixels whose predicted max probability > P0 (the paper is silent).
TABLES = {
    "t4": PaperTable("cag_uda", 4, {
        "warmup_only": ("Warm-up", {"num_stages": 0}),
        "tp_ce": ("+L^tP_CE", {"num_stages": 1, "terms": ("ce_s", "ce_tp")}),
        "t_ce": ("+L^t_CE", {"num_stages": 1, "terms": ("ce_s", "ce_t")}),
        "p_dis": ("+L^sP_dis + L^tP_dis", {"num_stages": 1, "terms": ("ce_s", "dis_s", "dis_t"), "dis_labels": "prob"}),
        "dis": ("+L^s_dis + L^t_dis", {"num_stages": 1, "terms": ("ce_s", "dis_s", "dis_t")}),
        "dis_t_ce": ("+L^s_dis + L^t_dis + L^t_CE", {"num_stages": 1, "terms": ("ce_s", "dis_s", "dis_t", "ce_t")}),
        "t_ce_tp_ce": ("+L^t_CE + L^tP_CE", {"num_stages": 1, "terms": ("ce_s", "ce_t", "ce_tp")}),
        "stage1": ("CAG-UDA (Stage 1)", {"num_stages": 1}),
        "stage2": ("CAG-UDA (Stage 2)", {"num_stages": 2}),
        "": ("CAG-UDA (Stage 3)", {}),
    }, benchmark="gta5_cityscapes", baseline=("source_only", "Source only")),
}

STUDIES = {
    "cag_delta_d": Study("cag_uda", "delta_d", (0.5, 1.0, 1.5, 2.0, 2.5), {"num_stages": 1}, "cag_uda.label",
                         ("bismap", 5, "CAs-PLA", "threshold", "PL ratio", 1.0),
                         "stage 1 after the warm-up; paper points: BiSMAP's re-run of CAs-PLA on its features"),
}
