"""Renderers of the frames of ``bench.tables``: terminal (rich), Markdown, LaTeX and CSV, with the mean ± std
cells, the bold best of our rows, and each row's difference as ``+2.3 [+1.1, +3.4]``, marked † where its interval
excludes 0."""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from io import StringIO
from pathlib import Path

import numpy as np
import pandas as pd

from bench.stats import LEVEL, MISSING, Difference, format_difference
from bench.tables import DIFF, META, REFERENCE, RUN_KEYS, comparison_frame, ours_flags

DASH, TEX_DASH = "–", "--"
BASE_CELL = "—"  # the gain column of an ablation's base row: nothing to compare with
MARK = "†"  # tex_escape turns it into $^\dagger$


def difference_note(frame: pd.DataFrame, *, n_boot: int = 2000, tex: bool = False) -> str:
    """The text under a table with differences: what Δ and its interval are, what the mark means, and which rows
    have no interval (and why). Empty without a ``delta`` column."""
    if "delta" not in frame.columns:
        return ""
    ref = frame.attrs.get("reference", REFERENCE)
    mark = MARK
    text = (f"Δ: difference in mIoU points from {ref}, with its {100 * LEVEL:g} % paired-bootstrap interval "
            f"({n_boot} resamplings of the validation images, the same images for both rows; with several seeds, "
            f"the seeds are resampled too and Δ is the mean over seeds). {mark} the interval excludes 0; without "
            "the mark the two rows are not distinguishable.")
    missing = [f"{m} ({n})" for m, n, lo, d in zip(frame["method"], frame["delta_note"], frame["delta_lo"],
                                                   frame["delta"]) if n and n != REFERENCE and pd.isna(lo)
               and pd.notna(d)]
    if missing:
        text += " No interval, plain difference of the means: " + "; ".join(missing) + "."
        if any(MISSING in m for m in missing):
            text += " (`bench cache clear --stage eval` and the same run again re-evaluates from the cached models.)"
    return tex_escape(text) if tex else text


def _diff_cells(frame: pd.DataFrame, digits: int, mark: str, dash: str) -> list[str] | None:
    """Display strings of the difference column (None when the frame has none)."""
    if "delta" not in frame.columns:
        return None
    cells = []
    for d, lo, hi, note in zip(frame["delta"], frame["delta_lo"], frame["delta_hi"], frame["delta_note"]):
        if note == REFERENCE:
            cells.append(REFERENCE)
        elif pd.isna(d):
            cells.append(dash)
        else:
            cells.append(format_difference(Difference(float(d), float(lo), float(hi)), digits, mark))
    return cells


def _diff_head(frame: pd.DataFrame) -> str:
    return f"Δ mIoU vs {frame.attrs.get('reference', REFERENCE)}"


# ---- rendering --------------------------------------------------------------------------------------------


def md_cell(text) -> str:
    """Text safe inside one cell of a pipe table: ``|`` escaped (GFM splits cells on it, even inside a code span)
    and line breaks flattened (one would end the row)."""
    return re.sub(r"\s*[\r\n]+\s*", " ", str(text)).replace("|", r"\|")


def value_columns(frame: pd.DataFrame) -> list[str]:
    """The mean columns of a comparison frame, in order."""
    return [c for c in frame.columns if c not in META and c not in DIFF and not str(c).endswith("_std")]


BEST_EXCLUDE = ("oracle",)  # trained on target labels: an upper bound, not a competitor for "best"


def best_rows(frame: pd.DataFrame, best: str = "ours", exclude: Sequence[str] = BEST_EXCLUDE) -> np.ndarray:
    """Which rows compete for the bold "best": ``ours`` (our rows, except the methods in ``exclude`` and their
    variants; paper rows are another benchmark), ``all`` or ``none``."""
    if best not in ("ours", "all", "none"):
        raise ValueError(f"best must be 'ours', 'all' or 'none', not {best!r}")
    if best != "ours":
        return np.full(len(frame), best == "all")
    base = [str(m).split(" (", 1)[0] for m in frame["method"]]
    return np.array([o and b not in set(exclude) for o, b in zip(ours_flags(frame), base)], dtype=bool)


def best_cells(frame: pd.DataFrame, cols: Sequence[str], digits: int = 1, among=None) -> pd.DataFrame:
    """True where a cell's value *as displayed* (``digits`` decimals) is its column's max among the rows ``among``
    (a boolean mask; default all rows); ties all True, rows outside ``among`` never."""
    among = np.ones(len(frame), bool) if among is None else np.asarray(among, bool)
    out = {}
    for c in cols:
        shown = frame[c].map(lambda x: float(f"{x:.{digits}f}") if pd.notna(x) else np.nan).where(among)
        out[c] = shown.eq(shown.max()) & shown.notna()
    return pd.DataFrame(out, index=frame.index)


def _grid(frame: pd.DataFrame, digits: int, dash: str, bold: Callable[[str], str],
          pm: Callable[[str], str], among=None) -> tuple[list[str], list[list[str]]]:
    """Display strings of the value columns: mean (``bold`` where best among the rows ``among``) then
    ``pm(std)`` when there is a std."""
    cols = value_columns(frame)
    best = best_cells(frame, cols, digits, among)
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
        "×": r"$\times$", "Δ": r"$\Delta$", "†": r"$^\dagger$", "−": r"$-$", "–": "--", "—": "---",
        "≤": r"$\leq$", "≥": r"$\geq$", "≈": r"$\approx$", "°": r"$^\circ$", "·": r"$\cdot$",
        # Greek letters the suites' notes and study names use; pdflatex's default fonts have none of them
        **{g: rf"$\{n}$" for g, n in zip("αβγδελμρστ", ("alpha", "beta", "gamma", "delta", "epsilon", "lambda",
                                                        "mu", "rho", "sigma", "tau"))}}
_TEX_RE = re.compile("|".join(map(re.escape, _TEX)))
_MINUS_RE = re.compile(r"(?<![\w.])-(?=\.?\d)")  # a hyphen before a number (not inside a word such as CAG-UDA)


def tex_escape(text) -> str:
    """Escape LaTeX specials (and a few non-ASCII symbols) in plain text."""
    return _TEX_RE.sub(lambda m: _TEX[m.group()], str(text))


def tex_minus(latex: str) -> str:
    """The hyphen of each negative number in already-escaped LaTeX typeset as a minus sign (``$-$``)."""
    return _MINUS_RE.sub(lambda m: "$-$", latex)


def tex_number(text) -> str:
    """:func:`tex_escape` then :func:`tex_minus`: a plain-text cell such as ``-2.3 [-4.1, -0.5]``."""
    return tex_minus(tex_escape(text))


FIT_TO_LINE = r"\resizebox{\ifdim\width>\linewidth\linewidth\else\width\fi}{!}{%"  # shrinks, never enlarges


def tex_header(graphicx: bool = False) -> str:
    """The first line of every emitted ``.tex``: the packages it needs (README, "Tables")."""
    return rf"% uda-bench table; needs \usepackage{{booktabs{',graphicx' if graphicx else ''}}}"




def to_latex(frame: pd.DataFrame, caption: str, label: str, *, digits: int = 1, rotate: bool = True,
             fit: bool = True, environment: str = "table", position: str = "t", best: str = "ours",
             best_exclude: Sequence[str] = BEST_EXCLUDE) -> str:
    """A booktabs ``table``: best per column bold (on the rounded value, among the rows :func:`best_rows` picks),
    our cells ``mean{\\scriptsize$\\pm$std}``, a ``\\midrule`` where our rows meet paper rows.

    ``rotate`` turns class headers (not ``mIoU…``) by 90°; ``fit`` shrinks the tabular to ``\\linewidth``
    when wider (never enlarges); either needs graphicx, which the first line (a comment) then names. Method
    names, sources, headers and the caption are escaped.
    """
    cols, grid = _grid(frame, digits, TEX_DASH, lambda t: rf"\textbf{{{t}}}", lambda s: rf"{{\scriptsize$\pm${s}}}",
                       best_rows(frame, best, best_exclude))
    heads = [rf"\rotatebox{{90}}{{{tex_escape(c)}}}" if rotate and not str(c).startswith("mIoU") else tex_escape(c)
             for c in cols]
    diffs = _diff_cells(frame, digits, MARK, TEX_DASH)
    if diffs is not None:
        heads.append(tex_escape(_diff_head(frame)))
        grid = [[*cells, tex_number(d)] for cells, d in zip(grid, diffs)]
    lines = [tex_header(rotate or fit), rf"\begin{{{environment}}}[{position}]", r"\centering",
             rf"\caption{{{tex_escape(caption)}}}",
             rf"\label{{{label}}}"]
    if fit:
        lines.append(FIT_TO_LINE)
    lines += [rf"\begin{{tabular}}{{ll{'c' * len(heads)}}}", r"\toprule",
              " & ".join(["Method", "Source", *heads]) + r" \\", r"\midrule"]
    flags = ours_flags(frame)
    for i, cells in enumerate(grid):
        if i and flags[i] != flags[i - 1]:
            lines.append(r"\midrule")
        name, src = tex_escape(frame["method"].iloc[i]), tex_escape(frame["source"].iloc[i])
        lines.append(" & ".join([name, src, *map(tex_minus, cells)]) + r" \\")
    lines += [r"\bottomrule", r"\end{tabular}" + ("}" if fit else "")]
    if diffs is not None:  # the mark's footnote, under the tabular
        lines += [r"\par\smallskip", rf"{{\footnotesize {difference_note(frame, tex=True)}\par}}"]
    lines.append(rf"\end{{{environment}}}")
    return "\n".join(lines) + "\n"


def to_markdown(frame: pd.DataFrame, title: str = "", *, digits: int = 1, best: str = "ours",
                best_exclude: Sequence[str] = BEST_EXCLUDE) -> str:
    """A GitHub pipe table (``### title`` above it), best per column in **bold** (see :func:`best_rows`), missing
    values as ``–``."""
    cols, grid = _grid(frame, digits, DASH, lambda t: f"**{t}**", lambda s: f" ± {s}",
                       best_rows(frame, best, best_exclude))
    diffs = _diff_cells(frame, digits, MARK, DASH)
    heads = [*cols, *([_diff_head(frame)] if diffs is not None else [])]
    lines = [f"### {title}", ""] if title else []
    lines += ["| " + " | ".join(md_cell(h) for h in ["Method", "Source", *heads]) + " |",
              "|" + "|".join([":---", ":---", *["---:"] * len(heads)]) + "|"]
    for i, cells in enumerate(grid):
        extra = [diffs[i]] if diffs is not None else []
        name, src = md_cell(frame["method"].iloc[i]), md_cell(frame["source"].iloc[i])
        lines.append("| " + " | ".join([name, src, *cells, *extra]) + " |")
    if diffs is not None:
        lines += ["", difference_note(frame)]
    return "\n".join(lines) + "\n"


def _paper_gain(abl: pd.DataFrame, base: str) -> pd.Series:
    return abl["paper mIoU"] - abl.loc[base, "paper mIoU"] if base in abl.index else abl["paper mIoU"] * np.nan


def _gain_cell(name, r: pd.Series, base: str, digits: int) -> str:
    """The gain over the base (``—`` on the base row itself), with its interval and mark when the frame carries
    them (``gain_lo``/``gain_hi``)."""
    if name == base or r.get("gain_note") == REFERENCE:
        return BASE_CELL
    if "gain_lo" not in r.index:
        return f"{r['gain']:+.{digits}f}"
    return format_difference(Difference(float(r["gain"]), float(r["gain_lo"]), float(r["gain_hi"])), digits, MARK)


def _paper_gain_cell(name, pgain: pd.Series, base: str, digits: int) -> str:
    if pd.isna(pgain[name]):
        return DASH
    return BASE_CELL if name == base else f"{pgain[name]:+.{digits}f}"


def ablation_note(abl: pd.DataFrame, base: str, *, n_boot: int = 2000) -> str:
    """The text under an ablation table with intervals (empty without ``gain_lo``): see :func:`difference_note`."""
    if "gain_lo" not in abl.columns:
        return ""
    frame = pd.DataFrame({"method": abl.index, "delta": abl["gain"], "delta_lo": abl["gain_lo"],
                          "delta_note": abl["gain_note"]})
    frame.attrs["reference"] = f"the base row ({base})"
    return difference_note(frame, n_boot=n_boot).replace("Δ:", "gain:", 1)


def ablation_markdown(abl: pd.DataFrame, title: str = "", *, metric: str = "mIoU", digits: int = 1,
                      base: str | None = None) -> str:
    """An ``ablation_frame`` as a pipe table: row, seeds, ``metric`` mean ± std, signed gain (with its interval and
    † when the frame has ``gain_lo``/``gain_hi``, and a note under the table; ``—`` on the ``base`` row, default
    the first); with a ``paper mIoU`` column (and ``paper row``), the paper's value and its gain over the paper's
    base row beside ours."""
    base = base or abl.index[0]
    paper = "paper mIoU" in abl.columns
    lines = [f"### {title}", ""] if title else []
    head = f"| Method | seeds | {metric} | gain |"
    lines += [head + (" paper row | paper | paper gain |" if paper else ""),
              "|:---|---:|---:|---:|" + (":---|---:|---:|" if paper else "")]
    pgain = _paper_gain(abl, base) if paper else None
    for name, r in abl.iterrows():
        std = "" if pd.isna(r[f"{metric}_std"]) else f" ± {r[f'{metric}_std']:.{digits}f}"
        line = (f"| {md_cell(name)} | {int(r['seeds'])} | {r[metric]:.{digits}f}{std} | "
                f"{_gain_cell(name, r, base, digits)} |")
        if paper:
            pv = DASH if pd.isna(r["paper mIoU"]) else f"{r['paper mIoU']:.{digits}f}"
            line += f" {md_cell(r.get('paper row', '') or '')} | {pv} | {_paper_gain_cell(name, pgain, base, digits)} |"
        lines.append(line)
    note = ablation_note(abl, base)
    return "\n".join(lines + (["", note] if note else [])) + "\n"


def ablation_latex(abl: pd.DataFrame, caption: str = "", *, label: str = "tab:ablation", metric: str = "mIoU",
                   digits: int = 1, base: str | None = None) -> str:
    """The same table as :func:`ablation_markdown` in booktabs LaTeX (booktabs, and graphicx to shrink a table wider
    than the line: the printed row labels are long)."""
    base = base or abl.index[0]
    paper = "paper mIoU" in abl.columns
    pgain = _paper_gain(abl, base) if paper else None
    cols = "lrrr" + ("lrr" if paper else "")
    head = ["Method", "seeds", tex_escape(metric), "gain"] + (["paper row", "paper", "paper gain"] if paper else [])
    out = [tex_header(graphicx=True), r"\begin{table}[t]", r"\centering", rf"\caption{{{tex_escape(caption)}}}",
           rf"\label{{{label}}}", FIT_TO_LINE, rf"\begin{{tabular}}{{{cols}}}", r"\toprule", " & ".join(head) + r" \\",
           r"\midrule"]
    for name, r in abl.iterrows():
        std = "" if pd.isna(r[f"{metric}_std"]) else rf" $\pm$ {r[f'{metric}_std']:.{digits}f}"
        cells = [tex_escape(str(name)), str(int(r["seeds"])), tex_number(f"{r[metric]:.{digits}f}") + std,
                 tex_number(_gain_cell(name, r, base, digits))]
        if paper:
            cells += [tex_escape(str(r.get("paper row", "") or "")),
                      TEX_DASH if pd.isna(r["paper mIoU"]) else f"{r['paper mIoU']:.{digits}f}",
                      tex_number(_paper_gain_cell(name, pgain, base, digits))]
        out.append(" & ".join(cells) + r" \\")
    out += [r"\bottomrule", r"\end{tabular}}"]
    note = ablation_note(abl, base)
    if note:  # the mark's footnote
        out += [r"\par\smallskip", rf"{{\footnotesize {tex_escape(note)}\par}}"]
    out.append(r"\end{table}")
    return "\n".join(out) + "\n"


def to_csv(frame: pd.DataFrame, path: str | Path | None = None) -> str | None:
    """``frame.to_csv`` without the index: the long numeric form (mean and ``_std`` columns)."""
    return frame.to_csv(path, index=False)


def render_terminal(frame: pd.DataFrame, title: str, *, digits: int = 1, best: str = "ours",
                    best_exclude: Sequence[str] = BEST_EXCLUDE) -> str:
    """A rich table rendered to plain text: a per-run frame (mean ± std over seeds) or a comparison frame."""
    from rich.console import Console
    from rich.table import Table
    from rich.text import Text

    if "source" not in frame.columns:  # a per_class_frame: aggregate it
        frame = comparison_frame(frame, None, [c for c in frame.columns if c not in RUN_KEYS], extra=())
    among = best_rows(frame, best, best_exclude)
    cols, grid = _grid(frame, digits, DASH, lambda t: t, lambda s: f"±{s}", among)
    best = best_cells(frame, cols, digits, among)
    with_source = not all(ours_flags(frame))
    seeds = [DASH if pd.isna(n) else str(int(n)) for n in frame["seeds"]]
    diffs = _diff_cells(frame, digits, MARK, DASH)
    body = [[str(m), n, *([str(s)] if with_source else []), *cells, *([diffs[i]] if diffs is not None else [])]
            for i, (m, n, s, cells) in enumerate(zip(frame["method"], seeds, frame["source"], grid))]
    heads = ["method", "seeds", *(["source"] if with_source else []), *map(_short, cols),
             *([f"Δ vs {frame.attrs.get('reference', REFERENCE)}"] if diffs is not None else [])]
    table = Table(title=title, show_lines=False, caption=difference_note(frame) or None)
    for h in heads:
        table.add_column(h, justify="left" if h in ("method", "source") else "right", no_wrap=True)
    nv = len(heads) - len(cols)
    for i, row in enumerate(body):
        styled = [Text(t, style="bold" if nv <= j < nv + len(cols) and best[cols[j - nv]].iloc[i] else "")
                  for j, t in enumerate(row)]
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
                 label: str | None = None, best: str = "ours", best_exclude: Sequence[str] = BEST_EXCLUDE
                 ) -> dict[str, Path]:
    """Write ``<stem>.tex/.md/.csv/.txt`` under ``out_dir``; returns ``{"tex": path, ...}``."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = {ext: out / f"{stem}.{ext}" for ext in ("tex", "md", "csv", "txt")}
    how = {"best": best, "best_exclude": best_exclude}
    paths["tex"].write_text(to_latex(frame, caption, label or f"tab:{stem}", **how), encoding="utf-8")
    paths["md"].write_text(to_markdown(frame, caption, **how), encoding="utf-8")
    to_csv(frame, paths["csv"])
    paths["txt"].write_text(render_terminal(frame, caption, **how), encoding="utf-8")
    return paths
