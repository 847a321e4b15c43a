"""GPA (methods.gpa): histogram matching against an exact-fraction CDF loop, the L gamma on hand cases, Lab
against published values and OpenCV, and the full alignment against scipy's Wasserstein distance."""

from fractions import Fraction

import cv2
import numpy as np
import pytest
from scipy.stats import chisquare, wasserstein_distance

from methods.gpa import gamma_for_mean, gpa_align, lab_to_rgb, match_histogram, pair_targets, rgb_to_lab


def _slow_match(values, reference):
    """Histogram specification by definition: v ↦ min{r : F_ref(r) >= F_src(v)}, CDFs as exact fractions."""
    src, ref = list(values), sorted(reference)
    out = []
    for v in src:
        f_src = Fraction(sum(s <= v for s in src), len(src))
        out.append(next(r for r in ref if Fraction(sum(q <= r for q in ref), len(ref)) >= f_src))
    return np.array(out, dtype=np.float64)


@pytest.mark.parametrize("n_src,n_ref,levels", [(40, 40, 6), (37, 53, 9), (60, 25, 4)])
def test_match_histogram_against_exact_cdf_loop(n_src, n_ref, levels):
    rng = np.random.default_rng(n_src + n_ref)
    src = rng.integers(0, levels, n_src).astype(float) * 1.5 - 2  # repeats on purpose: ties in both CDFs
    ref = rng.integers(0, levels + 3, n_ref).astype(float) * 0.7 + 10
    np.testing.assert_array_equal(match_histogram(src, ref), _slow_match(src, ref))


def test_match_histogram_identity_and_exact_multiset():
    rng = np.random.default_rng(1)
    v = rng.normal(size=(30, 20)).round(1)  # many ties
    np.testing.assert_array_equal(match_histogram(v, v), v)
    # distinct source values, equal sizes: the i-th smallest source value becomes the i-th smallest reference value
    src, ref = rng.permutation(200) * 0.1, rng.gamma(2.0, size=200)
    out = match_histogram(src, ref)
    np.testing.assert_array_equal(np.sort(out), np.sort(ref))
    np.testing.assert_array_equal(np.argsort(out, kind="stable"), np.argsort(src, kind="stable"))


def test_match_histogram_errors():
    with pytest.raises(ValueError, match="non-empty"):
        match_histogram(np.array([]), np.array([1.0]))
    with pytest.raises(ValueError, match="NaN"):
        match_histogram(np.array([1.0, np.nan]), np.array([1.0]))


def test_gamma_hand_cases():
    # (0.25^γ + 1^γ)/2 = 0.75 ⇔ 0.25^γ = 0.5 ⇔ γ = 0.5
    assert gamma_for_mean(np.array([0.25, 1.0]), 0.75) == pytest.approx(0.5, rel=1e-12)
    # a constant 0.25 raised to 0.5 is 0.5
    assert gamma_for_mean(np.full((3, 4), 0.25), 0.5) == pytest.approx(0.5, rel=1e-12)
    # 0.5^γ = 0.125 ⇔ γ = 3 (darkening)
    assert gamma_for_mean(np.array([0.5, 0.5]), 0.125) == pytest.approx(3.0, rel=1e-12)
    x = np.array([0.1, 0.4, 0.9])
    assert gamma_for_mean(x, float(x.mean())) == 1.0          # means already agree: exactly no change
    assert gamma_for_mean(np.array([0.0, 1.0, 1.0]), 0.2) == 1.0  # 0 and 1 are fixed points of x^γ
    assert gamma_for_mean(np.array([0.5]), 1e-9) == pytest.approx(10.0)  # beyond reach: the nearer bound
    assert gamma_for_mean(np.array([0.5]), 0.999999) == pytest.approx(0.1)
    with pytest.raises(ValueError, match="lightness"):
        gamma_for_mean(np.array([0.5, 1.2]), 0.5)
    with pytest.raises(ValueError, match="target_mean"):
        gamma_for_mean(np.array([0.5]), 1.5)


def test_lab_published_values_opencv_and_round_trip():
    rgb = np.array([[[255, 255, 255], [0, 0, 0], [255, 0, 0], [0, 255, 0], [0, 0, 255]]], np.uint8)
    # CIE Lab (D65) of sRGB white, black, red, green, blue as commonly tabulated
    expected = [[100, 0, 0], [0, 0, 0], [53.24, 80.09, 67.20], [87.73, -86.18, 83.18], [32.30, 79.19, -107.86]]
    np.testing.assert_allclose(rgb_to_lab(rgb)[0], expected, atol=0.01)
    img = np.random.default_rng(2).integers(0, 256, (64, 48, 3), dtype=np.uint8)
    ref = cv2.cvtColor(img.astype(np.float32) / 255, cv2.COLOR_RGB2LAB)  # another implementation
    np.testing.assert_allclose(rgb_to_lab(img), ref, atol=0.5)
    np.testing.assert_array_equal(lab_to_rgb(rgb_to_lab(img)), img)


def _scene(rng, h, w, base, spread):
    img = rng.normal(base, spread, (h, w, 3))
    img[: h // 2] += 30  # a brighter upper half: a non-trivial histogram
    return np.clip(img, 0, 255).astype(np.uint8)


def test_gpa_moves_ab_histograms_and_mean_lightness_to_the_target():
    rng = np.random.default_rng(3)
    src = _scene(rng, 48, 64, (170, 110, 80), 12)   # warm, bright
    tgt = _scene(rng, 40, 90, (80, 100, 140), 15)   # cool, darker, another size
    out = gpa_align(src, tgt)
    assert out.shape == src.shape and out.dtype == np.uint8
    lab_s, lab_t, lab_o = (rgb_to_lab(x).reshape(-1, 3) for x in (src, tgt, out))
    # exact in Lab (match_histogram's tests); the uint8 RGB rounding and gamut clipping leave a small residue
    for ch in (1, 2):
        before = wasserstein_distance(lab_s[:, ch], lab_t[:, ch])
        after = wasserstein_distance(lab_o[:, ch], lab_t[:, ch])
        assert before > 10 and after < 0.5, (ch, before, after)
    assert abs(lab_o[:, 0].mean() - lab_t[:, 0].mean()) < 0.3 and abs(lab_s[:, 0].mean() - lab_t[:, 0].mean()) > 5


def test_gpa_identity_when_source_is_target():
    img = np.random.default_rng(4).integers(0, 256, (33, 47, 3), dtype=np.uint8)
    np.testing.assert_array_equal(gpa_align(img, img), img)


def test_gpa_input_errors_name_the_argument():
    img = np.zeros((8, 8, 3), np.uint8)
    with pytest.raises(ValueError, match="source_rgb.*uint8"):
        gpa_align(img.astype(np.float32), img)
    with pytest.raises(ValueError, match=r"target_rgb.*\[H, W, 3\]"):
        gpa_align(img, img[..., 0])
    with pytest.raises(ValueError, match="target_rgb"):
        gpa_align(img, np.zeros((0, 8, 3), np.uint8))


def test_pair_targets_seeded_in_range_and_uniform():
    a, b = pair_targets(5000, 10, seed=7), pair_targets(5000, 10, seed=7)
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, pair_targets(5000, 10, seed=8))
    assert a.dtype == np.int64 and a.min() >= 0 and a.max() <= 9
    assert chisquare(np.bincount(a, minlength=10)).pvalue > 1e-4  # uniform with replacement
    assert pair_targets(0, 3, seed=0).shape == (0,)
    with pytest.raises(ValueError, match="n_target"):
        pair_targets(3, 0, seed=0)


def test_gpa_stage_writes_a_readable_mirror_of_the_source_tree(tmp_path):
    """The stage's tree has the source layout: same names and sizes, labels byte-identical, images restyled
    after the paired target image (its a/b histogram moves towards that target's), readable by the source
    reader."""
    from fixtures import make_cityscapes, make_gta5

    from bench.data import build_dataset
    from bench.stage_exec import StageContext
    from methods.gpa import gpa_stage

    make_gta5(tmp_path / "gta5", n=3, size=(32, 16))
    make_cityscapes(tmp_path / "cs", split="train", size=(32, 16), seed=1)
    specs = {"source": {"name": "gta5", "root": str(tmp_path / "gta5"), "options": {"flip": True}},
             "target_train": {"name": "cityscapes", "root": str(tmp_path / "cs"), "split": "train"}}
    out = tmp_path / "stage"
    out.mkdir()
    ctx = StageContext(out, 0, specs, {})
    stage = gpa_stage()
    assert stage.kind == "data" and stage.datasets == ("source", "target_train")
    result = stage.fn(stage.params, ctx)
    assert result["images"] == 3
    orig = build_dataset("gta5", tmp_path / "gta5")
    mirror = ctx.dataset("source", plain=True, root=out / "tree")
    assert [s.name for s in mirror.samples] == [s.name for s in orig.samples]
    tgt = build_dataset("cityscapes", tmp_path / "cs", "train")
    pairs = pair_targets(3, len(tgt), 0)
    for s, m, j in zip(orig.samples, mirror.samples, pairs):
        assert m.label.read_bytes() == s.label.read_bytes()
        a, b = cv2.imread(str(s.image))[..., ::-1], cv2.imread(str(m.image))[..., ::-1]
        t = cv2.imread(str(tgt.samples[j].image))[..., ::-1]
        assert a.shape == b.shape
        np.testing.assert_array_equal(b, gpa_align(np.ascontiguousarray(a), np.ascontiguousarray(t)))
