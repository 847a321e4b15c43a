"""Parameter studies on Ray Tune (``bench sweep``): the papers' sensitivity analyses, re-run with the stage cache,
as a search that never looks at target val.

A sweep is one method of a suite, one swept config key (a list, or a range: ``bench.sweep_space``) and the suite's
seeds (or ``seed=…``). Every trial is the method's stage graph with the swept value; stages whose key is the same
for every value (everything upstream of the swept parameter) run once, first, through the suite scheduler; then a
Ray Tune ``Tuner`` (``bench.sweep_tune``: grid, seeded random or Optuna; one trial per value, its seeds inside)
runs each value's own tail of stages through the same cache, so a trial that failed resumes from its stages'
checkpoints. Each trial reports target-val mIoU (for the record), the held-out target-train mIoU (``holdout``) and
every label-free criterion of ``bench.selection`` (the ``select`` stage, ``bench.select_stage``); the search
optimises one of the last two. The driver records a sweep run in MLflow with a nested run per (value, seed) and
writes the tables — including the selection regret — and the plot (``bench.sweep_report``).
"""

from __future__ import annotations

import time
from pathlib import Path

from bench.paths import REPO
from bench.suite_runner import SUITE_KEYS, SuiteError, ensure_data, load_suite
from bench.sweep_space import Space, parse_space
from bench.sweep_trials import Trial, plan_trials
from methods.base import Study


def all_studies() -> dict[str, Study]:
    """The registered methods' studies by name (each method declares its own: ``methods.base.Method.studies``)."""
    from methods.base import studies

    return studies()


HOLDOUT = {"fraction": 0.2, "seed": 0, "part": "held"}


def parse_axes(study_or_method: str, assignments) -> tuple[Study, Space, list | None, list[str]]:
    """(study, search space of the swept key, seeds or None, suite overrides) from the CLI words: ``key=a,b,c`` or
    ``key=uniform(lo,hi)`` (no dot; ``bench.sweep_space``) is the swept method key, ``seed=…`` the seeds, dotted
    ``a.b=…`` or a top-level suite key a suite override (as for ``bench run``)."""
    from methods.base import method_names

    axes, seeds, overrides = {}, None, []
    for word in assignments:
        if "=" not in word:
            raise SuiteError(f"sweep argument {word!r} is not key=value")
        key, raw = word.split("=", 1)
        if "." in key or key in SUITE_KEYS:
            overrides.append(word)
        elif key == "seed":
            try:
                seeds = [int(x) for x in raw.split(",")]
            except ValueError:
                raise SuiteError(f"seed={raw}: seeds are integers, e.g. seed=0,1,2") from None
        else:
            axes[key] = parse_space(key, raw)
    known = all_studies()
    if study_or_method in known:
        study = known[study_or_method]
        if len(axes) > 1 or (axes and study.param not in axes):
            raise SuiteError(f"study {study_or_method} sweeps {study.param}; got axes {sorted(axes)}")
        space = axes.get(study.param, Space(study.param, "grid", tuple(study.values)))
    elif study_or_method in method_names():
        if len(axes) != 1:
            raise SuiteError(f"an ad-hoc sweep of {study_or_method} needs exactly one key=v1,v2,… (got "
                             f"{sorted(axes) or 'none'}), e.g. `bench sweep cag_uda delta_d=0.5,1,1.5`")
        (param, space), = axes.items()
        # the label stage the method's own studies report, so an ad-hoc sweep shows its PL ratio and precision too
        label = next((s.label_stage for s in known.values() if s.method == study_or_method and s.label_stage), None)
        study = Study(study_or_method, param, space.args if not space.is_range else (), label_stage=label)
    else:
        raise SuiteError(f"unknown study or method {study_or_method!r}; studies: {sorted(known)}, methods: "
                         f"{method_names()}")
    return study, space, seeds, overrides


def suite_study(suite: dict, name: str) -> tuple[list | None, dict]:
    """(values, settings) the suite gives a named study: ``studies: {name: [v, …]}`` or ``studies: {name: {values:
    [v, …], set: {key: value}}}`` (both optional in the mapping form)."""
    entry = (suite.get("studies") or {}).get(name)
    if isinstance(entry, dict):
        return entry.get("values"), dict(entry.get("set") or {})
    return entry, {}


def suite_space(suite: dict, name: str, space: Space, assignments) -> Space:
    """A named study's values from the suite (e.g. BiSMAP's δ in the log-density units of MiniCity's features,
    where the paper's δ = 0–150 labels nothing) unless the command line gave some."""
    values, _ = suite_study(suite, name)
    given = any(word.split("=", 1)[0] == space.key for word in assignments)
    return Space(space.key, "grid", tuple(values)) if values and not given else space


def suite_settings(suite: dict, name: str, study: Study, assignments) -> Study:
    """``study`` with the suite's ``set`` for it added to its fixed settings (e.g. the δ of the MAPs labels the STM
    needs in BiSMAP's CAs studies, in MiniCity's units); ``methods.<method>.<key>=…`` on the command line wins."""
    import dataclasses

    _, settings = suite_study(suite, name)
    given = {word.split("=", 1)[0] for word in assignments}
    settings = {k: v for k, v in settings.items() if f"methods.{study.method}.{k}" not in given}
    return dataclasses.replace(study, fixed={**study.fixed, **settings}) if settings else study


def shared_stages(trials: list[Trial]) -> dict:
    """Stages that more than one trial needs (the common upstream of the swept parameter): key → PlannedStage.
    Their own upstream stages are shared too, so the result is closed under dependencies."""
    count: dict[str, int] = {}
    first: dict = {}
    for t in trials:
        for ps in t.stages:
            count[ps.key] = count.get(ps.key, 0) + 1
            first.setdefault(ps.key, ps)
    return {k: first[k] for k in first if count[k] > 1}


def _prepare(seeds, suite, holdout: bool) -> tuple[dict, dict, list]:
    """(dataset specs, key specs, seeds) of the suite's one target, with the held-out part of target train."""
    from bench.suite_plan import dataset_specs

    fingerprints = ensure_data(suite)
    if len(fingerprints) != 1:
        raise SuiteError(f"suite {suite['name']} has several targets; sweep one suite target at a time")
    (target, fps), = fingerprints.items()
    specs = dataset_specs(suite, target)
    if holdout:
        specs["target_holdout"] = {**specs["target_train"], "labels": True, "holdout": HOLDOUT}
        fps = {**fps, "target_holdout": {"spec": {**fps["target_train"]["spec"], "holdout": HOLDOUT},
                                         "fingerprint": fps["target_train"]["fingerprint"] + ":holdout"}}
    return specs, fps, seeds if seeds is not None else list(suite["seeds"])


def _run_shared(probes, train, cache_root, executor, gpu_share):
    """The stages every trial needs (found from the probe values' plans), once, through the suite scheduler."""
    from bench.scheduler import Scheduler

    common = shared_stages(probes)
    specs_by_key = {ps.key: t.specs for t in probes for ps in t.stages}
    outcomes = Scheduler(common, {k: specs_by_key[k] for k in common}, train, cache_root, executor=executor,
                         gpu_share=gpu_share).run()
    failed = ([o for o in outcomes.values() if o.status == "failed"]  # the cause, not the stages it skipped
              or [o for o in outcomes.values() if o.status == "skipped"])
    if failed:
        from bench.sweep_tune import SweepFailed

        reasons = "; ".join(f"{o.name}: {o.error}" for o in failed)
        raise SweepFailed(f"a stage every value shares failed, so no trial can run: {reasons}. The stages that ran "
                          "are kept in the cache; fix the setting it names and rerun")
    return common, outcomes


def _search(planner, space, search, num_samples, metric, mode, search_seed, executor, results_root, probes):
    """→ Tune's ResultGrid dataframe (or, with the local executor, the same columns from in-process trials)."""
    import pandas as pd

    from bench.sweep_tune import run_value, search_setup, tune_values

    if executor != "ray":
        if search != "grid":
            raise SuiteError(f"--search {search} runs on Ray Tune; drop --executor local")
        search_setup(space, "grid", num_samples, search_seed)  # the same checks as on Ray
        return pd.DataFrame([{"trial_id": f"local_{i}", f"config/{space.key}": v, **run_value(planner, v)}
                             for i, v in enumerate(space.args)])
    from bench.scheduler import init_ray

    cluster = init_ray()
    cpu, gpu = trial_resources(probes, cluster, (planner.suite.get("resources") or {}).get("gpu"))
    slots = int(cluster.get("CPU", 1) // max(cpu, 1)) if gpu == 0 else int(cluster.get("GPU", 0) // gpu)
    grid = tune_values(planner, space, search, num_samples, metric, mode, search_seed, (cpu, gpu), slots,
                       results_root / "ray_tune")
    return grid.get_dataframe()


def run_sweep(study_or_method: str, suite_name: str = "minicity", assignments=(), results_root: Path | None = None,
              holdout: bool = False, executor: str = "ray", tracking_uri: str | None = None, metric: str = "snd",
              mode: str | None = None, search: str = "grid", num_samples: int | None = None,
              search_seed: int = 0) -> dict:
    """Run a study as a Tune search on ``metric`` (label-free; ``bench.sweep_tune``); returns ``{"frame", "paths",
    "trials", "shared", "seconds", "tracking_uri", "sweep_run", "search", "best", "regret", "computed"}``."""
    from bench.sweep_report import record_sweep
    from bench.sweep_tune import Planner, check_some_trial_finished, resolve_metric, search_frame

    t0 = time.perf_counter()
    study, space, seeds, overrides = parse_axes(study_or_method, assignments)
    metric, mode = resolve_metric(metric, mode, holdout)
    space.check(search)  # a range under a grid fails here, before any stage
    suite = load_suite(suite_name, overrides)
    space = suite_space(suite, study_or_method, space, assignments)
    study = suite_settings(suite, study_or_method, study, assignments)
    results_root = Path(results_root or REPO / "results").resolve()
    cache_root = results_root / "cache"
    specs, fps, seeds = _prepare(seeds, suite, holdout)
    probes = plan_trials(suite, study, space.probes(), seeds, specs, fps, holdout)
    train = dict(suite.get("train") or {})
    gpu_share = (suite.get("resources") or {}).get("gpu")
    if executor == "ray":
        from bench.scheduler import init_ray

        trial_resources(probes, init_ray(), gpu_share)  # over-asking stops before any stage runs
    kind = space.kind if search == "grid" or space.is_range else "choice"  # a list is drawn from, not gridded
    print(f"sweep {study.method}.{study.param} ({search}: {kind} {list(space.args)}) × seeds {seeds}, "
          f"optimising {metric} ({mode})")
    common, outcomes = _run_shared(probes, train, cache_root, executor, gpu_share)
    shared_seconds = time.perf_counter() - t0
    planner = Planner(suite, study, seeds, specs, fps, holdout, train, str(cache_root))
    table = search_frame(_search(planner, space, search, num_samples, metric, mode, search_seed, executor,
                                 results_root, probes), study.param, metric, mode)
    check_some_trial_finished(table, study.param, metric)
    values = list(dict.fromkeys(table[study.param].tolist()))  # a random search may draw a value twice
    values = [v for v in space.args if v in values] if search == "grid" else values
    trials = plan_trials(suite, study, values, seeds, specs, fps, holdout)
    first = {}
    for r in table.to_dict("records"):
        first.setdefault(r[study.param], r)
    computed = {t.index: int(first[t.value][f"computed_seed{t.seed}"]) for t in trials}
    out = record_sweep(suite, study, trials, cache_root, results_root, tracking_uri,
                       wall_seconds=time.perf_counter() - t0, shared_seconds=shared_seconds,
                       search={"table": table, "metric": metric, "mode": mode, "kind": search})
    return {**out, "trials": trials, "shared": common, "shared_outcomes": outcomes, "computed": computed,
            "seconds": time.perf_counter() - t0}


def trial_resources(trials, cluster: dict, gpu_share=None) -> tuple[float, float]:
    """(cpus, gpus) per Tune trial: the heaviest stage's, or the suite's ``resources.gpu`` share; raises
    ``ResourceError`` when the cluster cannot hold one trial (Tune would otherwise wait forever, silently)."""
    import dataclasses

    from bench.scheduler import stage_resources

    heaviest = max((ps for t in trials for ps in t.stages), key=lambda ps: ps.stage.gpu)
    if gpu_share is not None:
        heaviest = dataclasses.replace(heaviest, stage=dataclasses.replace(heaviest.stage, gpu=float(gpu_share)))
    return stage_resources(heaviest, cluster)


def paper_tables(study: Study) -> str:
    """Where the study's published points come from, e.g. ``bismap Table 5 (CAs-PLA)``; "–" when unpublished."""
    specs = {"": study.paper, **(study.paper_by_source or {})}
    parts = [f"{p[0]} Table {p[1]} ({p[2]})" + (f" with a {src} source" if src else "")
             for src, p in specs.items() if p]
    return "; ".join(parts) or "–"


def list_studies(suite: dict | None = None) -> str:
    """``bench sweep --list [SUITE]``: every named study with its method, parameter, values, fixed settings and paper
    table; with a suite, the values and settings it gives a study (``studies:``), which its sweeps use."""
    lines = []
    for name, s in all_studies().items():
        fixed = f"  fixed: {s.fixed}" if s.fixed else ""
        lines += [f"{name}: {s.method}.{s.param} = {', '.join(str(v) for v in s.values)}{fixed}",
                  f"    paper: {paper_tables(s)}"] + ([f"    note: {s.note}"] if s.note else [])
        values, settings = suite_study(suite or {}, name)
        if values or settings:
            own = ([f"{s.param} = {', '.join(str(v) for v in values)}"] if values else []) + \
                ([f"set: {settings}"] if settings else [])
            lines.append(f"    in {suite['name']}: {'; '.join(own)}")
    return "\n".join(lines)
