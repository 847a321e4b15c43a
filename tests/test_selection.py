"""Label-free model-selection criteria: hand-made cases where the better model is known, and independent values
(scipy's entropy, a direct loop for SND, scikit-learn's LogisticRegression for DEV's domain classifier)."""

import numpy as np
import pytest
import torch
from scipy.stats import entropy as scipy_entropy
from sklearn.linear_model import LogisticRegression

from bench.selection import (
    CRITERIA,
    as_rows,
    dev_risk,
    dev_score,
    domain_probability,
    fit_domain_classifier,
    importance_weights,
    information_maximization,
    iwcv_risk,
    prediction_entropy,
    sample_rows,
    soft_neighbourhood_density,
    target_criteria,
)


def softmax(z, axis=-1):
    z = z - z.max(axis=axis, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=axis, keepdims=True)


def clustered(rng, n=120, classes=5, sharp=6.0):
    """Confident predictions spread over all classes (a model that separates the target into its classes)."""
    y = rng.integers(0, classes, n)
    return softmax(sharp * np.eye(classes)[y] + 0.3 * rng.normal(size=(n, classes))), y


def test_maps_and_rows_agree_and_tensors_are_accepted():
    rng = np.random.default_rng(0)
    maps = softmax(rng.normal(size=(2, 4, 3, 5)), axis=1)  # [B, C, H, W]
    rows = as_rows(maps)
    assert rows.shape == (2 * 3 * 5, 4) and np.allclose(rows[1], maps[0, :, 0, 1])
    for fn in (prediction_entropy, information_maximization, soft_neighbourhood_density):
        assert fn(maps) == pytest.approx(fn(rows)) == pytest.approx(fn(torch.from_numpy(maps)))
    assert len(sample_rows(maps, 7, seed=1)) == 7 and np.array_equal(sample_rows(maps, 7, 1), sample_rows(maps, 7, 1))
    with pytest.raises(ValueError, match="probabilities"):
        prediction_entropy(rng.normal(size=(5, 3)))  # logits, not probabilities


def test_entropy_against_scipy_and_prefers_the_confident_model():
    rng = np.random.default_rng(1)
    sure, _ = clustered(rng, sharp=6.0)
    unsure, _ = clustered(rng, sharp=0.5)
    assert prediction_entropy(sure) == pytest.approx(np.mean(scipy_entropy(sure, axis=1)), rel=1e-9)
    assert prediction_entropy(sure) < prediction_entropy(unsure)  # lower is better
    assert prediction_entropy(np.full((3, 4), 0.25)) == pytest.approx(np.log(4))
    assert CRITERIA["entropy"][0] == "min"


def test_information_maximization_by_hand_and_it_sees_through_a_collapsed_model():
    # by hand: two samples, p1 = (1, 0), p2 = (0, 1): mean (½, ½) → H = log 2; each H = 0 → I = log 2
    assert information_maximization(np.array([[1.0, 0.0], [0.0, 1.0]])) == pytest.approx(np.log(2))
    # all the same confident prediction: no information about the input
    assert information_maximization(np.array([[1.0, 0.0], [1.0, 0.0]])) == pytest.approx(0.0, abs=1e-9)
    rng = np.random.default_rng(2)
    good, _ = clustered(rng)
    collapsed = softmax(np.c_[np.full(120, 8.0), rng.normal(size=(120, 4))])  # confident, always class 0
    assert prediction_entropy(collapsed) < prediction_entropy(good)  # entropy is fooled…
    assert information_maximization(good) > information_maximization(collapsed)  # …the mutual information is not
    p = good
    ref = scipy_entropy(p.mean(0)) - np.mean(scipy_entropy(p, axis=1))
    assert information_maximization(p) == pytest.approx(ref, rel=1e-9)


def snd_loop(p, t=0.05):
    """SND written out sample by sample (Saito et al. 2021 §3.2), the independent reference."""
    f = p / np.linalg.norm(p, axis=1, keepdims=True)
    total = 0.0
    for i in range(len(f)):
        sims = np.array([f[i] @ f[j] / t for j in range(len(f)) if j != i])
        q = np.exp(sims - sims.max())
        q /= q.sum()
        total += -(q * np.log(q)).sum()
    return total / len(f)


def test_snd_equals_a_direct_loop_and_the_torch_formulation():
    rng = np.random.default_rng(3)
    p, _ = clustered(rng, n=40)
    assert soft_neighbourhood_density(p) == pytest.approx(snd_loop(p), rel=1e-9)
    assert soft_neighbourhood_density(p, chunk=7) == pytest.approx(snd_loop(p), rel=1e-9)  # chunking is exact
    # the usual tensor form: cosine similarities, self masked out, softmax over j, mean row entropy
    f = torch.nn.functional.normalize(torch.from_numpy(p), dim=1)
    sim = (f @ f.T / 0.05).masked_fill(torch.eye(len(f), dtype=torch.bool), float("-inf"))
    q = torch.softmax(sim, 1)
    ref = -(q * torch.log(q.clamp_min(1e-300))).sum(1).mean().item()
    assert soft_neighbourhood_density(p) == pytest.approx(ref, rel=1e-9)


def test_snd_prefers_clustered_outputs_to_scattered_ones():
    """The paper's premise: a good adapted model puts target samples in dense class clusters (many near
    neighbours, a spread soft-neighbour distribution); a poor one scatters them (each sample has one closest
    neighbour)."""
    rng = np.random.default_rng(4)
    dense, _ = clustered(rng, n=150, sharp=5.0)
    scattered = softmax(3.0 * rng.normal(size=(150, 5)))
    assert soft_neighbourhood_density(dense) > soft_neighbourhood_density(scattered)
    assert CRITERIA["snd"][0] == "max"
    assert soft_neighbourhood_density(np.full((5, 3), 1 / 3)) == pytest.approx(np.log(4))  # all alike: uniform P


# ---- importance weighting and DEV ------------------------------------------------------------------------------


def test_domain_classifier_matches_sklearn_logistic_regression():
    rng = np.random.default_rng(5)
    xs = rng.normal(0.0, 1.0, (300, 3))
    xt = rng.normal([1.0, -0.5, 0.0], 1.0, (200, 3))
    query = rng.normal(0.3, 1.2, (50, 3))
    for c in (1.0, 0.1):
        w, b = fit_domain_classifier(xs, xt, c=c)
        sk = LogisticRegression(C=c, tol=1e-10, max_iter=10_000).fit(np.r_[xs, xt], np.r_[np.zeros(300), np.ones(200)])
        np.testing.assert_allclose(domain_probability(query, w, b), sk.predict_proba(query)[:, 1], atol=1e-5)


def test_importance_weights_by_hand():
    # P(target|x) = 0.5 with 200 source and 100 target training samples: p_t/p_s = (200/100)·1 = 2
    assert importance_weights(np.array([0.5]), 200, 100)[0] == pytest.approx(2.0)
    assert importance_weights(np.array([0.8]), 100, 100)[0] == pytest.approx(4.0)


def test_importance_ess_by_hand_and_by_the_coefficient_of_variation():
    from bench.selection import importance_ess

    assert importance_ess([2.0, 2.0, 2.0, 2.0]) == pytest.approx(4.0)  # equal weights: every row counts
    assert importance_ess([5.0, 0.0, 0.0]) == pytest.approx(1.0)  # one row holds all the mass
    assert importance_ess([1.0, 1.0, 2.0]) == pytest.approx(16 / 6)  # (1+1+2)² / (1+1+4)
    assert importance_ess([1e300, 1.0]) == pytest.approx(1.0)  # no overflow in the squares
    w = np.random.default_rng(3).lognormal(0, 1.5, 500)  # Kong's form: N / (1 + cv²), population variance
    assert importance_ess(w) == pytest.approx(len(w) / (1 + w.var() / w.mean() ** 2))
    assert importance_ess(np.zeros(3)) == 0.0
    for bad in ([], [1.0, -0.5], [np.inf, 1.0]):
        with pytest.raises(ValueError, match="importance weights"):
            importance_ess(bad)


def test_weights_degenerate_by_its_two_bounds():
    from bench.selection import weights_degenerate

    assert not weights_degenerate(10.24, 1024, 1.0) and weights_degenerate(10.0, 1024, 1.0)  # 1 % of 1,024
    assert weights_degenerate(500, 1024, 12.0) and weights_degenerate(500, 1024, 0.05)
    assert not weights_degenerate(500, 1024, 9.9) and not weights_degenerate(500, 1024, 0.1)


def test_dev_by_hand_and_against_the_reference_formula():
    losses, weights = np.array([1.0, 2.0, 3.0]), np.array([0.5, 1.0, 1.5])
    wl = weights * losses  # 0.5, 2, 4.5 → mean 7/3
    eta = -np.cov(wl, weights)[0, 1] / np.var(weights, ddof=1)  # cov = 1.0, var = 0.25 → η = −4
    assert eta == pytest.approx(-4.0)
    assert dev_risk(losses, weights) == pytest.approx(7 / 3 + eta * 1.0 - eta)
    assert iwcv_risk(losses, weights) == pytest.approx(7 / 3)
    # weights with mean ≠ 1: the control variate corrects toward E[w] = 1
    assert dev_risk(losses, weights * 2) == pytest.approx(14 / 3 + (-4.0) * 2.0 + 4.0)
    assert dev_risk(losses, np.ones(3)) == pytest.approx(2.0)  # no shift: the plain mean loss


def test_iwcv_and_dev_estimate_the_target_risk_and_dev_has_lower_variance():
    """Covariate shift with known densities: source x ~ N(0, 1), target x ~ N(1, 1), so w(x) = exp(x − ½); loss
    ℓ(x) = x², target risk E_t[x²] = 2. With the true weights both estimators are unbiased; DEV's spread over
    repeats is smaller (You et al. 2019, Thm. 2)."""
    rng = np.random.default_rng(6)
    iw, dev = [], []
    for _ in range(300):
        x = rng.normal(0, 1, 200)
        w, loss = np.exp(x - 0.5), x ** 2
        iw.append(iwcv_risk(loss, w))
        dev.append(dev_risk(loss, w))
    assert np.mean(iw) == pytest.approx(2.0, abs=0.15) and np.mean(dev) == pytest.approx(2.0, abs=0.15)
    assert np.std(dev) < np.std(iw)


def test_dev_picks_the_model_that_is_better_where_the_target_is():
    """A errs on the left half-plane (x0 < 0), B on x0 > −1. Under the source N(−1, 1) B has the lower loss (0.5 vs
    0.84); under the target N(1, 1) A has (0.16 vs 0.98). Plain source validation picks B; DEV and IWCV, which
    weight the source losses by p_t/p_s, pick A — as the labelled target risk does."""
    rng = np.random.default_rng(7)
    xs_train, xt = rng.normal(-1.0, 1.0, (400, 2)), rng.normal(1.0, 1.0, (400, 2))
    xs_val = rng.normal(-1.0, 1.0, (400, 2))

    def loss_a(x):
        return (x[:, 0] < 0).astype(float)

    def loss_b(x):
        return (x[:, 0] > -1.0).astype(float)

    scores = {name: dev_score(xs_train, xt, xs_val, fn(xs_val)) for name, fn in (("a", loss_a), ("b", loss_b))}
    target = {name: fn(xt).mean() for name, fn in (("a", loss_a), ("b", loss_b))}
    source = {name: fn(xs_val).mean() for name, fn in (("a", loss_a), ("b", loss_b))}
    assert source["b"] < source["a"]  # source validation prefers B …
    assert target["a"] < target["b"]  # … but A is better on the target,
    assert scores["a"] < scores["b"]  # and DEV sees it
    iw = {name: dev_score(xs_train, xt, xs_val, fn(xs_val), control_variate=False) for name, fn in
          (("a", loss_a), ("b", loss_b))}
    assert iw["a"] < iw["b"]
    assert CRITERIA["dev"][0] == CRITERIA["iwcv"][0] == "min"


def test_dev_score_agrees_with_sklearn_weights():
    rng = np.random.default_rng(8)
    xs, xt, xv = rng.normal(0, 1, (150, 4)), rng.normal(0.5, 1, (100, 4)), rng.normal(0, 1, (80, 4))
    losses = rng.random(80)
    sk = LogisticRegression(C=1.0, tol=1e-10, max_iter=10_000).fit(np.r_[xs, xt], np.r_[np.zeros(150), np.ones(100)])
    p = sk.predict_proba(xv)[:, 1]
    w = 150 / 100 * p / (1 - p)
    wl = w * losses
    eta = -np.cov(wl, w)[0, 1] / np.var(w, ddof=1)
    assert dev_score(xs, xt, xv, losses) == pytest.approx(wl.mean() + eta * w.mean() - eta, rel=1e-4)


def test_target_criteria_bundle_and_directions():
    rng = np.random.default_rng(9)
    good, _ = clustered(rng, n=300)
    bad = softmax(3.0 * rng.normal(size=(300, 5)))  # confident-ish but scattered (near-uniform would fool SND)
    g, b = target_criteria(good, snd_samples=100), target_criteria(bad, snd_samples=100)
    assert set(g) == {"entropy", "info_max", "snd"} <= set(CRITERIA)
    assert g["entropy"] == pytest.approx(prediction_entropy(good))
    assert g["snd"] == pytest.approx(soft_neighbourhood_density(sample_rows(good, 100, 0)))
    for name in g:  # each criterion, read in its own direction, prefers the clustered confident model
        assert (g[name] < b[name]) if CRITERIA[name][0] == "min" else (g[name] > b[name]), name
