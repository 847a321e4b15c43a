"""Per-class result tables: one row per method (mean ± std over seeds), columns = classes + mIoU."""

from __future__ import annotations

import numpy as np
import pandas as pd

from bench.data.labels import CLASS_NAMES, SUBSETS


def per_class_frame(results: list[dict], subset: str = "19") -> pd.DataFrame:
    """Long results (``method``, ``seed``, ``iou_<subset>/<class>``, ``miou_<subset>``) → one row per run, in %."""
    cols = [f"iou_{subset}/{CLASS_NAMES[c]}" for c in SUBSETS[subset]]
    rows = []
    for r in results:
        row = {"method": r["method"], "seed": r["seed"]}
        row.update({c.split("/", 1)[1]: 100 * r[c] for c in cols})
        row["mIoU"] = 100 * r[f"miou_{subset}"]
        rows.append(row)
    return pd.DataFrame(rows)


def aggregate(frame: pd.DataFrame) -> pd.DataFrame:
    """mean and std over seeds per method (std NaN for a single seed); keeps the method order of the input."""
    order = list(dict.fromkeys(frame["method"]))
    values = frame.drop(columns="seed").groupby("method", sort=False)
    mean, std = values.mean().loc[order], values.std(ddof=1).loc[order]
    n = frame.groupby("method", sort=False)["seed"].count().loc[order]
    mean.insert(0, "seeds", n)
    return pd.concat({"mean": mean, "std": std}, axis=1)


def format_cell(mean: float, std: float) -> str:
    if np.isnan(mean):
        return "–"
    return f"{mean:.1f}" if np.isnan(std) else f"{mean:.1f}±{std:.1f}"


def render_terminal(frame: pd.DataFrame, title: str) -> str:
    """A rich table (plain text when not a terminal) of per-class IoU, mean ± std over seeds."""
    from io import StringIO

    from rich.console import Console
    from rich.table import Table

    agg = aggregate(frame)
    classes = [c for c in frame.columns if c not in ("method", "seed")]
    table = Table(title=title, show_lines=False)
    table.add_column("method")
    table.add_column("seeds", justify="right")
    for c in classes:
        table.add_column(c if c == "mIoU" else c[:5], justify="right")
    for method in agg.index:
        cells = [format_cell(agg.loc[method, ("mean", c)], agg.loc[method, ("std", c)]) for c in classes]
        table.add_row(method, str(int(agg.loc[method, ("mean", "seeds")])), *cells)
    buf = StringIO()
    Console(file=buf, width=max(120, 9 * len(classes) + 30), force_terminal=False).print(table)
    return buf.getvalue()
