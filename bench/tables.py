"""Result tables as pandas frames: per-run frames, mean ± std over seeds, comparison with published rows, ablation
gains and row differences. ``bench.table_render`` turns them into terminal, Markdown, LaTeX and CSV.

A *comparison frame* (``comparison_frame``) has one row per our method (+variant) and per paper row, columns
``method, source, ours, seeds`` then, for each value column ``c``, ``c`` (mean, %) and ``c_std`` (NaN for
paper rows and single seeds). ``add_differences`` appends each row's mIoU difference from a reference row
(``delta``, its paired-bootstrap interval ``delta_lo``/``delta_hi``, ``delta_excludes_0``, ``delta_note``); the
renderers (``bench.table_render``) all take that frame and show the difference as ``+2.3 [+1.1, +3.4]``,
marked † where the interval excludes 0.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd

from bench.data.labels import CLASS_NAMES, SUBSETS
from bench.stats import Difference, format_difference, row_difference

META = ("method", "source", "ours", "seeds")
RUN_KEYS = ("method", "variant", "seed")
DIFF = ("delta", "delta_lo", "delta_hi", "delta_excludes_0", "delta_note")
REFERENCE = "reference"


def row_name(method: str, variant=None) -> str:
    """``method`` or ``method (variant)``; a missing/NaN/empty variant counts as none."""
    variant = "" if variant is None or (isinstance(variant, float) and np.isnan(variant)) else str(variant)
    return f"{method} ({variant})" if variant else str(method)


def per_class_frame(results: list[dict], subset: str = "19") -> pd.DataFrame:
    """Long results (``method``, ``seed``, ``iou_<subset>/<class>``, ``miou_<subset>``) → one row per run, in %.

    Adds a ``variant`` column when any result has one, and ``mIoU*`` (from ``miou_13_of_16``) for subset 16.
    """
    cols = [f"iou_{subset}/{CLASS_NAMES[c]}" for c in SUBSETS[subset]]
    has_variant = any(r.get("variant") for r in results)
    has_star = subset == "16" and any(r.get("miou_13_of_16") is not None for r in results)
    rows = []
    for r in results:
        row = {"method": r["method"]}
        if has_variant:
            row["variant"] = r.get("variant") or ""
        row["seed"] = r["seed"]
        row.update({c.split("/", 1)[1]: 100 * r[c] for c in cols})
        row["mIoU"] = 100 * r[f"miou_{subset}"]
        if has_star:
            star = r.get("miou_13_of_16")
            row["mIoU*"] = np.nan if star is None else 100 * star
        rows.append(row)
    return pd.DataFrame(rows)


def _run_names(frame: pd.DataFrame) -> pd.Index:
    variants = frame["variant"] if "variant" in frame.columns else [None] * len(frame)
    return pd.Index([row_name(m, v) for m, v in zip(frame["method"], variants)], name="method")


def aggregate(frame: pd.DataFrame) -> pd.DataFrame:
    """Mean and std over seeds per method (+variant; std NaN for a single seed), in input order, with ``seeds``."""
    names = _run_names(frame)
    order = list(dict.fromkeys(names))
    values = frame.drop(columns=[c for c in RUN_KEYS if c in frame.columns]).groupby(names, sort=False)
    mean, std = values.mean().loc[order], values.std(ddof=1).loc[order]
    mean.insert(0, "seeds", frame["seed"].groupby(names, sort=False).count().loc[order])
    return pd.concat({"mean": mean, "std": std}, axis=1)


def _paper_source(p: pd.Series) -> str:
    paper, table = p.get("paper", ""), p.get("table", "")
    paper = "" if pd.isna(paper) else str(paper)
    table = "" if pd.isna(table) else str(table)
    if table and not table.lower().startswith("table"):
        table = f"Table {table}"
    return ", ".join(x for x in (paper, table) if x) or "paper"


def comparison_frame(ours: pd.DataFrame | None, paper: pd.DataFrame | None, classes: Sequence[str],
                     extra: Sequence[str] = ("mIoU",)) -> pd.DataFrame:
    """Our rows (mean/std over seeds of a ``per_class_frame``) then the paper rows, on ``classes`` + ``extra``.

    Columns a side lacks are NaN. ``source`` is ``ours (n seeds)`` or ``<paper>, Table <N>``.
    """
    cols = [*classes, *extra]
    rows = []
    if ours is not None and len(ours):
        agg = aggregate(ours)
        for name in agg.index:
            n = int(agg.loc[name, ("mean", "seeds")])
            row = {"method": name, "source": f"ours ({n} seed{'' if n == 1 else 's'})", "ours": True, "seeds": n}
            for c in cols:
                has = ("mean", c) in agg.columns
                row[c] = agg.loc[name, ("mean", c)] if has else np.nan
                row[f"{c}_std"] = agg.loc[name, ("std", c)] if has else np.nan
            rows.append(row)
    if paper is not None:
        for _, p in paper.iterrows():
            name = p["row"] if "row" in p.index else p.get("method", "")
            row = {"method": str(name), "source": _paper_source(p), "ours": False, "seeds": np.nan}
            for c in cols:
                row[c] = pd.to_numeric(p[c], errors="coerce") if c in p.index else np.nan
                row[f"{c}_std"] = np.nan
            rows.append(row)
    values = [x for c in cols for x in (c, f"{c}_std")]
    out = pd.DataFrame(rows, columns=[*META, *values])
    return out.astype({"ours": bool, "seeds": float, **dict.fromkeys(values, float)})


def ablation_frame(ours: pd.DataFrame, base_method: str, metric: str = "mIoU",
                   diffs: dict[str, Difference] | None = None) -> pd.DataFrame:
    """One row per method (+variant) of a ``per_class_frame``: seeds, ``metric`` mean and std, gain over the base.

    ``base_method`` is a row name as shown (``method`` or ``method (variant)``). ``diffs`` (from
    :func:`row_differences` against the same base): the gain's interval as ``gain_lo``/``gain_hi`` (NaN where a
    row has none) and ``gain_note`` (why not).
    """
    agg = aggregate(ours)
    if base_method not in agg.index:
        raise KeyError(f"base {base_method!r} not among {list(agg.index)}")
    names = _run_names(ours)
    first = ~names.duplicated()
    variants = ours["variant"].fillna("") if "variant" in ours.columns else pd.Series("", index=ours.index)
    mean = agg[("mean", metric)]
    out = pd.DataFrame({
        "method": ours["method"][first].to_numpy(), "variant": variants[first].to_numpy(),
        "seeds": agg[("mean", "seeds")].astype(int).to_numpy(),
        metric: mean.to_numpy(), f"{metric}_std": agg[("std", metric)].to_numpy(),
        "gain": (mean - mean[base_method]).to_numpy(),
    }, index=agg.index)
    if diffs is not None:
        got = [diffs.get(n, Difference(np.nan, note="not computed")) for n in out.index]
        out["gain_lo"], out["gain_hi"] = [d.lo for d in got], [d.hi for d in got]
        out["gain_excludes_0"] = [d.excludes_zero for d in got]
        out["gain_note"] = [REFERENCE if n == base_method else d.note for n, d in zip(out.index, got)]
    return out


def row_differences(ours: pd.DataFrame, per_image, reference: str, classes=None, metric: str = "mIoU",
                    n_boot: int = 2000, seed: int = 0) -> dict[str, Difference]:
    """Each row (method + variant) of a ``per_class_frame`` against the ``reference`` row: the difference of the
    rows' mean ``metric`` over seeds and its paired-bootstrap interval (``bench.stats.row_difference``).

    ``per_image``: ``(row name, seed) → (matrices [N, C, C], image ids)`` or None where the eval stage did not
    store them; ``classes``: the subset of the table's mIoU ("19"/"16"/"13"). The shown difference is always
    the plain difference of the displayed means; the bootstrap only adds the interval (with equal seed sets the
    two are the same number)."""
    names = _run_names(ours)
    if reference not in set(names):
        raise KeyError(f"reference {reference!r} not among {list(dict.fromkeys(names))}")
    means = ours[metric].groupby(names, sort=False).mean()
    seeds = {n: sorted(int(x) for x in ours["seed"][names == n]) for n in means.index}
    per_image = per_image or {}

    def mats(name):
        return {s: per_image.get((name, s)) for s in seeds[name]}

    ref = mats(reference)
    out = {}
    for name in means.index:
        plain = float(means[name] - means[reference])
        if name == reference:
            out[name] = Difference(0.0, note=REFERENCE)
            continue
        d = row_difference(mats(name), ref, plain, n_boot=n_boot, seed=seed, classes=classes)
        out[name] = Difference(plain, d.lo, d.hi, d.note)
    return out


def verdict_lines(diffs: dict[str, Difference], reference: str, digits: int = 1) -> list[str]:
    """The report's sentence per row: ``- row vs reference: +2.3 [+1.1, +3.4] — distinguishable (…)``, or "not
    distinguishable", or "no interval: <why>"."""
    from bench.stats import verdict

    return [f"- {name} vs {reference}: {format_difference(d, digits, '')} mIoU points — {verdict(d)}"
            for name, d in diffs.items() if name != reference and np.isfinite(d.delta)]


def add_differences(frame: pd.DataFrame, diffs: dict[str, Difference], reference: str) -> pd.DataFrame:
    """A comparison frame plus each of our rows' difference from ``reference`` (``delta``, ``delta_lo``,
    ``delta_hi``, ``delta_excludes_0``, ``delta_note``; paper rows and rows without a difference NaN/empty).
    ``frame.attrs["reference"]`` names the reference row for the renderers' header."""
    out = frame.copy()
    got = [diffs.get(m) if o else None for m, o in zip(out["method"], ours_flags(out))]
    out["delta"] = [np.nan if d is None else d.delta for d in got]
    out["delta_lo"] = [np.nan if d is None else d.lo for d in got]
    out["delta_hi"] = [np.nan if d is None else d.hi for d in got]
    out["delta_excludes_0"] = [d is not None and d.excludes_zero for d in got]
    out["delta_note"] = ["" if d is None else d.note for d in got]
    out.attrs["reference"] = reference
    return out

def ours_flags(frame: pd.DataFrame) -> list[bool]:
    return [bool(x) for x in frame["ours"]] if "ours" in frame.columns else [True] * len(frame)
