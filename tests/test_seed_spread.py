"""The seed-spread split (model part vs evaluation-image part) on hand-worked and constructed cases."""

from types import SimpleNamespace

import numpy as np
import pytest

import bench.seed_spread as spread
from bench.metrics import PER_IMAGE_FILE, save_per_image

# Two 2-class images: A's mIoU is (3/4 + 4/5) / 2 = 77.5 %, B's 100 %.
A = np.array([[3, 1], [0, 4]])
B = np.array([[4, 0], [0, 4]])


def test_split_by_hand():
    """Seed 0 scores images (A, B), seed 1 (B, A): both sum to [[7, 1], [0, 8]], mIoU (7/8 + 8/9) / 2 = 88.19,
    so the seeds' std is 0. Leaving out one image leaves seed 0 at 100 and seed 1 at 77.5 or the reverse:
    influences (N − 1 = 1) 88.19 − 100 = −11.81 and 88.19 − 77.5 = +10.69; centred over the seeds ±11.25 on
    each image; c = 4 · 11.25² / ((N − 1)(S − 1)) = 506.25, the image part c / N = 253.125 against a variance of
    0, the model part 0."""
    confs = np.stack([np.stack([A, B]), np.stack([B, A])])
    z = spread.image_influence(confs)
    np.testing.assert_allclose(z, [[88.19444 - 100, 88.19444 - 77.5], [88.19444 - 77.5, 88.19444 - 100]],
                               atol=1e-4)
    got = spread.split_seed_variance(confs)
    np.testing.assert_allclose(got["seeds_miou"], [88.19444, 88.19444], atol=1e-4)
    assert got["std"] == pytest.approx(0.0, abs=1e-12)
    assert got["image_var"] == pytest.approx(253.125, abs=1e-6)
    assert got["image_share"] == float("inf") and got["model_std"] == 0.0


def test_what_every_seed_shares_image_by_image_is_no_image_part():
    """All seeds hold the same per-image matrices: the images differ, the seeds do not, so every influence is
    the same for every seed and, centred over the seeds, nothing is left (without that centring it would be)."""
    rng = np.random.default_rng(2)
    confs = np.repeat(rng.integers(1, 20, size=(1, 30, 3, 3)), 3, axis=0)
    got = spread.split_seed_variance(confs)
    assert np.ptp(spread.image_influence(confs)[0]) > 1  # the images' influences do differ
    assert got["std"] == 0.0 and got["image_var"] == pytest.approx(0.0, abs=1e-18)


def test_identical_images_leave_only_the_model_part():
    """Every image of a seed has the same matrix: leaving one out changes no seed's mIoU, so no image part, and
    the model part is the observed std."""
    per_seed = [np.array([[9, 1, 0], [2, 8, 0], [0, 1, 9]]), np.array([[6, 4, 0], [2, 8, 0], [0, 0, 10]]),
                np.array([[9, 1, 0], [0, 10, 0], [3, 3, 4]])]
    confs = np.stack([np.repeat(m[None], 40, axis=0) for m in per_seed])
    got = spread.split_seed_variance(confs)
    assert got["std"] > 5
    assert got["image_share"] == pytest.approx(0.0, abs=1e-12)
    assert got["model_std"] == pytest.approx(got["std"])


def test_image_part_matches_a_simulation_with_known_model_variance():
    """Four seeds mislabel class 0 as class 1 at rates 0.10-0.16 (the models' difference), image by image with
    binomial noise on 20 images of Poisson class counts (the images' part). On the population, seed s scores
    IoUs 1 − e, N1 / (N1 + e·N0) and 1 (N0, N1 the expected class counts): μ_s. Over 300 simulated validation
    sets the mean estimated image part must match the mean variance over seeds of m_s − μ_s."""
    rng = np.random.default_rng(0)
    e, n_img, lam0, lam1 = np.array([0.10, 0.12, 0.14, 0.16]), 20, 10, 100
    mu = 100 * (1 - e + lam1 / (lam1 + e * (lam0 + 1)) + 1) / 3
    noise, image = [], []
    for _ in range(300):
        n0, n1, n2 = rng.poisson(lam0, n_img) + 1, rng.poisson(lam1, n_img), rng.poisson(lam1, n_img)
        confs = np.zeros((len(e), n_img, 3, 3))
        for s, rate in enumerate(e):
            wrong = rng.binomial(n0, rate)
            confs[s, :, 0, 0], confs[s, :, 0, 1], confs[s, :, 1, 1], confs[s, :, 2, 2] = n0 - wrong, wrong, n1, n2
        got = spread.split_seed_variance(confs)
        noise.append(np.var(got["seeds_miou"] - mu, ddof=1))
        image.append(got["image_var"])
    assert np.mean(noise) > 0.5 * np.var(mu, ddof=1)  # the images' part is a sizeable share here
    assert np.mean(image) == pytest.approx(np.mean(noise), rel=0.1)


def test_class_shares_sum_to_each_seeds_deviation():
    """Seed 0 (image A): IoUs 75 / 80, seed 1 (B): 100 / 100; means 87.5 / 90. Shares (IoU − mean) / 2."""
    confs = np.stack([A[None], B[None]])
    shares = spread.class_shares(confs)
    np.testing.assert_allclose(shares, [[-6.25, -5.0], [6.25, 5.0]])
    np.testing.assert_allclose(shares.sum(axis=1), [77.5 - 88.75, 100 - 88.75])
    # a third class only seed 1 saw: NaN for seed 0, and seed 1 is its own mean there
    a3, b3 = np.zeros((3, 3), int), np.zeros((3, 3), int)
    a3[:2, :2], b3[:2, :2], b3[2, 2] = A, B, 5
    shares = spread.class_shares(np.stack([a3[None], b3[None]]))
    assert np.isnan(shares[0, 2]) and shares[1, 2] == 0.0
    np.testing.assert_allclose(shares[:, :2], [[-6.25 * 2 / 3, -5.0 * 2 / 3], [6.25 * 2 / 3, 5.0 * 2 / 3]])


def test_split_rejects_a_single_seed_or_image():
    with pytest.raises(ValueError, match="seeds"):
        spread.split_seed_variance(np.stack([A, B])[None])
    with pytest.raises(ValueError, match="images"):
        spread.split_seed_variance(np.stack([A[None], B[None]]))


def test_spread_rows_group_the_planned_evals_in_the_cache(tmp_path, monkeypatch):
    """Rows come from the planned experiments' eval keys: seeds grouped per (method, variant), a row with one
    cached seed left out, one whose seeds saw other images skipped with a reason, and the class that moves the
    seeds named first."""
    n_cls = 19

    def mats(wrong_road):  # 4 images; road pixels partly predicted as sidewalk on the seed's model
        m = np.zeros((4, n_cls, n_cls), dtype=np.int64)
        m[:, np.arange(n_cls), np.arange(n_cls)] = 10
        m[:, 0, 0], m[:, 0, 1] = 10 - wrong_road, wrong_road
        return m

    exps = []
    for method, variant, seeds in (("alpha", None, (0, 1)), ("alpha", "v", (0,)), ("beta", None, (0, 1)),
                                   ("gamma", None, (0, 1))):
        for s in seeds:
            key = f"eval-{method}{variant or ''}{s}"
            (tmp_path / key).mkdir()
            names = [f"i{k + (s if method == 'gamma' else 0)}" for k in range(4)]
            save_per_image(tmp_path / key / PER_IMAGE_FILE, mats(2 + 3 * s if method == "alpha" else 1), names)
            exps.append(SimpleNamespace(method=method, variant=variant, seed=s, target="",
                                        eval=SimpleNamespace(key=key)))
    monkeypatch.setattr("bench.suite_plan.plan_suite", lambda suite: (exps, {}, {}))
    rows, skipped = spread.spread_rows({"evaluation": {"subsets": ["19"]}}, tmp_path)
    assert [(r["row"], r["seeds"], r["images"]) for r in rows] == [("alpha", [0, 1], 4), ("beta", [0, 1], 4)]
    assert len(skipped) == 1 and skipped[0].startswith("gamma") and "different image" in skipped[0]
    alpha, beta = rows
    assert alpha["std"] > 0 and beta["std"] == 0.0
    assert alpha["movers"].startswith("road ") and "sidewalk" in alpha["movers"]
    table = spread.format_rows(rows).splitlines()
    assert table[0].startswith("| row | seeds | images | mIoU per seed | std | σ, 95 % CI | image part of the")
    lo, hi = spread.std_interval(alpha["std"], 2)
    assert f"| {alpha['std']:.2f} | [{lo:.2f}, {hi:.2f}] |" in table[2] and "| 0.00 | [0.00, 0.00] |" in table[3]
    assert table[2].startswith("| alpha | 0,1 | 4 |") and table[3].startswith("| beta | 0,1 | 4 |")
    assert "– (std 0)" in table[3]


def test_std_interval_by_hand_and_by_coverage():
    """Two seeds' worth of χ²: with 2 degrees of freedom (3 seeds) the quantile is closed-form, χ²_p = −2 ln(1 − p),
    so σ's 95 % bounds are s·√(1 / −ln 0.025) and s·√(1 / −ln 0.975)."""
    lo, hi = spread.std_interval(1.5, 3)
    assert lo == pytest.approx(1.5 / np.sqrt(-np.log(0.025)), rel=1e-9)  # 0.781
    assert hi == pytest.approx(1.5 / np.sqrt(-np.log(0.975)), rel=1e-9)  # 9.43
    assert spread.std_interval(0.0, 5) == (0.0, 0.0)
    # the interval covers the true σ in about 95 % of 5-run samples (4,000 draws: standard error 0.34 points)
    rng = np.random.default_rng(0)
    draws = rng.normal(10.0, 2.0, size=(4000, 5)).std(axis=1, ddof=1)
    covered = np.mean([lo <= 2.0 <= hi for lo, hi in (spread.std_interval(s, 5) for s in draws)])
    assert abs(covered - 0.95) < 0.015
    for bad in ((1.0, 1), (1.0, 3, 1.2), (-1.0, 3)):
        with pytest.raises(ValueError, match="std_interval"):
            spread.std_interval(*bad)


def test_spread_rows_pool_seeds_from_several_caches(tmp_path, monkeypatch):
    """Seeds run into different result dirs pool into one row when each cache is named; the first cache holding a
    key wins, and a cache that holds none of the row's keys changes nothing."""
    n_cls = 19
    exps, roots = [], [tmp_path / "a", tmp_path / "b", tmp_path / "empty"]
    for r in roots:
        r.mkdir()
    for s, root in ((0, roots[0]), (1, roots[0]), (2, roots[1])):
        m = np.zeros((3, n_cls, n_cls), dtype=np.int64)
        m[:, np.arange(n_cls), np.arange(n_cls)] = 10
        m[:, 0, 0], m[:, 0, 1] = 10 - s, s   # each seed confuses more road for sidewalk
        (root / f"eval-{s}").mkdir()
        save_per_image(root / f"eval-{s}" / PER_IMAGE_FILE, m, ["i0", "i1", "i2"])
        exps.append(SimpleNamespace(method="alpha", variant=None, seed=s, target="",
                                    eval=SimpleNamespace(key=f"eval-{s}")))
    monkeypatch.setattr("bench.suite_plan.plan_suite", lambda suite: (exps, {}, {}))
    suite = {"evaluation": {"subsets": ["19"]}}
    assert spread.spread_rows(suite, roots[0])[0][0]["seeds"] == [0, 1]
    pooled = spread.spread_rows(suite, roots)[0]
    assert len(pooled) == 1 and pooled[0]["seeds"] == [0, 1, 2]
    # seed 2's IoU of road falls with its 2 confused pixels of 10 per image: the pooled seeds' mIoUs fall in order
    assert pooled[0]["seeds_miou"][0] > pooled[0]["seeds_miou"][1] > pooled[0]["seeds_miou"][2]
    assert spread.spread_rows(suite, [roots[2], roots[1]])[0] == []   # one seed alone is no row
