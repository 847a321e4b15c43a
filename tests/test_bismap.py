"""BiSMAP equations (methods/bismap/equations.py): the GMM fit against scikit-learn from the same start, Eq. 4
against scipy's Gaussian density, Eq. 6-12 on hand-worked tensors, and the Config ledger."""

import dataclasses
import math

import numpy as np
import pytest
import torch
from scipy.special import logsumexp
from scipy.stats import entropy, multivariate_normal
from sklearn.mixture import GaussianMixture

from bench.data.labels import IGNORE
from methods.base import SOURCES, make_config, provenance
from methods.bismap import equations as bm

LN2, LN3 = math.log(2), math.log(3)


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _blobs(rng, sizes, dim, spread=4.0):
    """Samples around len(sizes) random centres, per-blob anisotropic scales."""
    parts = [rng.normal(rng.normal(0, spread, dim), rng.uniform(0.3, 2.0, dim), (n, dim)) for n in sizes]
    return np.concatenate(parts)


def _start(x, rows, k):
    """An explicit start for one class: means = chosen rows, uniform weights, the data's variance."""
    return np.full(k, 1.0 / k), x[rows], np.tile(x.var(0), (k, 1))


def _sklearn(x, start, tol, max_iter):
    w, m, v = start
    return GaussianMixture(len(w), covariance_type="diag", weights_init=w, means_init=m, precisions_init=1.0 / v,
                           tol=tol, max_iter=max_iter, reg_covar=1e-6, init_params="random", random_state=0).fit(x)


# ------------------------------------------------------------------------------------------ GMM vs sklearn
@pytest.mark.filterwarnings("ignore::sklearn.exceptions.ConvergenceWarning")
def test_gmm_matches_sklearn_from_the_same_start():
    rng = np.random.default_rng(0)
    xa, xb = _blobs(rng, (150, 100, 120), 4), _blobs(rng, (200, 90), 4)
    x = np.concatenate([xa, xb, rng.normal(size=(30, 4))])
    y = np.concatenate([np.zeros(len(xa)), np.ones(len(xb)), np.full(30, IGNORE)]).astype(np.int64)
    perm = rng.permutation(len(x))  # classes and ignore pixels interleaved
    x, y = x[perm], y[perm]
    k = 3
    starts = [_start(x[y == c], [0, 7, 19], k) for c in (0, 1)]
    init = bm.ClassGMMs(*(torch.tensor(np.stack([s[i] for s in starts])) for i in range(3)), *[None] * 4)
    # tol/max_iter: class 0 converges (13 iterations), class 1 (two blobs, three components) stops at max_iter
    fit = bm.fit_class_gmms(torch.tensor(x), torch.tensor(y), 2, k, init=init, tol=1e-5, max_iter=40)
    dens = bm.log_density(fit, torch.tensor(x)).numpy()
    for c in (0, 1):
        xc = x[y == c]
        ref = _sklearn(xc, starts[c], 1e-5, 40)
        assert int(fit.n_iter[c]) == ref.n_iter_ and bool(fit.converged[c]) == ref.converged_ == (c == 0)
        assert int(fit.n_samples[c]) == len(xc)
        np.testing.assert_allclose(fit.weights[c].numpy(), ref.weights_, rtol=1e-8)
        np.testing.assert_allclose(fit.means[c].numpy(), ref.means_, rtol=1e-8, atol=1e-10)
        np.testing.assert_allclose(fit.variances[c].numpy(), ref.covariances_, rtol=1e-8)
        np.testing.assert_allclose(dens[:, c], ref.score_samples(x), rtol=1e-9)
        assert float(fit.lower_bound[c]) == pytest.approx(ref.lower_bound_, rel=1e-10)


@pytest.mark.parametrize("init", ["kmeans", "random"])
def test_gmm_own_init_then_sklearn_agrees(init):
    rng = np.random.default_rng(1)
    centres = np.array([[0, 0, 0], [10, 0, 0], [0, 10, 0], [0, 0, 10]], float)
    x = np.concatenate([c + rng.normal(0, 0.5, (150, 3)) for c in centres])
    xt, yt = torch.tensor(x), torch.zeros(len(x), dtype=torch.long)
    start = bm.fit_class_gmms(xt, yt, 1, 4, init=init, seed=3, max_iter=0)
    assert int(start.n_iter[0]) == 0
    assert torch.allclose(start.weights.sum(1), torch.ones(1, dtype=torch.float64))
    fit = bm.fit_class_gmms(xt, yt, 1, 4, init=start, tol=1e-6)
    ref = _sklearn(x, (start.weights[0].numpy(), start.means[0].numpy(), start.variances[0].numpy()), 1e-6, 100)
    np.testing.assert_allclose(fit.means[0].numpy(), ref.means_, rtol=1e-7, atol=1e-9)
    np.testing.assert_allclose(fit.variances[0].numpy(), ref.covariances_, rtol=1e-7)
    if init == "kmeans":  # k-means++ + Lloyd on four far-apart blobs finds them: one mean near each centre
        d = np.linalg.norm(start.means[0].numpy()[:, None] - centres[None], axis=2)
        assert sorted(d.argmin(1).tolist()) == [0, 1, 2, 3] and d.min(1).max() < 0.3


def test_gmm_subsampling_is_seeded_per_class():
    rng = np.random.default_rng(2)
    x = torch.tensor(_blobs(rng, (400, 300), 3))
    y = torch.tensor([0] * 400 + [1] * 300)
    kw = {"max_samples": 100, "max_iter": 5}
    a, b = bm.fit_class_gmms(x, y, 2, 2, seed=5, **kw), bm.fit_class_gmms(x, y, 2, 2, seed=5, **kw)
    assert a.n_samples.tolist() == [100, 100]
    assert torch.equal(a.means, b.means) and torch.equal(a.variances, b.variances)
    assert not torch.equal(a.means[0], bm.fit_class_gmms(x, y, 2, 2, seed=6, **kw).means[0])
    # class 0's subset and fit do not depend on the other classes' data
    only0 = bm.fit_class_gmms(x[:400], y[:400], 2, 2, seed=5, **kw)
    assert torch.equal(only0.means[0], a.means[0]) and torch.isnan(only0.means[1]).all()


def test_gmm_float32_on_offset_features_matches_float64():
    rng = np.random.default_rng(3)
    x = _blobs(rng, (300, 300), 8, spread=1.0) + 500.0  # large offset, small spread: expanded-distance trap
    y = torch.zeros(len(x), dtype=torch.long)
    f64 = bm.fit_class_gmms(torch.tensor(x), y, 1, 2, seed=0)
    f32 = bm.fit_class_gmms(torch.tensor(x, dtype=torch.float32), y, 1, 2, seed=0)
    assert f32.means.dtype == torch.float32
    d64 = bm.log_density(f64, torch.tensor(x))[:, 0]
    d32 = bm.log_density(f32, torch.tensor(x, dtype=torch.float32))[:, 0].double()
    assert torch.allclose(d32, d64, rtol=1e-4, atol=1e-3)


def test_gmm_too_few_samples_gives_nan_rows_and_minus_inf_density():
    rng = np.random.default_rng(4)
    x = torch.tensor(_blobs(rng, (200, 20), 2))
    y = torch.tensor([0] * 200 + [1] * 20)
    fit = bm.fit_class_gmms(x, y, 3, 2)  # default minimum 10·K = 20: class 1 has exactly 20, class 2 none
    assert fit.n_samples.tolist() == [200, 20, 0]
    assert torch.isnan(fit.weights[2]).all() and torch.isnan(fit.means[2]).all() and not fit.converged[2]
    fit = bm.fit_class_gmms(x, y, 3, 2, min_samples=21)
    assert fit.n_samples.tolist() == [200, 0, 0]
    dens = bm.log_density(fit, x)
    assert torch.isfinite(dens[:, 0]).all() and (dens[:, 1:] == -math.inf).all()
    assert set(bm.density_pseudo_labels(dens, -1e9).tolist()) == {0}


def test_gmm_bad_input_raises():
    x, y = torch.randn(50, 3), torch.zeros(50, dtype=torch.long)
    with pytest.raises(ValueError, match="features/labels"):
        bm.fit_class_gmms(x[:, 0], y, 2)
    with pytest.raises(ValueError, match="labels: values"):
        bm.fit_class_gmms(x, torch.full((50,), 7), 2)
    with pytest.raises(ValueError, match="integer labels"):
        bm.fit_class_gmms(x, y.float(), 2)
    with pytest.raises(ValueError, match="NaN"):
        bm.fit_class_gmms(torch.where(x > 2, float("nan"), x), y, 2)
    with pytest.raises(ValueError, match="init"):
        bm.fit_class_gmms(x, y, 1, 2, init=bm.ClassGMMs(torch.ones(1, 3), torch.ones(1, 3, 3),
                                                        torch.ones(1, 3, 3), *[None] * 4))
    with pytest.raises(ValueError, match="init"):
        bm.fit_class_gmms(x, y, 1, 2, init="kmeans+")


# ------------------------------------------------------------------------------------------ Eq. 4
def test_log_density_hand_cases():
    one = bm.ClassGMMs(torch.ones(1, 1, dtype=torch.float64), torch.zeros(1, 1, 1, dtype=torch.float64),
                       torch.ones(1, 1, 1, dtype=torch.float64), *[None] * 4)
    f = torch.tensor([[0.0], [2.0]], dtype=torch.float64)
    # log N(0|0,1) = -½ln2π = -0.918939; log N(2|0,1) = -0.918939 - 2
    np.testing.assert_allclose(bm.log_density(one, f)[:, 0], [-0.9189385332, -2.9189385332], rtol=1e-10)
    two = bm.ClassGMMs(torch.tensor([[0.5, 0.5]], dtype=torch.float64), torch.tensor([[[-1.0], [1.0]]]).double(),
                       torch.ones(1, 2, 1, dtype=torch.float64), *[None] * 4)
    # f = 0 is 1 away from both means: log(½N + ½N) = log N(1|0,1) = -0.918939 - 0.5
    assert float(bm.log_density(two, f[:1])[0, 0]) == pytest.approx(-1.4189385332, rel=1e-10)


@pytest.mark.parametrize("dtype,rtol", [(torch.float64, 1e-10), (torch.float32, 1e-4)])
def test_log_density_against_scipy(dtype, rtol):
    rng = np.random.default_rng(5)
    c, k, d = 3, 4, 6
    w = rng.dirichlet(np.ones(k), c)
    mu, var = rng.normal(0, 3, (c, k, d)), rng.uniform(0.2, 3.0, (c, k, d))
    f = np.concatenate([rng.normal(0, 4, (40, d)), rng.normal(60, 1, (3, d))])  # far rows: no underflow to -inf
    gmms = bm.ClassGMMs(*(torch.tensor(a, dtype=dtype) for a in (w, mu, var)), *[None] * 4)
    got = bm.log_density(gmms, torch.tensor(f, dtype=dtype), chunk_size=7).double().numpy()
    ref = np.stack([logsumexp([np.log(w[i, j]) + multivariate_normal(mu[i, j], np.diag(var[i, j])).logpdf(f)
                               for j in range(k)], axis=0) for i in range(c)], 1)
    assert np.isfinite(got).all()
    np.testing.assert_allclose(got, ref, rtol=rtol)
    with pytest.raises(ValueError, match=r"features: expected \[N, 6\]"):
        bm.log_density(gmms, torch.zeros(2, 5, dtype=dtype))


# ------------------------------------------------------------------------------------------ Eq. 3, 6
def test_correct_source_labels_hand_case():
    gt = torch.tensor([[0, 1, 2], [IGNORE, 5, 5]])
    pred = torch.tensor([[0, 2, 2], [3, 5, 4]])
    assert bm.correct_source_labels(gt, pred).tolist() == [[0, IGNORE, 2], [IGNORE, 5, IGNORE]]
    with pytest.raises(ValueError, match="predictions"):
        bm.correct_source_labels(gt, pred[0])


def test_density_pseudo_labels_hand_case():
    inf, nan = math.inf, math.nan
    s = torch.tensor([[120.0, 90.0, 101.0],   # max 120 ≥ 100 → class 0
                      [99.9, 50.0, -inf],     # max 99.9 < 100 → ignore
                      [100.0, 100.0, 3.0],    # tie at exactly δ (inclusive) → lowest index, 0
                      [nan, 130.0, -inf],     # NaN counts as -inf → class 1
                      [-inf, -inf, -inf]])    # nothing fitted → ignore
    assert bm.density_pseudo_labels(s, 100.0).tolist() == [0, IGNORE, 0, 1, IGNORE]
    # SYNTHIA's negative δ on an [H, W, C] layout: shifted by -150, δ = -50 keeps the same rows (-50 inclusive)
    assert bm.density_pseudo_labels(s[:, None] - 150.0, -50.0)[:, 0].tolist() == [0, IGNORE, 0, 1, IGNORE]
    assert bm.density_pseudo_labels(s[:, None] - 150.0, -49.0)[:, 0].tolist() == [0, IGNORE, IGNORE, 1, IGNORE]
    assert bm.density_pseudo_labels(s, -inf).tolist() == [0, 0, 0, 1, IGNORE]
    with pytest.raises(ValueError, match="log_density"):
        bm.density_pseudo_labels(torch.zeros(3, dtype=torch.long), 0.0)


# ------------------------------------------------------------------------------------------ Eq. 7-9
def test_prototype_distance_hand_case():
    f = torch.tensor([[0.0, 0.0], [3.0, 4.0], [1.0, 1.0], [6.0, 9.0]])
    protos = torch.tensor([[0.0, 0.0], [6.0, 8.0]])
    # nearest: (0,0)→0; (3,4)→5 to both; (1,1)→√2; (6,9)→1
    np.testing.assert_allclose(bm.prototype_distance(f, protos), [0.0, 5.0, math.sqrt(2), 1.0], rtol=1e-6)
    with pytest.raises(ValueError, match="prototypes"):
        bm.prototype_distance(f, torch.zeros(0, 2))


def test_mean_class_entropy_hand_case_and_scipy():
    probs = torch.tensor([[0.5, 0.5], [1.0, 0.0], [0.25, 0.75]])
    e = bm.mean_class_entropy(probs, torch.tensor([0, 0, IGNORE]), 2)
    # class 0: (ln2 + 0)/2; class 1: no pixel → NaN
    assert float(e[0]) == pytest.approx(LN2 / 2) and math.isnan(e[1])
    rng = np.random.default_rng(6)
    p = rng.dirichlet(np.ones(4), 50)
    lab = rng.integers(0, 4, 50)
    got = bm.mean_class_entropy(torch.tensor(p), torch.tensor(lab), 4).numpy()
    np.testing.assert_allclose(got, [entropy(p[lab == c], axis=1).mean() for c in range(4)], rtol=1e-12)
    with pytest.raises(ValueError, match="labels"):
        bm.mean_class_entropy(probs, torch.tensor([0, 2, 0]), 2)


def test_source_transferability_hand_case():
    # e = (0.2, 0.6, 1.0, NaN) → e' = (0, 0.5, 1, 1) (NaN → 1); d_mean = 2:
    # D = 0 → exp(0) = 1; D = 2 → exp(-ln2) = 0.5; D = 4 → exp(-4 ln2) = 1/16
    e = torch.tensor([0.2, 0.6, 1.0, math.nan])
    dist = torch.tensor([[0.0, 2.0, 4.0], [4.0, 4.0, 4.0], [2.0, 4.0, 2.0]])
    lab = torch.tensor([[0, 0, 1], [0, 2, IGNORE], [1, 3, 3]])
    w = bm.source_transferability(dist, torch.tensor(2.0), e, lab)
    expected = [[1.0, 0.5, 0.0625 + 0.5],
                [0.0625, 1.0, 0.0],      # 1/16 + 1 clipped to 1; ignore → 0
                [1.0, 1.0, 1.0]]         # 0.5 + 0.5; NaN-entropy class: 1/16 + 1 → 1, 0.5 + 1 → 1
    np.testing.assert_allclose(w, expected, rtol=1e-6)
    same = bm.source_transferability(dist, 2.0, torch.full((4,), 0.3), lab)  # equal entropies: e' = 0
    assert float(same[0, 1]) == pytest.approx(0.5) and float(same[1, 1]) == pytest.approx(0.0625)


def test_source_transferability_bad_input():
    dist, lab, e = torch.ones(2, 2), torch.zeros(2, 2, dtype=torch.long), torch.tensor([0.1, 0.2])
    with pytest.raises(ValueError, match="d_mean"):
        bm.source_transferability(dist, 0.0, e, lab)
    with pytest.raises(ValueError, match="labels: values"):
        bm.source_transferability(dist, 1.0, e, lab + 2)
    with pytest.raises(ValueError, match="labels: expected"):
        bm.source_transferability(dist, 1.0, e, lab[0])
    with pytest.raises(ValueError, match="class_entropy"):
        bm.source_transferability(dist, 1.0, torch.tensor([math.nan, math.nan]), lab)


# ------------------------------------------------------------------------------------------ Eq. 10-12
def test_stm_weighted_ce_hand_case():
    logits = torch.zeros(1, 2, 1, 2)  # p = ½ everywhere, CE = ln 2 per pixel
    # (1·ln2 + 0.5·ln2) / 2 valid pixels = 0.75 ln 2
    loss = bm.stm_weighted_ce(logits, torch.tensor([[[0, 1]]]), torch.tensor([[[1.0, 0.5]]]))
    assert float(loss) == pytest.approx(0.75 * LN2)
    # the ignore pixel neither adds nor counts: 0.5·ln2 / 1
    loss = bm.stm_weighted_ce(logits, torch.tensor([[[0, IGNORE]]]), torch.tensor([[[0.5, 1.0]]]))
    assert float(loss) == pytest.approx(0.5 * LN2)


def test_symmetric_cross_entropy_hand_case():
    logits = torch.zeros(1, 3, 1, 2, requires_grad=True)  # p = ⅓
    target = torch.tensor([[[0, IGNORE]]])
    # CE = ln3 = 1.098612; RCE = -(⅓·ln1 + ⅔·ln1e-4) = ⅔·9.210340 = 6.140227
    # α·CE + β·RCE = 0.1·1.098612 + 6.140227 = 6.250088
    loss = bm.symmetric_cross_entropy(logits, target)
    assert loss.item() == pytest.approx(0.1 * LN3 + (2 / 3) * math.log(1e4), rel=1e-6)
    assert loss.item() == pytest.approx(6.250088, abs=1e-5)
    loss.backward()
    assert logits.grad[..., 1].abs().sum() == 0  # the ignore pixel gets no gradient


def test_symmetric_cross_entropy_against_numpy_formula():
    rng = np.random.default_rng(7)
    logits = rng.normal(0, 2, (2, 4, 3, 5))
    target = rng.integers(0, 4, (2, 3, 5))
    target[0, 0, :3] = IGNORE
    p = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
    onehot = np.clip(np.eye(4)[np.where(target == IGNORE, 0, target)].transpose(0, 3, 1, 2), 1e-4, 1.0)
    valid = target != IGNORE
    ce = -(np.log(p) * onehot.round()).sum(1)[valid].mean()      # round(): back to the exact one-hot
    rce = -(p * np.log(onehot)).sum(1)[valid].mean()
    got = bm.symmetric_cross_entropy(torch.tensor(logits), torch.tensor(target), alpha=0.3, beta=0.7)
    assert float(got) == pytest.approx(0.3 * ce + 0.7 * rce, rel=1e-5)


def test_losses_all_ignore_are_zero_with_graph_and_bad_labels_raise():
    logits = torch.randn(1, 3, 2, 2, requires_grad=True)
    ign = torch.full((1, 2, 2), IGNORE)
    for loss in (bm.symmetric_cross_entropy(logits, ign), bm.stm_weighted_ce(logits, ign, torch.ones(1, 2, 2))):
        assert loss.item() == 0.0
        loss.backward()
    with pytest.raises(ValueError, match="target: values"):
        bm.symmetric_cross_entropy(logits, torch.full((1, 2, 2), 3))
    with pytest.raises(ValueError, match="labels: values"):
        bm.stm_weighted_ce(logits, torch.full((1, 2, 2), 3), torch.ones(1, 2, 2))
    with pytest.raises(ValueError, match="logits/target"):
        bm.symmetric_cross_entropy(logits, torch.zeros(2, 2, dtype=torch.long))


def test_consistency_kl_hand_case_and_mask():
    student = torch.zeros(1, 2, 1, 2, requires_grad=True)          # p = (½, ½)
    teacher = torch.tensor([[[[LN3, 0.0]], [[0.0, 0.0]]]])          # pixel 0: q = (¾, ¼); pixel 1: q = p
    # pixel 0: ¾ ln(¾/½) + ¼ ln(¼/½) = 0.304099 - 0.173287 = 0.130812; pixel 1: 0
    kl0 = 0.75 * math.log(1.5) + 0.25 * math.log(0.5)
    assert bm.consistency_kl(student, teacher, reduction="pixel_mean").item() == pytest.approx(kl0 / 2)
    assert bm.consistency_kl(student, teacher).item() == pytest.approx(kl0 / 4)  # ÷ (2 pixels · 2 classes)
    only0 = torch.tensor([[[True, False]]])
    assert bm.consistency_kl(student, teacher, only0, "pixel_mean").item() == pytest.approx(kl0)
    none = bm.consistency_kl(student, teacher, torch.zeros(1, 1, 2, dtype=torch.bool))
    assert none.item() == 0.0
    teacher.requires_grad_(True)
    bm.consistency_kl(student, teacher).backward()
    assert teacher.grad is None and student.grad is not None  # the EMA teacher is a fixed target


def test_rampup_and_distillation_kd_variants():
    assert bm.consistency_rampup(0, 4000) == pytest.approx(math.exp(-5))
    assert bm.consistency_rampup(2000, 4000) == pytest.approx(math.exp(-1.25))  # (1 - ½)² · 5
    assert bm.consistency_rampup(9000, 4000) == 1.0 and bm.consistency_rampup(5, 0) == 1.0
    student = torch.zeros(1, 2, 1, 1)
    teacher = torch.tensor([[[[LN3]], [[0.0]]]])  # q = (¾, ¼), p = (½, ½)
    kl = 0.75 * math.log(1.5) + 0.25 * math.log(0.5)
    assert float(bm.distillation_kd(student, teacher, "paper")) == pytest.approx(kl / 2)  # mean over 2 classes
    # the code's kl_div(softmax, softmax): Σ q ln q - Σ q·p = (¾ln¾ + ¼ln¼) - ½ = -1.062335, ÷ 2 classes
    code = (0.75 * math.log(0.75) + 0.25 * math.log(0.25) - 0.5) / 2
    assert float(bm.distillation_kd(student, teacher, "code")) == pytest.approx(code)
    with pytest.raises(ValueError, match="variant"):
        bm.distillation_kd(student, teacher, "fixed")


# ------------------------------------------------------------------------------------------ Config
def test_config_fields_carry_sources_and_paper_defaults():
    cfg = bm.Config()
    assert all(src in SOURCES for _, src, _ in provenance(cfg).values())
    for f in dataclasses.fields(cfg):
        assert f.metadata.get("source") in SOURCES, f.name
    src = {f.name: f.metadata["source"] for f in dataclasses.fields(cfg)}
    assert (cfg.gmm_components, cfg.gmm_max_samples, cfg.sce_alpha, cfg.sce_beta) == (8, 300_000, 0.1, 1.0)
    assert (cfg.consistency_weight, src["consistency_weight"], cfg.ema_momentum) == (20.0, "paper", 0.999)
    assert cfg.stm_clusters == 40 and src["stm_clusters"] == "code"
    assert len(cfg.stm_entropy_gta5_code) == len(cfg.gmm_sample_rates) == 19
    assert bm.delta_for(cfg, "gta5") == 100.0 and bm.delta_for(cfg, "synthia") == -50.0
    assert bm.delta_for(make_config(bm.Config, {"delta_override": 3.5}), "minicity") == 3.5
    with pytest.raises(ValueError, match="delta_override"):
        bm.delta_for(cfg, "minicity")


def test_transcribed_tables_3_to_5_agree_with_each_other():
    from bench.paper_rows import load_extra_table

    t3, t4, t5 = (load_extra_table("bismap", t).set_index("row") for t in (3, 4, 5))
    # the same experiment appears in several tables: MAPs-PLA with STM (δ = 100) and CAs-PLA at Δd = 1
    assert t3.loc["MAPs-PLA", "mIoU"] == t4.loc["+STM +MAPs-PLA", "mIoU"] == t5.loc["MAPs-PLA 100", "mIoU"] == 57.3
    assert t3.loc["CAs-PLA", "mIoU"] == t5.loc["CAs-PLA 1", "mIoU"] == 54.9
    # Table 4's printed gains are over the 46.3 baseline; the PL ratio falls as δ rises
    np.testing.assert_allclose(t4["mIoU"].iloc[1:] - 46.3, t4["gain"].iloc[1:], atol=1e-9)
    maps = t5[t5["method"] == "MAPs-PLA"].sort_values("threshold")
    assert maps["PL ratio"].is_monotonic_decreasing and list(maps["threshold"]) == [0, 50, 100, 150]


def test_flat_variance_share_counts_constant_feature_dimensions():
    from methods.bismap.labels import flat_variance_share
    rng = np.random.default_rng(7)
    a = rng.normal(size=(300, 2))
    a[:, 1] = 0.0                       # class 0: a dead (always-zero) channel
    b = rng.normal(size=(300, 2))       # class 1: both channels vary
    x = torch.tensor(np.concatenate([a, b]))
    y = torch.tensor([0] * 300 + [1] * 300)
    for reg in (1e-6, 1e-2):
        fit = bm.fit_class_gmms(x, y, 3, 1, reg_covar=reg)  # class 2 has no sample: NaN rows, left out
        assert fit.variances[0, 0, 1].item() == pytest.approx(reg)
        assert flat_variance_share(fit, reg) == pytest.approx(1 / 4)
    empty = bm.fit_class_gmms(x, y, 3, 1, min_samples=10_000)
    assert math.isnan(flat_variance_share(empty, 1e-6))
