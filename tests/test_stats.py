"""Per-image confusion matrices and the paired bootstrap, against scikit-learn and hand-worked cases."""

from types import SimpleNamespace

import numpy as np
import pytest
import torch
from confusion_fakes import C, miou_sklearn, noisy, per_image_sklearn, random_maps

from bench.metrics import (
    PER_IMAGE_FILE,
    ConfusionMatrix,
    iou_from_confusion,
    load_per_image,
    miou_from_confusion,
    save_per_image,
)
from bench.stats import (
    MISSING,
    Difference,
    format_difference,
    paired_bootstrap,
    paired_bootstrap_seeds,
    resample_counts,
    resampled_miou,
    row_difference,
    verdict,
)

# ---- per-image matrices --------------------------------------------------------------------------------------


def test_per_image_matrices_match_sklearn_and_sum_to_the_total():
    rng = np.random.default_rng(0)
    gt = random_maps(rng)
    pred = rng.integers(0, C, gt.shape)
    batched, single = ConfusionMatrix(per_image=True), ConfusionMatrix(per_image=True)
    batched.update(pred[:4], gt[:4], name=[f"img{i}" for i in range(4)])
    batched.update(pred[4:], gt[4:], name=["img4", "img5"])
    for i, (p, g) in enumerate(zip(pred, gt)):
        single.update(p, g, name=f"img{i}")
    ref = per_image_sklearn(pred, gt)
    for cm in (batched, single):
        assert np.array_equal(cm.per_image(), ref)
        assert np.array_equal(cm.per_image().sum(0), cm.numpy())
        assert cm.names == [f"img{i}" for i in range(6)]
    plain = ConfusionMatrix()
    plain.update(pred, gt)
    assert np.array_equal(plain.numpy(), batched.numpy())  # keeping per-image matrices changes nothing
    with pytest.raises(RuntimeError):
        plain.per_image()


def test_iou_of_a_stack_equals_the_matrix_by_matrix_subset_semantics():
    rng = np.random.default_rng(1)
    gt = random_maps(rng, n=5)
    cm = ConfusionMatrix(per_image=True)
    cm.update(rng.integers(0, C, gt.shape), gt)
    stack = cm.per_image()
    for subset in (None, "16", "13", [0, 1, 5]):
        ious = iou_from_confusion(stack, subset)
        mious = miou_from_confusion(stack, subset)
        for i, m in enumerate(stack):
            one = ConfusionMatrix()
            one.mat = torch.from_numpy(m)
            np.testing.assert_array_equal(ious[i], one.iou(subset))
            assert mious[i] == pytest.approx(one.miou(subset))


def test_save_and_load_round_trip_is_compact(tmp_path):
    rng = np.random.default_rng(2)
    mats = np.zeros((200, C, C), np.int64)
    for m in mats:  # a segmentation matrix is mostly empty: a few classes per image
        cls = rng.choice(C, 5, replace=False)
        m[cls, cls] = rng.integers(1000, 30000, 5)
        m[cls[0], cls[1]] = 77
    names = [f"city_{i:06d}" for i in range(200)]
    path = save_per_image(tmp_path / PER_IMAGE_FILE, mats, names)
    back, back_names = load_per_image(path)
    assert np.array_equal(back, mats) and back.dtype == np.int64 and back_names == names
    assert path.stat().st_size < 0.1 * mats.nbytes  # sparse → compressed
    with np.load(path) as z:
        assert z["confusion"].dtype == np.int32
    with pytest.raises(ValueError):
        save_per_image(tmp_path / "bad.npz", mats, names[:3])


class Constant(torch.nn.Module):
    """A 'segmenter' whose logits copy the label map handed in as the image (so predictions are known)."""

    def forward(self, x):
        return torch.nn.functional.one_hot(x[:, 0].long(), C).permute(0, 3, 1, 2).float()


def test_eval_stage_writes_per_image_matrices(tmp_path):
    from bench.evaluate import run_eval

    rng = np.random.default_rng(3)
    gt = random_maps(rng, n=4)
    pred = rng.integers(0, C, gt.shape)
    items = [{"image": torch.from_numpy(p[None]).float().expand(3, -1, -1).clone(), "label": torch.from_numpy(g),
              "name": f"val/{i}.png"} for i, (p, g) in enumerate(zip(pred, gt))]

    ctx = SimpleNamespace(load_model=lambda alias: Constant(), dataset=lambda domain: items, train={"amp": "auto"},
                          device=torch.device("cpu"), out_dir=tmp_path)
    out = run_eval({"protocol": "B", "subsets": ["19"]}, ctx)
    mats, names = load_per_image(tmp_path / PER_IMAGE_FILE)
    assert names == [f"val/{i}.png" for i in range(4)]
    assert np.array_equal(mats, per_image_sklearn(pred, gt))
    assert np.array_equal(mats.sum(0), np.load(tmp_path / "confusion.npy"))
    assert out["miou_19"] == pytest.approx(miou_sklearn(pred, gt) / 100)
    assert "confusion_per_image" not in out and "image_names" not in out  # arrays stay out of the metrics


# ---- paired bootstrap ----------------------------------------------------------------------------------------


def two_methods(seed=0, n=30, err_a=0.2, err_b=0.3):
    rng = np.random.default_rng(seed)
    gt = random_maps(rng, n=n, shape=(12, 16))
    pa, pb = noisy(rng, gt, err_a), noisy(rng, gt, err_b)
    return gt, pa, pb, per_image_sklearn(pa, gt), per_image_sklearn(pb, gt)


def test_identical_inputs_give_zero():
    _, _, _, a, _ = two_methods()
    assert paired_bootstrap(a, a.copy()) == (0.0, 0.0, 0.0)


def test_delta_is_the_difference_of_summed_matrix_mious_from_sklearn():
    gt, pa, pb, a, b = two_methods(seed=4)
    delta, lo, hi = paired_bootstrap(a, b, n_boot=500)
    assert delta == pytest.approx(miou_sklearn(pa, gt) - miou_sklearn(pb, gt), abs=1e-9)
    # the mean of per-image mIoUs is a different number: the delta must not be that one
    per_image = 100 * (np.nanmean(miou_from_confusion(a)) - np.nanmean(miou_from_confusion(b)))
    assert abs(per_image - delta) > 1e-3
    assert lo < delta < hi


def test_better_on_every_image_excludes_zero_and_worse_is_symmetric():
    rng = np.random.default_rng(5)
    gt = random_maps(rng, n=25, shape=(12, 16))
    pb = noisy(rng, gt, 0.4)
    pa = pb.copy()
    for i in range(len(gt)):  # a fixes a few of b's mistakes on every image, changes nothing else
        wrong = np.argwhere((pa[i] != gt[i]) & (gt[i] != 255))[:6]
        pa[i][tuple(wrong.T)] = gt[i][tuple(wrong.T)]
    a, b = per_image_sklearn(pa, gt), per_image_sklearn(pb, gt)
    delta, lo, hi = paired_bootstrap(a, b)
    assert 0 < lo <= delta <= hi
    d2, lo2, hi2 = paired_bootstrap(b, a)
    assert d2 == pytest.approx(-delta) and hi2 < 0 and lo2 == pytest.approx(-hi) and hi2 == pytest.approx(-lo)


def test_same_seed_same_interval_other_seed_other_draws():
    _, _, _, a, b = two_methods(seed=6)
    assert paired_bootstrap(a, b, seed=3) == paired_bootstrap(a, b, seed=3)
    assert paired_bootstrap(a, b, seed=3)[1:] != paired_bootstrap(a, b, seed=4)[1:]


def test_hand_worked_two_images_two_classes():
    """Two images: the resamplings are {1,1} (p 1/2), {1,1'} = image 1 twice and image 2 twice (p 1/4 each), so
    the 2.5 % and 97.5 % quantiles are the two extreme deltas, worked out here by hand."""
    a = np.array([[[3, 1], [0, 4]], [[4, 0], [0, 4]]])
    b = np.array([[[2, 2], [0, 4]], [[4, 0], [1, 3]]])
    # both images: a = [[7,1],[0,8]] → IoU 7/8, 8/9; b = [[6,2],[1,7]] → IoU 6/9, 7/10
    full = 100 * ((7 / 8 + 8 / 9) / 2 - (6 / 9 + 7 / 10) / 2)
    # image 1 twice: IoU a 3/4, 4/5; b 2/4, 4/6 — image 2 twice: a 1, 1; b 4/5, 3/4
    only1 = 100 * ((3 / 4 + 4 / 5) / 2 - (2 / 4 + 4 / 6) / 2)
    only2 = 100 * ((1 + 1) / 2 - (4 / 5 + 3 / 4) / 2)
    delta, lo, hi = paired_bootstrap(a, b, n_boot=4000, seed=1)
    assert delta == pytest.approx(full)
    assert lo == pytest.approx(only1) and hi == pytest.approx(only2)


def test_classes_subset_follows_confusion_matrix_miou():
    _, _, _, a, b = two_methods(seed=7)
    for subset in ("16", "13", [0, 1, 2]):
        delta, _, _ = paired_bootstrap(a, b, n_boot=10, classes=subset)
        ref = []
        for m in (a, b):
            cm = ConfusionMatrix()
            cm.mat = torch.from_numpy(m.sum(0))
            ref.append(cm.miou(subset))
        assert delta == pytest.approx(100 * (ref[0] - ref[1]))
    # a class outside the subset: changing only its ground-truth row leaves the 13-class delta alone
    a2 = a.copy()
    a2[:, 3, :] += 5  # wall (not among the 13)
    assert paired_bootstrap(a2, b, classes="13") == paired_bootstrap(a, b, classes="13")


def test_vectorised_resampling_equals_a_loop_over_explicit_draws():
    _, _, _, a, _ = two_methods(seed=8, n=12)
    counts = resample_counts(len(a), 50, np.random.default_rng(0))
    assert (counts.sum(1) == len(a)).all()
    fast = resampled_miou(counts, a, "16")
    for k, row in enumerate(counts):
        idx = np.repeat(np.arange(len(a)), row)  # the drawn images, with repeats
        cm = ConfusionMatrix()
        cm.mat = torch.from_numpy(a[idx].sum(0))
        assert fast[k] == pytest.approx(cm.miou("16"))


def test_interval_covers_the_truth_in_most_repeats():
    """Coverage: two fixed 'methods' with a known population mIoU difference (the pooled matrices of 4000 images);
    evaluation sets of 60 images drawn from them; the 95 % interval should contain the truth about 95 % of the
    time (≥ 80 % of 40 repeats here, so a broken interval — e.g. unpaired or per-image means — fails)."""
    rng = np.random.default_rng(9)
    gt = random_maps(rng, n=4000, shape=(4, 6), classes=5, ignore=0.0)
    pa = np.where(rng.random(gt.shape) < 0.3, rng.integers(0, 5, gt.shape), gt)
    pb = np.where(rng.random(gt.shape) < 0.35, rng.integers(0, 5, gt.shape), gt)
    mats = []
    for p in (pa, pb):  # 4000 images: the bincount evaluator (checked against sklearn above), not sklearn's loop
        cm = ConfusionMatrix(5, per_image=True)
        cm.update(p, gt)
        mats.append(cm.per_image())
    a, b = mats
    truth = 100 * (miou_from_confusion(a.sum(0)) - miou_from_confusion(b.sum(0)))
    hits = 0
    for r in range(40):
        idx = rng.choice(len(a), 60, replace=False)
        _, lo, hi = paired_bootstrap(a[idx], b[idx], n_boot=500, seed=r)
        hits += lo <= truth <= hi
    assert hits >= 32


def test_bad_inputs_raise():
    a = np.zeros((3, C, C), np.int64)
    with pytest.raises(ValueError, match="same images"):
        paired_bootstrap(a, a[:2])
    with pytest.raises(ValueError, match="at least one"):
        paired_bootstrap(a[:0], a[:0])
    with pytest.raises(ValueError, match="same images"):
        paired_bootstrap_seeds([a, a[:2]], [a, a[:2]])


# ---- several seeds -------------------------------------------------------------------------------------------


def test_seeds_delta_is_the_mean_of_per_seed_deltas():
    runs = [two_methods(seed=s) for s in (11, 12, 13)]
    delta, lo, hi = paired_bootstrap_seeds([r[3] for r in runs], [r[4] for r in runs], n_boot=300)
    assert delta == pytest.approx(np.mean([paired_bootstrap(r[3], r[4], n_boot=1)[0] for r in runs]))
    assert lo < delta < hi
    one = paired_bootstrap(runs[0][3], runs[0][4], seed=2)
    assert paired_bootstrap_seeds([runs[0][3]], [runs[0][4]], seed=2) == one  # one seed: the plain bootstrap


def test_copies_of_one_seed_do_not_narrow_the_interval_but_seed_spread_widens_it():
    """The same validation images under every seed: identical seeds add no information (crossed resampling keeps
    the single-seed width; independent image draws per seed would shrink it by ~√3). A method that wins by a lot
    under one seed and loses under another is not distinguishable, though each seed alone is."""
    gt, pa, pb, a, b = two_methods(seed=14, n=40, err_a=0.2, err_b=0.3)
    _, lo1, hi1 = paired_bootstrap(a, b, n_boot=2000)
    _, lo3, hi3 = paired_bootstrap_seeds([a] * 3, [b] * 3, n_boot=2000)
    assert (hi3 - lo3) == pytest.approx(hi1 - lo1, rel=0.15)
    _, lon, hin = paired_bootstrap_seeds([a] * 3, [b] * 3, n_boot=2000, shared_images=False)
    assert (hin - lon) < 0.75 * (hi1 - lo1)  # the nested form on a shared image set: too narrow
    rng = np.random.default_rng(15)
    worse = per_image_sklearn(noisy(rng, gt, 0.4), gt)
    assert paired_bootstrap(a, b)[1] > 0 and paired_bootstrap(worse, b)[2] < 0
    delta, lo, hi = paired_bootstrap_seeds([a, worse], [b, b], n_boot=2000)
    assert lo < 0 < hi


# ---- table rows ------------------------------------------------------------------------------------------------


def test_row_difference_interval_or_plain_difference_with_the_reason():
    _, _, _, a, b = two_methods(seed=16)
    names = [f"i{k}" for k in range(len(a))]
    row, ref = {0: (a, names), 1: (a, names)}, {0: (b, names), 1: (b, names)}
    d = row_difference(row, ref, plain_delta=99.0)
    assert d.has_interval and d.delta == pytest.approx(paired_bootstrap(a, b)[0]) and d.delta != 99.0
    missing = row_difference({0: (a, names), 1: None}, ref, plain_delta=1.5)
    assert missing == Difference(1.5, note=MISSING) and not missing.has_interval and not missing.excludes_zero
    assert "seeds differ" in row_difference({0: (a, names)}, ref, 1.5).note
    shuffled = {s: (m, names[::-1]) for s, (m, _) in row.items()}
    assert "different images" in row_difference(shuffled, ref, 1.5).note


def test_format_and_verdict():
    sig, flat = Difference(2.34, 1.06, 3.41), Difference(0.2, -0.7, 1.1)
    assert format_difference(sig) == "+2.3 [+1.1, +3.4]†" and sig.excludes_zero
    assert format_difference(flat) == "+0.2 [-0.7, +1.1]" and not flat.excludes_zero
    assert format_difference(Difference(-0.04, note=MISSING)) == "-0.0"
    assert format_difference(Difference(float("nan"))) == "–"
    assert Difference(-2.0, -3.0, -1.0).excludes_zero
    assert verdict(flat).startswith("not distinguishable") and verdict(sig).startswith("distinguishable")
    assert verdict(Difference(1.0, note=MISSING)) == f"no interval: {MISSING}"
