"""A sweep's outputs: the BiSMAP-Table-5-shaped table (metric and pseudo-label ratio per value, mean ± std over
seeds, the paper's points beside ours), LaTeX/Markdown/CSV, the plot, and the MLflow sweep run with one nested
run per trial. Everything is read back from the stage cache, so ``record_sweep`` is cheap to repeat."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pandas as pd

from bench.regret import IW_BAD, IW_ESS
from bench.selection import CRITERIA, MEAN_WEIGHT_BAND, MIN_ESS_SHARE, weights_degenerate
from bench.stage_cache import StageCache
from bench.table_render import tex_escape, tex_header, tex_number

IW_NOTE = (f"† importance weights degenerate on at least one seed (effective sample size under "
           f"{100 * MIN_ESS_SHARE:g} % of the source rows, or mean weight outside {MEAN_WEIGHT_BAND[0]:g}–"
           f"{MEAN_WEIGHT_BAND[1]:g} against a density ratio's 1): IWCV and DEV rest on a few pixels there.")


def trial_rows(study, trials, cache_root: Path) -> pd.DataFrame:
    """One row per trial: value, seed, val mIoU (19 or the suite's first subset), held-out mIoU, the last
    label stage's pseudo-label ratio and precision (NaN where the method makes none), and the label-free
    criteria of its ``select`` stage."""
    cache = StageCache(cache_root)

    def done(stage) -> dict:  # a failed trial's stages after the failing one never ran: their columns stay NaN
        return cache.result(stage.key) if stage is not None and cache.is_done(stage.key) else {}

    rows = []
    for t in trials:
        res = done(t.stages[-1])
        miou_key = next((k for k in res if k.startswith("miou_")), None)
        row = {"value": t.value, "seed": t.seed, "mIoU": 100 * res[miou_key] if miou_key else np.nan}
        if t.holdout_eval is not None:
            h = done(t.holdout_eval)
            row["holdout mIoU"] = 100 * h[miou_key] if miou_key in h else np.nan
        lab = done(t.label_stage(study.label_stage))
        row["PL ratio"] = 100 * lab[study.ratio_key] if study.ratio_key in lab else np.nan
        # entries from before LabelStats left precision out for an empty label set hold 0 there
        labelled = "pl_precision" in lab and lab.get("pl_ratio", 1.0) > 0
        row["PL precision"] = 100 * lab["pl_precision"] if labelled else np.nan
        if "threshold" in lab and study.param not in ("delta_override", "delta_d", "cas_delta_d"):
            row["threshold"] = lab["threshold"]  # the δ / Δd a label-share trial resolved to
        if t.select is not None:
            sel = done(t.select)
            row.update({name: sel.get(name, np.nan) for name in CRITERIA})
            if "iw_ess" in sel:  # select stages from before version 2 lack it
                row[IW_ESS] = 100 * sel["iw_ess"] / sel["iw_rows"]
                row[IW_BAD] = float(weights_degenerate(sel["iw_ess"], sel["iw_rows"], sel["iw_mean"]))
        rows.append(row)
    return pd.DataFrame(rows)


def sweep_frame(rows: pd.DataFrame) -> pd.DataFrame:
    """Per value: seeds, then mean and std of every measured column (NaN std for one seed)."""
    cols = [c for c in rows.columns if c not in ("value", "seed")]
    g = rows.groupby("value", sort=True)
    out = pd.DataFrame({"seeds": g["seed"].count()})
    for c in cols:
        out[c] = g[c].mean()
        out[f"{c}_std"] = g[c].std(ddof=1)
    return out


def paper_points(study, source: str | None = None) -> pd.DataFrame | None:
    """The paper's (value, ratio %, mIoU) for the study, from ``results/paper`` (None if unpublished); a study
    whose paper has one table per source (``paper_by_source``) picks the suite source's."""
    spec = (study.paper_by_source or {}).get(source, study.paper)
    if spec is None:
        return None
    from bench.paper_rows import load_extra_table

    paper, table, name, value_col, ratio_col, scale, *vscale = spec
    t = load_extra_table(paper, table)
    t = t[t["method"] == name] if "method" in t.columns else t[t["row"] == name]
    value = (vscale[0] if vscale else 1.0) * pd.to_numeric(t[value_col], errors="coerce")
    out = pd.DataFrame({"value": value.round(9),
                        "PL ratio": scale * pd.to_numeric(t[ratio_col], errors="coerce"),
                        "mIoU": pd.to_numeric(t["mIoU"], errors="coerce")}).dropna(subset=["value"])
    return out.set_index("value")


def _cell(mean, std, digits: int = 1) -> str:
    if mean is None or (isinstance(mean, float) and math.isnan(mean)):
        return "–"
    return f"{mean:.{digits}f}" + ("" if std is None or math.isnan(std) else f" ± {std:.{digits}f}")


def _digits(col: str) -> int:
    return 3 if col == "threshold" or col in CRITERIA else 1


def _columns(frame: pd.DataFrame) -> list[str]:
    return [c for c in frame.columns if c not in ("seeds", IW_BAD) and not c.endswith("_std")]


def _flag(frame: pd.DataFrame, value, col: str, mark: str) -> str:
    """``mark`` on IWCV/DEV cells of a value whose importance weights were degenerate on some seed."""
    bad = col in ("iwcv", "dev") and IW_BAD in frame and frame.loc[value, IW_BAD] > 0
    return mark if bad else ""


def sweep_markdown(frame: pd.DataFrame, study, paper: pd.DataFrame | None, title: str) -> str:
    cols = _columns(frame)
    best_val = frame["mIoU"].idxmax() if frame["mIoU"].notna().any() else None
    best_hold = frame["holdout mIoU"].idxmax() if "holdout mIoU" in frame and frame["holdout mIoU"].notna().any() \
        else None
    head = [study.param, "seeds", *cols] + (["paper PL ratio", "paper mIoU"] if paper is not None else [])
    lines = [f"### {title}", "", "| " + " | ".join(head) + " |", "|" + "---:|" * len(head)]
    for v, r in frame.iterrows():
        mark = (" (best on val)" if v == best_val else "") + (" (held-out choice)" if v == best_hold else "") + \
            (" (failed: see the search table)" if pd.isna(r["mIoU"]) else "")
        cells = [f"{v}{mark}", str(int(r["seeds"]))] + [_cell(r[c], r[f"{c}_std"], _digits(c)) +
                                                         _flag(frame, v, c, " †") for c in cols]
        if paper is not None:
            p = paper.loc[round(v, 9)] if isinstance(v, (int, float)) and round(v, 9) in paper.index else None
            cells += [_cell(p["PL ratio"], None) if p is not None else "–", _cell(p["mIoU"], None) if p is not None
                      else "–"]
        lines.append("| " + " | ".join(cells) + " |")
    if IW_BAD in frame and (frame[IW_BAD] > 0).any():
        lines += ["", IW_NOTE]
    return "\n".join(lines) + "\n"


def sweep_latex(frame: pd.DataFrame, study, caption: str, label: str = "tab:sweep") -> str:
    """The sweep table in booktabs LaTeX (booktabs only)."""
    cols = _columns(frame)
    out = [tex_header(), r"\begin{table}[t]", r"\centering", rf"\caption{{{tex_escape(caption)}}}",
           rf"\label{{{label}}}",
           rf"\begin{{tabular}}{{r{'r' * (len(cols) + 1)}}}", r"\toprule",
           " & ".join(tex_escape(c) for c in [study.param, "seeds", *cols]) + r" \\", r"\midrule"]
    for v, r in frame.iterrows():
        cells = [tex_number(_cell(r[c], r[f"{c}_std"], _digits(c))) + _flag(frame, v, c, r"$^\dagger$")
                 for c in cols]
        out.append(" & ".join([tex_number(v), str(int(r["seeds"])), *cells]) + r" \\")
    out += [r"\bottomrule", r"\end{tabular}"]
    if IW_BAD in frame and (frame[IW_BAD] > 0).any():
        out.append(r"\par\smallskip{\footnotesize " + tex_escape(IW_NOTE).replace("†", r"$^\dagger$") + "}")
    return "\n".join(out + [r"\end{table}"]) + "\n"


def paper_on_axis(x, paper: pd.DataFrame | None) -> pd.DataFrame | None:
    """The paper's points if they share our x-axis: None when their range and ours do not overlap (a value in
    another unit, e.g. MiniCity's δ −25…−15 against the paper's 0–150), which on one axis would squeeze one curve
    into a corner and read as one scale."""
    if paper is None or not len(paper) or not len(x):
        return paper
    lo, hi = float(np.min(x)), float(np.max(x))
    return paper if lo <= float(paper.index.max()) and float(paper.index.min()) <= hi else None


def log_axis(x) -> bool:
    """A log x axis for positive values spanning 20× or more (SSF-DAN's δ 0.0002–0.005: on a linear axis its three
    smallest values crowd into one corner)."""
    x = np.asarray(x, dtype=float)
    return len(x) > 1 and bool((x > 0).all()) and x.max() / x.min() >= 20


def axis_label(study) -> str:
    """The plot's x label: the swept key and, on a second line, the settings the study fixes (SSF-DAN's fixed and
    progressive ρ both sweep ``rho_upper``: without them the two plots read the same)."""
    import textwrap

    fixed = ", ".join(f"{k}={v}" for k, v in study.fixed.items())
    return f"{study.param}\n" + textwrap.fill(f"({fixed})", 70) if fixed else study.param


def sweep_plot(frame: pd.DataFrame, study, paper: pd.DataFrame | None, path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5, 3.9))
    numeric = pd.api.types.is_numeric_dtype(frame.index)
    # a categorical setting (e.g. ssf_dan.ablation): one evenly spaced, labelled position per value
    x = frame.index.to_numpy(dtype=float) if numeric else np.arange(len(frame), dtype=float)
    if not numeric:
        ax.set_xticks(x, [str(v) for v in frame.index], rotation=20, fontsize=7)
        paper = None  # the papers' points sit on a numeric axis
    paper = paper_on_axis(x, paper) if numeric else paper
    ax.errorbar(x, frame["mIoU"], yerr=frame["mIoU_std"].fillna(0), marker="o", ls="-" if numeric else "",
                label="ours: mIoU (val)")
    if "holdout mIoU" in frame:
        ax.errorbar(x, frame["holdout mIoU"], yerr=frame["holdout mIoU_std"].fillna(0), marker="s",
                    ls="--" if numeric else "",
                    label="ours: mIoU (held-out target train)")
    if paper is not None:
        ax.plot(paper.index, paper["mIoU"], "k^:", label="paper: mIoU (its benchmark)")
    if numeric and log_axis(x) and (paper is None or (paper.index > 0).all()):  # a log axis drops points ≤ 0
        ax.set_xscale("log")
        ax.minorticks_off()  # the default minor labels (2×10⁻⁴, 3×10⁻⁴, …) overlap: label the swept values
        ax.set_xticks(x, [f"{v:g}" for v in frame.index], fontsize=8)
    ax.set_xlabel(axis_label(study), fontsize=9 if study.fixed else None)
    ax.set_ylabel("mIoU (%)")
    if frame["PL ratio"].notna().any() or paper is not None:
        ax2 = ax.twinx()
        if frame["PL ratio"].notna().any():
            ax2.plot(x, frame["PL ratio"], "C2x-", label="ours: PL ratio")
        if paper is not None:
            ax2.plot(paper.index, paper["PL ratio"], "C2+:", label="paper: PL ratio")
        ax2.set_ylabel("pseudo-label ratio (%)")
        h2, l2 = ax2.get_legend_handles_labels()
    else:
        h2, l2 = [], []
    h1, l1 = ax.get_legend_handles_labels()
    # below the axes: inside, "best" sees only one of the twin axes and covered the other's points
    fig.legend(h1 + h2, l1 + l2, fontsize=7, loc="lower center", ncol=2, frameon=False)
    fig.tight_layout(rect=(0, 0.045 * ((len(l1 + l2) + 1) // 2), 1, 1))
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def _write_tables(suite, study, rows, frame, out_dir: Path, name: str, search: dict | None) -> dict:
    """sweep.{csv,md,tex,png}, trials.csv, regret.{csv,md} and, from the Tune search, search.{csv,md}; sweep.md
    holds the sweep table, the regret table and the search table."""
    from bench.regret import regret_markdown, selection_regret

    title = (f"{suite['name']}: {study.method} {study.param} sweep, mean ± std over seeds "
             f"{sorted(rows['seed'].unique().tolist())}" + (f" ({study.note})" if study.note else ""))
    paper = paper_points(study, suite["datasets"]["source"]["name"])
    paths = {"csv": out_dir / "sweep.csv", "md": out_dir / "sweep.md", "tex": out_dir / "sweep.tex",
             "trials": out_dir / "trials.csv", "png": out_dir / "sweep.png", "regret": out_dir / "regret.csv"}
    frame.to_csv(paths["csv"])
    rows.to_csv(paths["trials"], index=False)
    paths["tex"].write_text(sweep_latex(frame, study, title, f"tab:sweep_{name}"))
    sweep_plot(frame, study, paper, paths["png"])
    regret = selection_regret(frame)
    regret.to_csv(paths["regret"], index=False)
    md = [sweep_markdown(frame, study, paper, title),
          regret_markdown(regret, study.param, f"Selection regret: each criterion's pick vs the best {study.param} on "
                          "target val (reporting only; nothing is chosen on target val)")]
    if search is not None:
        paths["search"] = out_dir / "search.csv"
        search["table"].to_csv(paths["search"], index=False)
        md.append(search_markdown(search["table"], study.param, search["metric"], search["mode"],
                                  f"Tune search ({search['kind']}), one trial per value, means over seeds"))
    paths["md"].write_text("\n".join(md))
    return {"paths": paths, "regret": regret}


def search_markdown(table: pd.DataFrame, param: str, metric: str, mode: str, title: str) -> str:
    cols = [c for c in table.columns if not c.startswith("computed_seed")]
    lines = [f"### {title}", "", f"Sorted by {metric} ({mode}); the first row is the best trial. val_miou is for the "
             "record only.", "", "| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    for _, r in table.iterrows():
        lines.append("| " + " | ".join("–" if pd.isna(r[c]) else f"{r[c]:.4g}" if isinstance(r[c], float) else str(r[c])
                                       for c in cols) + " |")
    return "\n".join(lines) + "\n"


def best_line(search: dict, param: str) -> str:
    """The best trial by the search's metric, named (val mIoU beside it, for the record)."""
    best = search["table"].iloc[0]
    return (f"best trial by {search['metric']} ({search['mode']}): {best['trial_id']} with {param}={best[param]} "
            f"({search['metric']} = {best[search['metric']]:.4g}; val mIoU {best['val_miou']:.1f}, for the record)")


def record_sweep(suite: dict, study, trials, cache_root: Path, results_root: Path, tracking_uri: str | None,
                 wall_seconds: float, shared_seconds: float, search: dict | None = None) -> dict:
    """Tables, plot and MLflow runs for a finished sweep; ``search``: the Tune search's ``table`` (ResultGrid
    dataframe, best first), ``metric``, ``mode`` and ``kind``. Returns ``{"frame", "rows", "paths", "regret",
    "sweep_run", "tracking_uri", "search", "best"}``."""
    from bench.tracking import default_tracking_uri

    rows = trial_rows(study, trials, cache_root)
    frame = sweep_frame(rows)
    name = study.slug
    out_dir = results_root / suite["name"] / "sweeps" / name
    out_dir.mkdir(parents=True, exist_ok=True)
    written = _write_tables(suite, study, rows, frame, out_dir, name, search)
    paths = written["paths"]
    print(paths["md"].read_text())
    best = best_line(search, study.param) if search is not None else None
    if best:
        print(best)
        if search["metric"] in ("iwcv", "dev") and IW_BAD in rows and (rows[IW_BAD] > 0).any():
            bad = sorted(rows.loc[rows[IW_BAD] > 0, "value"].unique().tolist())
            print(f"warning: {search['metric']}'s importance weights are degenerate for {study.param} = {bad} (†"
                  " under the sweep table): there it compares a few pixels' losses. Prefer --metric snd, or "
                  "--holdout --metric holdout_miou")
    if search is not None and "failed" in search["table"]:
        bad = search["table"].dropna(subset=["failed"])
        print(f"{len(bad)} of {len(search['table'])} trial(s) failed (their columns are –):")
        for _, r in bad.iterrows():
            print(f"  {study.param}={r[study.param]}: {r['failed']}")
    uri = tracking_uri or default_tracking_uri(results_root)
    parent = _log_runs(suite, study, trials, rows, cache_root, results_root, uri, paths, best,
                       {"wall_seconds": wall_seconds, "shared_seconds": shared_seconds})
    return {"frame": frame, "rows": rows, "paths": paths, "regret": written["regret"], "sweep_run": parent,
            "tracking_uri": uri, "search": search["table"] if search is not None else None, "best": best}


def _log_runs(suite, study, trials, rows, cache_root, results_root, uri, paths, best, timing) -> str:
    """The MLflow sweep run (tables as artifacts, the best trial as a tag) with a nested run per (value, seed)."""
    from bench.tracking import Tracker, git_revision

    tracker = Tracker(uri, suite["name"], results_root / "mlartifacts")
    cache = StageCache(cache_root)
    name = paths["md"].parent.name
    tags = {"method": study.method, "param": study.param, "git": git_revision(), **({"best": best} if best else {})}
    parent = tracker.start(f"sweep {name}", "sweep", tags,
                           params={"param": study.param, "values": [t.value for t in trials], "fixed": study.fixed,
                                   "seeds": sorted(rows["seed"].unique().tolist())})
    for t, (_, r) in zip(trials, rows.iterrows()):
        run = tracker.start(f"{study.param}={t.value} seed {t.seed}", "trial",
                            {"method": study.method, "seed": t.seed, "cache": t.stages[-1].key}, parent=parent,
                            params={study.param: t.value, "seed": t.seed, **study.fixed})
        metrics = {k: float(v) for k, v in r.items() if k not in ("value", "seed") and not pd.isna(v)}
        label = t.label_stage(study.label_stage)
        if label is not None and cache.is_done(label.key):
            lab = cache.result(label.key)
            metrics.update({k.replace(" ", "_"): v for k, v in lab.items() if k.startswith("pl_precision/")})
        tracker.log_metrics(run, metrics)
        tracker.end(run)
    tracker.log_metrics(parent, timing)
    for p in paths.values():
        tracker.log_artifact(parent, p, "sweep")
    tracker.end(parent)
    return parent


def write_regret_summary(results_root: Path, suite_name: str) -> tuple[str, dict]:
    """``bench sweep --regret SUITE``: every finished sweep's selection regret under ``<results>/<suite>/sweeps``,
    side by side (``bench.regret.regret_matrix``), to ``regret_summary.{md,csv}`` there. → (markdown, paths)."""
    from bench.regret import regret_matrix, regret_matrix_markdown

    root = Path(results_root) / suite_name / "sweeps"
    found = {p.parent.name: pd.read_csv(p) for p in sorted(root.glob("*/regret.csv"))}
    if not found:
        raise FileNotFoundError(f"no sweep with a regret.csv under {root}: run `bench sweep STUDY {suite_name}` "
                                "first (or pass --results where its sweeps are)")
    duplicates = _same_trials(root, list(found))
    for name in duplicates:
        found.pop(name)
    spread = {}
    for name in found:
        val = pd.read_csv(root / name / "sweep.csv")["mIoU"] if (root / name / "sweep.csv").exists() else None
        spread[name] = float(val.max() - val.min()) if val is not None and val.notna().any() else float("nan")
    matrix = regret_matrix(found, spread)
    sweeps = f"{len(found)} sweep{'' if len(found) == 1 else 's'}"
    md = regret_matrix_markdown(matrix, f"{suite_name}: selection regret of each label-free criterion over {sweeps} "
                                "(mIoU points below the target-val oracle's pick; reporting only)")
    md += ("\nval range: the spread of target-val mIoU over a sweep's values (the most a pick can lose). †: criteria "
           "whose importance weights were degenerate in that sweep (its sweep.md says where).\n")
    if duplicates:
        md += ("\nLeft out, the same trials as a newer sweep (same values, seeds and target-val mIoU; e.g. one study "
               "run under two names): " + "; ".join(f"`{d}` (as `{k}`)" for d, k in duplicates.items()) + ".\n")
    paths = {"md": root / "regret_summary.md", "csv": root / "regret_summary.csv"}
    paths["md"].write_text(md)
    matrix.to_csv(paths["csv"])
    return md, paths


def _trial_signature(sweep_dir: Path) -> tuple | None:
    """What a sweep measured: its (value, seed, target-val mIoU) rows from trials.csv, or (value, mIoU) from
    sweep.csv where there is no trials.csv; None when neither holds them."""
    for name, keys in (("trials.csv", ["value", "seed"]), ("sweep.csv", None)):
        path = sweep_dir / name
        if not path.exists():
            continue
        frame = pd.read_csv(path)
        cols = (keys or [frame.columns[0]]) + ["mIoU"]
        if set(cols) <= set(frame.columns):
            frame = frame[cols].assign(mIoU=frame["mIoU"].round(6))
            return tuple(sorted(map(tuple, frame.astype(str).to_numpy().tolist())))
    return None


def _same_trials(root: Path, names: list[str]) -> dict[str, str]:
    """Sweeps that repeat another's trials → {left out: kept}; of each group the newest regret.csv is kept, so a
    study run again under a new name (the same stages, served from the cache) counts once in the summary."""
    groups: dict[tuple, list[str]] = {}
    for name in names:
        sig = _trial_signature(root / name)
        if sig:
            groups.setdefault(sig, []).append(name)
    left_out = {}
    for group in groups.values():
        newest = max(group, key=lambda n: ((root / n / "regret.csv").stat().st_mtime, n))
        left_out.update({n: newest for n in group if n != newest})
    return left_out
