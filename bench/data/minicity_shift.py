"""Is MiniCity's domain shift one that unlabelled-target adaptation can close? A check on class-mean colours.

Fit one global affine colour map (3×3 + offset, least squares) taking each class's mean source colour to its
mean target colour, then ask, for every target class mean, which mapped source class mean is nearest. Under a
covariate shift (one global style change) the nearest is the class itself; a class drawn in another class's
source colour (a conditional shift, MiniCity generator v1) lands on the wrong one. Used by the generator's
tests and by ``python -m bench.data.minicity_shift``.
"""

from __future__ import annotations

import numpy as np

from bench.data.labels import CLASS_NAMES, NUM_CLASSES


def class_mean_colours(domain: str, n: int = 40, seed: int = 0, size=(256, 128),
                       source_weather: bool = True) -> np.ndarray:
    """``[19, 3]`` mean RGB of each trainId over ``n`` generated images of a MiniCity ``domain`` (NaN if absent);
    ``source_weather`` as ``make_sample``'s."""
    from bench.data.minicity import make_sample

    sums, counts = np.zeros((NUM_CLASSES, 3)), np.zeros(NUM_CLASSES)
    for i in range(n):
        img, lbl, _ = make_sample(domain, seed, i, size, source_weather=source_weather)
        keep = lbl < NUM_CLASSES
        sums += np.stack([np.bincount(lbl[keep], img[..., c][keep].astype(float), NUM_CLASSES) for c in range(3)], 1)
        counts += np.bincount(lbl[keep], minlength=NUM_CLASSES)
    with np.errstate(invalid="ignore", divide="ignore"):
        return sums / counts[:, None]


def affine_fit(src: np.ndarray, tgt: np.ndarray) -> np.ndarray:
    """``[4, 3]`` least-squares affine map with ``[src, 1] @ A ≈ tgt`` over the rows present in both."""
    ok = ~(np.isnan(src).any(1) | np.isnan(tgt).any(1))
    x = np.hstack([src[ok], np.ones((ok.sum(), 1))])
    return np.linalg.lstsq(x, tgt[ok], rcond=None)[0]


def nearest_after_affine(src: np.ndarray, tgt: np.ndarray) -> np.ndarray:
    """Per target class, the index of the nearest source class mean after the fitted affine map (−1 if absent)."""
    a = affine_fit(src, tgt)
    mapped = np.hstack([src, np.ones((len(src), 1))]) @ a
    d = np.linalg.norm(tgt[:, None, :] - mapped[None, :, :], axis=-1)
    d = np.where(np.isnan(d), np.inf, d)
    out = d.argmin(1)
    out[np.isnan(tgt).any(1)] = -1
    return out


def misassigned(src: np.ndarray, tgt: np.ndarray) -> list[tuple[str, str]]:
    """(target class, nearest mapped source class) for every class whose nearest is another class."""
    near = nearest_after_affine(src, tgt)
    return [(CLASS_NAMES[c], CLASS_NAMES[j]) for c, j in enumerate(near) if j >= 0 and j != c]


if __name__ == "__main__":  # python -m bench.data.minicity_shift [--no-source-weather]
    import sys

    s = class_mean_colours("gta5", source_weather="--no-source-weather" not in sys.argv[1:])
    t = class_mean_colours("cityscapes_train")
    bad = misassigned(s, t)
    print(f"{len(bad)} of {NUM_CLASSES} target class means lie nearest another class after one affine map")
    for c, j in bad:
        print(f"  {c:14s} → {j}")
