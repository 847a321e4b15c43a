"""CAG-UDA (Zhang et al., NeurIPS 2019, "Category Anchor-Guided Unsupervised Domain Adaptation for Semantic
Segmentation"; code RogerZhangzz/CAG_UDA): the equation layer (its Config: ``methods.cag_uda.config``).

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

import torch
import torch.nn.functional as F

from bench.data.labels import IGNORE, NUM_CLASSES
from methods.cag_uda.config import (  # noqa: F401 - re-exported: the config lives beside
    DIS_LABELS,
    TERMS,
    VARIANTS,
    Config,
    effective,
)
from methods.source_only import segmentation_ce


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


def cag_objective(terms: dict[str, torch.Tensor], lambda1: float, lambda2: float) -> dict[str, torch.Tensor]:
    """Eq. 12 of CAG-UDA: L = L^s_CE + λ1·(L^s_dis + L^t_dis) + λ2·(L^t_CE + L^tP_CE), as its weighted terms
    ``{name: weight·term}`` (in ``TERMS`` order) whose sum is L: the trainer sums them and logs each.

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
    return {k: weight[k] * terms[k].reshape(()) for k in TERMS if k in terms}


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
