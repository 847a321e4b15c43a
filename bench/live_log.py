"""The suite's MLflow record, written by the driver as each stage ends, so the UI shows a suite while it runs.

- One run per unique stage (its cache key), with its real start and end, its loss curve at the times the points
  were computed, its system metrics, results (IoU in %) and datasets. A stage another invocation (or an
  experiment of this one) already logged is not logged again: experiments link to its run.
- One run per experiment once all its stages have ended: the method's config under the method's prefix
  (``cag_uda.delta_d``), the evaluation in percent (``tags.units = percent``), per-class IoU as a table,
  datasets as inputs, and a note linking every stage run it used.
- One logged model per experiment (MLflow's Models tab): the segmenter it evaluated, external (its weights stay in
  the stage cache, nothing is copied), with its spec, the method's config and the IoU metrics on the evaluation set.
- The suite's saved view "Methods by mIoU" (``bench ui`` prints its link): experiment runs, best mIoU first.
"""

from __future__ import annotations

import json
import math
import sys
import time
from dataclasses import asdict
from pathlib import Path

from bench.tracking import _db_lock, is_iou, miou_metrics, save_comparison_view, to_percent


def display_names(experiments) -> dict[str, str]:
    """key → a readable stage name. A stage whose name repeats along a pipeline is numbered by how many of its
    ancestors share the name (``cag_uda.stage2.train``, the same in every variant that shares it); an evaluation
    names the model it scores (``eval(cag_uda.stage3.train)``)."""
    stages, ancestors = {}, {}
    for e in experiments:
        for ps in e.stages:  # upstream first
            stages[ps.key] = ps
            ancestors.setdefault(ps.key, set().union(*([ancestors[u] | {u} for u in ps.upstream.values()] or [set()])))
    nth = {k: 1 + sum(stages[a].name == ps.name for a in ancestors[k]) for k, ps in stages.items()}
    repeated = {ps.name for k, ps in stages.items() if nth[k] > 1}
    out = {}
    for k, ps in stages.items():
        head, _, tail = ps.name.rpartition(".")
        out[k] = (f"{head}.stage{nth[k]}.{tail}" if head else f"{ps.name}{nth[k]}") if ps.name in repeated else ps.name
    for e in experiments:
        out[e.eval.key] = f"eval({out[e.model.key]})"
    return out


def _json(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return {}


def _meta(stage_dir: Path) -> dict:
    return _json(stage_dir / "meta.json")


def dataset_name(spec: dict, domain: str) -> str:
    """``cityscapes val (target_val)``: the name a dataset has in MLflow."""
    name = " ".join(str(x) for x in (spec["name"], spec.get("split") or "", spec.get("city") or "") if x)
    return f"{name} ({domain})"


def warn(what: str, e: Exception) -> None:
    """MLflow extras (a saved view, a logged model) never stop a suite: say what is missing and go on."""
    print(f"warning: MLflow: {what} not logged ({type(e).__name__}: {e}); the suite goes on", file=sys.stderr)


def dataset_inputs(suite: dict, fingerprints: dict, target: str, domains) -> list:
    """MLflow dataset inputs for ``domains`` of ``target``: name, split, root and content fingerprint (digest)."""
    from mlflow.data.meta_dataset import MetaDataset
    from mlflow.data.sources import LocalArtifactDatasetSource
    from mlflow.entities import DatasetInput, InputTag

    from bench.suite_plan import dataset_specs

    specs, out = dataset_specs(suite, target), []
    for d in domains:
        spec, fp = specs[d], fingerprints[target][d]
        ds = MetaDataset(LocalArtifactDatasetSource(Path(spec["root"]).as_uri()), name=dataset_name(spec, d),
                         digest=fp["fingerprint"])
        out.append(DatasetInput(ds._to_mlflow_entity(), tags=[InputTag("mlflow.data.context", d)]))
    return out


def per_class_table(result: dict) -> dict:
    """Columns for ``log_table``: per subset its mIoU first, then each class, in percent."""
    rows = []
    for key, v in result.items():
        if key.startswith("miou_"):
            rows.append((key[len("miou_"):], "mIoU", v))
    for key, v in result.items():
        if key.startswith("iou_") and "/" in key:
            subset, cls = key[len("iou_"):].split("/", 1)
            rows.append((subset, cls, v))
    return {"subset": [r[0] for r in rows], "class": [r[1] for r in rows],
            "iou_percent": [None if not math.isfinite(r[2]) else round(100 * r[2], 2) for r in rows]}


class LiveLog:
    """Created before the scheduler starts (it opens the invocation run); ``stage_finished`` is the scheduler's
    ``on_finished`` hook; ``close`` logs what never ended (failed, skipped or interrupted pipelines)."""

    def __init__(self, tracker, suite, overrides, experiments, fingerprints, env, cache_root: Path) -> None:
        self.t, self.suite, self.experiments = tracker, suite, experiments
        self.fingerprints, self.env, self.cache_root = fingerprints, env, Path(cache_root)
        self.names = display_names(experiments)
        self.first = {}  # key → the first experiment that uses it (its target's datasets)
        self.users: dict[str, set] = {}
        for e in experiments:
            for ps in e.stages:
                self.first.setdefault(ps.key, e)
                self.users.setdefault(ps.key, set()).add(e.method + (f"[{e.variant}]" if e.variant else ""))
        self.stage_runs: dict[str, str] = {}
        self.outcomes: dict = {}
        self.logged: set[int] = set()
        self.invocation = tracker.start(
            f"{suite['name']} {time.strftime('%Y-%m-%d %H:%M:%S')}", "invocation",
            {"suite": suite["name"], "git": env["git"], "overrides": " ".join(overrides) or "-"},
            params={"suite": {k: v for k, v in suite.items() if k != "methods"}})
        self.monitor = self._system_monitor()
        try:
            save_comparison_view(tracker.client, tracker.experiment_id,
                                 miou_metrics((suite.get("evaluation") or {}).get("subsets") or ["19"]))
        except Exception as e:  # noqa: BLE001 - the runs are the record; the view only opens on them
            warn("the saved view 'Methods by mIoU'", e)

    def _system_monitor(self):
        """MLflow's own sampler on the invocation run (the driver's machine over the whole suite), with psutil."""
        try:
            import psutil  # noqa: F401 - MLflow's monitor needs it
            from mlflow.system_metrics.system_metrics_monitor import SystemMetricsMonitor

            mon = SystemMetricsMonitor(self.invocation, sampling_interval=10, tracking_uri=self.t.uri)
            mon.start()
            return mon
        except Exception:  # noqa: BLE001 - system metrics are a nicety, never a reason to stop a suite
            return None

    # ---------------------------------------------------------------------------------------------- stages
    def stage_finished(self, ps, o) -> None:
        """The scheduler's ``on_finished``: the stage's run, then the runs of the experiments it completes. A store
        that refuses a write (another invocation's concurrent write, a full disk) costs that run, with a warning;
        the stage's result is in the cache either way, and the suite goes on."""
        self.outcomes[ps.key] = o
        try:
            if o.status in ("done", "cached"):
                self.stage_runs[ps.key] = self.stage_run(ps, o)
            elif o.status == "failed":
                self.stage_runs[ps.key] = self._failed_run(ps, o)
        except Exception as e:  # noqa: BLE001 - MLflow is the record's view; the cache holds the result
            warn(f"the run of stage {ps.name} ({ps.key})", e)
        for i, e in enumerate(self.experiments):
            if i not in self.logged and all(s.key in self.outcomes for s in e.stages):
                self.logged.add(i)
                try:
                    with _db_lock(self.t.uri):  # two invocations on one store insert the same datasets
                        self.experiment_run(e)
                except Exception as exc:  # noqa: BLE001
                    warn(f"the run of experiment {e.label}", exc)

    def stage_run(self, ps, o) -> str:
        """The stage's run: the one already logged for its key, else a new one (under the store's lock, so that
        two invocations on one store never both create it)."""
        if ps.key in self.stage_runs:
            return self.stage_runs[ps.key]
        flt = f"tags.kind = 'stage' and tags.cache_key = '{ps.key}' and attributes.status = 'FINISHED'"
        with _db_lock(self.t.uri):
            found = self.t.client.search_runs([self.t.experiment_id], flt, max_results=1)
            return found[0].info.run_id if found else self._new_stage_run(ps, o)

    def run_name(self, ps) -> str:
        """``cag_uda.stage2.train seed 0 · cag_uda``: the stage, its seed and the rows that use it (two methods may
        share a stage name with different inputs: the oracle trains ``source_only.train`` on the target)."""
        users = sorted(self.users[ps.key])
        shown = ", ".join(users[:3]) + (f" +{len(users) - 3}" if len(users) > 3 else "")
        return f"{self.names[ps.key]}{f' seed {ps.seed}' if ps.stage.seeded else ''} · {shown}"

    def _stage_tags(self, ps, o, meta: dict) -> dict:
        cpu = meta.get("cpu") or {}  # absent in stages cached before the CPU was recorded
        return {"stage": ps.name, "display": self.names[ps.key], "cache_key": ps.key,
                "seed": ps.seed if ps.stage.seeded else "-", "methods": ", ".join(sorted(self.users[ps.key])),
                "cache_dir": self.cache_root / ps.key, "host": meta.get("host", "?"),
                "cpu": cpu.get("cpu", "?"), "cpu_id": cpu.get("cpu_id", "?"),
                "torch_cpu_capability": cpu.get("torch_cpu_capability", "?"),
                "units": "percent",
                "invocation": self.invocation, "cache": "hit" if o.status == "cached" else o.status}

    def _new_stage_run(self, ps, o) -> str:
        from bench.stage_exec import read_metrics
        from bench.sysmetrics import read_system

        d = self.cache_root / ps.key
        meta = _meta(d)
        t0 = o.started or meta.get("started")
        t1 = o.ended or meta.get("ended") or (t0 + meta.get("seconds", 0.0) if t0 else None)
        name = self.run_name(ps)
        run = self.t.start(name, "stage", self._stage_tags(ps, o, meta), parent=self.invocation,
                           params=ps.stage.params, start_time=t0)
        curve = read_metrics(d)
        self.t.log_history(run, curve, t0, t1)
        self.t.log_history(run, read_system(d))
        final = {k: v for k, v in to_percent(o.result).items() if math.isfinite(v)}
        final["wall_seconds"] = float(meta.get("seconds", o.seconds))
        last = max((int(r["step"]) for r in curve), default=0)
        self.t.log_history(run, [{"step": last, **({"time": t1} if t1 else {}), **final}])
        e = self.first[ps.key]
        self.t.client.log_inputs(run, dataset_inputs(self.suite, self.fingerprints, e.target, ps.stage.datasets))
        self.t.end(run, True, end_time=t1)
        return run

    def _failed_run(self, ps, o) -> str:
        """A failed stage gets a FAILED run with its error (never reused: the next success logs the real one)."""
        meta = _meta(self.cache_root / ps.key)
        run = self.t.start(f"{self.run_name(ps)} [failed]", "stage", {**self._stage_tags(ps, o, meta),
                           "error": o.error or "-"}, parent=self.invocation, params=ps.stage.params,
                           start_time=meta.get("started"))
        self.t.end(run, False)
        return run

    # ----------------------------------------------------------------------------------------- experiments
    def _note(self, e) -> str:
        """Markdown for the run's description: a link to every stage run the experiment used."""
        lines = ["Stages (each one MLflow run, shared by every experiment that uses it):", ""]
        for ps in e.stages:
            o, run = self.outcomes.get(ps.key), self.stage_runs.get(ps.key)
            status = o.status if o else "not run"
            link = f"[{self.names[ps.key]}](#/experiments/{self.t.experiment_id}/runs/{run})" if run else \
                self.names[ps.key]
            lines.append(f"- {link}: {status}" + (f", {o.seconds:.1f} s" if o and o.status == "done" else ""))
        return "\n".join(lines)

    def experiment_run(self, e) -> str:
        from bench.scheduler import Outcome

        ev = self.outcomes.get(e.eval.key) or Outcome(e.eval.key, e.eval.name)
        ok = ev.status in ("done", "cached")
        fps = self.fingerprints[e.target]
        tags = {"method": e.method, "variant": e.variant, "seed": e.seed, "target": e.target,
                "protocol": e.eval.stage.params["protocol"], "cache_key": e.eval.key, "model_key": e.model.key,
                "git": self.env["git"], "invocation": self.invocation, "status": ev.status, "units": "percent",
                "stages": " → ".join(self.names[ps.key] for ps in e.stages), "mlflow.note.content": self._note(e),
                **{f"fingerprint.{d}": v["fingerprint"] for d, v in fps.items()},
                **{f"stage_run.{self.names[ps.key]}": self.stage_runs[ps.key] for ps in e.stages
                   if ps.key in self.stage_runs}}
        params = {"method": e.method, "variant": e.variant or "-", "seed": e.seed, "target": e.target or "-",
                  "protocol": tags["protocol"], e.method: asdict(e.config)}  # the config under its method's prefix
        starts = [self.outcomes[ps.key].started for ps in e.stages
                  if ps.key in self.outcomes and self.outcomes[ps.key].started]
        run = self.t.start(e.label, "experiment", tags, parent=self.invocation, params=params,
                           start_time=min(starts) if starts else None)
        if ok:
            metrics = to_percent(ev.result)
            iou = {k: v for k, v in metrics.items() if is_iou(k)}
            self.t.log_metrics(run, {k: v for k, v in metrics.items() if k not in iou})
            self._log_ious(e, run, iou, self.logged_model(e, run, params))
            self.t.client.log_table(run, per_class_table(ev.result), "per_class_iou.json")
        self.t.client.log_inputs(run, dataset_inputs(self.suite, self.fingerprints, e.target, sorted(fps)))
        self.t.end(run, ok)
        return run

    def _log_ious(self, e, run: str, iou: dict, model: str | None) -> None:
        """The IoUs on the run, and on its logged model too (measured on the evaluation set), so that the Models
        tab compares them; should the model's part fail, they still reach the run."""
        if model:
            try:
                self.t.log_metrics(run, iou, model_id=model, dataset=self.eval_dataset(e))
                return
            except Exception as exc:  # noqa: BLE001 - the run's metrics are the record, the model's a view of them
                warn(f"the metrics of the model of {e.label}", exc)
        self.t.log_metrics(run, iou)

    def eval_dataset(self, e) -> tuple[str, str]:
        """(name, digest) of the set the experiment is evaluated on, as its dataset input names it."""
        from bench.suite_plan import dataset_specs

        d = e.eval.stage.datasets[0]
        return dataset_name(dataset_specs(self.suite, e.target)[d], d), self.fingerprints[e.target][d]["fingerprint"]

    def logged_model(self, e, run: str, params: dict) -> str | None:
        """The segmenter the experiment evaluated as an external logged model (see ``Tracker.log_external_model``):
        it points at the model stage's cache directory. Any failure is a warning (→ None), never the suite's end."""
        from bench.train import MODEL_FILE

        d = self.cache_root / e.model.key
        try:
            spec = {"architecture": _json(d / "model.json"), "weights": str(d / MODEL_FILE), "cache_dir": str(d),
                    "load": f"bench.stage_exec.load_model({str(d)!r})", "method": e.method, "variant": e.variant,
                    "seed": e.seed, "target": e.target, "config": asdict(e.config)}
            tags = {"method": e.method, "variant": e.variant or "-", "seed": e.seed, "target": e.target or "-",
                    "stage": self.names[e.model.key], "cache_key": e.model.key, "cache_dir": d,
                    "weights": d / MODEL_FILE, "eval_key": e.eval.key, "invocation": self.invocation,
                    "units": "percent", "mlflow.note.content":
                    f"The segmenter `{e.label}` evaluated, trained by stage `{self.names[e.model.key]}`. Its weights "
                    f"stay in the stage cache (not copied): `{d / MODEL_FILE}`; load it with `{spec['load']}`."}
            return self.t.log_external_model(run, e.label, spec, params, tags)
        except Exception as exc:  # noqa: BLE001 - the experiment's run and metrics are logged either way
            warn(f"the model of {e.label}", exc)
            return None

    def close(self, outcomes: dict) -> None:
        """Experiments that never completed (a failed, skipped or interrupted stage) are logged as they stand."""
        for k, o in outcomes.items():
            self.outcomes.setdefault(k, o)
        for i, e in enumerate(self.experiments):
            if i not in self.logged:
                self.logged.add(i)
                self.experiment_run(e)
        if self.monitor is not None:
            self.monitor.finish()
            self.monitor = None
