"""Where a row's spread over seeds comes from: the trained models, or the few images it is scored on.

A row's seed std mixes two things: the models differ (a seed learns a class that another misses), and the
validation set is finite (two models that are equally good on average still disagree on the few instances of a
rare class it happens to hold). Only the second shrinks with a larger validation set. With each seed's per-image
confusion matrices (cached by every eval stage) the two can be told apart: score every seed on the same random
subsets of n images and watch the seed variance grow as n falls.

If images contribute independently, the expected seed variance on n of the N images is
v(n) = v(N) + c·(1/n − 1/N) (the finite-population form), where v(N) is the variance observed on the whole set.
The same c makes the whole set's own share c/N: the **image part** of the observed variance, which a larger
validation set would remove; what is left, v(N) − c/N, is the **model part**, which only more seeds average.

``python -m bench.seed_spread SUITE [overrides] [--results DIR]`` prints, for each planned row with two or more
cached seeds, the seed std on the whole set and on random subsets, the two parts, and the classes that move the
seeds' mIoUs most (each class's share of a seed's deviation from the mean, in mIoU points).
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from bench.stats import resampled_miou

SUBSET_SIZES = (25, 50, 100)


def subset_seed_variance(confs: np.ndarray, n: int, reps: int, rng: np.random.Generator,
                         classes=None) -> float:
    """The mean over ``reps`` random subsets of ``n`` images (without replacement, one subset shared by every
    seed) of the sample variance over seeds of the subset's mIoU, in points². ``confs``: ``[S, N, C, C]``."""
    s, total = confs.shape[:2]
    if not 1 <= n <= total:
        raise ValueError(f"subset size {n}: expected 1..{total} (the number of images)")
    counts = np.zeros((reps, total))
    for r in range(reps):
        counts[r, rng.choice(total, n, replace=False)] = 1.0
    mious = np.stack([100 * resampled_miou(counts, confs[k], classes) for k in range(s)])  # [S, reps]
    return float(np.mean(np.var(mious, axis=0, ddof=1)))


def split_seed_variance(confs: np.ndarray, sizes=SUBSET_SIZES, reps: int = 200, seed: int = 0,
                        classes=None) -> dict:
    """The seed spread of one row and its two parts (module docstring). ``confs``: ``[S, N, C, C]`` per-image
    matrices, every seed scored on the same N images. Returns ``std`` (observed, points), ``subset_std``
    (``{n: std}``, root of the mean variance over subsets), ``image_std`` = √(c/N) and ``model_std`` =
    √max(v(N) − c/N, 0), with c the least-squares slope of v(n) − v(N) on 1/n − 1/N (sizes ≥ N are skipped)."""
    confs = np.asarray(confs, dtype=np.float64)
    if confs.ndim != 4 or confs.shape[0] < 2:
        raise ValueError(f"need [seeds ≥ 2, images, C, C] per-image matrices; got shape {confs.shape}")
    total = confs.shape[1]
    full = np.array([100 * resampled_miou(np.ones((1, total)), c, classes)[0] for c in confs])
    v_full = float(np.var(full, ddof=1))
    rng = np.random.default_rng(seed)
    sizes = [n for n in sizes if n < total]
    v_sub = {n: subset_seed_variance(confs, n, reps, rng, classes) for n in sizes}
    x = np.array([1 / n - 1 / total for n in sizes])
    y = np.array([v_sub[n] - v_full for n in sizes])
    c = float(x @ y / (x @ x)) if len(sizes) else 0.0
    image_var = max(c, 0.0) / total
    return {"seeds_miou": full, "std": float(np.sqrt(v_full)),
            "subset_std": {n: float(np.sqrt(v)) for n, v in v_sub.items()},
            "image_std": float(np.sqrt(image_var)), "model_std": float(np.sqrt(max(v_full - image_var, 0.0)))}


def class_shares(confs: np.ndarray, classes=None) -> np.ndarray:
    """``[S, K]``: each class's share of each seed's mIoU deviation from the seeds' mean, in points,
    (IoU_sk − mean over seeds of IoU_k) / K over the K classes scored (``classes``: a subset, default all). A
    class absent from some seed's matrix gets NaN; with every class present, a seed's shares sum to its mIoU's
    deviation."""
    from bench.metrics import iou_from_confusion

    iou = 100 * iou_from_confusion(np.asarray(confs, dtype=np.float64).sum(axis=1), classes)  # [S, K]
    return (iou - iou.mean(axis=0)) / iou.shape[1]


def spread_rows(suite: dict, cache_root: Path, top: int = 3, reps: int = 200) -> list[dict]:
    """One dict per planned row (target, method, variant) with ≥ 2 seeds whose eval stage has per-image
    matrices in ``cache_root``: its seeds, mIoUs, :func:`split_seed_variance` and the ``top`` classes by the
    size of their shares."""
    from bench.data.labels import CLASS_NAMES, SUBSETS
    from bench.metrics import PER_IMAGE_FILE, load_per_image
    from bench.suite_plan import plan_suite
    from bench.tables import row_name

    subset = str((suite.get("evaluation") or {}).get("subsets", ["19"])[0])
    classes = list(SUBSETS[subset])
    groups: dict[tuple, dict[int, np.ndarray]] = {}
    for e in plan_suite(suite)[0]:
        path = Path(cache_root) / e.eval.key / PER_IMAGE_FILE
        if path.is_file():
            groups.setdefault((e.target or "", row_name(e.method, e.variant)), {})[e.seed] = load_per_image(path)[0]
    rows = []
    for (target, name), per_seed in groups.items():
        if len(per_seed) < 2 or len({m.shape for m in per_seed.values()}) != 1:
            continue
        seeds = sorted(per_seed)
        confs = np.stack([per_seed[s] for s in seeds])
        split = split_seed_variance(confs, reps=reps, classes=classes)
        shares = class_shares(confs, classes)
        order = np.argsort(-np.nanmax(np.abs(shares), axis=0))[:top]
        movers = ", ".join(f"{CLASS_NAMES[classes[k]]} " + "/".join(f"{v:+.1f}" for v in shares[:, k]) for k in order)
        rows.append({"target": target, "row": name, "seeds": seeds, **split, "movers": movers})
    return rows


def format_rows(rows: list[dict]) -> str:
    """A Markdown table of :func:`spread_rows`."""
    sizes = sorted({n for r in rows for n in r["subset_std"]})
    head = ["row", "seeds", "mIoU per seed", "std", *(f"std, {n} images" for n in sizes), "image part",
            "model part", "classes that move the seeds most (share of each seed's deviation, points)"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        name = f"{r['target']}: {r['row']}" if r["target"] else r["row"]
        cells = [name, ",".join(map(str, r["seeds"])), " / ".join(f"{v:.1f}" for v in r["seeds_miou"]),
                 f"{r['std']:.2f}", *(f"{r['subset_std'][n]:.2f}" if n in r["subset_std"] else "–" for n in sizes),
                 f"{r['image_std']:.2f}", f"{r['model_std']:.2f}", r["movers"]]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(prog="python -m bench.seed_spread", description=__doc__.split("\n\n")[0])
    ap.add_argument("suite", help="suite name or YAML path")
    ap.add_argument("overrides", nargs="*", help="suite overrides, as for bench run (e.g. seeds=[0,1,2,3,4])")
    ap.add_argument("--results", type=Path, help="results root whose cache holds the eval stages "
                                                 "(default: <repo>/results)")
    ap.add_argument("--reps", type=int, default=200, help="random subsets per size (default 200)")
    a = ap.parse_args(argv)
    from bench.paths import REPO
    from bench.suite_runner import load_suite

    rows = spread_rows(load_suite(a.suite, a.overrides), (a.results or REPO / "results") / "cache", reps=a.reps)
    if not rows:
        raise SystemExit("no planned row has two or more seeds with cached per-image matrices; run the suite "
                         "first (bench run SUITE) with the same --results and overrides")
    print(format_rows(rows))


if __name__ == "__main__":
    main()
