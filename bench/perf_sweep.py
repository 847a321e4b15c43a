"""``bench perf sweep``: the wall time of a study run as one sweep (shared upstream stages once, then the trials'
tails on Ray Tune) against the same values run as independent pipelines (``bench run`` of the method alone, each
with an empty cache, one after the other). Every run gets a fresh results root under ``--results``, so no stage
is answered by an earlier cache."""

from __future__ import annotations

import time
from pathlib import Path

import yaml


def independent_overrides(study, value, seed: int) -> list[str]:
    """``bench run`` overrides that make the suite one trial of ``study``: the method alone, one seed, no named
    variants, the study's fixed settings and the swept value."""
    settings = {**study.fixed, study.param: value}
    return [f"only=[{study.method}]", f"seeds=[{seed}]", "ablations=false",
            *(f"methods.{study.method}.{k}={_yaml(v)}" for k, v in settings.items())]


def _yaml(value) -> str:
    """One value as an override's YAML text (flow style, without the document-end marker)."""
    return yaml.safe_dump(value, default_flow_style=True).strip().removesuffix("...").strip()


def sweep_vs_independent(study_name: str, suite: str, root: Path, seed: int = 0, values=None,
                         independent: int = 1, executor: str = "ray") -> dict:
    """Time the sweep of ``study_name`` over ``values`` (the study's own by default) and ``independent`` of its
    trials as stand-alone pipelines (the first values; pipelines of one study share their stage graph, so the
    rest cost about the same). → seconds of each, and the sweep / one-pipeline ratio."""
    from bench.suite_runner import run_suite
    from bench.sweep import all_studies, run_sweep

    study = all_studies()[study_name]
    values = list(values or study.values)
    root = Path(root).resolve()
    if root.exists() and any(root.iterdir()):
        raise FileExistsError(f"--results {root} is not empty: the measurement needs empty caches (pick a new "
                              "folder)")
    t = time.perf_counter()
    run_sweep(study_name, suite, [f"{study.param}={','.join(str(v) for v in values)}", f"seed={seed}"],
              results_root=root / "sweep", executor=executor)
    sweep_s = time.perf_counter() - t
    singles = []
    for i, v in enumerate(values[:independent]):
        t = time.perf_counter()
        run_suite(suite, independent_overrides(study, v, seed), results_root=root / f"independent_{i}",
                  executor=executor)
        singles.append(time.perf_counter() - t)
    one = sum(singles) / len(singles)
    return {"study": study_name, "values": values, "sweep_s": sweep_s, "independent_s": singles,
            "one_pipeline_s": one, "independent_total_est_s": one * len(values), "ratio_to_one": sweep_s / one}
