"""SSF-DAN (Du et al., "SSF-DAN: Separated Semantic Feature based Domain Adaptation Network for Semantic
Segmentation", ICCV 2019; ``shared/papers/001_…``): the equation layer (settings: ``config.py``).

Class-wise feature-level adversarial adaptation: target pixels are filtered per class by a growing confidence
fraction ρ (progressive confidence strategy, Eq. 7–8), the layer4 features are separated by the
mode-downsampled pseudo-label (F^c = F ⊙ M^c) and fed to one discriminator module per class (SS-D,
``methods.ssf_dan.discriminator``), and the adversarial loss is reweighted per class by τ_c (CA-R, Eq. 9). No training
code was released (only evaluation); every gap is filled as ``reference/methods.md`` §2 says and recorded in
the ``Config`` sources. The training stage is wired elsewhere; this module holds what it computes.

Conventions: Cityscapes trainIds 0..C-1, IGNORE = 255; masks and weights never carry gradient (the generator
is pushed only through the discriminator's output on the separated features).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from bench.data.labels import IGNORE, NUM_CLASSES
from bench.metrics import class_argmax
from methods.ssf_dan.config import SWITCHES, Config, Variant, variant  # noqa: F401 - re-exported
from methods.ssf_dan.discriminator import SeparableDiscriminator, check_features_labels, separate_features

__all__ = [
    "SWITCHES", "Config", "SeparableDiscriminator", "Variant", "adversarial_loss_d",
    "adversarial_loss_g", "class_weights", "discriminator_loss", "generator_adversarial_loss", "kept_fraction",
    "kept_labels", "mode_downsample", "progressive_confidence_mask", "reweight_map", "separate_features",
    "soft_class_maps", "variant",
]


# ------------------------------------------------------------------------------------------------ checks
def _check_probs(probs: torch.Tensor, name: str = "probs") -> None:
    if probs.dim() != 4 or not probs.is_floating_point():
        raise ValueError(f"{name}: expected a float tensor [N, C, H, W] of class probabilities, got "
                         f"{probs.dtype} {tuple(probs.shape)}")
    if probs.shape[1] < 1:
        raise ValueError(f"{name}: needs at least one class channel, got shape {tuple(probs.shape)}")
    if bool(torch.isnan(probs).any()):
        raise ValueError(f"{name}: contains NaN (a diverged segmenter?); refusing to rank confidences")


def _check_kept(kept: torch.Tensor, probs: torch.Tensor) -> None:
    want = (probs.shape[0], *probs.shape[2:])
    if kept.dtype != torch.bool or tuple(kept.shape) != want:
        raise ValueError(f"kept: expected a bool tensor [N, H, W] = {want}, got {kept.dtype} {tuple(kept.shape)}")


# ------------------------------------------------------------------------------------------------ Eq. 7-9
def kept_fraction(step: int, total_steps: int, rho_upper: float) -> float:
    """SSF-DAN Eq. 7: ρ = ε/ε_total while that is below ρ_upper, else ρ_upper.

    ``step`` (ε, ≥ 0, 0-based) and ``total_steps`` (the total iteration count, > 0); ``rho_upper`` in [0, 1].
    Returns a Python float: 0 at step 0 (no target pixel takes part), growing linearly, capped at ρ_upper
    from step ρ_upper·total on (also past ``total_steps``).
    """
    if total_steps <= 0:
        raise ValueError(f"total_steps: expected > 0, got {total_steps}")
    if step < 0:
        raise ValueError(f"step: expected >= 0, got {step}")
    if not 0.0 <= rho_upper <= 1.0:
        raise ValueError(f"rho_upper: expected 0..1, got {rho_upper}")
    rho = step / total_steps
    return rho if rho < rho_upper else float(rho_upper)


def progressive_confidence_mask(probs: torch.Tensor, rho: float) -> torch.Tensor:
    """SSF-DAN Eq. 8, M^{c*} = μ(M^c, ρ): per image and predicted class keep the most confident pixels.

    ``probs``: float [N, C, H, W] (softmax). A pixel's class is its argmax (ties → the lowest class index) and
    its confidence A = its max probability. For each image n and class c with n_c predicted pixels, the
    floor(ρ·n_c) most confident are kept; ties in confidence are broken by position, the earlier pixel in
    row-major (y, x) order winning, so the result is deterministic. Returns bool [N, H, W] (union over
    classes; each pixel has one class). Edge cases: ρ = 0 keeps nothing; ρ = 1 keeps everything; a class
    with n_c = 1 needs ρ = 1; a class with no pixel keeps none. floor uses a 1e-6 slack so that e.g.
    ρ = 0.29, n_c = 100 keeps 29 (0.29·100 = 28.999… in binary). NaN in ``probs`` raises ValueError.
    """
    _check_probs(probs)
    if not 0.0 <= float(rho) <= 1.0:
        raise ValueError(f"rho: expected 0..1, got {rho}")
    with torch.no_grad():
        n, c = probs.shape[:2]
        conf, pred = probs.max(dim=1)  # [N, H, W]; ties → first (lowest) class
        group = (torch.arange(n, device=probs.device).view(-1, 1) * c + pred.reshape(n, -1)).reshape(-1)
        # Stable sorts: by confidence (descending; equal values keep row-major order), then by (image, class).
        order = torch.sort(conf.reshape(-1), descending=True, stable=True).indices
        order = order[torch.sort(group[order], stable=True).indices]
        counts = torch.bincount(group, minlength=n * c)
        starts = torch.cumsum(counts, 0) - counts
        g = group[order]
        rank = torch.arange(order.numel(), device=probs.device) - starts[g]
        quota = torch.floor(float(rho) * counts.double() + 1e-6).long()
        kept = torch.zeros(order.numel(), dtype=torch.bool, device=probs.device)
        kept[order] = rank < quota[g]
    return kept.view(n, *probs.shape[2:])


def kept_labels(probs: torch.Tensor, kept: torch.Tensor) -> torch.Tensor:
    """The filtered one-hot prediction M* of Eq. 8 as a label map: argmax (ties → lowest class) where ``kept``,
    IGNORE elsewhere. ``probs`` float [N, C, H, W], ``kept`` bool [N, H, W] → int64 [N, H, W]. No gradient."""
    _check_probs(probs)
    _check_kept(kept, probs)
    pred = class_argmax(probs.detach())
    return torch.where(kept, pred, torch.full_like(pred, IGNORE))


def class_weights(probs: torch.Tensor, kept: torch.Tensor) -> torch.Tensor:
    """SSF-DAN Eq. 9 (CA-R): τ_c = sqrt(N^c / Σ_i A_t^{c*}(i)), one weight per class over the whole batch.

    A_t^{c*} is the filtered confidence map of class c (the max probability at the ``kept`` pixels predicted c,
    zero elsewhere) and N^c "the nonzero pixel number of A_t^{c*}": the kept pixels of class c with a nonzero
    confidence — every kept pixel of a softmax, since its max is ≥ 1/C. So τ_c = 1/sqrt(mean kept confidence),
    ≥ 1, larger for poorly adapted (low-confidence) classes. The paper uses one target image per step; with
    N > 1 the sums run over the batch, so R_s and R_t of every pair share one τ.
    ``probs`` float [N, C, H, W], ``kept`` bool [N, H, W] → float32 [C]; NaN for a class with no kept pixel.
    Sums in float64. Carries no gradient.
    """
    _check_probs(probs)
    _check_kept(kept, probs)
    with torch.no_grad():
        c = probs.shape[1]
        conf, pred = probs.max(dim=1)
        sel = kept & (conf > 0)
        cls = pred[sel]
        n_c = torch.bincount(cls, minlength=c).double()
        s_c = torch.zeros(c, dtype=torch.float64, device=probs.device).index_add_(0, cls, conf[sel].double())
        tau = torch.where(n_c > 0, torch.sqrt(n_c / s_c.clamp_min(1e-300)), torch.full_like(n_c, math.nan))
    return tau.float()


# ------------------------------------------------------------------------------------------------ grids
def _onehot_fractions(labels: torch.Tensor, size, num_classes: int) -> torch.Tensor:
    """[N, C+1, h, w] fraction of each class (and, last, of IGNORE) among the pixels of each cell."""
    if labels.dim() != 3 or labels.is_floating_point():
        raise ValueError(f"labels: expected an integer tensor [N, H, W], got {labels.dtype} {tuple(labels.shape)}")
    try:
        h, w = (int(v) for v in size)
    except (TypeError, ValueError):
        h = w = 0
    if h < 1 or w < 1:
        raise ValueError(f"size: expected (h, w) with positive entries, got {size!r}")
    bad = (labels != IGNORE) & ((labels < 0) | (labels >= num_classes))
    if bool(bad.any()):
        raise ValueError(f"labels: values must be 0..{num_classes - 1} or {IGNORE} (ignore)")
    slot = torch.where(labels == IGNORE, torch.full_like(labels, num_classes), labels).long()
    onehot = torch.zeros(labels.shape[0], num_classes + 1, *labels.shape[1:], device=labels.device)
    onehot.scatter_(1, slot.unsqueeze(1), 1.0)
    # adaptive pooling's cells: rows floor(i·H/h) .. ceil((i+1)·H/h) - 1 (likewise columns)
    return F.adaptive_avg_pool2d(onehot, (h, w))


def mode_downsample(labels: torch.Tensor, size, num_classes: int = NUM_CLASSES,
                    ignore_votes: bool = True) -> torch.Tensor:
    """SSF-DAN §3.1/Fig. 2: the one-hot (pseudo-)label downsampled to the feature grid "according to the mode".

    ``labels`` integer [N, H, W] (0..C-1 or IGNORE) → int64 [N, h, w] for ``size`` = (h, w): each cell takes
    its most frequent label. Cells are adaptive pooling's: rows floor(i·H/h) to ceil((i+1)·H/h) − 1 (they
    overlap by a pixel when h does not divide H; h > H repeats pixels). ``ignore_votes=True``: IGNORE (pixels
    filtered by Eq. 8, void source pixels) competes as a label of its own, so a cell made mostly of filtered
    pixels is dropped; False: only classes vote, and a cell is IGNORE only when all its pixels are. Ties go
    to the lowest class index, and a class beats IGNORE on a tie. Counts are exact (integers in float32).
    """
    frac = _onehot_fractions(labels, size, num_classes)
    if not ignore_votes:
        frac = frac.clone()
        frac[:, num_classes] = torch.where(frac[:, :num_classes].sum(1) > 0, -1.0, 2.0)
    best = class_argmax(frac)  # first maximum: lowest class id, IGNORE (slot C) last
    return torch.where(best == num_classes, torch.full_like(best, IGNORE), best)


def soft_class_maps(labels: torch.Tensor, size, num_classes: int = NUM_CLASSES) -> torch.Tensor:
    """W_soft^c of Chen et al. 2017 as SSF-DAN §3.3 describes it (the "soft" class-wise baseline of Table 4):
    each cell's proportion of pixels predicted c. ``labels`` integer [N, H, W] → float32 [N, C, h, w]; IGNORE
    pixels count in the denominator only, so an all-ignore cell is 0 for every class."""
    return _onehot_fractions(labels, size, num_classes)[:, :num_classes]


def reweight_map(labels: torch.Tensor, tau: torch.Tensor, missing: float = 1.0) -> torch.Tensor:
    """SSF-DAN §3.4 (CA-R): R = τ_c put into the nonzero entries of M^{c*}, merged into one channel, at the
    discriminator's grid. ``labels`` integer [N, h, w] — the mode-downsampled filtered label (target: R_t;
    source: R_s, with the *target's* τ) — and ``tau`` [C] (Eq. 9) → float32 [N, h, w]: τ of the cell's class,
    0 at IGNORE cells. A class whose τ is NaN (no kept target pixel) gets ``missing``. Without CA-R pass
    ``tau = ones(C)``: R is then the kept-cell mask that removes the filtered pixels' loss (Eq. 8).
    """
    if tau.dim() != 1:
        raise ValueError(f"tau: expected [C], got {tuple(tau.shape)}")
    c = tau.shape[0]
    if labels.dim() != 3 or labels.is_floating_point():
        raise ValueError(f"labels: expected an integer tensor [N, h, w], got {labels.dtype} {tuple(labels.shape)}")
    if bool(((labels != IGNORE) & ((labels < 0) | (labels >= c))).any()):
        raise ValueError(f"labels: values must be 0..{c - 1} or {IGNORE} (ignore)")
    t = torch.nan_to_num(tau.detach().float(), nan=float(missing))
    table = torch.cat([t, t.new_zeros(1)])  # slot C = IGNORE → weight 0
    return table[torch.where(labels == IGNORE, torch.full_like(labels, c), labels).long()]


# ------------------------------------------------------------------------------------------------ Eq. 4-5
def _weighted_bce(logits: torch.Tensor, target: float, weight: torch.Tensor, reduction: str, name: str):
    """Σ weight · BCE(σ(logits), target), summed over channels; mean over N·h·w cells or plain sum."""
    if logits.dim() != 4:
        raise ValueError(f"{name}: expected discriminator logits [N, K, h, w], got {tuple(logits.shape)}")
    n, k, h, w = logits.shape
    if tuple(weight.shape) == (n, h, w):
        weight = weight.unsqueeze(1)
    elif tuple(weight.shape) != (n, k, h, w):
        raise ValueError(f"weight for {name}: expected [N, h, w] = {(n, h, w)} or [N, K, h, w] = {(n, k, h, w)}, "
                         f"got {tuple(weight.shape)}")
    if reduction not in ("mean", "sum"):
        raise ValueError(f"reduction: 'mean' or 'sum', got {reduction!r}")
    # -log(1-σ(z)) = softplus(z); -log σ(z) = softplus(-z): stable for any logit
    nll = F.softplus(logits.float() if target == 0.0 else -logits.float())
    total = (weight.detach().float() * nll).sum()
    return total / (n * h * w) if reduction == "mean" else total


def generator_adversarial_loss(d_logits_t: torch.Tensor, weight_t: torch.Tensor,
                               reduction: str = "mean") -> torch.Tensor:
    """SSF-DAN Eq. 4 with CA-R: L_adv = −Σ_{h,w} Σ_c R_t · log(1 − D^c(F_t^c)) (target pushed to source = 0).

    ``d_logits_t``: SS-D logits on the target's separated features, [N, 1, h, w] (summed classes, the text's
    reading) or [N, C, h, w] (``per_class``: Eq. 4's Σ_c literally). ``weight_t``: R_t [N, h, w] (or per channel
    [N, K, h, w]), detached — 0 drops a cell. ``reduction="mean"`` divides the sum by N·h·w (all cells, so
    filtered ones lower the loss), ``"sum"`` is Eq. 4 as printed. Returns a float32 scalar; NaN logits give
    NaN (the trainer refuses a non-finite loss); all-zero weights give 0 with a graph.
    """
    return _weighted_bce(d_logits_t, 0.0, weight_t, reduction, "d_logits_t")


def discriminator_loss(d_logits_s: torch.Tensor, d_logits_t: torch.Tensor, weight_s: torch.Tensor,
                       weight_t: torch.Tensor, reduction: str = "mean", scale: float = 0.5) -> torch.Tensor:
    """SSF-DAN Eq. 5 with CA-R: L_d = −Σ [(1−α) log(1 − D^c(F^c)) + α log D^c(F^c)], α = 0 source, 1 target,
    the source sample weighted by R_s and the target by R_t. Shapes as in :func:`generator_adversarial_loss`
    for each domain; returns ``scale`` · (L_d(source) + L_d(target)) (AdaptSegNet halves each domain).
    """
    return scale * (_weighted_bce(d_logits_s, 0.0, weight_s, reduction, "d_logits_s")
                    + _weighted_bce(d_logits_t, 1.0, weight_t, reduction, "d_logits_t"))


def adversarial_loss_g(disc: SeparableDiscriminator, features_t: torch.Tensor, labels_t: torch.Tensor | None,
                       weight_t: torch.Tensor, per_class: bool = False, reduction: str = "mean") -> torch.Tensor:
    """The generator step's L_adv (Eq. 4): SS-D on the target features separated by ``labels_t`` [N, h, w]
    (None: unmasked, for the soft/global baselines). Gradient reaches ``features_t`` only through D's output;
    labels and ``weight_t`` carry none. (D's parameters also get gradient here: the trainer back-propagates
    each optimiser's loss into its own parameters only.) Multiply by δ (Eq. 1) in the stage."""
    return generator_adversarial_loss(disc(features_t, labels_t, per_class=per_class), weight_t, reduction)


def adversarial_loss_d(disc: SeparableDiscriminator, features_s: torch.Tensor, labels_s: torch.Tensor | None,
                       weight_s: torch.Tensor, features_t: torch.Tensor, labels_t: torch.Tensor | None,
                       weight_t: torch.Tensor, per_class: bool = False, reduction: str = "mean",
                       scale: float = 0.5) -> torch.Tensor:
    """The discriminator step's L_d (Eq. 5) with "the generator's parameters frozen": both feature maps are
    detached here, so no gradient reaches the segmenter from this loss."""
    for name, f, lab in (("features_s", features_s, labels_s), ("features_t", features_t, labels_t)):
        try:
            check_features_labels(f, lab, disc.num_classes)
        except ValueError as e:
            raise ValueError(f"{name}/{e}") from None
    ds = disc(features_s.detach(), labels_s, per_class=per_class)
    dt = disc(features_t.detach(), labels_t, per_class=per_class)
    return discriminator_loss(ds, dt, weight_s, weight_t, reduction, scale)
