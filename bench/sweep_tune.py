"""A sweep's search on Ray Tune: one Tune trial per swept value (all the sweep's seeds run inside it, in turn, and
it reports their means), a grid, a seeded random search or Optuna's TPE over the value, and the metric the search
optimises — a label-free criterion or the held-out target-train mIoU, never target val.

Each trial plans its own stages from the value it is given (a random or Optuna value is not known in advance) and
runs them through the stage cache, so the upstream stages that the driver ran once are answered from the cache.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from bench.suite_runner import SuiteError

if TYPE_CHECKING:  # pandas only for the annotations: the CLI builds its parser from this module
    import pandas as pd

REPORT_NAMES = {"mIoU": "val_miou", "holdout mIoU": "holdout_miou"}  # sweep-table column → Tune metric
RECORD_ONLY = ("val_miou",)  # reported for the record; a search may never optimise it


@dataclass
class Planner:
    """What a Tune trial needs to plan and run a value's stages (pickled once to the workers)."""

    suite: dict
    study: object
    seeds: list
    specs: dict
    fingerprints: dict
    holdout: bool
    train: dict
    cache_root: str


def metric_names() -> list[str]:
    from bench.selection import CRITERIA

    return [*CRITERIA, "holdout_miou"]


def resolve_metric(metric: str, mode: str | None, holdout: bool) -> tuple[str, str]:
    """(metric, mode): a ``bench.selection`` criterion (mode from its direction) or ``holdout_miou`` (max)."""
    from bench.selection import CRITERIA

    if metric in RECORD_ONLY or metric in ("miou", "mIoU"):
        raise SuiteError(f"--metric {metric}: target-val mIoU is reported for the record only; choosing on it uses "
                         f"test labels. Use one of {', '.join(metric_names())}")
    if metric not in metric_names():
        raise SuiteError(f"--metric {metric!r}: choose one of {', '.join(metric_names())}")
    if metric == "holdout_miou" and not holdout:
        raise SuiteError("--metric holdout_miou needs --holdout (a labelled part of target train held out of it)")
    natural = "max" if metric == "holdout_miou" else CRITERIA[metric][0]
    if mode not in (None, "min", "max"):
        raise SuiteError(f"--mode {mode!r}: use min or max (default for {metric}: {natural})")
    return metric, mode or natural


def run_value(planner: Planner, value) -> dict:
    """Run every seed's stages for ``value`` (cached ones are read back) → the means over seeds of the val
    mIoU, held-out mIoU, criteria and pseudo-label columns, plus ``computed_seed<N>`` (stages not answered by the
    cache)."""
    from bench.stage_exec import execute_stage
    from bench.sweep_report import trial_rows
    from bench.sweep_trials import plan_trials

    trials = plan_trials(planner.suite, planner.study, [value], planner.seeds, planner.specs, planner.fingerprints,
                         planner.holdout)
    out, failed = {}, []
    for t in trials:
        computed = 0
        try:
            for ps in t.all_stages():
                computed += not execute_stage(ps, planner.cache_root, t.specs, planner.train)["cached"]
        except ValueError as e:
            # a value the data cannot support (e.g. a δ that labels no pixel) fails the same way on every rerun:
            # the trial is reported as failed, with the reason, and the other values still run
            failed.append(f"seed {t.seed}: {e}")
            print(f"trial {planner.study.param}={value} seed {t.seed} failed: {e}", flush=True)
        out[f"computed_seed{t.seed}"] = computed
    rows = trial_rows(planner.study, trials, Path(planner.cache_root)).drop(columns=["value", "seed"])
    means = rows.mean(numeric_only=True)
    out.update({REPORT_NAMES.get(k, k.replace(" ", "_").lower()): float(v) for k, v in means.items()})
    out["seeds"] = len(trials)
    if failed:
        out["failed"] = "; ".join(failed)
    return out


def _value_trainable(config, planner):
    from ray import tune

    tune.report(run_value(planner, config[planner.study.param]))


def search_setup(space, search: str, num_samples: int | None, seed: int) -> tuple[dict, object, int]:
    """(param_space, search_alg or None, num_samples) for Tune. ``seed`` fixes a random or Optuna search's draws
    (a random search's sampled values depend on nothing else)."""
    if search == "grid" and num_samples not in (None, 1):
        raise SuiteError("--num-samples is for --search random|optuna; a grid runs each listed value once")
    param_space = {space.key: space.to_tune(search)}
    if search == "grid":
        return param_space, None, 1
    n = 8 if num_samples is None else num_samples
    if n < 1:
        raise SuiteError(f"--num-samples {n}: need at least 1")
    if search == "random":
        from ray.tune.search import BasicVariantGenerator

        return param_space, BasicVariantGenerator(random_state=seed), n
    try:
        import optuna  # noqa: F401
    except ImportError:
        raise SuiteError("--search optuna needs Optuna: pip install optuna (or pip install 'uda-bench[tune]'); "
                         "--search random needs nothing more") from None
    from ray.tune.search.optuna import OptunaSearch

    return param_space, OptunaSearch(seed=seed), n


def run_name(study, search: str) -> str:
    """Tune's experiment folder under ``results/ray_tune``: one per study and search, never shared by two studies of
    one key (their trials and experiment state would mix when both run)."""
    return f"sweep-{study.slug}-{search}"


def tune_values(planner: Planner, space, search: str, num_samples: int | None, metric: str, mode: str,
                seed: int, resources: tuple[float, float], slots: int, storage: Path):
    """Run the search; → Tune's ``ResultGrid`` (raises when a trial failed: rerunning resumes it from the cache)."""
    from ray import tune
    from ray.tune import RunConfig, TuneConfig, Tuner

    param_space, alg, n = search_setup(space, search, num_samples, seed)
    # Optuna's next suggestion depends on the results it has: one trial at a time keeps a seeded search repeatable
    concurrent = 1 if search == "optuna" else max(1, slots)
    fn = tune.with_parameters(_value_trainable, planner=planner)
    tuner = Tuner(tune.with_resources(fn, {"cpu": resources[0], "gpu": resources[1]}), param_space=param_space,
                  tune_config=TuneConfig(metric=metric, mode=mode, search_alg=alg, num_samples=n,
                                         max_concurrent_trials=concurrent),
                  run_config=RunConfig(name=run_name(planner.study, search),
                                       storage_path=str(storage), verbose=0))
    grid = tuner.fit()
    errors = [r.error for r in grid if r.error]
    if errors:
        raise RuntimeError(f"{len(errors)} sweep trial(s) failed; rerun the same command to resume them from "
                           f"their stage checkpoints. First error: {errors[0]}")
    return grid


def search_frame(df: pd.DataFrame, param: str, metric: str, mode: str) -> pd.DataFrame:
    """Tune's ResultGrid dataframe (or the local executor's equivalent) → the search table: trial id, the value,
    the metric first, then every other reported number; best trial first."""
    df = df.rename(columns={f"config/{param}": param})
    keep = ["trial_id", param, metric] + [c for c in ("val_miou", "holdout_miou") if c != metric and c in df]
    from bench.selection import CRITERIA

    keep += [c for c in CRITERIA if c in df and c not in keep]
    keep += [c for c in df if (c.startswith(("pl_", "computed_seed")) or c in ("threshold", "seeds", "failed"))
             and c not in keep]
    out = df[[c for c in keep if c in df]]
    return out.sort_values(metric, ascending=mode == "min", kind="stable").reset_index(drop=True)


class SweepFailed(RuntimeError):
    """A sweep with no value to tabulate or choose: the stages every value shares, or every trial, failed."""


def check_some_trial_finished(table: pd.DataFrame, param: str, metric: str) -> None:
    """Raise ``SweepFailed`` naming every value's failure when no trial reported ``metric`` (the tables, the
    selection regret and the best-trial line all need one); the stages that ran stay in the cache."""
    if table.empty or table[metric].notna().any():
        return
    failed = table["failed"] if "failed" in table else pd.Series(["no result"] * len(table))
    by_reason: dict[str, list] = {}  # values that failed alike are named together
    for v, why in zip(table[param], failed.fillna("no result")):
        by_reason.setdefault(why, []).append(str(v))
    reasons = "; ".join(f"{param}={', '.join(vs)}: {why}" for why, vs in by_reason.items())
    raise SweepFailed(f"every trial failed ({len(table)} of {len(table)}), so the sweep has no table: {reasons}. "
                          "The stages that ran are kept in the cache; change the values and rerun")
