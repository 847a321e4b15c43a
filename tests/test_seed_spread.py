"""The seed-spread split (model part vs evaluation-image part) on hand-worked and constructed cases."""

from types import SimpleNamespace

import numpy as np
import pytest

import bench.seed_spread as spread
from bench.metrics import PER_IMAGE_FILE, save_per_image

# Two 2-class images: A's mIoU is (3/4 + 4/5) / 2 = 77.5 %, B's 100 %.
A = np.array([[3, 1], [0, 4]])
B = np.array([[4, 0], [0, 4]])


def test_subset_variance_and_split_by_hand():
    """Seed 0 scores images (A, B), seed 1 (B, A): on the whole set both sum to [[7, 1], [0, 8]] (std 0); on one
    image the seeds differ by 22.5 points either way, so every subset has variance 22.5² / 2 = 253.125. The fit
    through n = 1: c = 253.125 / (1 − 1/2) = 506.25, the image part c / N = 253.125, the model part 0."""
    confs = np.stack([np.stack([A, B]), np.stack([B, A])])
    rng = np.random.default_rng(0)
    assert spread.subset_seed_variance(confs, 1, 20, rng) == pytest.approx(253.125)
    got = spread.split_seed_variance(confs, sizes=(1,), reps=20)
    assert got["std"] == pytest.approx(0.0, abs=1e-12)
    assert got["subset_std"] == {1: pytest.approx(np.sqrt(253.125))}
    assert got["image_std"] == pytest.approx(np.sqrt(253.125))
    assert got["model_std"] == 0.0


def test_identical_images_leave_only_the_model_part():
    """Every image of a seed has the same matrix, so any subset scores exactly as the whole set: the image part
    is 0 and the model part is the observed std."""
    per_seed = [np.array([[9, 1, 0], [2, 8, 0], [0, 1, 9]]), np.array([[6, 4, 0], [2, 8, 0], [0, 0, 10]]),
                np.array([[9, 1, 0], [0, 10, 0], [3, 3, 4]])]
    confs = np.stack([np.repeat(m[None], 40, axis=0) for m in per_seed])
    got = spread.split_seed_variance(confs, sizes=(5, 10, 20), reps=30)
    assert got["std"] > 5
    assert all(v == pytest.approx(got["std"]) for v in got["subset_std"].values())
    assert got["image_std"] == pytest.approx(0.0, abs=1e-6)
    assert got["model_std"] == pytest.approx(got["std"])


def test_reordered_images_are_all_image_part():
    """Three seeds hold the same 60 per-image matrices in different image orders: equal on the whole set, apart
    on every subset, more so on smaller ones."""
    rng = np.random.default_rng(1)
    mats = rng.integers(0, 20, size=(60, 3, 3))
    confs = np.stack([mats[rng.permutation(60)] for _ in range(3)])
    got = spread.split_seed_variance(confs, sizes=(5, 15, 30), reps=100)
    assert got["std"] == pytest.approx(0.0, abs=1e-9)
    stds = [got["subset_std"][n] for n in (5, 15, 30)]
    assert stds[0] > stds[1] > stds[2] > 0
    assert got["image_std"] > 0 and got["model_std"] == 0.0


def test_class_shares_sum_to_each_seeds_deviation():
    """Seed 0 (image A): IoUs 75 / 80, seed 1 (B): 100 / 100; means 87.5 / 90. Shares (IoU − mean) / 2."""
    confs = np.stack([A[None], B[None]])
    shares = spread.class_shares(confs)
    np.testing.assert_allclose(shares, [[-6.25, -5.0], [6.25, 5.0]])
    np.testing.assert_allclose(shares.sum(axis=1), [77.5 - 88.75, 100 - 88.75])


def test_split_rejects_a_single_seed_and_bad_sizes():
    with pytest.raises(ValueError, match="seeds"):
        spread.split_seed_variance(np.stack([A, B])[None])
    with pytest.raises(ValueError, match="subset size"):
        spread.subset_seed_variance(np.stack([np.stack([A, B])] * 2), 3, 5, np.random.default_rng(0))


def test_spread_rows_group_the_planned_evals_in_the_cache(tmp_path, monkeypatch):
    """Rows come from the planned experiments' eval keys: seeds grouped per (method, variant), a row with one
    cached seed left out, and the class that moves the seeds named first."""
    n_cls = 19
    def mats(wrong_road):  # 4 images; road pixels partly predicted as sidewalk on the seed's model
        m = np.zeros((4, n_cls, n_cls), dtype=np.int64)
        m[:, np.arange(n_cls), np.arange(n_cls)] = 10
        m[:, 0, 0], m[:, 0, 1] = 10 - wrong_road, wrong_road
        return m
    exps = []
    for method, variant, seeds in (("alpha", None, (0, 1)), ("alpha", "v", (0,)), ("beta", None, (0, 1))):
        for s in seeds:
            key = f"eval-{method}{variant or ''}{s}"
            (tmp_path / key).mkdir()
            save_per_image(tmp_path / key / PER_IMAGE_FILE, mats(2 + 3 * s if method == "alpha" else 1),
                           [f"i{k}" for k in range(4)])
            exps.append(SimpleNamespace(method=method, variant=variant, seed=s, target="",
                                        eval=SimpleNamespace(key=key)))
    monkeypatch.setattr("bench.suite_plan.plan_suite", lambda suite: (exps, {}, {}))
    rows = spread.spread_rows({"evaluation": {"subsets": ["19"]}}, tmp_path, reps=5)
    assert [(r["row"], r["seeds"]) for r in rows] == [("alpha", [0, 1]), ("beta", [0, 1])]
    alpha, beta = rows
    assert alpha["std"] > 0 and beta["std"] == 0.0
    assert alpha["movers"].startswith("road ") and "sidewalk" in alpha["movers"]
    table = spread.format_rows(rows)
    assert table.splitlines()[0].startswith("| row | seeds | mIoU per seed | std |")
    assert "| alpha | 0,1 |" in table
