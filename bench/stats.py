"""Confidence intervals on mIoU differences: the paired bootstrap over evaluation images (and seeds).

mIoU is a ratio of sums over the whole evaluation set, not a mean over images, so the resampling unit is the
image but the statistic is always recomputed from the *summed* confusion matrix of the resampled images
(Efron & Tibshirani, "An Introduction to the Bootstrap", 1993, ch. 13: the percentile interval). A resampling
is a vector of counts (how often each image was drawn, multinomial(N, 1/N)), so the summed matrices of all
resamplings are one matrix product ``counts [B, N] @ per_image [N, C*C]``: 2,000 resamplings of 200 images with
19 classes take a few tens of milliseconds.

Paired: both methods see the same resampled images, so what is shared by the images (an easy or a hard scene)
cancels and the interval is on the difference itself. With several seeds (:func:`paired_bootstrap_seeds`), the
resampling is two-level: draw the seeds with replacement, then the images; the statistic is the mean over the
drawn seeds of the per-seed difference — so the interval covers seed-to-seed variation (training noise) as well
as the finite evaluation set. Every seed is scored on the same validation images, so one image draw serves all
seeds of a replicate (seeds and images are crossed, not nested: see that function).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from bench.metrics import miou_from_confusion

LEVEL = 0.95


def _check_pair(conf_a, conf_b) -> tuple[np.ndarray, np.ndarray]:
    a, b = np.asarray(conf_a), np.asarray(conf_b)
    if a.ndim != 3 or a.shape[1] != a.shape[2] or a.shape != b.shape:
        raise ValueError(f"per-image confusion matrices must both be [N, C, C] on the same images; got {a.shape} "
                         f"and {b.shape}")
    if len(a) == 0:
        raise ValueError("no images: a bootstrap needs at least one per-image confusion matrix")
    return a, b


def resample_counts(n_images: int, n_boot: int, rng: np.random.Generator) -> np.ndarray:
    """``[n_boot, n_images]`` draw counts of image resamplings with replacement (each row sums to
    ``n_images``): a multinomial(N, 1/N) row is exactly the histogram of N uniform draws (Efron & Tibshirani
    1993, §6.2), and a count vector turns resampled sums into one matrix product."""
    return rng.multinomial(n_images, np.full(n_images, 1.0 / n_images), size=n_boot)


def resampled_miou(counts: np.ndarray, conf: np.ndarray, classes=None) -> np.ndarray:
    """mIoU (fraction) of the summed matrix of each resampling: ``counts [B, N]`` × ``conf [N, C, C]`` → ``[B]``.
    Classes absent from a resampling's matrix are left out of its mean, as in ``ConfusionMatrix.miou``."""
    n, c = conf.shape[0], conf.shape[-1]
    summed = (counts.astype(np.float64) @ conf.reshape(n, c * c).astype(np.float64)).reshape(-1, c, c)
    return miou_from_confusion(summed, classes)


def percentile_interval(samples: np.ndarray, level: float = LEVEL) -> tuple[float, float]:
    """The bootstrap percentile interval (Efron & Tibshirani 1993, Eq. 13.5): the (1−level)/2 and (1+level)/2
    quantiles of the bootstrap replicates (NaN replicates — a resampling with no class present — left out)."""
    tail = 100 * (1 - level) / 2
    lo, hi = np.nanpercentile(np.asarray(samples, dtype=np.float64), [tail, 100 - tail])
    return float(lo), float(hi)


def miou_difference(conf_a, conf_b, classes=None) -> float:
    """mIoU(a) − mIoU(b) in mIoU points (percent), each from its summed ``[N, C, C]`` matrix."""
    a, b = _check_pair(conf_a, conf_b)
    return float(100 * (miou_from_confusion(a.sum(0), classes) - miou_from_confusion(b.sum(0), classes)))


def paired_bootstrap(conf_a, conf_b, n_boot: int = 2000, seed: int = 0, classes=None,
                     level: float = LEVEL) -> tuple[float, float, float]:
    """``(delta, lo, hi)``: delta = mIoU(a) − mIoU(b) in points from the summed matrices, and the ``level``
    percentile interval of delta over ``n_boot`` paired resamplings of the N images.

    ``conf_a``, ``conf_b``: ``[N, C, C]`` integer per-image confusion matrices of two methods on the same images
    in the same order. ``classes``: a class subset with the semantics of ``ConfusionMatrix.miou`` (trainIds or
    "19"/"16"/"13"). The same ``seed`` gives the same interval.
    """
    a, b = _check_pair(conf_a, conf_b)
    delta = miou_difference(a, b, classes)
    counts = resample_counts(len(a), n_boot, np.random.default_rng(seed))
    reps = 100 * (resampled_miou(counts, a, classes) - resampled_miou(counts, b, classes))
    lo, hi = percentile_interval(reps, level)
    return delta, lo, hi


def paired_bootstrap_seeds(confs_a: Sequence, confs_b: Sequence, n_boot: int = 2000, seed: int = 0,
                           classes=None, level: float = LEVEL,
                           shared_images: bool = True) -> tuple[float, float, float]:
    """The multi-seed form: ``confs_a[s]``, ``confs_b[s]`` are the ``[N_s, C, C]`` per-image matrices of the two
    methods trained with the same seed s (paired by seed, then by image).

    delta = the mean over seeds of the per-seed differences of summed-matrix mIoUs (= the difference of the
    two rows' mean mIoUs over seeds). A replicate draws S seeds with replacement, resamples the images, and
    takes the mean of the drawn seeds' differences; ``lo``, ``hi`` are the ``level`` percentile interval of the
    replicates. With one seed this is :func:`paired_bootstrap`.

    ``shared_images=True`` (every seed scored on the same validation images, as in a suite): one image draw per
    replicate, shared by all its seeds — seeds and images are crossed factors (McCullagh, "Resampling and
    exchangeable arrays", Bernoulli 2000). Drawing images independently for each seed would treat the one
    validation set as S independent ones and shrink the image part of the interval by about √S. ``False``:
    the seeds were scored on different images: each drawn seed gets its own image draw (the nested bootstrap,
    Davison & Hinkley 1997, §3.8).
    """
    if len(confs_a) != len(confs_b) or not len(confs_a):
        raise ValueError(f"need the same (non-zero) number of seeds for both methods; got {len(confs_a)} and "
                         f"{len(confs_b)}")
    pairs = [_check_pair(a, b) for a, b in zip(confs_a, confs_b)]
    if len(pairs) == 1:
        return paired_bootstrap(*pairs[0], n_boot=n_boot, seed=seed, classes=classes, level=level)
    if shared_images and len({a.shape for a, _ in pairs}) != 1:
        raise ValueError("shared_images=True needs every seed scored on the same images; got "
                         f"{sorted({len(a) for a, _ in pairs})} images")
    s = len(pairs)
    delta = float(np.mean([miou_difference(a, b, classes) for a, b in pairs]))
    rng = np.random.default_rng(seed)
    picks = rng.integers(0, s, size=(n_boot, s))  # the seeds of each replicate's S slots
    slot = np.empty((n_boot, s))
    counts = resample_counts(len(pairs[0][0]), n_boot, rng) if shared_images else None
    for k, (a, b) in enumerate(pairs):
        if shared_images:  # seed k's difference under every replicate's image draw, then placed where drawn
            per_rep = 100 * (resampled_miou(counts, a, classes) - resampled_miou(counts, b, classes))
            slot[picks == k] = np.broadcast_to(per_rep[:, None], picks.shape)[picks == k]
        else:  # each slot that drew seed k gets its own image draw
            where = picks == k
            own = resample_counts(len(a), int(where.sum()), rng)
            slot[where] = 100 * (resampled_miou(own, a, classes) - resampled_miou(own, b, classes))
    lo, hi = percentile_interval(slot.mean(axis=1), level)
    return delta, lo, hi


# ---- differences of table rows -----------------------------------------------------------------------------


@dataclass(frozen=True)
class Difference:
    """One table row against its reference row, in mIoU points. ``lo``/``hi`` NaN: no interval (``note`` says
    why); ``delta`` is then the plain difference of the rows' means."""

    delta: float
    lo: float = float("nan")
    hi: float = float("nan")
    note: str = ""

    @property
    def has_interval(self) -> bool:
        return bool(np.isfinite(self.lo) and np.isfinite(self.hi))

    @property
    def excludes_zero(self) -> bool:
        """The interval lies entirely above or below 0 (the rows are distinguishable at its level)."""
        return self.has_interval and (self.lo > 0 or self.hi < 0)


MISSING = "per-image confusion matrices missing (evaluated before they were stored)"


def row_difference(row: Mapping, ref: Mapping, plain_delta: float, n_boot: int = 2000, seed: int = 0,
                   classes=None) -> Difference:
    """A table row against its reference row. ``row``/``ref`` map seed → ``(matrices [N, C, C], image ids)`` of
    that seed's eval stage, or None where the stage did not store them (an older cache).

    When both rows have matrices for the same seeds on the same images (in the same order): the paired
    bootstrap over seeds and images. Otherwise ``plain_delta`` (the difference of the displayed means) with
    no interval and the reason — never an interval computed on part of the data.
    """
    if set(row) != set(ref):
        return Difference(plain_delta, note=f"seeds differ ({sorted(row)} vs {sorted(ref)}): no paired interval")
    seeds = sorted(row)
    if not seeds or any(row[s] is None or ref[s] is None for s in seeds):
        return Difference(plain_delta, note=MISSING)
    if any(list(row[s][1]) != list(ref[s][1]) for s in seeds):
        return Difference(plain_delta, note="evaluated on different images: no paired interval")
    shared = all(list(row[s][1]) == list(row[seeds[0]][1]) for s in seeds)
    delta, lo, hi = paired_bootstrap_seeds([row[s][0] for s in seeds], [ref[s][0] for s in seeds], n_boot=n_boot,
                                           seed=seed, classes=classes, shared_images=shared)
    return Difference(delta, lo, hi)


def format_difference(d: Difference, digits: int = 1, mark: str = "†") -> str:
    """``+2.3 [+1.1, +3.4]†`` (``mark`` where the interval excludes 0), ``+2.3`` without an interval, ``–``
    without a value."""
    if d is None or not np.isfinite(d.delta):
        return "–"
    text = f"{d.delta:+.{digits}f}"
    if d.has_interval:
        text += f" [{d.lo:+.{digits}f}, {d.hi:+.{digits}f}]" + (mark if d.excludes_zero else "")
    return text


def verdict(d: Difference) -> str:
    """The report's words for a difference: distinguishable / not distinguishable / no interval (why)."""
    if not d.has_interval:
        return f"no interval: {d.note or 'not computed'}"
    level = f"{100 * LEVEL:g} %"
    return (f"distinguishable ({level} interval excludes 0)" if d.excludes_zero else
            f"not distinguishable ({level} interval contains 0)")
