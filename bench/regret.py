"""Selection regret: how much target-val mIoU each label-free criterion loses against the oracle that picks the value
on target val (labels a real adaptation run does not have). Reporting only — nothing is ever chosen on target val.

For each criterion: the value it picks (the best mean over seeds, in the criterion's direction), that value's
target-val mIoU, and the regret = (best target-val mIoU over the swept values) − (the picked value's).
"""

from __future__ import annotations

import math

import pandas as pd

VAL = "mIoU"  # the sweep frame's target-val column (mean over seeds)
# the importance weights' effective sample size (% of rows) and the share of seeds where they are degenerate
IW_ESS, IW_BAD = "IW ESS pct", "IW degenerate"  # MLflow metric names allow no "%"


def regret_criteria(frame: pd.DataFrame) -> dict[str, str]:
    """criterion column → mode ("min"/"max") for every criterion the frame has: ``bench.selection.CRITERIA`` and
    the held-out target-train mIoU (``--holdout``)."""
    from bench.selection import CRITERIA

    out = {name: mode for name, (mode, _) in CRITERIA.items() if name in frame}
    if "holdout mIoU" in frame:
        out["holdout mIoU"] = "max"
    return out


def _weights_note(frame: pd.DataFrame, name: str, scores: pd.Series) -> str:
    """For IWCV and DEV: on how many of the scored values the importance weights were degenerate (the sweep
    frame's ``IW degenerate``, the share of seeds; ``bench.selection.weights_degenerate``)."""
    if name not in ("iwcv", "dev") or IW_BAD not in frame:
        return ""
    bad = int((frame.loc[scores.notna(), IW_BAD] > 0).sum())
    return f"weights degenerate on {bad} of {int(scores.notna().sum())} values" if bad else ""


def selection_regret(frame: pd.DataFrame, criteria: dict[str, str] | None = None) -> pd.DataFrame:
    """``frame``: one row per swept value (index), with the target-val ``mIoU`` and one column per criterion.
    → one row per criterion with a value: ``criterion, mode, picks, val mIoU, regret`` and a last ``oracle
    (target val)`` row (regret 0 by definition). Ties go to the first value in the frame's order."""
    if VAL not in frame or frame[VAL].isna().all():
        raise ValueError(f"selection regret needs the target-val column {VAL!r} with at least one value")
    criteria = regret_criteria(frame) if criteria is None else criteria
    val = frame[VAL]
    best = val.max()
    rows = []
    for name, mode in criteria.items():
        if mode not in ("min", "max"):
            raise ValueError(f"criterion {name}: mode {mode!r}; use 'min' or 'max'")
        scores = frame[name].where(val.notna())  # a value with no val mIoU cannot be scored
        if scores.isna().all():
            continue
        pick = scores.idxmax() if mode == "max" else scores.idxmin()
        rows.append({"criterion": name, "mode": mode, "picks": pick, "val mIoU": val[pick],
                     "regret": best - val[pick], "note": _weights_note(frame, name, scores)})
    rows.append({"criterion": "oracle (target val)", "mode": "max", "picks": val.idxmax(), "val mIoU": best,
                 "regret": 0.0, "note": ""})
    return pd.DataFrame(rows)


def _fmt(x, digits: int = 1) -> str:
    if isinstance(x, float) and math.isnan(x):
        return "–"
    return f"{x:.{digits}f}" if isinstance(x, float) else str(x)


def _notes(column: pd.Series) -> pd.Series:
    """The note column as strings, "" where empty (read back from CSV, an all-empty column is float NaN)."""
    return column.astype(object).where(column.notna(), "").astype(str)


def regret_markdown(table: pd.DataFrame, param: str, title: str) -> str:
    """The regret table as Markdown (mIoU points)."""
    notes = "note" in table and _notes(table["note"]).astype(bool).any()
    head = ["criterion", "mode", f"picks {param}", "its val mIoU", "regret (mIoU pts)"] + (["note"] if notes else [])
    lines = [f"### {title}", "", "| " + " | ".join(head) + " |", "|---|---|---:|---:|---:|" + ("---|" if notes else "")]
    table = table.assign(note=_notes(table["note"])) if notes else table
    for _, r in table.iterrows():
        pick = f"{r['picks']:g}" if isinstance(r["picks"], (int, float)) else str(r["picks"])
        note = f" {r['note']} |" if notes else ""
        lines.append(f"| {r['criterion']} | {r['mode']} | {pick} | {_fmt(r['val mIoU'])} | {_fmt(r['regret'])} |{note}")
    return "\n".join(lines) + "\n"


def regret_matrix(sweeps: dict[str, pd.DataFrame], val_range: dict[str, float] | None = None) -> pd.DataFrame:
    """Every sweep's regret table (``selection_regret``, e.g. read back from ``regret.csv``) side by side: one row per
    sweep, one column per criterion (mIoU points lost against the target-val oracle; ``NaN`` where a sweep lacks
    the criterion), with a ``val range`` column when ``val_range`` gives it (best − worst swept value on target
    val: what a pick can lose at most) and a ``†`` column counting the criteria whose importance weights were
    degenerate there. Then the rows ``mean`` and ``best picked`` (how many sweeps the criterion picked a value as
    good as the oracle's)."""
    rows = {}
    for name, table in sorted(sweeps.items()):
        t = table.set_index("criterion")
        row = {c: float(t.loc[c, "regret"]) for c in t.index if c != "oracle (target val)"}
        if val_range is not None:
            row["val range"] = val_range.get(name, math.nan)
        notes = _notes(t["note"]) if "note" in t else pd.Series(dtype=str)
        row["†"] = int((notes != "").sum())
        rows[name] = row
    out = pd.DataFrame.from_dict(rows, orient="index")
    crit = [c for c in out.columns if c not in ("val range", "†")]
    summary = pd.DataFrame({c: [out[c].mean(), float((out[c] <= 1e-9).sum())] for c in crit},
                           index=["mean", "best picked"])
    return pd.concat([out, summary])


def regret_matrix_markdown(matrix: pd.DataFrame, title: str) -> str:
    """The matrix as Markdown: regrets with one decimal, counts as integers, – where missing."""
    cols = list(matrix.columns)
    lines = [f"### {title}", "", "| sweep | " + " | ".join(cols) + " |", "|---|" + "---:|" * len(cols)]
    for name, r in matrix.iterrows():
        count = name == "best picked"
        cells = ["–" if pd.isna(r[c]) else f"{int(r[c])}" if count or c == "†" else f"{r[c]:.1f}" for c in cols]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"
