"""Tables, plots and ``report.md`` for one suite invocation, built from MLflow (the one source of truth)."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pandas as pd

from bench.ablations import ablation_tables, paper_names
from bench.data.labels import CLASS_NAMES, SUBSETS
from bench.live_log import warn

STATUS_OK = ("done", "cached")
REFERENCE_METHOD = "source_only"  # every results table's differences are taken from this row


def published_rows(suite: dict, target: str) -> tuple[pd.DataFrame | None, str]:
    """The papers' published rows the suite puts beside ours for ``target`` → (frame or None, note)."""
    from bench.paper_rows import load_paper_rows

    spec = suite.get("paper") or {}
    bench_name = (spec.get("targets") or {}).get(target, spec.get("benchmark"))
    if not bench_name:
        return None, ""
    rows = load_paper_rows(bench_name)
    wanted = spec.get("rows", "all")
    if wanted != "all":
        label = rows["paper"] + ":" + rows["row"]
        missing = sorted(set(wanted) - set(label))
        if missing:
            raise KeyError(f"suite paper.rows {missing} are not transcribed for {bench_name}; "
                           f"valid: {sorted(label)}")
        rows = rows[label.isin(wanted)].set_index(label[label.isin(wanted)]).loc[wanted].reset_index(drop=True)
    names = paper_names()
    rows = rows.assign(paper=rows["paper"].map(lambda k: names.get(k, k)))
    note = spec.get("note", f"published {bench_name} rows")
    return rows, note


def recorded_protocols(results: list[dict], experiments) -> dict[str, str]:
    """Row name → the evaluation protocol its numbers were computed under: the one the experiment run recorded
    (MLflow tag ``protocol``, the eval stage's ``params["protocol"]``); a record from before the tag falls back to
    the planned eval stage of the same method, variant, target and seed. Not the suite's ``evaluation``: a method
    may state its own protocol (``eval_protocol``)."""
    from bench.tables import row_name

    planned = {(e.method, e.variant or "", e.target or "", e.seed): e.eval.stage.params["protocol"]
               for e in experiments}
    out: dict[str, str] = {}
    for r in results:
        where = (r["method"], r.get("variant") or "", r.get("target") or "", int(r["seed"]))
        protocol = r.get("protocol") or planned.get(where)
        if protocol:
            out.setdefault(row_name(r["method"], r.get("variant")), protocol)
    return out


def protocol_words(protocols: dict[str, str], fallback: str = "B") -> str:
    """``B`` when every row shares one protocol; else the most common one, then each other with its rows:
    ``B; ms for cag_uda (ms)``. ``fallback`` when nothing was recorded."""
    rows_of: dict[str, list[str]] = {}
    for row, protocol in protocols.items():
        rows_of.setdefault(protocol, []).append(row)
    if not rows_of:
        return fallback
    main, *others = sorted(rows_of, key=lambda p: -len(rows_of[p]))  # stable: ties keep the first seen
    return "; ".join([main] + [f"{p} for {', '.join(rows_of[p])}" for p in others])


def table_title(suite: dict, target: str, subset: str, protocols: dict[str, str], seeds=None) -> str:
    """A results table's caption; ``protocols`` (row → protocol, ``recorded_protocols``) names what it shows,
    ``seeds`` the seeds its rows have (an interim report's: fewer than the suite's)."""
    ev = suite.get("evaluation") or {}
    shown = sorted(seeds) if seeds is not None else list(suite["seeds"])
    over = f"{shown}" if shown == sorted(suite["seeds"]) else f"{shown} (of the suite's {list(suite['seeds'])})"
    where = f" ({target})" if target else ""
    star = "; mIoU* = 13-class mean of the same confusion matrix" if subset == "16" else ""
    return (f"{suite['name']}{where}: per-class IoU (%), {subset} classes, protocol "
            f"{protocol_words(protocols, ev.get('protocol', 'B'))}, "
            f"final iterate; ours = mean±std over seeds {over}{star}")


def curve_labels(experiments) -> dict:
    """One label per unique train stage (cache key) of the smallest seed: the stage's name, ``#k`` when an
    experiment runs a stage of that name several times (CAG-UDA's stages), and ``[first user]`` when several
    stages share a label (the same stage name with another config)."""
    from bench.tables import row_name

    seed = min(e.seed for e in experiments)
    labels, users = {}, {}
    for e in (e for e in experiments if e.seed == seed):
        names = [ps.name for ps in e.stages if ps.stage.kind == "train"]
        seen: dict = {}
        for ps in (ps for ps in e.stages if ps.stage.kind == "train"):
            seen[ps.name] = seen.get(ps.name, 0) + 1
            if ps.key not in labels:
                labels[ps.key] = ps.name + (f" #{seen[ps.name]}" if names.count(ps.name) > 1 else "")
                users[ps.key] = row_name(e.method, e.variant)
    repeated = {x for x in labels.values() if list(labels.values()).count(x) > 1}
    return {k: f"{x} [{users[k]}]" if x in repeated else x for k, x in labels.items()}


def _curves(experiments, outcomes, cache_root: Path) -> dict:
    from bench.stage_exec import read_metrics

    curves = {}
    for key, label in curve_labels(experiments).items():
        if outcomes[key].status not in STATUS_OK:
            continue
        rows = [r for r in read_metrics(cache_root / key) if "loss/segmenter" in r]
        if rows:
            curves[label] = pd.DataFrame({"step": [r["step"] for r in rows],
                                          "value": [r["loss/segmenter"] for r in rows]})
    return curves


def _qualitative(experiments, outcomes, cache_root: Path, specs: dict, path: Path) -> list[Path]:
    """Image, GT and each method's prediction (seed = the smallest) for the saved val images, named as in the
    tables, at most 8 methods per figure."""
    from PIL import Image

    from bench.plots import qualitative_figures
    from bench.tables import row_name

    seed = min(e.seed for e in experiments)
    exps = [e for e in experiments if e.seed == seed and not e.target and outcomes[e.eval.key].status in STATUS_OK]
    if not exps:
        return []
    qdir = cache_root / exps[0].eval.key / "qualitative"
    n = len(list(qdir.glob("*.png")))
    if n == 0:
        return []
    from bench.stage_exec import StageContext

    ds = StageContext(cache_root, seed, specs, {}).dataset("target_val")
    pairs = [ds.raw(i) for i in range(n)]
    images, gts = [p[0] for p in pairs], [p[1] for p in pairs]
    preds = {}
    for e in exps:
        d = cache_root / e.eval.key / "qualitative"
        preds[row_name(e.method, e.variant)] = [np.asarray(Image.open(d / f"{i:02d}.png")) for i in range(n)]
    return replace_figures(path, lambda: qualitative_figures(images, gts, preds, path))


def replace_figures(path: Path, write) -> list[Path]:
    """Run ``write()`` (→ the figures it wrote, ``path`` or its ``_k`` siblings), then delete a previous
    invocation's leftovers. Overwriting first means no figure vanishes while another run of the suite on the same
    results root is logging it to MLflow."""
    old = set(path.parent.glob(f"{path.stem}*{path.suffix}"))
    written = write()
    for stale in old - set(written):
        stale.unlink(missing_ok=True)
    return written


def per_image_lookup(results: list[dict], experiments, cache_root: Path) -> dict:
    """``(row name, seed) → (matrices [N, C, C], image ids)`` from each result's eval stage directory, or None
    where that stage predates per-image matrices. The directory is the MLflow run's ``cache_key`` tag; a result
    without one (an older record) falls back to the planned experiment with the same method, variant, target and
    seed."""
    from bench.metrics import PER_IMAGE_FILE, load_per_image
    from bench.tables import row_name

    planned = {(e.method, e.variant or "", e.target or "", e.seed): e.eval.key for e in experiments}
    out = {}
    for r in results:
        key = r.get("cache_key") or planned.get((r["method"], r.get("variant") or "", r.get("target") or "",
                                                 int(r["seed"])))
        path = Path(cache_root) / key / PER_IMAGE_FILE if key else None
        out[(row_name(r["method"], r.get("variant")), int(r["seed"]))] = (
            load_per_image(path) if path is not None and path.is_file() else None)
    return out


def log_per_image(tracker, results: list[dict], experiments, cache_root: Path) -> int:
    """Each experiment run gets its eval stage's per-image matrices as the artifact ``eval/<file>``; returns how
    many were logged (stages without the file are skipped)."""
    from bench.metrics import PER_IMAGE_FILE

    planned = {(e.method, e.variant or "", e.target or "", e.seed): e.eval.key for e in experiments}
    n = 0
    for r in results:
        key = r.get("cache_key") or planned.get((r["method"], r.get("variant") or "", r.get("target") or "",
                                                 int(r["seed"])))
        path = Path(cache_root) / key / PER_IMAGE_FILE if key else None
        if path is not None and path.is_file() and r.get("run_id"):
            tracker.log_artifact(r["run_id"], path, "eval")
            n += 1
    return n


def difference_lines(diffs: dict, reference: str) -> list[str]:
    """The report's words under a results table: every row against the reference, distinguishable or not."""
    from bench.stats import LEVEL
    from bench.tables import verdict_lines

    lines = verdict_lines(diffs, reference)
    head = f"Differences from {reference} ({100 * LEVEL:g} % paired bootstrap over images and seeds):"
    return [head, "", *lines, ""] if lines else []


def _code(text: str) -> str:
    """A Markdown code span around ``text`` that may hold backticks (a longer fence, padded when needed)."""
    fence = "`" * (max((len(r) for r in re.findall("`+", text)), default=0) + 1)
    pad = " " if text.startswith("`") or text.endswith("`") else ""
    return f"{fence}{pad}{text}{pad}{fence}"


def ledger_rows(experiments) -> list[tuple[str, list[tuple]]]:
    """Per method (variant), once: ``(name, [(setting, value, source, default or None, note)])``, from
    ``methods.base.provenance``; an overridden setting shows its default and that default's source (the
    provenance of the method's default Config)."""
    from methods.base import provenance

    out, seen = [], set()
    for e in experiments:
        name = e.method + (f" ({e.variant})" if e.variant else "")
        if name in seen:
            continue
        seen.add(name)
        defaults = provenance(type(e.config)())  # every Config field has a default (the paper's)
        rows = []
        for setting, (value, src, note) in provenance(e.config).items():
            default, default_src, _ = defaults[setting]
            rows.append((setting, value, default_src, default if src == "override" else None, note))
        out.append((name, rows))
    return out


def ledger_lines(experiments) -> list[str]:
    """The fidelity ledger: every setting of every method (variant), its source, and the method's default
    (with that default's source) wherever the suite overrides it. Every cell is escaped (``md_cell``): notes
    quote code and formulas with ``|`` in them."""
    from bench.table_render import md_cell

    lines = []
    for name, rows in ledger_rows(experiments):
        lines += [f"### {md_cell(name)}", "", "| setting | value | source | method default (its source) | note |",
                  "|---|---|---|---|---|"]
        for setting, value, src, default, note in rows:
            shown = _code(json.dumps(value, default=str))
            where, dflt = (src, "") if default is None else (
                "suite override", f"{_code(json.dumps(default, default=str))} ({src})")
            lines.append("| " + " | ".join(md_cell(c) for c in (setting, shown, where, dflt, note)) + " |")
        lines.append("")
    return lines


def write_outputs(suite, uri, invocation, out_dir: Path, experiments, outcomes, env, summary, wall_seconds,
                  tracker=None, cache_root: Path | None = None, note: str = "", interim_seeds=None) -> dict:
    """Tables (+ paper rows), plots and ``report.md`` under ``out_dir``; logged as the invocation's artifacts.
    ``note``: a paragraph under the title. ``interim_seeds``: a report written while the run goes on, of those
    seeds' results only (every row the same seeds, so paired intervals hold), neither logged nor timed."""
    from bench.tracking import load_results

    out_dir = Path(out_dir)
    cache_root = Path(cache_root or out_dir.parent / "cache")
    (out_dir / "tables").mkdir(parents=True, exist_ok=True)
    (out_dir / "plots").mkdir(parents=True, exist_ok=True)
    results, _ = load_results(uri, suite["name"], invocation)
    if interim_seeds is not None:
        results = [r for r in results if r["seed"] in interim_seeds]
    md = [f"# {suite['name']}", "", *([note, ""] if note else []), suite.get("description", ""), ""]
    md += ["## Results", ""]
    for target in list(suite.get("targets") or {"": {}}):
        md += target_results(suite, target, results, experiments, out_dir, cache_root)
    md += figure_sections(suite, experiments, outcomes, out_dir, cache_root)
    if tracker is not None:
        write_timings(out_dir / TIMINGS, outcomes, summary, wall_seconds)
    elif interim_seeds is None:  # bench table: the run's recorded timings (an interim report shows those so far)
        outcomes, summary, wall_seconds = recorded_timings(uri, invocation, outcomes, summary, wall_seconds)
    md += protocol_lines(suite, recorded_protocols(results, experiments))
    md += timing_lines(experiments, outcomes, summary, wall_seconds)
    md += ["## Fidelity ledger", ""] + ledger_lines(experiments)
    md += ["## Environment", ""] + [f"- {k}: {v}" for k, v in env.items()] + [""]
    md += [f"MLflow: `{uri}`, invocation run `{invocation}` (`bench ui` to browse).", ""]
    report = out_dir / "report.md"
    report.write_text("\n".join(md))
    if tracker is not None:
        log_per_image(tracker, results, experiments, cache_root)
        log_outputs(tracker, invocation, out_dir)
    return {"results": results, "path": report}


def target_results(suite, target: str, results: list[dict], experiments, out_dir: Path, cache_root: Path) -> list[str]:
    """The report's results for one target: a table (and its plot, differences, ablations) per class subset."""
    subsets = (suite.get("evaluation") or {}).get("subsets", ["19"])
    rs = in_suite_order([r for r in results if r["target"] == target and f"miou_{subsets[0]}" in r], experiments)
    if not rs:
        return [f"No finished experiment for {target or 'this suite'}.", ""]
    per_image = per_image_lookup(rs, experiments, cache_root)
    protocols = recorded_protocols(rs, experiments)
    md: list[str] = []
    for subset in subsets:
        md += subset_results(suite, target, subset, rs, per_image, protocols, out_dir)
    return md


def in_suite_order(results: list[dict], experiments) -> list[dict]:
    """Results in the suite's row order (its methods, each followed by its variants; seeds ascending), not in the
    order the runs finished and were logged; rows the plan does not know come last."""
    order: dict[tuple, int] = {}
    for e in experiments:
        order.setdefault((e.method, e.variant or ""), len(order))
    return sorted(results, key=lambda r: (order.get((r["method"], r.get("variant") or ""), len(order)), r["seed"]))


def subset_results(suite, target: str, subset: str, rs: list[dict], per_image: dict, protocols: dict,
                   out_dir: Path) -> list[str]:
    """One results table (ours beside the papers', differences from the reference row), its files and plot."""
    from bench.plots import per_class_heatmap
    from bench.table_render import write_tables
    from bench.tables import add_differences, comparison_frame, per_class_frame, row_differences

    ours = per_class_frame(rs, subset)
    paper, note = published_rows(suite, target)
    classes = [CLASS_NAMES[c] for c in SUBSETS[subset]]
    extra = ("mIoU", "mIoU*") if subset == "16" else ("mIoU",)
    frame = comparison_frame(ours, paper, classes, extra)
    diffs = None
    plain = ours["variant"].fillna("") == "" if "variant" in ours.columns else True
    if ((ours["method"] == REFERENCE_METHOD) & plain).any():
        diffs = row_differences(ours, per_image, REFERENCE_METHOD, classes=subset)
        frame = add_differences(frame, diffs, REFERENCE_METHOD)
    stem = f"per_class_{subset}" + (f"_{target}" if target else "")
    seeds = sorted(int(x) for x in ours["seed"].unique())
    paths = write_tables(frame, out_dir / "tables", stem, table_title(suite, target, subset, protocols, seeds))
    print(paths["txt"].read_text())
    bars = per_class_heatmap(frame, classes, out_dir / "plots" / f"{stem}.png", extra=extra,
                             title=f"{suite['name']} {target}: IoU (%), {subset} classes; ours: mean over "
                             f"seeds {seeds}")
    md = [paths["md"].read_text(), ""]
    if diffs is not None:
        md += difference_lines(diffs, REFERENCE_METHOD)
    if note:
        md += [f"Paper rows: {note}.", ""]
    md += [f"![per-class IoU](plots/{bars.name})", "",
           f"Files: `tables/{stem}.tex` (booktabs), `.md`, `.csv`.", ""]
    if "variant" in ours.columns:
        md += ablation_tables(suite, ours, subset, out_dir, note, per_image=per_image)
    return md


def figure_sections(suite, experiments, outcomes, out_dir: Path, cache_root: Path) -> list[str]:
    """The training curves and the qualitative figures (a failed figure is a line in the report, not an error)."""
    from bench.plots import training_curves
    from bench.suite_plan import dataset_specs

    md: list[str] = []
    curves = _curves(experiments, outcomes, cache_root)
    if curves:
        p = training_curves(curves, out_dir / "plots" / "training_curves.png", "segmenter loss (seed "
                            f"{min(e.seed for e in experiments)})", "loss")
        md += ["## Training curves", "", f"![curves](plots/{p.name})", ""]
    try:
        qs = _qualitative(experiments, outcomes, cache_root, dataset_specs(suite),
                          out_dir / "plots" / "qualitative.png")
    except Exception as err:  # noqa: BLE001 - a plot must not lose the run's numbers
        qs, md = [], md + [f"(qualitative figure failed: {err})", ""]
    if qs:
        md += ["## Qualitative (target val)", "", *[f"![qualitative](plots/{q.name})" for q in qs], ""]
    return md


def write_timings(path: Path, outcomes, summary, wall_seconds) -> None:
    """The invocation's timings (each stage's status and seconds), for ``bench table`` to show them later."""
    path.write_text(json.dumps({"wall_seconds": wall_seconds, "summary": list(summary), "stages": {
        k: [o.status, o.seconds] for k, o in outcomes.items()}}, indent=1))


def log_outputs(tracker, invocation: str, out_dir: Path) -> None:
    """The report, timings, tables and plots as the invocation run's artifacts."""
    files = [out_dir / "report.md", out_dir / TIMINGS, *sorted((out_dir / "tables").iterdir()),
             *sorted((out_dir / "plots").iterdir())]
    for p in files:
        try:
            tracker.log_artifact(invocation, p, None if p.parent == out_dir else p.parent.name)
        except FileNotFoundError as e:  # another run of the suite on this results root dropped it meanwhile
            warn(f"{p} (another run of this suite on the same results root removed it; that run logs its own)", e)


def protocol_lines(suite, protocols: dict[str, str] | None = None) -> list[str]:
    """The report's protocol section; the evaluation protocol as recorded with the numbers (``protocols``: row →
    protocol, ``recorded_protocols``), the suite's when nothing was recorded."""
    ev = suite.get("evaluation") or {}
    return ["## Protocol", "",
            f"- evaluation protocol {protocol_words(protocols or {}, ev.get('protocol', 'B'))} (see "
            f"bench/protocols.py), subsets {ev.get('subsets')}",
            "- model selection: final iterate (never the best checkpoint on target val)",
            f"- seeds: {suite['seeds']}",
            "- datasets: " + "; ".join(f"{d}: {s['name']} {s.get('split', '')} at {s['root']}"
                                        for d, s in suite["datasets"].items()),
            f"- train settings: {json.dumps(suite.get('train', {}))}", ""]


TIMINGS = "timings.json"  # logged with the invocation's artifacts; bench table reads it back


def recorded_timings(uri, invocation, outcomes, summary, wall_seconds):
    """``(outcomes, summary, wall_seconds)`` as the invocation recorded them in its ``timings.json`` artifact
    (each stage's status and seconds), or the given ones when it has none (a run from before the file)."""
    import copy
    import tempfile

    from mlflow.tracking import MlflowClient

    try:
        with tempfile.TemporaryDirectory() as tmp:
            rec = json.loads(Path(MlflowClient(uri).download_artifacts(invocation, TIMINGS, tmp)).read_text())
    except Exception:  # noqa: BLE001 - no record: keep what the caller has
        return outcomes, summary, wall_seconds
    outcomes = {k: copy.copy(o) for k, o in outcomes.items()}
    for k, (status, seconds) in rec["stages"].items():
        if k in outcomes:
            outcomes[k].status, outcomes[k].seconds = status, seconds
    return outcomes, [*rec["summary"], "(re-rendered by bench table: timings as recorded by the run)"], \
        rec["wall_seconds"]


def timing_lines(experiments, outcomes, summary, wall_seconds) -> list[str]:
    requested = sum(len(e.stages) for e in experiments)
    ran = [o for o in outcomes.values() if o.status == "done"]
    hits = [o for o in outcomes.values() if o.status == "cached"]
    saved_dedup = sum(outcomes[ps.key].result.get("stage_seconds", 0.0) for e in experiments for ps in e.stages
                      if outcomes[ps.key].status in STATUS_OK) - sum(
        o.result.get("stage_seconds", 0.0) for o in outcomes.values() if o.status in STATUS_OK)
    lines = ["## Timings and cache", "",
             f"- wall time of this invocation: {wall_seconds:.0f} s",
             f"- {requested} stage requests from {len(experiments)} experiments → {len(outcomes)} unique stages: "
             f"{len(ran)} computed ({sum(o.seconds for o in ran):.0f} s of stage time), {len(hits)} from the cache",
             f"- stage time saved by sharing stages between experiments: {saved_dedup:.0f} s; by cache hits: "
             f"{sum(o.result.get('stage_seconds', 0.0) for o in hits):.0f} s", ""]
    lines += ["| stage | first used by | status | seconds | key |", "|---|---|---|---|---|"]
    seen = set()
    for e in experiments:
        for ps in e.stages:
            if ps.key in seen:
                continue
            seen.add(ps.key)
            o = outcomes[ps.key]
            lines.append(f"| {ps.name} | {e.label} | {o.status} | {o.result.get('stage_seconds', 0.0):.1f} | "
                         f"`{ps.key}` |")
    lines += ["", "```", *summary, "```", ""]
    return lines

