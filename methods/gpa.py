"""Global photometric alignment (GPA), Ma et al., "Coarse-to-fine domain adaptive semantic segmentation with
photometric alignment and category-center regularization", CVPR 2021, §3.1 — the stylisation BiSMAP trains on
(BiSMAP §3.5, footnote 2) and its baseline.

Each source image is aligned to one randomly chosen target image in CIE Lab: classic histogram matching of the
colour channels a and b, and, to avoid histogram-matching artefacts in lightness, a gamma correction of L. The
paper gives no formula for the gamma and no code was released; here (inferred) gamma makes the mean of L/100
equal to the target's: find γ with mean((L_s/100)^γ) = mean(L_t/100).

:func:`translate_source` is the cached stage that writes the aligned source as a mirror of the source tree
(images replaced, label files copied), which later stages read with ``ctx.dataset("source", root=…)``;
:func:`gpa_stage` declares it.

Pure numpy. The sRGB (D65) ↔ Lab conversion is written out in float64 (not cv2's, whose float path does not
round-trip uint8 images exactly), so aligning an image to itself returns it unchanged.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

# sRGB primaries → CIE XYZ (D65), IEC 61966-2-1; the white point is the image of RGB (1, 1, 1), so that white
# maps to a = b = 0 exactly.
_RGB_TO_XYZ = np.array([[0.4124564, 0.3575761, 0.1804375],
                        [0.2126729, 0.7151522, 0.0721750],
                        [0.0193339, 0.1191920, 0.9503041]])
_XYZ_TO_RGB = np.linalg.inv(_RGB_TO_XYZ)
_WHITE = _RGB_TO_XYZ.sum(axis=1)
_EPS = (6 / 29) ** 3  # CIE f(t) switches from the cube root to the linear segment below this
_C = np.arange(256) / 255.0
_LINEAR = np.where(_C <= 0.04045, _C / 12.92, ((_C + 0.055) / 1.055) ** 2.4)  # sRGB decoding of each uint8 level


def _check_rgb(name: str, img) -> np.ndarray:
    if not isinstance(img, np.ndarray) or img.dtype != np.uint8:
        raise ValueError(f"{name}: expected a uint8 numpy array of shape [H, W, 3], got "
                         f"{type(img).__name__} {getattr(img, 'dtype', '')}")
    if img.ndim != 3 or img.shape[2] != 3 or img.shape[0] == 0 or img.shape[1] == 0:
        raise ValueError(f"{name}: expected shape [H, W, 3] with H, W > 0, got {img.shape}")
    return img


def rgb_to_lab(rgb: np.ndarray) -> np.ndarray:
    """sRGB uint8 [H,W,3] → CIE Lab float64 [H,W,3] (D65): L in [0, 100], a/b roughly in [-128, 128]."""
    lin = _LINEAR[_check_rgb("rgb", rgb)]
    t = (lin @ _RGB_TO_XYZ.T) / _WHITE
    f = np.where(t > _EPS, np.cbrt(t), t / (3 * (6 / 29) ** 2) + 4 / 29)
    return np.stack([116 * f[..., 1] - 16, 500 * (f[..., 0] - f[..., 1]), 200 * (f[..., 1] - f[..., 2])], -1)


def lab_to_rgb(lab: np.ndarray) -> np.ndarray:
    """CIE Lab float [H,W,3] → sRGB uint8 [H,W,3]; colours outside the sRGB gamut are clipped."""
    if lab.ndim != 3 or lab.shape[2] != 3:
        raise ValueError(f"lab: expected shape [H, W, 3], got {lab.shape}")
    fy = (lab[..., 0] + 16) / 116
    f = np.stack([fy + lab[..., 1] / 500, fy, fy - lab[..., 2] / 200], -1)
    t = np.where(f > 6 / 29, f ** 3, 3 * (6 / 29) ** 2 * (f - 4 / 29))
    lin = np.clip((t * _WHITE) @ _XYZ_TO_RGB.T, 0.0, 1.0)
    c = np.where(lin <= 0.0031308, 12.92 * lin, 1.055 * lin ** (1 / 2.4) - 0.055)
    return np.clip(np.rint(c * 255), 0, 255).astype(np.uint8)


def match_histogram(values: np.ndarray, reference: np.ndarray) -> np.ndarray:
    """Classic histogram matching (specification) of one channel: each value v becomes the smallest reference
    value r whose reference CDF reaches v's CDF, F_ref(r) >= F_src(v), with F(x) = #{samples <= x} / n.

    Shapes: any (flattened internally; the output has ``values``' shape); dtype float64. Output values are
    reference values, so the output's histogram follows the reference's. CDFs are compared in exact integer
    arithmetic (cross-multiplied counts), so an array matched to itself is returned unchanged.
    """
    v = np.asarray(values, dtype=np.float64)
    r = np.asarray(reference, dtype=np.float64).ravel()
    if v.size == 0 or r.size == 0:
        raise ValueError(f"values/reference: expected non-empty arrays, got sizes {v.size} and {r.size}")
    if not (np.isfinite(v).all() and np.isfinite(r).all()):
        raise ValueError("values/reference: NaN or infinite entries")
    src_vals, inverse, src_counts = np.unique(v.ravel(), return_inverse=True, return_counts=True)
    ref_vals, ref_counts = np.unique(r, return_counts=True)
    # F_ref(r_j) >= F_src(v_i)  ⇔  cum_ref[j] · n_src >= cum_src[i] · n_ref   (int64: n ≤ ~3e9 is safe)
    lhs = np.cumsum(ref_counts, dtype=np.int64) * np.int64(v.size)
    rhs = np.cumsum(src_counts, dtype=np.int64) * np.int64(r.size)
    j = np.searchsorted(lhs, rhs, side="left")
    return ref_vals[j][inverse.reshape(-1)].reshape(v.shape)


def gamma_for_mean(lightness: np.ndarray, target_mean: float, bounds: tuple[float, float] = (0.1, 10.0)) -> float:
    """The γ > 0 with mean(x^γ) = target_mean for x = ``lightness`` in [0, 1] (our reading of GPA's L gamma).

    mean(x^γ) decreases monotonically in γ, so γ is found by safeguarded Newton iteration within ``bounds``; a target
    outside what the bounds reach gives the nearer bound. Returns exactly 1.0 when the means already agree, or
    when mean(x^γ) cannot move (every x is 0 or 1). Shape: any; values must lie in [0, 1].
    """
    x = np.asarray(lightness, dtype=np.float64).ravel()
    if x.size == 0 or not np.isfinite(x).all() or x.min() < 0 or x.max() > 1:
        raise ValueError("lightness: expected a non-empty array with values in [0, 1]")
    if not 0.0 <= target_mean <= 1.0:
        raise ValueError(f"target_mean: expected a value in [0, 1], got {target_mean}")
    if not 0.0 < bounds[0] < bounds[1]:
        raise ValueError(f"bounds: expected 0 < low < high, got {bounds}")
    inner = x[(x > 0) & (x < 1)]
    if inner.size == 0 or x.mean() == target_mean:
        return 1.0
    log_x = np.log(inner)
    rest = np.count_nonzero(x == 1)  # pixels at 1 stay 1 for every γ; pixels at 0 stay 0
    lo, hi = float(bounds[0]), float(bounds[1])
    g = 1.0 if lo < 1.0 < hi else 0.5 * (lo + hi)
    for _ in range(100):  # Newton steps inside a shrinking bracket; a step that leaves it bisects instead
        p = np.exp(g * log_x)
        h = (p.sum() + rest) / x.size - target_mean
        if h > 0:
            lo = g  # still too bright: a larger γ darkens
        else:
            hi = g
        if abs(h) < 1e-14 or hi - lo < 1e-13 * hi:
            break
        slope = (p * log_x).sum() / x.size  # d mean / dγ < 0
        step = g - h / slope if slope < 0 else lo - 1.0
        g = step if lo < step < hi else 0.5 * (lo + hi)
    return float(g)


def gpa_align(source_rgb: np.ndarray, target_rgb: np.ndarray,
              gamma_bounds: tuple[float, float] = (0.1, 10.0)) -> np.ndarray:
    """GPA (Ma et al. CVPR 2021 §3.1): ``source_rgb`` (uint8 [H,W,3], RGB) restyled after ``target_rgb``
    (uint8 [H',W',3]; any size) → uint8 [H,W,3].

    a and b: ``match_histogram`` against the target's a and b. L: ``L' = 100 · (L/100)^γ`` with γ from
    ``gamma_for_mean`` so that mean(L'/100) = mean(L_t/100) (before the uint8 rounding). Aligning an image to
    itself returns it unchanged. Labels are untouched (the geometry does not change).
    """
    src = rgb_to_lab(_check_rgb("source_rgb", source_rgb))
    tgt = rgb_to_lab(_check_rgb("target_rgb", target_rgb))
    out = np.empty_like(src)
    l_src = np.clip(src[..., 0] / 100.0, 0.0, 1.0)
    l_tgt = np.clip(tgt[..., 0] / 100.0, 0.0, 1.0)  # same arithmetic as l_src: equal images give equal means
    gamma = gamma_for_mean(l_src, float(l_tgt.ravel().mean()), gamma_bounds)
    out[..., 0] = src[..., 0] if gamma == 1.0 else 100.0 * l_src ** gamma
    for ch in (1, 2):
        out[..., ch] = match_histogram(src[..., ch], tgt[..., ch])
    return lab_to_rgb(out)


def pair_targets(n_source: int, n_target: int, seed: int) -> np.ndarray:
    """The target image index each source image is aligned to: ``n_source`` draws, uniform with replacement
    from ``range(n_target)`` (int64 [n_source]), reproducible from ``seed`` (numpy PCG64)."""
    if int(n_source) < 0 or int(n_target) < 1:
        raise ValueError(f"n_source/n_target: expected n_source >= 0 and n_target >= 1, got {n_source}, {n_target}")
    return np.random.default_rng(seed).integers(0, int(n_target), size=int(n_source), dtype=np.int64)


# ------------------------------------------------------------------------------------------------- stage
def translate_source(p: dict, ctx) -> dict:
    """Stage ``gpa.source``: every source image aligned to the target-train image :func:`pair_targets` draws
    for it (the stage's seed), written as PNG at the same root-relative path under ``tree/``, with its label file
    copied beside. The tree has the source's layout, so the source's reader and list file work on it."""
    import shutil
    import time

    from PIL import Image

    from bench.data.io import read_image

    src = ctx.dataset("source", plain=True)
    tgt = ctx.dataset("target_train", plain=True, labels=False)
    root = Path(src.root)
    tree = ctx.out_dir / "tree"
    if p.get("gamma", GAMMA_RULE) != GAMMA_RULE:
        raise ValueError(f"gpa gamma={p['gamma']!r}; only {GAMMA_RULE!r} is implemented")
    pairs = pair_targets(len(src.samples), len(tgt.samples), p.get("pair_seed", ctx.seed))
    progress = ctx.callbacks(len(src.samples))
    t0 = time.perf_counter()
    for i, (s, j) in enumerate(zip(src.samples, pairs)):
        out = tree / Path(s.image).relative_to(root)
        out.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(gpa_align(read_image(s.image), read_image(tgt.samples[j].image))).save(out)
        if s.label is not None:
            lab = tree / Path(s.label).relative_to(root)
            lab.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(s.label, lab)
        for cb in progress:
            cb(i + 1, {})
    return {"images": len(src.samples), "seconds_per_image": (time.perf_counter() - t0) / max(len(src.samples), 1)}


GAMMA_RULE = "mean_L"  # the one L-gamma rule implemented (gpa_align): mean(L/100) matched to the target's


def gpa_stage(gamma: str = GAMMA_RULE, pair_seed: int | None = None):
    """The GPA-stylised source as a stage (shared by every method that trains on it; alias its output).
    ``pair_seed``: None draws the source→target pairing from the run's seed (one tree per seed); an int fixes the
    pairing, and the tree is shared by every seed."""
    from methods.base import Stage

    if gamma != GAMMA_RULE:
        raise ValueError(f"gpa gamma={gamma!r}; only {GAMMA_RULE!r} is implemented (mean(L/100) matched)")
    params = {"method": "gpa", "gamma": gamma}
    if pair_seed is not None:  # absent = the run's seed, so the older key stays valid
        params["pair_seed"] = int(pair_seed)
    return Stage("gpa.source", "data", translate_source, params, datasets=("source", "target_train"), version="1",
                 seeded=pair_seed is None)
