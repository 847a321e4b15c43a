"""BiSMAP (Lu et al., "Bidirectional Self-Training with Multiple Anisotropic Prototypes for Domain Adaptive
Semantic Segmentation", ACM MM 2022, arXiv 2204.07730; code luyvlei/BiSMAPs): settings and equations.

Forward direction: per-class GMMs ("multiple anisotropic prototypes", MAPs) fitted on the warm-up model's
features of correctly classified source pixels (Eq. 3-5) label target pixels by log-density (Eq. 6).
Backward direction: a source transferability map (STM) from the distance to target K-means prototypes and
normalised class entropies (Eq. 7-9) re-weights the source CE (Eq. 10). Self-training adds symmetric CE on the
pseudo-labels (Eq. 11) and mean-teacher consistency (Eq. 12). Paper/code disagreements: reference/methods.md §3.4.
Every equation below is a pure function; the stages that run them live elsewhere.
"""


from __future__ import annotations

import math
from typing import NamedTuple

import numpy as np
import torch
import torch.nn.functional as F

from bench.data.labels import IGNORE
from methods.bismap.config import Config, delta_for  # noqa: F401 - re-exported: the method's settings


# ------------------------------------------------------------------------------------------ Eq. 3-5: MAPs
class ClassGMMs(NamedTuple):
    """C diagonal GMMs of K components over D-dim features. Classes without a fit hold NaN rows."""

    weights: torch.Tensor      # [C, K]  π_{c,k}, each fitted row sums to 1
    means: torch.Tensor        # [C, K, D]  μ_{c,k}
    variances: torch.Tensor    # [C, K, D]  diagonal of Σ_{c,k}, >= reg_covar
    n_samples: torch.Tensor    # [C] int64: features the class's EM ran on (0 = not fitted)
    n_iter: torch.Tensor       # [C] int64: EM iterations run
    converged: torch.Tensor    # [C] bool
    lower_bound: torch.Tensor  # [C] mean log-likelihood at the last E-step (NaN if not fitted / max_iter 0)


def correct_source_labels(labels: torch.Tensor, predictions: torch.Tensor) -> torch.Tensor:
    """Eq. 3 of BiSMAP: Λ_c keeps source pixels with y_i = c and argmax G(x)_i = c. Returns ``labels`` with every
    other pixel set to IGNORE (any shape, integer; ``predictions`` of the same shape). Ignore stays ignore."""
    if labels.shape != predictions.shape:
        raise ValueError(f"predictions: expected the labels' shape {tuple(labels.shape)}, got "
                         f"{tuple(predictions.shape)}")
    return torch.where(labels == predictions, labels, torch.full_like(labels, IGNORE))


def _estimate(xx: torch.Tensor, resp: torch.Tensor, reg: float):
    """M-step (scikit-learn's diag formulas) on xx = [x, x²] ([N, 2D]): N_k = Σ r + 10·eps, μ = Σ r x / N_k,
    σ² = Σ r x² / N_k − μ² + reg (one matmul for both sums)."""
    nk = resp.sum(0) + 10 * torch.finfo(xx.dtype).eps
    sums = (resp.T @ xx) / nk[:, None]
    d = xx.shape[1] // 2
    means = sums[:, :d]
    var = sums[:, d:] - means * means + reg
    return nk / nk.sum(), means, var.clamp_min(reg)


def _log_gauss(xx: torch.Tensor, means: torch.Tensor, var: torch.Tensor) -> torch.Tensor:
    """Eq. 5 with diagonal Σ: log N(x | μ_k, σ²_k) for xx = [x, x²] ([N, 2D]) and [K, D] parameters → [N, K].
    The Mahalanobis term is expanded into one matmul (x·(−2μP) + x²·P + μ²P): callers centre x near the means
    so the expansion stays accurate."""
    prec = 1.0 / var
    maha = xx @ torch.cat([-2.0 * means * prec, prec], 1).T + (means * means * prec).sum(1)
    return -0.5 * (means.shape[1] * math.log(2 * math.pi) + maha + torch.log(var).sum(1))


def _nearest(x: torch.Tensor, x2s: torch.Tensor, centres: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    d2 = x2s[:, None] - 2.0 * (x @ centres.T) + (centres * centres).sum(1)
    best, idx = d2.min(1)
    return best.clamp_min(0), idx


def _kmeans_resp(x: torch.Tensor, k: int, method: str, gen: torch.Generator, iters: int) -> torch.Tensor:
    """One-hot [N,K] responsibilities of a hard clustering: k-means++ seeding + Lloyd, or K random samples."""
    n = x.shape[0]
    x2s = (x * x).sum(1)
    if method == "random":
        centres = x[torch.randperm(n, generator=gen)[:k].to(x.device)]
    else:  # k-means++ seeding: each next centre drawn ∝ squared distance to the nearest chosen one
        first = int(torch.randint(n, (1,), generator=gen))
        centres = x[first:first + 1]
        for _ in range(1, k):
            d2, _ = _nearest(x, x2s, centres)
            cum = torch.cumsum(d2.double(), 0)
            u = float(torch.rand((), generator=gen, dtype=torch.float64))
            pick = int(torch.searchsorted(cum, cum[-1:] * u).clamp_max(n - 1)) if cum[-1] > 0 else \
                int(torch.randint(n, (1,), generator=gen))  # all remaining points coincide with a centre
            centres = torch.cat([centres, x[pick:pick + 1]])
    _, assign = _nearest(x, x2s, centres)
    for _ in range(iters if method != "random" else 0):
        onehot = F.one_hot(assign, k).to(x.dtype)
        counts = onehot.sum(0)
        sums = onehot.T @ x
        centres = torch.where(counts[:, None] > 0, sums / counts.clamp_min(1)[:, None], centres)  # empty: keep
        _, new = _nearest(x, x2s, centres)
        if torch.equal(new, assign):
            break
        assign = new
    return F.one_hot(assign, k).to(x.dtype)


def _class_generator(seed: int, c: int) -> torch.Generator:
    # one stream per (seed, class): a class's draws do not depend on the other classes' sizes
    state = np.random.SeedSequence([int(seed), int(c)]).generate_state(1, dtype=np.uint64)[0]
    return torch.Generator().manual_seed(int(state))


def fit_class_gmms(features: torch.Tensor, labels: torch.Tensor, num_classes: int, n_components: int = 8,
                   max_samples: int = 300_000, seed: int = 0, *, init="kmeans", max_iter: int = 100,
                   tol: float = 1e-3, reg_covar: float = 1e-6, min_samples: int | None = None,
                   kmeans_iters: int = 20, dtype: torch.dtype | None = None) -> ClassGMMs:
    """Eq. 3-5 of BiSMAP: one K-component diagonal-covariance GMM per class, fitted by EM in torch on the
    device of ``features``.

    features: float [N, D]; labels: integer [N] in 0..num_classes-1 or IGNORE (255; not used). For Eq. 3 pass
    ``correct_source_labels(gt, prediction)``. A class with more than ``max_samples`` features is subsampled
    without replacement (a seeded generator per (seed, class), drawn on the CPU: the same subset on any device).
    A class with fewer than ``min_samples`` features (default 10·K) gets NaN rows and n_samples 0.

    init: "kmeans" (k-means++ seeding + up to ``kmeans_iters`` Lloyd steps), "random" (K random samples as
    centres), each giving one-hot responsibilities from which the first parameters are estimated (as
    scikit-learn's init does), or explicit start values: any object with ``weights`` [C,K], ``means`` [C,K,D]
    and ``variances`` [C,K,D] (e.g. a ClassGMMs); its NaN rows are not fitted.
    EM follows scikit-learn's GaussianMixture(covariance_type="diag") step for step: per iteration an E-step
    (whose mean log-likelihood is the lower bound), an M-step with ``reg_covar`` added to each variance, and a
    stop when the lower bound moved less than ``tol``. ``max_iter`` 0 returns the initial parameters.
    dtype: computation dtype (default: float64 if the input is float64, else float32); the data are centred on
    their class mean first (EM is translation-equivariant) so float32's expanded distances stay accurate.
    Returns a ClassGMMs with weights [C,K], means [C,K,D], variances [C,K,D] in that dtype.
    """
    _check_gmm_inputs(features, labels, num_classes, n_components, max_samples, init)
    dt = dtype or (torch.float64 if features.dtype == torch.float64 else torch.float32)
    dev, d, k = features.device, features.shape[1], n_components
    min_samples = 10 * k if min_samples is None else max(int(min_samples), k)
    explicit = hasattr(init, "means")
    if explicit:
        _check_explicit_init(init, num_classes, k, d)
    nan = float("nan")
    out_w = torch.full((num_classes, k), nan, dtype=dt, device=dev)
    out_mu = torch.full((num_classes, k, d), nan, dtype=dt, device=dev)
    out_var = torch.full((num_classes, k, d), nan, dtype=dt, device=dev)
    n_used = torch.zeros(num_classes, dtype=torch.long)
    n_iter = torch.zeros(num_classes, dtype=torch.long)
    converged = torch.zeros(num_classes, dtype=torch.bool)
    bound = torch.full((num_classes,), nan, dtype=torch.float64)
    for c in range(num_classes):
        idx = (labels == c).nonzero().squeeze(1)
        if idx.numel() < min_samples or (explicit and bool(torch.isnan(init.means[c]).any())):
            continue
        gen = _class_generator(seed, c)
        if idx.numel() > max_samples:
            idx = idx[torch.randperm(idx.numel(), generator=gen)[:max_samples].to(idx.device)]
        x = features[idx].to(dt)
        centre = x.mean(0)
        x = x - centre
        xx = torch.cat([x, x * x], 1)
        if explicit:
            start = (init.weights[c].to(dev, dt), init.means[c].to(dev, dt) - centre, init.variances[c].to(dev, dt))
        else:
            start = _estimate(xx, _kmeans_resp(x, k, init, gen, kmeans_iters), reg_covar)
        (w, mu, var), n_iter[c], bound[c], converged[c] = _em(xx, start, max_iter, tol, reg_covar)
        out_w[c], out_mu[c], out_var[c], n_used[c] = w, mu + centre, var, x.shape[0]
    return ClassGMMs(out_w, out_mu, out_var, n_used, n_iter, converged, bound)


def _em(xx: torch.Tensor, params: tuple, max_iter: int, tol: float, reg: float):
    """scikit-learn's diag EM from ``params`` = (π, μ, σ²) on xx = [x, x²]: E-step (its mean log-likelihood is
    the lower bound), M-step, stop once the bound moves less than ``tol``. → ((π, μ, σ²), iterations run, the
    last lower bound (NaN when ``max_iter`` is 0), converged)."""
    w, mu, var = params
    lb = -math.inf
    for it in range(1, max_iter + 1):
        prev = lb
        log_prob = _log_gauss(xx, mu, var) + torch.log(w)
        log_norm = torch.logsumexp(log_prob, 1, keepdim=True)
        lb = float(log_norm.mean())
        w, mu, var = _estimate(xx, torch.exp(log_prob - log_norm), reg)
        if abs(lb - prev) < tol:
            return (w, mu, var), it, lb, True
    return (w, mu, var), max_iter, lb if max_iter else float("nan"), False


def _check_gmm_inputs(features, labels, num_classes: int, n_components: int, max_samples: int, init) -> None:
    """fit_class_gmms' argument checks: one clear error per bad input."""
    if features.ndim != 2 or labels.ndim != 1 or labels.shape[0] != features.shape[0]:
        raise ValueError(f"features/labels: expected [N, D] and [N], got {tuple(features.shape)} and "
                         f"{tuple(labels.shape)}")
    if not features.is_floating_point() or labels.is_floating_point():
        raise ValueError(f"features/labels: expected float features and integer labels, got {features.dtype} "
                         f"and {labels.dtype}")
    if num_classes < 1 or n_components < 1 or max_samples < n_components:
        raise ValueError(f"num_classes/n_components/max_samples: expected >= 1 and max_samples >= n_components, "
                         f"got {num_classes}, {n_components}, {max_samples}")
    bad = (labels != IGNORE) & ((labels < 0) | (labels >= num_classes))
    if bad.any():
        raise ValueError(f"labels: values must be 0..{num_classes - 1} or {IGNORE}; found "
                         f"{sorted(set(labels[bad].unique().tolist()))[:5]}")
    if not torch.isfinite(features).all():
        raise ValueError("features: NaN or infinite entries")
    if init not in ("kmeans", "random") and not hasattr(init, "means"):
        raise ValueError(f"init: expected 'kmeans', 'random' or an object with weights/means/variances, got {init!r}")


def _check_explicit_init(init, num_classes: int, k: int, d: int) -> None:
    shapes = (tuple(init.weights.shape), tuple(init.means.shape), tuple(init.variances.shape))
    if shapes != ((num_classes, k), (num_classes, k, d), (num_classes, k, d)):
        raise ValueError(f"init: expected weights [{num_classes},{k}], means/variances [{num_classes},{k},{d}],"
                         f" got {shapes}")
    if (init.variances <= 0).any() or (init.weights < 0).any():
        raise ValueError("init: variances must be > 0 and weights >= 0 (NaN rows mark classes to skip)")


def log_density(gmms, features: torch.Tensor, chunk_size: int = 65_536) -> torch.Tensor:
    """Eq. 4 of BiSMAP: p_c(f) = log Σ_k π_{c,k} N(f | μ_{c,k}, Σ_{c,k}) (Eq. 5, diagonal Σ) for every class.

    gmms: anything with ``weights`` [C,K], ``means`` [C,K,D], ``variances`` [C,K,D] (a ClassGMMs); features:
    float [N, D] → [N, C] in the GMMs' dtype, by log-sum-exp over components (no underflow for far points).
    A class whose parameters hold NaN (not fitted) gives -inf; a NaN feature row gives NaN (which
    ``density_pseudo_labels`` leaves unlabelled). Chunks of ``chunk_size`` rows bound the memory
    to [chunk, K] per class; each class's features are centred on that class's mean before the expanded
    Mahalanobis product so float32 keeps relative precision.
    """
    w, mu, var = gmms.weights, gmms.means, gmms.variances
    if mu.ndim != 3 or w.shape != mu.shape[:2] or var.shape != mu.shape:
        raise ValueError(f"gmms: expected weights [C,K], means/variances [C,K,D], got {tuple(w.shape)}, "
                         f"{tuple(mu.shape)}, {tuple(var.shape)}")
    if features.ndim != 2 or features.shape[1] != mu.shape[2]:
        raise ValueError(f"features: expected [N, {mu.shape[2]}], got {tuple(features.shape)}")
    n, c_total = features.shape[0], mu.shape[0]
    out = torch.full((n, c_total), -math.inf, dtype=mu.dtype, device=mu.device)
    for c in range(c_total):
        if bool(torch.isnan(mu[c]).any() | torch.isnan(var[c]).any() | torch.isnan(w[c]).any()):
            continue
        centre = (w[c, :, None] * mu[c]).sum(0)
        m, v, log_w = mu[c] - centre, var[c], torch.log(w[c])
        for s in range(0, n, chunk_size):
            x = features[s:s + chunk_size].to(mu.device, mu.dtype) - centre
            out[s:s + chunk_size, c] = torch.logsumexp(_log_gauss(torch.cat([x, x * x], 1), m, v) + log_w, 1)
    return out


# ------------------------------------------------------------------------------------------ Eq. 6
def density_pseudo_labels(log_density: torch.Tensor, delta: float) -> torch.Tensor:
    """Eq. 6 of BiSMAP: the class r = argmax_c p_c(f) where p_r(f) >= δ, else IGNORE (255).

    log_density: float [..., C] (class dimension last, e.g. ``log_density``'s [N, C]) → int64 [...]. NaN
    entries count as -inf; a pixel whose classes are all -inf/NaN is IGNORE whatever δ; ties go to the lowest
    class index.
    """
    if log_density.ndim < 1 or log_density.shape[-1] < 1 or not log_density.is_floating_point():
        raise ValueError(f"log_density: expected a float tensor [..., C], got {log_density.dtype} "
                         f"{tuple(log_density.shape)}")
    if math.isnan(delta):
        raise ValueError("delta: NaN")
    s = torch.nan_to_num(log_density, nan=-math.inf, posinf=math.inf, neginf=-math.inf)
    best, label = s.max(-1)
    keep = (best >= delta) & (best > -math.inf)
    return torch.where(keep, label, torch.full_like(label, IGNORE))


# ------------------------------------------------------------------------------------------ Eq. 7-9: STM
def prototype_distance(features: torch.Tensor, prototypes: torch.Tensor) -> torch.Tensor:
    """Eq. 7 of BiSMAP: D_i = min_j ‖f̂_i − A_j‖₂ for float features [N, D] and target prototypes [J, D] → [N].
    Computed without the matmul expansion (exact 0 for a feature equal to a prototype)."""
    if features.ndim != 2 or prototypes.ndim != 2 or features.shape[1] != prototypes.shape[1] or \
            prototypes.shape[0] == 0:
        raise ValueError(f"features/prototypes: expected [N, D] and [J>0, D], got {tuple(features.shape)} and "
                         f"{tuple(prototypes.shape)}")
    return torch.cdist(features, prototypes.to(features), compute_mode="donot_use_mm_for_euclid_dist").min(1)[0]


def mean_class_entropy(probs: torch.Tensor, labels: torch.Tensor, num_classes: int) -> torch.Tensor:
    """e_c of Eq. 8 of BiSMAP: the mean prediction entropy −Σ_k p_k ln p_k of the pixels (pseudo-)labelled c.

    probs: float [N, C] softmax outputs of the source-trained model on target pixels; labels: integer [N]
    (pseudo-labels, IGNORE skipped) → float64 [num_classes]; NaN for a class with no pixel. 0·ln 0 = 0.
    """
    if probs.ndim != 2 or labels.shape != probs.shape[:1] or probs.shape[1] != num_classes:
        raise ValueError(f"probs/labels: expected [N, {num_classes}] and [N], got {tuple(probs.shape)} and "
                         f"{tuple(labels.shape)}")
    valid = labels != IGNORE
    if ((labels[valid] < 0) | (labels[valid] >= num_classes)).any():
        raise ValueError(f"labels: values must be 0..{num_classes - 1} or {IGNORE}")
    p = probs.double()
    ent = -torch.xlogy(p, p).sum(1)
    lab = labels[valid].long()
    sums = torch.zeros(num_classes, dtype=torch.float64, device=p.device).index_add_(0, lab, ent[valid])
    counts = torch.bincount(lab, minlength=num_classes).double()
    return torch.where(counts > 0, sums / counts.clamp_min(1), torch.full_like(sums, float("nan")))


def normalised_class_entropy(class_entropy: torch.Tensor) -> torch.Tensor:
    """Eq. 8 of BiSMAP: e'_c = (e_c − e_min) / (e_max − e_min) over the finite entries of float [C] → [C].
    A NaN e_c (class never labelled on the target) gives e'_c = 1: without evidence its source pixels are not
    degraded (our choice; the paper is silent). All equal entries give 0 (no class is lifted)."""
    e = class_entropy.double()
    finite = torch.isfinite(e)
    if e.ndim != 1 or not finite.any():
        raise ValueError(f"class_entropy: expected a [C] tensor with at least one finite entry, got {e.tolist()}")
    lo, hi = e[finite].min(), e[finite].max()
    norm = (e - lo) / (hi - lo) if hi > lo else torch.zeros_like(e)
    return torch.where(finite, norm, torch.ones_like(e))


def source_transferability(distance: torch.Tensor, d_mean, class_entropy: torch.Tensor,
                           labels: torch.Tensor) -> torch.Tensor:
    """Eq. 9 (with Eq. 8) of BiSMAP: w_i = min(exp(−D_i² / d_mean² · ln 2) + e'_{y_i}, 1).

    distance: float [...] D of Eq. 7 per pixel (already brought to the label grid); d_mean: positive scalar, the
    mean D over the source set (w = 0.5 + e' where D = d_mean); class_entropy: raw e_c [C] (NaN allowed, see
    ``normalised_class_entropy``); labels: integer [...] source ground truth, same shape as ``distance``.
    Returns float [...] in [0, 1]; IGNORE pixels get 0. ``log 2`` in the paper is the natural log (the code's
    torch.log(2)); the code's lower clip at 0 never binds.
    """
    if not distance.is_floating_point():
        raise ValueError(f"distance: expected a float tensor, got {distance.dtype}")
    if distance.shape != labels.shape:
        raise ValueError(f"labels: expected the distance map's shape {tuple(distance.shape)}, got "
                         f"{tuple(labels.shape)}")
    d_mean = float(d_mean)
    if not d_mean > 0 or not math.isfinite(d_mean):
        raise ValueError(f"d_mean: expected a positive finite scalar, got {d_mean}")
    if torch.isnan(distance).any() or (distance < 0).any():
        raise ValueError("distance: NaN or negative entries")
    e = normalised_class_entropy(class_entropy).to(distance.device)
    c = e.shape[0]
    valid = labels != IGNORE
    if ((labels[valid] < 0) | (labels[valid] >= c)).any():
        raise ValueError(f"labels: values must be 0..{c - 1} or {IGNORE}")
    lift = e[torch.where(valid, labels, torch.zeros_like(labels)).long()].to(distance.dtype)
    w = torch.clamp(torch.exp(-(distance / d_mean) ** 2 * math.log(2.0)) + lift, max=1.0)
    return torch.where(valid, w, torch.zeros_like(w))


# ------------------------------------------------------------------------------------------ Eq. 10-12: losses
def _upsample_to(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    if logits.ndim != 4 or target.ndim != 3 or logits.shape[0] != target.shape[0]:
        raise ValueError(f"logits/target: expected [B, C, h, w] and [B, H, W], got {tuple(logits.shape)} and "
                         f"{tuple(target.shape)}")
    if logits.shape[-2:] != target.shape[-2:]:  # the code's bilinear, align_corners=True upsampling
        logits = F.interpolate(logits, size=target.shape[-2:], mode="bilinear", align_corners=True)
    return logits.float()


def stm_weighted_ce(logits: torch.Tensor, labels: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """Eq. 10 of BiSMAP: Σ_i −w_i log p_{i,y_i}, divided by the number of non-IGNORE pixels (the code's
    normalisation). logits [B,C,h,w] (upsampled to the labels), labels [B,H,W], weight [B,H,W] (the STM).
    Scalar; 0 with a graph when every pixel is IGNORE."""
    logits = _upsample_to(logits, labels)
    if weight.shape != labels.shape:
        raise ValueError(f"weight: expected the labels' shape {tuple(labels.shape)}, got {tuple(weight.shape)}")
    valid = labels != IGNORE
    if not valid.any():
        return logits.sum() * 0.0
    if ((labels[valid] < 0) | (labels[valid] >= logits.shape[1])).any():
        raise ValueError(f"labels: values must be 0..{logits.shape[1] - 1} or {IGNORE}")
    ce = F.cross_entropy(logits, labels.long(), ignore_index=IGNORE, reduction="none")
    return (ce * weight.to(ce)).sum() / valid.sum()


def symmetric_cross_entropy(logits: torch.Tensor, target: torch.Tensor, alpha: float = 0.1, beta: float = 1.0,
                            clamp: float = 1e-4) -> torch.Tensor:
    """Eq. 11 of BiSMAP (Wang et al. ICCV 2019): α·CE(ŷ, p) + β·RCE, RCE = −Σ_c p_c log clamp(ŷ_c, 1e-4, 1)
    = −(1 − p_y)·ln(1e-4) for a one-hot ŷ. logits [B,C,h,w] (bilinearly upsampled to the target), target
    [B,H,W] pseudo-labels with IGNORE; each term is averaged over non-IGNORE pixels. Scalar; 0 with a graph
    when every pixel is IGNORE. The code also clamps p to [1e-7, 1] before RCE (a ≤1e-6 difference); we do not.
    """
    logits = _upsample_to(logits, target)
    valid = target != IGNORE
    if not valid.any():
        return logits.sum() * 0.0
    if ((target[valid] < 0) | (target[valid] >= logits.shape[1])).any():
        raise ValueError(f"target: values must be 0..{logits.shape[1] - 1} or {IGNORE}")
    safe = torch.where(valid, target, torch.zeros_like(target)).long()
    log_p = F.log_softmax(logits, 1)
    log_p_y = log_p.gather(1, safe[:, None])[:, 0]
    ce = -log_p_y[valid].mean()
    rce = -(1.0 - log_p_y.exp()[valid]).mean() * math.log(clamp)
    return alpha * ce + beta * rce


def consistency_kl(student_logits: torch.Tensor, teacher_logits: torch.Tensor, valid: torch.Tensor | None = None,
                   reduction: str = "element_mean") -> torch.Tensor:
    """Eq. 12 of BiSMAP: Σ_c p̃_c (log p̃_c − log p_c), p̃ the EMA teacher's softmax (no gradient), p the
    student's. Logits [B,C,H,W] of equal shape; valid: optional bool [B,H,W] (the code: pixels outside the
    cut-out). reduction: "element_mean" (the code's nn.KLDivLoss() default: ÷ (#valid pixels · C)) or
    "pixel_mean" (÷ #valid pixels). Scalar; 0 with a graph when no pixel is valid."""
    if student_logits.shape != teacher_logits.shape or student_logits.ndim != 4:
        raise ValueError(f"teacher_logits: expected the student's shape [B,C,H,W] {tuple(student_logits.shape)}, "
                         f"got {tuple(teacher_logits.shape)}")
    if reduction not in ("element_mean", "pixel_mean"):
        raise ValueError(f"reduction: expected 'element_mean' or 'pixel_mean', got {reduction!r}")
    b, c, h, w = student_logits.shape
    if valid is None:
        valid = torch.ones((b, h, w), dtype=torch.bool, device=student_logits.device)
    if valid.shape != (b, h, w):
        raise ValueError(f"valid: expected [B,H,W] = {(b, h, w)}, got {tuple(valid.shape)}")
    log_p = F.log_softmax(student_logits.float(), 1)
    log_q = F.log_softmax(teacher_logits.detach().float(), 1)
    kl = (log_q.exp() * (log_q - log_p)).sum(1)
    n = valid.sum()
    if n == 0:
        return student_logits.sum() * 0.0
    return kl[valid].sum() / (n * (c if reduction == "element_mean" else 1))


def consistency_rampup(iteration: int, length: int) -> float:
    """The code's sigmoid ramp-up of λ: exp(−5 (1 − t/T)²) with t = clip(iteration, 0, T); 1 when T = 0."""
    if length <= 0:
        return 1.0
    phase = 1.0 - min(max(iteration, 0), length) / length
    return math.exp(-5.0 * phase * phase)


def distillation_kd(student_logits: torch.Tensor, teacher_logits: torch.Tensor, variant: str = "paper"):
    """KD term of the distillation stage (ProDA, used by BiSMAP), mean over B·C·H·W elements (the code's).
    "paper": Σ q (log q − log p), KL(teacher ‖ student). "code": F.kl_div(softmax(student), softmax(teacher)),
    i.e. Σ q (log q − p): the missing log acknowledged in microsoft/ProDA#20/#43. Logits [B,C,H,W], equal shape."""
    if student_logits.shape != teacher_logits.shape or student_logits.ndim != 4:
        raise ValueError(f"teacher_logits: expected the student's shape [B,C,H,W] {tuple(student_logits.shape)}, "
                         f"got {tuple(teacher_logits.shape)}")
    if variant not in ("paper", "code"):
        raise ValueError(f"variant: expected 'paper' or 'code', got {variant!r}")
    q = F.softmax(teacher_logits.detach().float(), 1)
    student = F.log_softmax(student_logits.float(), 1) if variant == "paper" else F.softmax(student_logits.float(), 1)
    return (torch.xlogy(q, q) - q * student).mean()
