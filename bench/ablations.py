"""Ablation tables: our variants beside a paper's ablation rows, as the suite's ``paper.ablations`` maps them.

``paper.ablations.<method>`` is one table spec or a list of them (a method with several ablation tables, e.g.
BiSMAP Tables 3 and 4). A spec::

    {paper: bismap, table: 4, rows: {baseline: baseline, stm: +STM, "": "+STM +MAPs-PLA ..."},
     baseline: {method: source_only, row: Source only},   # optional: another method's base run
     base: baseline,                                        # optional: the row gains are taken from ("" default)
     name: pla}                                             # optional: file-name suffix (default t<table>)

A ``rows`` key is one of the method's variants ("" = the full method) or ``other_method:variant``. A single spec
shows every variant of the method (unmapped ones without a paper value); a list shows, per table, only the rows
that table maps.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pandas as pd

PAPER_NAMES = {"cag_uda": "CAG-UDA", "ssf_dan": "SSF-DAN", "bismap": "BiSMAP", "pixintrada": "PixIntraDA"}


@dataclass
class AblationTable:
    method: str
    source: str  # "BiSMAP, Table 4"
    rows: dict  # (method, variant) -> (paper row, paper mIoU), in the spec's order
    base: tuple  # (method, variant) the gains are measured from
    stem: str  # file name under tables/, without the subset and extension
    only_mapped: bool


def _row_key(method: str, key: str) -> tuple[str, str]:
    return tuple(key.split(":", 1)) if ":" in key else (method, key)


def ablation_specs(suite: dict, method: str) -> list[AblationTable]:
    """The method's ablation tables with the paper's values, validated (a misspelt row names the valid ones)."""
    from bench.paper_rows import load_extra_table

    spec = ((suite.get("paper") or {}).get("ablations") or {}).get(method)
    if not spec:
        return []
    many = isinstance(spec, list)
    out = []
    for s in spec if many else [spec]:
        where = f"suite paper.ablations.{method}" + (f" (table {s.get('table')})" if many else "")
        if not isinstance(s, dict) or not {"paper", "table", "rows"} <= set(s):
            raise KeyError(f"{where}: expected a mapping with paper, table and rows")
        table = load_extra_table(s["paper"], int(s["table"]))
        by_row = dict(zip(table["row"], table["mIoU"]))
        wanted = {_row_key(method, str(k)): r for k, r in s["rows"].items()}
        if s.get("baseline"):
            wanted = {(s["baseline"]["method"], ""): s["baseline"]["row"], **wanted}
        missing = sorted(r for r in wanted.values() if r not in by_row)
        if missing:
            raise KeyError(f"{where}: rows {missing} are not in {s['paper']} Table {s['table']}; "
                           f"valid: {sorted(by_row)}")
        base = _row_key(method, str(s.get("base", "")))
        if many and base not in wanted:
            raise KeyError(f"{where}: base {s.get('base', '')!r} is not one of its rows {sorted(s['rows'])}")
        suffix = s.get("name", f"t{s['table']}") if many else ""
        out.append(AblationTable(method, f"{PAPER_NAMES.get(s['paper'], s['paper'])}, Table {s['table']}",
                                 {k: (r, float(by_row[r])) for k, r in wanted.items()}, base,
                                 f"ablation_{method}" + (f"_{suffix}" if suffix else ""), many))
    return out


def ablation_tables(suite: dict, ours: pd.DataFrame, subset: str, out_dir: Path, benchmark: str,
                    per_image=None) -> list[str]:
    """Per method with variants (or with ablation specs): ours beside the paper's rows; Markdown lines returned,
    ``.md``/``.tex``/``.csv`` written under ``out_dir/tables/``. A table whose base run is missing is skipped.

    ``per_image`` (``(row name, seed) → (matrices, image ids)`` or None per eval stage; see
    ``bench.tables.row_differences``): every gain gets its paired-bootstrap interval against the table's base
    row, and the Markdown says per row whether it is distinguishable from the base. Without it (None), plain
    gains as before."""
    from bench.tables import ablation_frame, ablation_latex, ablation_markdown, row_differences, row_name, verdict_lines

    variants = ours["variant"].fillna("")
    methods = list(dict.fromkeys(ours.loc[variants != "", "method"]))
    methods += [m for m in ((suite.get("paper") or {}).get("ablations") or {}) if m not in methods]
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
                title += f" (paper: {t.source}, {benchmark or 'its benchmark'})"
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
