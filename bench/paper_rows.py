"""Published per-class results, transcribed from the main tables of the four reproduced papers.

One wide CSV per (paper, table, benchmark) under ``results/paper/``, named ``<paper>_t<N>_<benchmark>.csv``, with
columns ``paper, table, row, backbone``, then the table's classes (Cityscapes trainId names, in the paper's order),
then ``mIoU`` and, for SYNTHIA tables that print it, ``mIoU*`` (13-class mean). See ``results/paper/README.md``.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import NamedTuple

import pandas as pd

from bench.data.labels import CLASS_NAMES
from bench.paths import REPO

DEFAULT_ROOT = REPO / "results" / "paper"

BENCHMARKS = (
    "gta5_cityscapes", "synthia_cityscapes",
    "crosscity_rome", "crosscity_rio", "crosscity_tokyo", "crosscity_taipei",
)
META_COLUMNS = ("paper", "table", "row", "backbone")
METRIC_COLUMNS = ("mIoU", "mIoU*")


def known_papers() -> tuple[str, ...]:
    """The paper keys of the registered methods (``methods.base.Method.paper``)."""
    from methods.base import papers

    return tuple(papers())


def _patterns() -> tuple[re.Pattern, re.Pattern]:
    """(main table, ablation table) file-name patterns for the registered papers."""
    names = "|".join(map(re.escape, known_papers()))
    return (re.compile(rf"^({names})_t(\d+)_({'|'.join(BENCHMARKS)})\.csv$"),
            re.compile(rf"^({names})_t(\d+)_([a-z0-9_]+)\.csv$"))


def _csv_files(root) -> list[Path]:
    """The CSVs of ``root``, or, by default, of ``results/paper`` and every registered paper's own ``rows_dir``."""
    if root is not None:
        return sorted(Path(root).glob("*.csv"))
    from methods.base import papers

    dirs = [DEFAULT_ROOT] + [Path(p.rows_dir) for p in papers().values() if p.rows_dir]
    return sorted({f for d in dict.fromkeys(dirs) for f in d.glob("*.csv")}, key=lambda f: (f.name, str(f)))


class PaperFile(NamedTuple):
    paper: str
    table: int
    benchmark: str
    path: Path


def paper_files(root: str | Path | None = None) -> list[PaperFile]:
    """The available transcriptions, sorted by file name; a ``.csv`` with a malformed name raises ValueError."""
    file_re, extra_re = _patterns()
    out = []
    for path in _csv_files(root):
        m = file_re.match(path.name)
        if m is None:
            if extra_re.match(path.name):
                continue  # an ablation/sensitivity table: see extra_tables()
            raise ValueError(f"{path}: file name is not <paper>_t<N>_<benchmark>.csv (a main table) or "
                             "<paper>_t<N>_<name>.csv (an ablation table) with a known paper")
        out.append(PaperFile(m.group(1), int(m.group(2)), m.group(3), path))
    return out


def extra_tables(root: str | Path | None = None) -> dict[tuple[str, int], Path]:
    """The transcribed ablation / sensitivity tables: ``{(paper, table): path}`` (free-form columns)."""
    file_re, extra_re = _patterns()
    out = {}
    for path in _csv_files(root):
        m = extra_re.match(path.name)
        if m and not file_re.match(path.name):
            out[(m.group(1), int(m.group(2)))] = path
    return out


def load_extra_table(paper: str, table: int, root: str | Path | None = None) -> pd.DataFrame:
    """One ablation table as printed (``paper, table, row`` then the table's own columns)."""
    tables = extra_tables(root)
    if (paper, table) not in tables:
        raise KeyError(f"no transcribed table {paper} {table}; available: {sorted(tables)}")
    frame = pd.read_csv(tables[(paper, table)])
    if list(frame.columns[:3]) != ["paper", "table", "row"]:
        raise ValueError(f"{tables[(paper, table)]}: first columns must be paper, table, row")
    return frame


def _read(f: PaperFile) -> pd.DataFrame:
    """One CSV, validated: known columns, no duplicate row labels, numeric class/metric cells (empty → NaN)."""
    frame = pd.read_csv(f.path, dtype=str, keep_default_na=False)
    cols = list(frame.columns)
    if tuple(cols[:4]) != META_COLUMNS:
        raise ValueError(f"{f.path}: first columns must be {', '.join(META_COLUMNS)}, got {cols[:4]}")
    unknown = [c for c in cols[4:] if c not in CLASS_NAMES and c not in METRIC_COLUMNS]
    if unknown:
        raise ValueError(f"{f.path}: unknown column(s) {unknown}; expected Cityscapes class names or mIoU/mIoU*")
    if "mIoU" not in cols:
        raise ValueError(f"{f.path}: no mIoU column")
    dup = sorted(set(frame["row"][frame["row"].duplicated()]))
    if dup:
        raise ValueError(f"{f.path}: duplicate row label(s) {dup}")
    if set(frame["paper"]) != {f.paper} or set(frame["table"]) != {str(f.table)}:
        raise ValueError(f"{f.path}: paper/table cells do not match the file name")
    try:
        for c in cols[4:]:
            frame[c] = pd.to_numeric(frame[c].where(frame[c] != ""), errors="raise").astype(float)
    except (ValueError, TypeError) as e:
        raise ValueError(f"{f.path}: non-numeric value in column {c!r}: {e}") from e
    frame["table"] = frame["table"].astype(int)
    frame.insert(4, "benchmark", f.benchmark)
    return frame


def load_paper_rows(
    benchmark: str | None = None, paper: str | None = None, root: str | Path | None = None
) -> pd.DataFrame:
    """All published rows (optionally one benchmark and/or paper), concatenated.

    Columns: ``paper, table, row, backbone, benchmark``, then the classes present (trainId order), then
    ``mIoU`` (and ``mIoU*`` when any selected file has it). Classes a table does not report are NaN.

    A SYNTHIA table that prints only the 13 classes heads their mean "mIoU"; here it becomes ``mIoU*`` (the
    13-class mean, as everywhere in uda-bench) and ``mIoU`` (16 classes) is NaN, so the two conventions never
    share a column.
    """
    if benchmark is not None and benchmark not in BENCHMARKS:
        raise ValueError(f"unknown benchmark {benchmark!r}; known: {BENCHMARKS}")
    if paper is not None and paper not in known_papers():
        raise ValueError(f"unknown paper {paper!r}; known: {known_papers()}")
    files = [f for f in paper_files(root) if benchmark in (None, f.benchmark) and paper in (None, f.paper)]
    frames = [_as_uda_bench_columns(_read(f), f) for f in files]
    if not frames:
        return pd.DataFrame(columns=[*META_COLUMNS, "benchmark", "mIoU"])
    frame = pd.concat(frames, ignore_index=True)
    order = [*META_COLUMNS, "benchmark", *CLASS_NAMES, *METRIC_COLUMNS]
    return frame[[c for c in order if c in frame.columns]]


def _as_uda_bench_columns(frame: pd.DataFrame, f: PaperFile) -> pd.DataFrame:
    """Rename a 13-class SYNTHIA table's printed "mIoU" to ``mIoU*``."""
    from bench.data.labels import SUBSETS

    classes = {c for c in frame.columns if c in CLASS_NAMES}
    thirteen = {CLASS_NAMES[i] for i in SUBSETS["13"]}
    if f.benchmark == "synthia_cityscapes" and classes == thirteen and "mIoU*" not in frame.columns:
        frame = frame.rename(columns={"mIoU": "mIoU*"})
    return frame
