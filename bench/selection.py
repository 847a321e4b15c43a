"""Label-free model-selection criteria: score a model (a hyperparameter value, a checkpoint) without target labels.

Each criterion is a pure function of a model's outputs on *unlabelled* target images (and, for DEV, of features
and per-sample losses on labelled *source* validation data) → one float. Segmentation outputs are pixels: pass
probabilities as ``[N, C]`` rows or as maps ``[B, C, H, W]`` (class axis 1; every pixel becomes a row), and
subsample pixels (:func:`sample_rows`) before the quadratic SND. :data:`CRITERIA` says for each criterion whether
lower or higher is better (Ray Tune's ``mode``).
"""

from __future__ import annotations

import numpy as np

EPS = 1e-12

# name -> the direction that is better (Tune's ``mode``) and what it measures
CRITERIA = {
    "entropy": ("min", "mean prediction entropy on target (Morerio et al., ICLR 2018)"),
    "info_max": ("max", "mutual information of inputs and predictions on target (Gomes et al., NIPS 2010)"),
    "snd": ("max", "soft neighbourhood density of target predictions (Saito et al., ICCV 2021)"),
    "iwcv": ("min", "importance-weighted source validation loss (Sugiyama et al., JMLR 2007)"),
    "dev": ("min", "deep embedded validation: IWCV with a control variate (You et al., ICML 2019)"),
}


def _numpy(x) -> np.ndarray:
    if hasattr(x, "detach"):  # a torch tensor, on any device
        x = x.detach().float().cpu().numpy()
    return np.asarray(x, dtype=np.float64)


def as_rows(x) -> np.ndarray:
    """``[N, D]`` rows from ``[N, D]`` or from maps ``[B, D, *spatial]`` (axis 1 = classes/channels; every pixel
    a row), float64."""
    x = _numpy(x)
    if x.ndim == 2:
        return x
    if x.ndim < 2:
        raise ValueError(f"expected [N, D] rows or [B, D, H, W] maps, got shape {x.shape}")
    return np.moveaxis(x, 1, -1).reshape(-1, x.shape[1])


def sample_rows(x, n: int, seed: int = 0) -> np.ndarray:
    """``n`` rows (pixels) of :func:`as_rows` drawn without replacement with ``seed`` (all of them when fewer)."""
    rows = as_rows(x)
    if len(rows) <= n:
        return rows
    return rows[np.sort(np.random.default_rng(seed).choice(len(rows), n, replace=False))]


def _probs(p) -> np.ndarray:
    p = as_rows(p)
    if (p < -1e-6).any() or not np.allclose(p.sum(1), 1.0, atol=1e-3):
        raise ValueError("expected class probabilities (softmax outputs; rows summing to 1), not logits")
    return np.clip(p, 0.0, 1.0)


def _entropy_rows(p: np.ndarray) -> np.ndarray:
    return -(p * np.log(p + EPS)).sum(axis=-1)


# ---- target-only criteria ----------------------------------------------------------------------------------


def prediction_entropy(probs) -> float:
    """Mean Shannon entropy (nats) of the predicted class distributions on target: (1/N) Σ_i H(p_i), lower is
    better. Morerio, Cavazza & Murino, "Minimal-Entropy Correlation Alignment for Unsupervised Deep Domain
    Adaptation", ICLR 2018: the target entropy (the entropy loss of Grandvalet & Bengio, NIPS 2005) used there to
    validate the alignment weight λ without target labels. It rewards confident predictions, right or
    wrong — a collapsed model scores well; :func:`information_maximization` guards against that."""
    return float(_entropy_rows(_probs(probs)).mean())


def information_maximization(probs) -> float:
    """Mutual information between inputs and predicted classes, I = H(p̄) − (1/N) Σ_i H(p_i) with p̄ the mean
    prediction: confident (second term) *and* diverse (first term) predictions; higher is better. Gomes,
    Krause & Perona, "Discriminative Clustering by Regularized Information Maximization", NIPS 2010: the
    empirical estimate of I(x; y) in their RIM objective; the same two terms are SHOT's L_ent + L_div (Liang et
    al., ICML 2020)."""
    p = _probs(probs)
    return float(_entropy_rows(p.mean(0)) - _entropy_rows(p).mean())


def soft_neighbourhood_density(probs, temperature: float = 0.05, chunk: int = 1024) -> float:
    """Soft neighbourhood density, higher is better. Saito, Kim, Teterwak, Sclaroff, Darrell & Saenko, "Tune it
    the Right Way: Unsupervised Validation of Domain Adaptation via Soft Neighborhood Density", ICCV 2021, §3.2:
    the softmax outputs are L2-normalised, M_ij = f_i·f_j is their cosine similarity, P_ij =
    exp(M_ij/τ) / Σ_{j'≠i} exp(M_ij'/τ) the soft neighbour distribution of i over the other samples, and SND =
    −(1/N) Σ_i Σ_{j≠i} P_ij log P_ij (τ = 0.05 as in the paper). Dense neighbourhoods (outputs clustered with
    their neighbours) give spread-out P and high entropy. Blind spot: near-uniform outputs are all alike and score
    the maximum, log(N − 1) — read it beside the entropy or the mutual information. Quadratic in N: subsample
    pixels first."""
    f = as_rows(probs)
    f = f / np.maximum(np.linalg.norm(f, axis=1, keepdims=True), EPS)
    n = len(f)
    if n < 3:
        raise ValueError(f"SND needs at least 3 samples, got {n}")
    total = 0.0
    for start in range(0, n, chunk):  # rows in chunks: an N×N matrix of 10^4 pixels would be 800 MB
        logits = f[start:start + chunk] @ f.T / temperature
        logits[np.arange(len(logits)), np.arange(start, start + len(logits))] = -np.inf  # j ≠ i
        logits -= logits.max(axis=1, keepdims=True)
        logp = logits - np.log(np.exp(logits).sum(axis=1, keepdims=True))
        p = np.exp(logp)
        total += -(p * np.where(np.isfinite(logp), logp, 0.0)).sum()  # the masked self term is 0 · (−∞) := 0
    return float(total / n)


# ---- importance-weighted validation (source labels, target features) -------------------------------------


def fit_domain_classifier(source, target, c: float = 1.0, iters: int = 100, tol: float = 1e-10):
    """An L2-regularised logistic regression telling target (1) from source (0) features, fitted by Newton's
    method on 0.5‖w‖² + c Σ_i log(1 + exp(−y_i (w·x_i + b))) (intercept not penalised: scikit-learn's
    ``LogisticRegression(C=c)`` objective). Returns ``(w, b)``. The domain classifier of importance-weighted
    validation (Sugiyama et al. 2007, §4; You et al. 2019, §4.1 — their code fits an MLP; a linear one on deep
    features keeps this exact and dependency-free)."""
    xs, xt = as_rows(source), as_rows(target)
    x = np.concatenate([xs, xt])
    y = np.r_[np.zeros(len(xs)), np.ones(len(xt))]
    xb = np.c_[x, np.ones(len(x))]
    reg = np.r_[np.ones(x.shape[1]), 0.0] / c  # no penalty on the intercept
    theta = np.zeros(xb.shape[1])
    for _ in range(iters):
        p = 1.0 / (1.0 + np.exp(-(xb @ theta)))
        grad = xb.T @ (p - y) + reg * theta
        hess = (xb * (p * (1 - p))[:, None]).T @ xb + np.diag(reg)
        step = np.linalg.solve(hess + 1e-12 * np.eye(len(theta)), grad)
        theta -= step
        if np.abs(step).max() < tol:
            break
    return theta[:-1], float(theta[-1])


def domain_probability(features, w, b) -> np.ndarray:
    """P(target | x) of :func:`fit_domain_classifier`'s model for each row of ``features``."""
    return 1.0 / (1.0 + np.exp(-(as_rows(features) @ w + b)))


def importance_weights(p_target, n_source: int, n_target: int) -> np.ndarray:
    """Density ratio w(x) = p_t(x) / p_s(x) from a domain classifier: (N_s / N_t) · P(target|x) / P(source|x)
    (Bayes' rule with the classifier's training priors). You, Wang, Long & Jordan, "Towards Accurate Model
    Selection in Deep Unsupervised Domain Adaptation", ICML 2019, §4.1 (the discriminative density-ratio
    estimate; ``get_weight`` of their code)."""
    p = np.clip(_numpy(p_target), EPS, 1 - EPS)
    return (n_source / n_target) * p / (1 - p)


def importance_ess(weights) -> float:
    """Effective sample size of importance weights, (Σ_j w_j)² / Σ_j w_j²: N for equal weights, 1 when one
    weight holds all the mass. Kish, "Survey Sampling" (1965), the design effect of weighting; used for
    importance sampling by Kong (1992) and Owen, "Monte Carlo theory, methods and examples" (2013), Eq. 9.13.
    IWCV and DEV average N losses but rest on about this many when the weights are heavy-tailed."""
    weights = _numpy(weights).ravel()
    if len(weights) == 0 or (weights < 0).any() or not np.isfinite(weights).all():
        raise ValueError(f"importance weights must be finite, non-negative and non-empty; got {len(weights)} rows")
    total = weights.sum()
    if total == 0:
        return 0.0
    w = weights / weights.max()  # scaled: the ratio is scale-free and the squares cannot overflow
    return float(w.sum() ** 2 / (w * w).sum())


# When IWCV and DEV mean little: weights whose effective sample size is under 1 % of the rows (the estimate is a
# handful of pixels' losses), or whose mean is off 1, its expectation under the source, by more than 10× (the
# domain classifier separates the domains and its ratios are not a density ratio). v4 MiniCity, seed 0: SSF-DAN
# trials at ESS 1.0 of 1,024 with mean weight 4.9e8 (IWCV 1e7); BiSMAP's at ESS 25–72 with mean 2.4–2.8.
MIN_ESS_SHARE, MEAN_WEIGHT_BAND = 0.01, (0.1, 10.0)


def weights_degenerate(ess: float, rows: int, mean_weight: float) -> bool:
    """True when importance weights carry too little to trust IWCV/DEV (``MIN_ESS_SHARE``, ``MEAN_WEIGHT_BAND``)."""
    lo, hi = MEAN_WEIGHT_BAND
    return bool(ess < MIN_ESS_SHARE * rows or not lo <= mean_weight <= hi)


def iwcv_risk(losses, weights) -> float:
    """Importance-weighted validation risk (1/N) Σ_j w_j ℓ_j on source validation samples: an unbiased estimate
    of the target risk under covariate shift, lower is better. Sugiyama, Krauledat & Müller, "Covariate Shift
    Adaptation by Importance Weighted Cross Validation", JMLR 2007 (the IWCV estimator, hold-out form)."""
    losses, weights = _numpy(losses).ravel(), _numpy(weights).ravel()
    if losses.shape != weights.shape:
        raise ValueError(f"{losses.shape[0]} losses but {weights.shape[0]} weights")
    return float((weights * losses).mean())


def dev_risk(losses, weights) -> float:
    """Deep Embedded Validation risk: IWCV with the weights as a control variate (their mean is 1), lower is
    better. With L_j = w_j ℓ_j: η = −Cov(L, w) / Var(w) and R_DEV = mean(L) + η · mean(w) − η. You, Wang,
    Long & Jordan, ICML 2019, Algorithm 1 and §4.2 (the control-variate estimator; unbiased like IWCV, with
    a variance never above it for the optimal η)."""
    losses, weights = _numpy(losses).ravel(), _numpy(weights).ravel()
    if losses.shape != weights.shape or len(losses) < 2:
        raise ValueError(f"need ≥2 losses and as many weights; got {losses.shape[0]} and {weights.shape[0]}")
    weighted = weights * losses
    var_w = weights.var(ddof=1)
    if var_w == 0:  # no shift estimated: the control variate is 0
        return float(weighted.mean())
    eta = -np.cov(weighted, weights, ddof=1)[0, 1] / var_w
    return float(weighted.mean() + eta * weights.mean() - eta)


def dev_score(source_train_features, target_features, val_features, val_losses, c: float = 1.0,
              control_variate: bool = True) -> float:
    """The whole DEV procedure (You et al. 2019, Algorithm 1): fit the domain classifier on source-train vs
    target features, weight the source-validation losses by the density ratio, and return the DEV risk (or,
    with ``control_variate=False``, the IWCV risk). Features: ``[N, D]`` rows (e.g. pooled per image, or
    sampled pixels); losses: one per validation row."""
    xs, xt = as_rows(source_train_features), as_rows(target_features)
    w, b = fit_domain_classifier(xs, xt, c=c)
    weights = importance_weights(domain_probability(val_features, w, b), len(xs), len(xt))
    return dev_risk(val_losses, weights) if control_variate else iwcv_risk(val_losses, weights)


def target_criteria(probs, snd_samples: int = 2000, seed: int = 0) -> dict[str, float]:
    """Every target-only criterion of one model's target probabilities (``[N, C]`` or ``[B, C, H, W]``): entropy
    and mutual information on all rows, SND on ``snd_samples`` rows drawn with ``seed`` (it is quadratic). DEV
    needs source features and losses as well: :func:`dev_score`."""
    return {"entropy": prediction_entropy(probs), "info_max": information_maximization(probs),
            "snd": soft_neighbourhood_density(sample_rows(probs, snd_samples, seed))}
