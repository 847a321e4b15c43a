"""Result tables: per-run frames, mean ± std over seeds, comparison with published rows, and renderers.

A *comparison frame* (``comparison_frame``) has one row per our method (+variant) and per paper row, columns
``method, source, ours, seeds`` then, for each value column ``c``, ``c`` (mean, %) and ``c_std`` (NaN for
paper rows and single seeds). The renderers (terminal, Markdown, LaTeX, CSV) all take that frame.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from io import StringIO
from pathlib import Path

import numpy as np
import pandas as pd

from bench.data.labels import CLASS_NAMES, SUBSETS

DASH, TEX_DASH = "–", "--"
META = ("method", "source", "ours", "seeds")
RUN_KEYS = ("method", "variant", "seed")


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


def format_cell(mean: float, std: float, digits: int = 1) -> str:
    """``mean±std`` (``mean`` alone without a std, ``–`` without a mean)."""
    if np.isnan(mean):
        return DASH
    return f"{mean:.{digits}f}" if np.isnan(std) else f"{mean:.{digits}f}±{std:.{digits}f}"


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


def ablation_frame(ours: pd.DataFrame, base_method: str, metric: str = "mIoU") -> pd.DataFrame:
    """One row per method (+variant) of a ``per_class_frame``: seeds, ``metric`` mean and std, gain over the base.

    ``base_method`` is a row name as shown (``method`` or ``method (variant)``).
    """
    agg = aggregate(ours)
    if base_method not in agg.index:
        raise KeyError(f"base {base_method!r} not among {list(agg.index)}")
    names = _run_names(ours)
    first = ~names.duplicated()
    variants = ours["variant"].fillna("") if "variant" in ours.columns else pd.Series("", index=ours.index)
    mean = agg[("mean", metric)]
    return pd.DataFrame({
        "method": ours["method"][first].to_numpy(), "variant": variants[first].to_numpy(),
        "seeds": agg[("mean", "seeds")].astype(int).to_numpy(),
        metric: mean.to_numpy(), f"{metric}_std": agg[("std", metric)].to_numpy(),
        "gain": (mean - mean[base_method]).to_numpy(),
    }, index=agg.index)


# ---- rendering --------------------------------------------------------------------------------------------


def value_columns(frame: pd.DataFrame) -> list[str]:
    """The mean columns of a comparison frame, in order."""
    return [c for c in frame.columns if c not in META and not str(c).endswith("_std")]


def best_cells(frame: pd.DataFrame, cols: Sequence[str], digits: int = 1) -> pd.DataFrame:
    """True where a cell's value *as displayed* (``digits`` decimals) is its column's max; ties all True."""
    out = {}
    for c in cols:
        shown = frame[c].map(lambda x: float(f"{x:.{digits}f}") if pd.notna(x) else np.nan)
        out[c] = shown.eq(shown.max()) & shown.notna()
    return pd.DataFrame(out, index=frame.index)


def _grid(frame: pd.DataFrame, digits: int, dash: str, bold: Callable[[str], str],
          pm: Callable[[str], str]) -> tuple[list[str], list[list[str]]]:
    """Display strings of the value columns: mean (``bold`` where best) then ``pm(std)`` when there is a std."""
    cols = value_columns(frame)
    best = best_cells(frame, cols, digits)
    grid = []
    for i in range(len(frame)):
        cells = []
        for c in cols:
            m = frame[c].iloc[i]
            s = frame[f"{c}_std"].iloc[i] if f"{c}_std" in frame.columns else np.nan
            if pd.isna(m):
                cells.append(dash)
                continue
            text = f"{m:.{digits}f}"
            text = bold(text) if best[c].iloc[i] else text
            cells.append(text + pm(f"{s:.{digits}f}") if pd.notna(s) else text)
        grid.append(cells)
    return cols, grid


_TEX = {"\\": r"\textbackslash{}", "&": r"\&", "%": r"\%", "$": r"\$", "#": r"\#", "_": r"\_", "{": r"\{",
        "}": r"\}", "~": r"\textasciitilde{}", "^": r"\textasciicircum{}", "±": r"$\pm$", "→": r"$\rightarrow$",
        "×": r"$\times$"}
_TEX_RE = re.compile("|".join(map(re.escape, _TEX)))


def tex_escape(text) -> str:
    """Escape LaTeX specials (and a few non-ASCII symbols) in plain text."""
    return _TEX_RE.sub(lambda m: _TEX[m.group()], str(text))


def _ours_flags(frame: pd.DataFrame) -> list[bool]:
    return [bool(x) for x in frame["ours"]] if "ours" in frame.columns else [True] * len(frame)


def to_latex(frame: pd.DataFrame, caption: str, label: str, *, digits: int = 1, rotate: bool = True,
             fit: bool = True, environment: str = "table", position: str = "t") -> str:
    """A booktabs ``table`` (needs ``\\usepackage{booktabs,graphicx}``): best per column bold (on the rounded
    value), our cells ``mean{\\scriptsize$\\pm$std}``, a ``\\midrule`` where our rows meet paper rows.

    ``rotate`` turns class headers (not ``mIoU…``) by 90°; ``fit`` shrinks the tabular to ``\\linewidth``
    when wider (never enlarges). Method names, sources, headers and the caption are escaped.
    """
    cols, grid = _grid(frame, digits, TEX_DASH, lambda t: rf"\textbf{{{t}}}", lambda s: rf"{{\scriptsize$\pm${s}}}")
    heads = [rf"\rotatebox{{90}}{{{tex_escape(c)}}}" if rotate and not str(c).startswith("mIoU") else tex_escape(c)
             for c in cols]
    lines = [rf"\begin{{{environment}}}[{position}]", r"\centering", rf"\caption{{{tex_escape(caption)}}}",
             rf"\label{{{label}}}"]
    if fit:
        lines.append(r"\resizebox{\ifdim\width>\linewidth\linewidth\else\width\fi}{!}{%")
    lines += [rf"\begin{{tabular}}{{ll{'c' * len(cols)}}}", r"\toprule",
              " & ".join(["Method", "Source", *heads]) + r" \\", r"\midrule"]
    flags = _ours_flags(frame)
    for i, cells in enumerate(grid):
        if i and flags[i] != flags[i - 1]:
            lines.append(r"\midrule")
        name, src = tex_escape(frame["method"].iloc[i]), tex_escape(frame["source"].iloc[i])
        lines.append(" & ".join([name, src, *cells]) + r" \\")
    lines += [r"\bottomrule", r"\end{tabular}" + ("}" if fit else ""), rf"\end{{{environment}}}"]
    return "\n".join(lines) + "\n"


def to_markdown(frame: pd.DataFrame, title: str = "", *, digits: int = 1) -> str:
    """A GitHub pipe table (``### title`` above it), best per column in **bold**, missing values as ``–``."""
    cols, grid = _grid(frame, digits, DASH, lambda t: f"**{t}**", lambda s: f" ± {s}")

    def md(x) -> str:
        return str(x).replace("|", r"\|")

    lines = [f"### {title}", ""] if title else []
    lines += ["| " + " | ".join(md(h) for h in ["Method", "Source", *cols]) + " |",
              "|" + "|".join([":---", ":---", *["---:"] * len(cols)]) + "|"]
    for i, cells in enumerate(grid):
        lines.append("| " + " | ".join([md(frame["method"].iloc[i]), md(frame["source"].iloc[i]), *cells]) + " |")
    return "\n".join(lines) + "\n"


def _paper_gain(abl: pd.DataFrame, base: str) -> pd.Series:
    return abl["paper mIoU"] - abl.loc[base, "paper mIoU"] if base in abl.index else abl["paper mIoU"] * np.nan


def ablation_markdown(abl: pd.DataFrame, title: str = "", *, metric: str = "mIoU", digits: int = 1,
                      base: str | None = None) -> str:
    """An ``ablation_frame`` as a pipe table: row, seeds, ``metric`` mean ± std, signed gain; with a ``paper mIoU``
    column (and ``paper row``), the paper's value and its gain over the paper's ``base`` row beside ours."""
    paper = "paper mIoU" in abl.columns
    lines = [f"### {title}", ""] if title else []
    head = f"| Method | seeds | {metric} | gain |"
    lines += [head + (" paper row | paper | paper gain |" if paper else ""),
              "|:---|---:|---:|---:|" + (":---|---:|---:|" if paper else "")]
    pgain = _paper_gain(abl, base or abl.index[0]) if paper else None
    for name, r in abl.iterrows():
        std = "" if pd.isna(r[f"{metric}_std"]) else f" ± {r[f'{metric}_std']:.{digits}f}"
        label = str(name).replace("|", r"\|")
        line = f"| {label} | {int(r['seeds'])} | {r[metric]:.{digits}f}{std} | {r['gain']:+.{digits}f} |"
        if paper:
            row = str(r.get("paper row", "") or "").replace("|", r"\|")
            pv = "–" if pd.isna(r["paper mIoU"]) else f"{r['paper mIoU']:.{digits}f}"
            pg = "–" if pd.isna(pgain[name]) else f"{pgain[name]:+.{digits}f}"
            line += f" {row} | {pv} | {pg} |"
        lines.append(line)
    return "\n".join(lines) + "\n"


def ablation_latex(abl: pd.DataFrame, caption: str = "", *, metric: str = "mIoU", digits: int = 1,
                   base: str | None = None) -> str:
    """The same table as :func:`ablation_markdown` in booktabs LaTeX."""
    paper = "paper mIoU" in abl.columns
    pgain = _paper_gain(abl, base or abl.index[0]) if paper else None
    cols = "lrrr" + ("lrr" if paper else "")
    head = ["Method", "seeds", metric, "gain"] + (["paper row", "paper", "paper gain"] if paper else [])
    out = [r"\begin{table}[t]", r"\centering", rf"\caption{{{tex_escape(caption)}}}", rf"\begin{{tabular}}{{{cols}}}",
           r"\toprule", " & ".join(head) + r" \\", r"\midrule"]
    for name, r in abl.iterrows():
        std = "" if pd.isna(r[f"{metric}_std"]) else rf" $\pm$ {r[f'{metric}_std']:.{digits}f}"
        cells = [tex_escape(str(name)), str(int(r["seeds"])), f"{r[metric]:.{digits}f}{std}",
                 f"{r['gain']:+.{digits}f}"]
        if paper:
            cells += [tex_escape(str(r.get("paper row", "") or "")),
                      "--" if pd.isna(r["paper mIoU"]) else f"{r['paper mIoU']:.{digits}f}",
                      "--" if pd.isna(pgain[name]) else f"{pgain[name]:+.{digits}f}"]
        out.append(" & ".join(cells) + r" \\")
    out += [r"\bottomrule", r"\end{tabular}", r"\end{table}"]
    return "\n".join(out) + "\n"


def to_csv(frame: pd.DataFrame, path: str | Path | None = None) -> str | None:
    """``frame.to_csv`` without the index: the long numeric form (mean and ``_std`` columns)."""
    return frame.to_csv(path, index=False)


def render_terminal(frame: pd.DataFrame, title: str, *, digits: int = 1) -> str:
    """A rich table rendered to plain text: a per-run frame (mean ± std over seeds) or a comparison frame."""
    from rich.console import Console
    from rich.table import Table
    from rich.text import Text

    if "source" not in frame.columns:  # a per_class_frame: aggregate it
        frame = comparison_frame(frame, None, [c for c in frame.columns if c not in RUN_KEYS], extra=())
    cols, grid = _grid(frame, digits, DASH, lambda t: t, lambda s: f"±{s}")
    best = best_cells(frame, cols, digits)
    with_source = not all(_ours_flags(frame))
    seeds = [DASH if pd.isna(n) else str(int(n)) for n in frame["seeds"]]
    body = [[str(m), n, *([str(s)] if with_source else []), *cells]
            for m, n, s, cells in zip(frame["method"], seeds, frame["source"], grid)]
    heads = ["method", "seeds", *(["source"] if with_source else []), *map(_short, cols)]
    table = Table(title=title, show_lines=False)
    for h in heads:
        table.add_column(h, justify="left" if h in ("method", "source") else "right", no_wrap=True)
    nv = len(heads) - len(cols)
    for i, row in enumerate(body):
        styled = [Text(t, style="bold" if j >= nv and best[cols[j - nv]].iloc[i] else "") for j, t in enumerate(row)]
        table.add_row(*styled)
    width = 1 + sum(3 + max(len(h), *(len(r[j]) for r in body)) for j, h in enumerate(heads)) if body else 80
    buf = StringIO()
    Console(file=buf, width=max(width, len(title), 40), force_terminal=False, color_system=None).print(table)
    return buf.getvalue()


def _short(col) -> str:
    """Terminal header: ``mIoU…`` as is, two-word classes by their last word (``light``), others cut to 5."""
    col = str(col)
    return col if col.startswith("mIoU") else col.split()[-1] if " " in col else col[:5]


def write_tables(frame: pd.DataFrame, out_dir: str | Path, stem: str, caption: str,
                 label: str | None = None) -> dict[str, Path]:
    """Write ``<stem>.tex/.md/.csv/.txt`` under ``out_dir``; returns ``{"tex": path, ...}``."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = {ext: out / f"{stem}.{ext}" for ext in ("tex", "md", "csv", "txt")}
    paths["tex"].write_text(to_latex(frame, caption, label or f"tab:{stem}"), encoding="utf-8")
    paths["md"].write_text(to_markdown(frame, caption), encoding="utf-8")
    to_csv(frame, paths["csv"])
    paths["txt"].write_text(render_terminal(frame, caption), encoding="utf-8")
    return paths
