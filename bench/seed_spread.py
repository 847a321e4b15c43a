"""Where a row's spread over seeds comes from: the trained models, or the images they are scored on.

A row's std over seeds mixes two things: the models differ (one seed learns a class another misses), and the
validation set is finite (two models that are equally good on the target still disagree on the few instances of a
rare class the set happens to hold). Only the second would shrink with a larger validation set. Every eval stage
caches each image's confusion matrix, which is enough to tell them apart.

Each seed's mIoU m_s is a function of its per-image matrices. To first order m_s ≈ μ_s + mean_i ψ_s(x_i), with
ψ_s the influence of an image on it; the delete-one-image jackknife estimates ψ_s(x_i) (centred on the sample) by
z_si = (N − 1)·(m_s − m_s(without i)) (Efron & Tibshirani 1993, ch. 11). With the N images drawn independently
from the target, the variance over seeds of the m_s then has an image part c/N, where c is the variance over
images of the seed-centred influences d_si = z_si − mean over seeds of z_si (divided by S − 1 over seeds and
N − 1 over images). That part shrinks as 1/N with a larger validation set. The rest, v − c/N (v: the variance
observed over seeds), is the **model part**: a different recipe can change it, more images cannot, and more
seeds only make the row's mean more certain. With 3 seeds v has 2 degrees of freedom: the split is rough.

``python -m bench.seed_spread SUITE [overrides] [--results DIR] [--cache DIR ...]`` prints, for each planned row with
two or more cached seeds, its seed std with a 95 % interval for the spread behind it, the image part's share of its
variance, the model part (as a std) and the classes that move the seeds' mIoUs most (each class's share of a seed's
deviation from the mean, in mIoU points).
"""

from __future__ import annotations

import argparse
import warnings
from pathlib import Path

import numpy as np

from bench.metrics import iou_from_confusion, miou_from_confusion


def image_influence(confs: np.ndarray, classes=None) -> np.ndarray:
    """``[S, N]`` jackknife influences z_si = (N − 1)·(m_s − m_s(−i)) of each image on each seed's mIoU (points),
    from per-image matrices ``confs`` ``[S, N, C, C]``; m_s(−i) is the mIoU of the sum over the other images."""
    confs = np.asarray(confs, dtype=np.float64)
    total = confs.sum(axis=1)  # [S, C, C]
    full = 100 * miou_from_confusion(total, classes)  # [S]
    without = 100 * miou_from_confusion(total[:, None] - confs, classes)  # [S, N]
    return (confs.shape[1] - 1) * (full[:, None] - without)


def split_seed_variance(confs: np.ndarray, classes=None) -> dict:
    """One row's spread over seeds and its two parts (module docstring). ``confs``: ``[S, N, C, C]`` per-image
    matrices, every seed scored on the same N images in the same order. Returns ``seeds_miou`` (points), ``std``
    (over seeds, ddof 1), ``image_var`` (c/N, points²), ``image_share`` (c/N over the observed variance; inf when
    that is 0, and it can exceed 1 when the seeds agree more than their images' noise would predict) and
    ``model_std`` = √max(v − c/N, 0)."""
    confs = np.asarray(confs, dtype=np.float64)
    if confs.ndim != 4 or confs.shape[0] < 2 or confs.shape[1] < 2:
        raise ValueError(f"need [seeds ≥ 2, images ≥ 2, C, C] per-image matrices; got shape {confs.shape}")
    s, n = confs.shape[:2]
    seeds_miou = 100 * miou_from_confusion(confs.sum(axis=1), classes)
    v = float(np.var(seeds_miou, ddof=1))
    d = image_influence(confs, classes)
    d = d - d.mean(axis=0)  # centred over seeds, image by image
    c = float(((d - d.mean(axis=1, keepdims=True)) ** 2).sum() / ((n - 1) * (s - 1)))
    return {"seeds_miou": seeds_miou, "std": float(np.sqrt(v)), "image_var": c / n,
            "image_share": c / n / v if v > 0 else float("inf"),
            "model_std": float(np.sqrt(max(v - c / n, 0.0)))}


def std_interval(std: float, seeds: int, level: float = 0.95) -> tuple[float, float]:
    """Confidence interval for the spread σ behind a sample std over ``seeds`` runs, taking the runs as normal draws:
    (S − 1)·s²/σ² ~ χ²(S − 1), so σ ∈ [s·√((S − 1)/χ²_{1−a/2}), s·√((S − 1)/χ²_{a/2})], a = 1 − level (the textbook
    interval for a normal variance, e.g. NIST/SEMATECH e-Handbook §1.3.5.8). With 3 seeds it is wide: s = 1.5 gives
    [0.78, 9.4] at 95 %, so a 3-seed std alone cannot show that a row's spread is below a bound."""
    from scipy.stats import chi2

    if seeds < 2 or not 0 < level < 1 or not std >= 0:
        raise ValueError(f"std_interval: need seeds ≥ 2, 0 < level < 1 and std ≥ 0; got {seeds}, {level}, {std}")
    a, df = 1 - level, seeds - 1
    return std * float(np.sqrt(df / chi2.ppf(1 - a / 2, df))), std * float(np.sqrt(df / chi2.ppf(a / 2, df)))


def class_shares(confs: np.ndarray, classes=None) -> np.ndarray:
    """``[S, K]``: each class's share of each seed's mIoU deviation from the seeds' mean, in points:
    (IoU_sk − mean over seeds of IoU_k) / K over the K classes scored (``classes``: a subset, default all). A class
    a seed never saw nor predicted (NaN IoU) is NaN for that seed and left out of the mean; with every class present
    in every seed, a seed's shares sum to its mIoU's deviation."""
    iou = 100 * iou_from_confusion(np.asarray(confs, dtype=np.float64).sum(axis=1), classes)  # [S, K]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # a class absent from every seed: an all-NaN column
        return (iou - np.nanmean(iou, axis=0)) / iou.shape[1]


def spread_rows(suite: dict, cache_root, top: int = 3) -> tuple[list[dict], list[str]]:
    """``(rows, skipped)``: one dict per planned row (target, method, variant) with ≥ 2 seeds whose eval stage has
    per-image matrices in ``cache_root`` (its seeds, :func:`split_seed_variance` and the ``top`` classes by the
    size of their shares), and a line for each row left out because its seeds were scored on different images.
    ``cache_root`` may be a list of caches (seeds run into different result dirs): the first that holds a key wins;
    a key is the stage's content, so any cache holding it holds the same bytes."""
    from bench.data.labels import CLASS_NAMES, SUBSETS
    from bench.metrics import PER_IMAGE_FILE, load_per_image
    from bench.suite_plan import plan_suite
    from bench.tables import row_name

    classes = list(SUBSETS[str((suite.get("evaluation") or {}).get("subsets", ["19"])[0])])
    roots = [Path(c) for c in (cache_root if isinstance(cache_root, (list, tuple)) else [cache_root])]
    groups: dict[tuple, dict[int, tuple]] = {}
    for e in plan_suite(suite)[0]:
        path = next((p for p in (r / e.eval.key / PER_IMAGE_FILE for r in roots) if p.is_file()), None)
        if path is not None:
            groups.setdefault((e.target or "", row_name(e.method, e.variant)), {})[e.seed] = load_per_image(path)
    rows, skipped = [], []
    for (target, name), per_seed in groups.items():
        if len(per_seed) < 2:
            continue
        seeds = sorted(per_seed)
        if len({tuple(per_seed[s][1]) for s in seeds}) != 1:
            skipped.append(f"{name}: its seeds {seeds} were scored on different image lists")
            continue
        confs = np.stack([per_seed[s][0] for s in seeds])
        shares = class_shares(confs, classes)
        size = np.where(np.isnan(shares), -np.inf, np.abs(shares)).max(axis=0)
        movers = ", ".join(f"{CLASS_NAMES[classes[k]]} " + "/".join(f"{v:+.1f}" for v in shares[:, k])
                           for k in np.argsort(-size)[:top])
        rows.append({"target": target, "row": name, "seeds": seeds, "images": confs.shape[1],
                     **split_seed_variance(confs, classes), "movers": movers})
    return rows, skipped


def format_rows(rows: list[dict]) -> str:
    """A Markdown table of :func:`spread_rows`'s rows."""
    head = ["row", "seeds", "images", "mIoU per seed", "std", "σ, 95 % CI", "image part of the variance",
            "model part (std)",
            "classes that move the seeds most (share of each seed's deviation, points)"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        cells = [f"{r['target']}: {r['row']}" if r["target"] else r["row"], ",".join(map(str, r["seeds"])),
                 str(r["images"]), " / ".join(f"{v:.1f}" for v in r["seeds_miou"]), f"{r['std']:.2f}",
                 "[{:.2f}, {:.2f}]".format(*std_interval(r["std"], len(r["seeds"]))),
                 f"{100 * r['image_share']:.0f} %" if np.isfinite(r["image_share"]) else "– (std 0)",
                 f"{r['model_std']:.2f}", r["movers"]]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(prog="python -m bench.seed_spread", description=__doc__.split("\n\n")[0])
    ap.add_argument("suite", help="suite name or YAML path")
    ap.add_argument("overrides", nargs="*", help="suite overrides, as for bench run (e.g. seeds=[0,1,2,3,4])")
    ap.add_argument("--results", type=Path, help="results root (default: <repo>/results)")
    ap.add_argument("--cache", type=Path, action="append",
                    help="cache root holding the eval stages (default: <results>/cache); repeat it to pool seeds "
                         "run into different result dirs")
    a = ap.parse_args(argv)
    from bench.paths import REPO
    from bench.suite_runner import load_suite

    caches = a.cache or [(a.results or REPO / "results") / "cache"]
    rows, skipped = spread_rows(load_suite(a.suite, a.overrides), caches)
    for line in skipped:
        print("skipped:", line)
    if not rows:
        raise SystemExit("no planned row has two or more seeds with cached per-image matrices; run the suite first "
                         "(bench run SUITE) with the same --results and overrides")
    print(format_rows(rows))


if __name__ == "__main__":
    main()
