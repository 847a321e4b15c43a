"""Ablation tables: our variants beside a paper's ablation rows, for the paper tables a suite's method names.

``methods.<method>.tables`` names tables the method declares (``methods.base.PaperTable``, in its ``config.py``):
``[t4]`` runs and shows every row, ``{t4: [row, ...]}`` the listed rows. A method that declares one table shows
every variant the suite runs (rows the table does not print without a paper value); one that declares several
shows, per table, only that table's rows, in files suffixed with the table's name.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pandas as pd


def paper_names() -> dict[str, str]:
    """Paper key → the name tables caption it with, from the registered methods."""
    from methods.base import papers

    return {k: p.name for k, p in papers().items()}


@dataclass
class AblationTable:
    method: str
    source: str  # "BiSMAP, Table 4"
    rows: dict  # (method, variant) -> (paper row, paper mIoU), in the table's order
    base: tuple  # (method, variant) the gains are measured from
    stem: str  # file name under tables/, without the subset and extension
    only_mapped: bool
    benchmark: str | None = None  # the printed values' benchmark (None: the suite's)


def _row_key(method: str, key: str) -> tuple[str, str]:
    return tuple(key.split(":", 1)) if ":" in key else (method, key)


def named_tables(suite: dict, method: str) -> list[str]:
    """The table names ``methods.<method>.tables`` gives (a list, or a mapping's keys)."""
    return list((((suite.get("methods") or {}).get(method)) or {}).get("tables") or ())


def ablation_specs(suite: dict, method: str) -> list[AblationTable]:
    """The method's named tables with the paper's values, validated (a misspelt row names the valid ones)."""
    from bench.paper_rows import load_extra_table
    from methods.base import get_method

    if not named_tables(suite, method):
        return []
    declared = get_method(method).tables
    many = len(declared) > 1
    out = []
    for tname in named_tables(suite, method):
        if tname not in declared:
            raise KeyError(f"methods.{method}.tables: {tname!r} is not one of its tables {sorted(declared)}")
        t = declared[tname]
        where = f"{method} table {tname} ({t.paper} Table {t.table})"
        table = load_extra_table(t.paper, int(t.table))
        by_row = dict(zip(table["row"], table["mIoU"]))
        wanted = {_row_key(method, k): label for k, (label, _) in t.rows.items()}
        if t.baseline:
            wanted = {(t.baseline[0], ""): t.baseline[1], **wanted}
        missing = sorted(r for r in wanted.values() if r not in by_row)
        if missing:
            raise KeyError(f"{where}: rows {missing} are not in the transcribed table; valid: {sorted(by_row)}")
        base = _row_key(method, t.base)
        suffix = (t.name or f"t{t.table}") if many else ""
        out.append(AblationTable(method, f"{paper_names().get(t.paper, t.paper)}, Table {t.table}",
                                 {k: (r, float(by_row[r])) for k, r in wanted.items()}, base,
                                 f"ablation_{method}" + (f"_{suffix}" if suffix else ""), many, t.benchmark))
    return out


def ablation_tables(suite: dict, ours: pd.DataFrame, subset: str, out_dir: Path, benchmark: str,
                    per_image=None) -> list[str]:
    """Per method with variants (or with ablation specs): ours beside the paper's rows; Markdown lines returned,
    ``.md``/``.tex``/``.csv`` written under ``out_dir/tables/``. A table whose base run is missing is skipped.

    ``per_image`` (``(row name, seed) → (matrices, image ids)`` or None per eval stage; see
    ``bench.tables.row_differences``): every gain gets its paired-bootstrap interval against the table's base
    row, and the Markdown says per row whether it is distinguishable from the base. Without it (None), plain
    gains as before."""
    from bench.table_render import ablation_latex, ablation_markdown
    from bench.tables import ablation_frame, row_differences, row_name, verdict_lines

    variants = ours["variant"].fillna("")
    methods = list(dict.fromkeys(ours.loc[variants != "", "method"]))
    methods += [m for m in (suite.get("methods") or {}) if named_tables(suite, m) and m not in methods]
    present = set(zip(ours["method"], variants))
    md = []
    for method in methods:
        tables = ablation_specs(suite, method) or [AblationTable(method, "", {}, (method, ""),
                                                                 f"ablation_{method}", False)]
        for t in tables:
            if t.base not in present:
                continue  # no base run to compare the others with
            keys = list(t.rows) if t.only_mapped else (
                [k for k in t.rows if k[0] != method] + [(m, v) for m, v in dict.fromkeys(zip(ours["method"],
                                                                                           variants)) if m == method])
            keys = [k for k in dict.fromkeys(keys) if k in present]
            pick = pd.Series(list(zip(ours["method"], variants)), index=ours.index).isin(keys)
            base = row_name(*t.base)
            diffs = None if per_image is None else row_differences(ours[pick], per_image, base, classes=subset)
            abl = ablation_frame(ours[pick], base, diffs=diffs)
            order = [row_name(*k) for k in keys]
            abl = abl.loc[[n for n in order if n in abl.index]]
            title = f"Ablation: {method}"
            if t.rows:
                at = list(zip(abl["method"], abl["variant"]))
                abl["paper row"] = [t.rows.get(k, ("", None))[0] for k in at]
                abl["paper mIoU"] = [t.rows.get(k, ("", float("nan")))[1] for k in at]
                title += f" (paper: {t.source}, {t.benchmark or benchmark or 'its benchmark'})"
            stem = f"{t.stem}_{subset}"
            abl.to_csv(out_dir / "tables" / f"{stem}.csv")
            text = ablation_markdown(abl, title, base=base)
            (out_dir / "tables" / f"{stem}.md").write_text(text)
            tex = ablation_latex(abl, title, label=f"tab:{stem}", base=base)
            (out_dir / "tables" / f"{stem}.tex").write_text(tex)
            md += [text, ""]
            if diffs is not None:
                md += verdict_lines({n: diffs[n] for n in abl.index}, base) + [""]
    return md
