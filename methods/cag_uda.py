"""CAG-UDA (Zhang et al., NeurIPS 2019, "Category Anchor-Guided Unsupervised Domain Adaptation for Semantic
Segmentation"; code RogerZhangzz/CAG_UDA): the configuration and the equation layer.

Pipeline (paper Alg. 1): source-only pre-training → warm-up (global feature-level adversarial alignment, FCNs in
the wild) → K stages, each: category anchors from M_{k-1} on source (Eq. 4), active target pixels and pseudo-labels
from the anchors (Eq. 5–7) and from probabilities (P0, Eq. 11), then training with Eq. 12. Where the official code
differs (``reference/methods.md`` §1.8), ``variant="code"`` selects the code's rules and the ``*_code`` fields'
values; :func:`effective` resolves them. Stages are wired elsewhere; this module holds no I/O.

Shapes: features ``[N,D,h,w]`` (float), labels ``[N,h,w]`` (integer trainIds 0..C-1, 255 = ignore) on the *same*
grid as the features (:func:`labels_to_feature_grid` brings full-size labels there), anchors ``[C,D]``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from bench.data.labels import IGNORE, NUM_CLASSES
from methods.base import param
from methods.source_only import segmentation_ce

VARIANTS = ("paper", "code")
TERMS = ("ce_s", "dis_s", "dis_t", "ce_t", "ce_tp")  # Eq. 12: L^s_CE, L^s_dis, L^t_dis, L^t_CE, L^tP_CE
DIS_LABELS = ("anchor", "prob")


@dataclass
class Config:
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
    # stage 0b: warm-up (no code released, issue #9)
    warmup: bool = param(True, "paper", "Alg. 1 step 2; §4.3: without it −6.3 mIoU")
    warmup_discriminator: str = param("feature", "paper", "§4.1: 5 convs 3×3 stride 2, [64,128,256,512,1], ReLU "
                                      "after the first three, LeakyReLU(0.2) after the 4th; on f_D features")
    warmup_adv_weight: float = param(1e-2, "paper", "§4.1; CE + adversarial on source and target (Alg. 1 omits X_t:"
                                     " a typo per the author, #11)")
    warmup_iters: int = param(59_500, "inferred", "'20 epochs' read as 20 × 2,975 Cityscapes train images at batch 1"
                              " (20 GTA5 epochs would be 499,320)")
    warmup_lr: float = param(2.5e-4, "inferred", "paper gives the lr for the stages only")
    warmup_d_lr: float = param(1e-4, "inferred", "AdaptSegNet's discriminator: Adam, betas (0.9, 0.99), poly 0.9")
    warmup_gan: str = param("vanilla", "inferred", "BCE with logits; target features labelled as source for G")
    warmup_batch_size: int = param(1, "paper", "§4.1 batch 1 (one source + one target image)")
    warmup_d_channels: tuple = param((64, 128, 256, 512), "paper", "§4.1 discriminator widths")
    # stages 1..K
    num_stages: int = param(3, "paper", "K = 3; a 4th stage saturates at 50.2 (§4.2)")
    stage_iters: int = param(59_500, "inferred", "'20 epochs' per stage, read as for the warm-up")
    stage_iters_code: int = param(90_000, "code", "configs/adaptation_from_gta_to_city.yml train_iters")
    batch_size: int = param(1, "paper", "§4.1; one source + one target image per iteration")
    batch_size_code: int = param(4, "code", "4 source + 4 target; author: 4 'for quick convergence' (#4)")
    crop: tuple = param((1280, 640), "paper", "W×H random crop after the random resize")
    crop_code: tuple = param((896, 512), "code", "rcrop; the code's 1/4-res label path hard-codes it")
    resize_scale: tuple = param((1.0, 1.5), "paper", "random resize ×1–×1.5 of the image")
    resize_scale_code: tuple = param((0.5, 1.5), "code", "width = U(0.5, 1.5) × 2200 px (rsize), aspect kept")
    hflip: float = param(0.5, "code", "paper silent")
    lr: float = param(2.5e-4, "paper")
    lr_code: float = param(1e-4, "code")
    momentum: float = param(0.9, "paper", "code: 0.9 too")
    weight_decay: float = param(1e-4, "paper")
    weight_decay_code: float = param(2e-4, "code")
    power: float = param(0.9, "paper", "poly; code: 0.9 over its 90k iterations")
    head_lr_mult: float = param(1.0, "code", "paper silent; the code uses one lr for all parameters "
                                "(get_10x_lr_params is unused). MiniCity: 10× lost the warm-up's gain on held-out "
                                "target train (stage 1 19.9 vs warm-up 20.9 mIoU), 1× kept it (21.6)")
    lambda1: float = param(0.3, "paper", "Eq. 12 weight of L^s_dis + L^t_dis")
    lambda1_code: float = param(0.7, "code", "cls_feature_weight, on the distance terms")
    lambda2: float = param(0.7, "paper", "Eq. 12 weight of L^t_CE + L^tP_CE")
    lambda2_code: float = param(0.5, "code", "(CE_t + CE_tP) / 2")
    delta_d: float = param(2.5, "paper", "Eq. 6 margin (code: same); feature-scale dependent")
    p0: float = param(0.95, "paper", "probability pseudo-label threshold (code: class_threshold 0.95)")
    terms: tuple = param(TERMS, "paper", "the Eq. 12 terms switched on; Table 4 rows switch some off (ABLATIONS)")
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
        if not (self.delta_d >= 0 and 0 <= self.p0 < 1 and self.num_stages >= 0):
            raise ValueError(f"need delta_d ≥ 0, 0 ≤ p0 < 1, num_stages ≥ 0; got {self.delta_d}, {self.p0}, "
                             f"{self.num_stages}")

    def dataset_normalize(self) -> str | None:
        """The planner's hook (bench.plan.method_datasets): the inputs this variant's network expects."""
        return "unit" if self.variant == "code" else self.normalize


_CODE_VALUES = ("model", "feature_layer", "bn_mode", "stage_iters", "batch_size", "crop", "resize_scale", "lr",
                "weight_decay", "lambda1", "lambda2")


def effective(cfg: Config) -> dict:
    """The settings a stage uses for ``cfg.variant``: each ``x`` or, for ``code``, ``x_code``; plus the rules
    the variant implies (distance loss, anchor rule, when labels are made, tie rule at exactly Δd)."""
    code = cfg.variant == "code"
    out = {k: getattr(cfg, f"{k}_code" if code else k) for k in _CODE_VALUES}
    out.update(
        distance_loss="class_mean_smoothl1" if code else "pixel_l2",
        anchor_rule="gt_and_pred_image_mean" if code else "gt_pixel_mean",
        anchors_per_stage=not code,  # code: one anchor file for all stages
        online_labels=code,  # code: labels recomputed every iteration on the augmented crop
        tie_inclusive=code,  # code drops a pixel only where margin < Δd, so margin == Δd stays labelled
    )
    return out


# Table 4 rows (labels as in results/paper/cag_uda_t4_ablation.csv) → Config overrides; "no warm-up" is §4.3.
# Every row keeps L^s_CE (inferred: "combining L^t_CE with different losses" reads as a typo for L^s_CE). For
# L^sP_dis we read the source active set as GT pixels whose predicted max probability > P0 (the paper is silent).
ABLATIONS: dict[str, dict] = {
    "Warm-up": {"num_stages": 0},
    "+L^tP_CE": {"num_stages": 1, "terms": ("ce_s", "ce_tp")},
    "+L^t_CE": {"num_stages": 1, "terms": ("ce_s", "ce_t")},
    "+L^sP_dis + L^tP_dis": {"num_stages": 1, "terms": ("ce_s", "dis_s", "dis_t"), "dis_labels": "prob"},
    "+L^s_dis + L^t_dis": {"num_stages": 1, "terms": ("ce_s", "dis_s", "dis_t")},
    "+L^s_dis + L^t_dis + L^t_CE": {"num_stages": 1, "terms": ("ce_s", "dis_s", "dis_t", "ce_t")},
    "+L^t_CE + L^tP_CE": {"num_stages": 1, "terms": ("ce_s", "ce_t", "ce_tp")},
    "CAG-UDA (Stage 1)": {"num_stages": 1},
    "CAG-UDA (Stage 2)": {"num_stages": 2},
    "CAG-UDA (Stage 3)": {"num_stages": 3},
    "no warm-up": {"warmup": False},
}


# ------------------------------------------------------------------------------------------ input checks
def _check_features(features: torch.Tensor, name: str = "features") -> None:
    if not isinstance(features, torch.Tensor) or features.ndim != 4 or not features.is_floating_point():
        got = f"{features.dtype} {tuple(features.shape)}" if isinstance(features, torch.Tensor) else type(features)
        raise ValueError(f"{name}: expected a float tensor [N,D,h,w], got {got}")


def _check_labels(labels: torch.Tensor, features: torch.Tensor, num_classes: int, name: str = "labels") -> None:
    n, _, h, w = features.shape
    if not isinstance(labels, torch.Tensor) or labels.is_floating_point() or labels.is_complex() \
            or labels.dtype == torch.bool or tuple(labels.shape) != (n, h, w):
        got = f"{labels.dtype} {tuple(labels.shape)}" if isinstance(labels, torch.Tensor) else type(labels)
        raise ValueError(f"{name}: expected an integer tensor [N,h,w] = {[n, h, w]} on the features' grid "
                         f"(see labels_to_feature_grid), got {got}")
    bad = ((labels < 0) | (labels >= num_classes)) & (labels != IGNORE)
    if bad.any():
        raise ValueError(f"{name}: ids {sorted(set(labels[bad].tolist()))[:5]} outside 0..{num_classes - 1} and "
                         f"{IGNORE}")


def _check_anchors(anchors: torch.Tensor, features: torch.Tensor) -> None:
    d = features.shape[1]
    if not isinstance(anchors, torch.Tensor) or anchors.ndim != 2 or anchors.shape[1] != d \
            or not anchors.is_floating_point() or not 0 < anchors.shape[0] < IGNORE:
        got = f"{anchors.dtype} {tuple(anchors.shape)}" if isinstance(anchors, torch.Tensor) else type(anchors)
        raise ValueError(f"anchors: expected a float tensor [C,D] with D = {d} (the features' channels) and "
                         f"0 < C < {IGNORE}, got {got}")


def labels_to_feature_grid(labels: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Nearest-neighbour resampling of integer label maps ``[N,H,W]`` to the feature grid ``size = (h, w)``,
    as ``F.interpolate(mode="nearest")`` (the code's rule): output pixel (i, j) takes input
    (⌊i·H/h⌋, ⌊j·W/w⌋). Ids, including 255, are kept exactly; returns int64 ``[N,h,w]``."""
    if not isinstance(labels, torch.Tensor) or labels.ndim != 3 or labels.is_floating_point():
        raise ValueError(f"labels: expected an integer tensor [N,H,W], got "
                         f"{getattr(labels, 'dtype', type(labels))} {tuple(getattr(labels, 'shape', ()))}")
    if len(size) != 2 or min(size) < 1:
        raise ValueError(f"size: expected (h, w) with h, w ≥ 1, got {size!r}")
    if tuple(labels.shape[-2:]) == tuple(size):
        return labels.long()
    # ids < 256 are exact in float32; nearest never blends them
    return F.interpolate(labels[:, None].float(), size=tuple(size), mode="nearest")[:, 0].long()


# ------------------------------------------------------------------------------------------ Eq. 4: anchors
def _class_sums(features: torch.Tensor, labels: torch.Tensor, num_classes: int):
    """Per-class float64 feature sums ``[C,D]`` and pixel counts ``[C]`` over the labelled pixels."""
    d = features.shape[1]
    flat = features.permute(0, 2, 3, 1).reshape(-1, d).double()
    lab = labels.reshape(-1).long()
    keep = lab != IGNORE
    sums = torch.zeros(num_classes, d, dtype=torch.float64, device=features.device)
    sums.index_add_(0, lab[keep], flat[keep])
    counts = torch.bincount(lab[keep], minlength=num_classes).to(torch.float64)
    return sums, counts


def _anchors_from_sums(sums: torch.Tensor, counts: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    anchors = sums / counts.clamp(min=1)[:, None]
    anchors[counts == 0] = float("nan")
    return anchors.to(dtype)


def category_anchors(features: torch.Tensor, labels: torch.Tensor, num_classes: int = NUM_CLASSES) -> torch.Tensor:
    """Eq. 4 of CAG-UDA: the category anchor f_c^s is the mean of f_D over every source pixel labelled c.

    ``features [N,D,h,w]`` float, ``labels [N,h,w]`` integer on the same grid (255 ignored) → ``[C,D]`` in the
    features' dtype. Pixel-weighted (a class's anchor weights images by their pixel counts), summed in float64.
    A class with no pixel (absent, or every pixel ignored) gets a NaN row; NaN features propagate into their
    class's anchor. Over a dataset use :class:`AnchorAccumulator` (same result).
    """
    _check_features(features)
    _check_labels(labels, features, num_classes)
    sums, counts = _class_sums(features, labels, num_classes)
    return _anchors_from_sums(sums, counts, features.dtype)


class AnchorAccumulator:
    """Eq. 4 over a dataset, one batch at a time: ``update(features, labels)`` adds float64 per-class sums and
    counts; ``anchors()`` equals :func:`category_anchors` on all batches concatenated (NaN rows for classes never
    seen)."""

    def __init__(self, num_classes: int = NUM_CLASSES):
        self.num_classes = num_classes
        self.sums: torch.Tensor | None = None
        self.counts: torch.Tensor | None = None
        self.dtype = torch.float32

    @torch.no_grad()
    def update(self, features: torch.Tensor, labels: torch.Tensor) -> None:
        _check_features(features)
        _check_labels(labels, features, self.num_classes)
        if self.sums is not None and features.shape[1] != self.sums.shape[1]:
            raise ValueError(f"features: {features.shape[1]} channels, earlier batches had {self.sums.shape[1]}")
        sums, counts = _class_sums(features.detach(), labels, self.num_classes)
        if self.sums is None:
            self.sums, self.counts, self.dtype = sums, counts, features.dtype
        else:
            self.sums += sums.to(self.sums.device)
            self.counts += counts.to(self.counts.device)

    def anchors(self) -> torch.Tensor:
        if self.sums is None:
            raise ValueError("AnchorAccumulator.anchors(): no batch was added")
        return _anchors_from_sums(self.sums, self.counts, self.dtype)


# ------------------------------------------------------------------------------------------ Eq. 5–7, Eq. 11
def anchor_distances(features: torch.Tensor, anchors: torch.Tensor) -> torch.Tensor:
    """Eq. 5: d_c = ‖f_c − f_D|_j‖₂ for every pixel and anchor → ``[N,C,h,w]`` (float32 at least). Computed
    per class as a direct difference (not the ‖a‖²−2ab+‖b‖² expansion) so a margin at exactly Δd is not blurred
    by cancellation. A NaN anchor gives NaN distances."""
    _check_features(features)
    _check_anchors(anchors, features)
    f = features.float() if features.dtype in (torch.float16, torch.bfloat16) else features
    a = anchors.to(f.dtype)
    return torch.stack([(f - a[c][None, :, None, None]).pow(2).sum(1).sqrt() for c in range(a.shape[0])], dim=1)


def anchor_pseudo_labels(features: torch.Tensor, anchors: torch.Tensor, delta_d: float, *,
                         inclusive: bool = False) -> torch.Tensor:
    """Eq. 5–7 of CAG-UDA: a target pixel is active when (second-nearest − nearest anchor distance) > Δd
    (Eq. 6, strict); an active pixel's pseudo-label is its nearest anchor's class (Eq. 7), others get 255.

    ``features [N,D,h,w]``, ``anchors [C,D]`` → int64 ``[N,h,w]``. At a margin of exactly Δd the pixel is
    *not* active (Eq. 6 and 7 are both strict); ``inclusive=True`` keeps it, as the official code does
    (it ignores only margins < Δd). Two equidistant nearest anchors give margin 0, never active. NaN anchors
    (classes absent from the source) are never chosen, neither as nearest nor as second-nearest; a pixel with
    a NaN feature gets 255. Fewer than two finite anchors leave the margin undefined: ValueError.
    """
    if not (isinstance(delta_d, (int, float)) and delta_d >= 0):
        raise ValueError(f"delta_d: expected a number ≥ 0, got {delta_d!r}")
    d = anchor_distances(features, anchors)
    finite = torch.isfinite(anchors).all(dim=1)
    if int(finite.sum()) < 2:
        raise ValueError(f"anchors: {int(finite.sum())} finite row(s); Eq. 6 needs at least two")
    d = d.masked_fill(~finite[None, :, None, None], float("inf"))
    top2, idx = d.topk(2, dim=1, largest=False)
    margin = top2[:, 1] - top2[:, 0]
    active = margin >= delta_d if inclusive else margin > delta_d
    active &= torch.isfinite(top2[:, 0])  # NaN features: topk's order is meaningless there
    return torch.where(active, idx[:, 0], torch.full_like(idx[:, 0], IGNORE))


def probability_pseudo_labels(probs: torch.Tensor, p0: float) -> torch.Tensor:
    """The probability-based active set of Eq. 11 (CBST-style): argmax class where the max softmax
    probability > P0 (strict), else 255.

    ``probs [N,C,h,w]`` softmax probabilities (values in [0,1], channels summing to 1) → int64 ``[N,h,w]``.
    Logits are rejected, since thresholding them would be silently wrong. For P0 ≥ 0.5 the kept class is
    unique; below that, ties go to the lowest class id. A pixel with a NaN probability gets 255.
    """
    if not (isinstance(p0, (int, float)) and 0 <= p0 < 1):
        raise ValueError(f"p0: expected a number in [0, 1), got {p0!r}")
    if not isinstance(probs, torch.Tensor) or probs.ndim != 4 or not probs.is_floating_point() \
            or not 0 < probs.shape[1] < IGNORE:
        raise ValueError(f"probs: expected a float tensor [N,C,h,w] with 0 < C < {IGNORE}, got "
                         f"{getattr(probs, 'dtype', type(probs))} {tuple(getattr(probs, 'shape', ()))}")
    p = probs.float()
    ok = torch.isfinite(p).all(dim=1)
    pf = torch.where(ok[:, None], p, torch.zeros_like(p))
    if (pf < 0).any() or (pf > 1 + 1e-4).any() or ((pf.sum(1) - 1).abs()[ok] > 1e-3).any():
        raise ValueError("probs: values must be softmax probabilities (in [0,1], summing to 1 over dim 1); "
                         "got something else — logits?")
    conf, arg = pf.max(dim=1)
    return torch.where(ok & (conf > p0), arg, torch.full_like(arg, IGNORE))


# ------------------------------------------------------------------------------------------ losses
def anchor_distance_loss(features: torch.Tensor, labels: torch.Tensor, anchors: torch.Tensor,
                         reduction: str = "mean") -> torch.Tensor:
    """Eq. 8 (source, GT labels) and Eq. 10 (target, anchor pseudo-labels; the paper's x^s inside Eq. 10 is read
    as x^t) of CAG-UDA: ‖f_c − f_D|_j‖² (squared L2, summed over the D channels) for each labelled pixel j of
    class c.

    Normalisation: the paper writes a plain sum over images and pixels; ``reduction="mean"`` (default, our
    reading) divides it by the number of labelled pixels, like the cross-entropy terms it is weighed against
    in Eq. 12 (a raw sum scales with crop size and would swamp them at λ1 = 0.3); ``"sum"`` is the literal sum.

    ``features [N,D,h,w]``, ``labels [N,h,w]`` (255 = not labelled / inactive), ``anchors [C,D]`` (fixed; no
    gradient flows into them) → scalar float32. Pixels whose class anchor is NaN are skipped (no anchor to pull
    towards). No labelled pixel → 0 (kept in the graph).
    """
    if reduction not in ("mean", "sum"):
        raise ValueError(f"reduction={reduction!r}; valid: mean, sum")
    _check_features(features)
    _check_anchors(anchors, features)
    _check_labels(labels, features, anchors.shape[0])
    a = anchors.detach().float()
    lab = labels.long()
    valid = lab != IGNORE
    valid &= torch.isfinite(a).all(dim=1)[lab.clamp(max=a.shape[0] - 1)]
    if not valid.any():
        return features.sum().float() * 0.0
    f = features.float().permute(0, 2, 3, 1)[valid]  # [P,D]
    sq = (f - a[lab[valid]]).pow(2).sum(dim=1)
    return sq.mean() if reduction == "mean" else sq.sum()


def pseudo_label_ce(logits: torch.Tensor, pseudo_labels: torch.Tensor) -> torch.Tensor:
    """Eq. 9 (anchor pseudo-labels, L^t_CE) and Eq. 11 (probability pseudo-labels, L^tP_CE): cross-entropy on the
    active target pixels. ``logits [N,C,h',w']`` are bilinearly upsampled to the labels' ``[N,h,w]`` if they
    differ. Normalised like every CE here: mean over the active pixels (the paper writes a sum); none active → 0.
    """
    if not isinstance(logits, torch.Tensor) or logits.ndim != 4 or not logits.is_floating_point():
        raise ValueError(f"logits: expected a float tensor [N,C,h,w], got {getattr(logits, 'shape', type(logits))}")
    # labels may sit on a finer grid than the logits: check them against their own [N,h,w]
    grid = pseudo_labels.shape[-2:] if getattr(pseudo_labels, "ndim", 0) == 3 else logits.shape[-2:]
    _check_labels(pseudo_labels, logits.new_empty(logits.shape[0], 1, *grid), logits.shape[1], "pseudo_labels")
    return segmentation_ce(logits, pseudo_labels.long())


def cag_objective(terms: dict[str, torch.Tensor], lambda1: float, lambda2: float) -> torch.Tensor:
    """Eq. 12 of CAG-UDA: L = L^s_CE + λ1·(L^s_dis + L^t_dis) + λ2·(L^t_CE + L^tP_CE).

    ``terms`` maps names in ``TERMS`` (``ce_s``, ``dis_s``, ``dis_t``, ``ce_t``, ``ce_tp``) to scalar tensors; a
    missing name is a switched-off term (Table 4's ablations). The code variant is the same sum with its weights
    (λ1 = 0.7, λ2 = 0.5). A NaN term gives a NaN total (the trainer's NaN check sees it).
    """
    unknown = sorted(set(terms) - set(TERMS))
    if unknown or not terms:
        raise ValueError(f"terms: expected a non-empty dict with keys from {TERMS}, got {sorted(terms)}")
    for k, v in terms.items():
        if not isinstance(v, torch.Tensor) or v.numel() != 1:
            raise ValueError(f"terms[{k!r}]: expected a scalar tensor, got {getattr(v, 'shape', type(v))}")
    weight = {"ce_s": 1.0, "dis_s": lambda1, "dis_t": lambda1, "ce_t": lambda2, "ce_tp": lambda2}
    return sum(weight[k] * terms[k].reshape(()) for k in TERMS if k in terms)


# ------------------------------------------------------------------------------------------ code variant
def _correct_class_means(features, labels, predictions, num_classes, min_pixels):
    """``[(image, class, mean feature [D], count)]`` over pixels with label == prediction == class, for pairs
    with ≥ ``min_pixels`` such pixels (the code's ``calculate_mean_vector``)."""
    _check_features(features)
    _check_labels(labels, features, num_classes)
    _check_labels(predictions, features, num_classes, "predictions")
    out = []
    for n in range(features.shape[0]):
        for c in range(num_classes):
            mask = (labels[n] == c) & (predictions[n] == c)
            count = int(mask.sum())
            if count >= max(min_pixels, 1):
                out.append((n, c, features[n][:, mask].float().mean(dim=1), count))
    return out


def code_distance_loss(features: torch.Tensor, labels: torch.Tensor, predictions: torch.Tensor,
                       anchors: torch.Tensor, *, min_pixels: int = 10, clamp: float = 5.0, scale: float = 10.0,
                       grad_rescale: bool = True) -> torch.Tensor:
    """The official code's replacement for Eq. 8/10 (``CustomModel.calculate_mean_vector`` +
    ``class_vectors_alignment``; methods.md §1.5), one call per domain:

    1. for each (image n, class c): the mean feature over pixels with ``labels == predictions == c``
       (source: GT; target: anchor pseudo-labels; ``predictions`` = the training model's argmax), kept only
       with ≥ ``min_pixels`` such pixels;
    2. its SmoothL1 (β = 1, mean over D) to anchor c; while that exceeds ``clamp`` it is divided by 10;
    3. the sum over kept pairs / their number × ``scale``.

    ``grad_rescale`` reproduces ``normalisation_pooling``: the forward value is unchanged, the gradient reaching
    the features through a pair's mean is multiplied by 2·count/(h·w). Shapes: features ``[N,D,h,w]``, labels and
    predictions ``[N,h,w]`` (255 never matches a class), anchors ``[C,D]`` → scalar. Edge cases (deviations from
    the code noted): a pair whose anchor is NaN is skipped; no pair → 0 in the graph (code: 0/0 = NaN); a
    non-finite pair loss is left as is (the code's loop would never end on +inf).
    """
    _check_anchors(anchors, features)
    a = anchors.detach().float()
    h, w = features.shape[-2:]
    pairs = [p for p in _correct_class_means(features, labels, predictions, a.shape[0], min_pixels)
             if torch.isfinite(a[p[1]]).all()]
    if not pairs:
        return features.sum().float() * 0.0
    total = features.new_zeros((), dtype=torch.float32)
    for _, c, mean, count in pairs:
        if grad_rescale:
            g = 2.0 * count / (h * w)
            mean = mean.detach() + g * (mean - mean.detach())
        loss = F.smooth_l1_loss(mean, a[c], beta=1.0)
        value = float(loss.detach())
        while math.isfinite(value) and value > clamp:
            loss, value = loss / 10, value / 10
        total = total + loss
    return total / len(pairs) * scale


class CodeAnchorAccumulator:
    """The official code's anchors (``cac.py`` + ``update_objective_SingleVector(..., 'mean')``): per (image,
    class) the mean feature over pixels with ``labels == predictions == c`` (≥ ``min_pixels`` of them); per class
    a running mean over those image means, v ← (v·n + x)/(n+1), with n capped at ``cap`` (so past ``cap`` images
    it is an exponential average with weight 1/(cap+1)). Image means whose entries sum to exactly 0 are skipped,
    as in the code. Image-weighted and prediction-filtered, unlike Eq. 4. Unseen classes: NaN rows."""

    def __init__(self, num_classes: int = NUM_CLASSES, min_pixels: int = 10, cap: int = 3000):
        self.num_classes, self.min_pixels, self.cap = num_classes, min_pixels, cap
        self.vectors: torch.Tensor | None = None
        self.counts = torch.zeros(num_classes, dtype=torch.float64)

    @torch.no_grad()
    def update(self, features: torch.Tensor, labels: torch.Tensor, predictions: torch.Tensor) -> None:
        if self.vectors is None:
            self.vectors = torch.zeros(self.num_classes, features.shape[1], dtype=torch.float64)
        elif features.shape[1] != self.vectors.shape[1]:
            raise ValueError(f"features: {features.shape[1]} channels, earlier batches had {self.vectors.shape[1]}")
        for _, c, mean, _count in _correct_class_means(features.detach(), labels, predictions, self.num_classes,
                                                       self.min_pixels):
            x = mean.double().cpu()
            if float(x.sum()) == 0.0:
                continue
            n = self.counts[c]
            self.vectors[c] = (self.vectors[c] * n + x) / (n + 1)
            self.counts[c] = min(float(n) + 1, self.cap)

    def anchors(self) -> torch.Tensor:
        if self.vectors is None:
            raise ValueError("CodeAnchorAccumulator.anchors(): no batch was added")
        out = self.vectors.clone()
        out[self.counts == 0] = float("nan")
        return out.float()
