"""MLflow: the record of every run. Only the driver writes (one SQLite writer, no lock contention).

Layout (written live by ``bench.live_log`` as stages end): an MLflow experiment per suite; a parent run per
invocation (``kind=invocation``); one run per unique stage (``kind=stage``, keyed by its cache key, nested under
the invocation that computed it, never copied); a run per experiment (method × variant × target × seed,
``kind=experiment``) with the method's config under its prefix, the final evaluation and tags linking the stage
runs it used, and the model it evaluated as an external logged model (weights left in the cache). IoU metrics are
percent in MLflow (``tags.units = percent``), as in the tables and papers; tables are rebuilt from these runs
(``load_results``). Each suite's experiment carries the saved view "Methods by mIoU" (``view_url``).
"""

from __future__ import annotations

import functools
import json
import logging
import os
import platform
import subprocess
import time
from pathlib import Path

from bench.paths import REPO

PARAM_MAX = 6000


def default_tracking_uri(results_root: Path) -> str:
    """An absolute SQLite URI (a relative one would land wherever the process happens to run)."""
    return "sqlite:///" + str((Path(results_root) / "mlflow.db").resolve())


def _db_lock(uri: str):
    """An exclusive lock next to a ``sqlite:///`` database (two first runs on one root would both run MLflow's
    alembic migrations and one would die); a no-op for a server URI."""
    import contextlib

    if not uri.startswith("sqlite:///"):
        return contextlib.nullcontext()
    from bench.fsio import file_lock

    db = Path(uri[len("sqlite:///"):])
    return file_lock(db.with_name(db.name + ".lock"))


def git_revision() -> str:
    try:
        rev = subprocess.run(["git", "rev-parse", "HEAD"], cwd=REPO, capture_output=True, text=True, timeout=10)
        dirty = subprocess.run(["git", "status", "--porcelain"], cwd=REPO, capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    if rev.returncode != 0:
        return "unknown"
    return rev.stdout.strip() + ("+dirty" if dirty.stdout.strip() else "")


def environment() -> dict:
    """Versions, GPU and revision, for the report and the invocation run's tags."""
    import importlib.metadata as md

    env = {"python": platform.python_version(), "platform": platform.platform(), "git": git_revision(),
           "cpus": os.cpu_count()}
    for pkg in ("torch", "torchvision", "ray", "mlflow", "numpy", "pandas"):
        try:
            env[pkg] = md.version(pkg)
        except md.PackageNotFoundError:
            env[pkg] = "missing"
    try:
        import torch

        env["gpu"] = ", ".join(torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())) or "none"
    except Exception:  # noqa: BLE001 - the report only shows it
        env["gpu"] = "unknown"
    env.update(cpu_environment())
    return env


@functools.cache  # one CPU per process; every stage asks
def cpu_model() -> str:
    """The CPU's model name (``/proc/cpuinfo``; ``platform.processor()`` elsewhere), or "unknown"."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


# The vector extensions oneDNN and ATen choose kernels by: two CPUs that share a model name (a VM may show only
# "AMD EPYC") but not these run other kernels and sum floats in another order.
ISA_FLAGS = ("avx", "avx2", "fma", "avx512f", "avx512bw", "avx512vl", "avx512_vnni", "avx512_bf16", "avx_vnni",
             "amx_tile", "amx_bf16")


def cpu_signature(cpuinfo: str) -> str:
    """``vendor family/model/stepping ISA-flags`` from the first processor of a ``/proc/cpuinfo`` text, e.g.
    ``AuthenticAMD 25/1/1 avx avx2 fma``; "unknown" when it names no vendor."""
    fields: dict[str, str] = {}
    for line in cpuinfo.splitlines():
        if not line.strip():
            if fields:
                break  # the first processor's block is enough: the kernels are chosen for all alike
            continue
        k, _, v = line.partition(":")
        fields.setdefault(k.strip(), v.strip())
    if "vendor_id" not in fields:
        return "unknown"
    flags = set(fields.get("flags", "").split())
    ident = "/".join(fields.get(k, "?") for k in ("cpu family", "model", "stepping"))
    return " ".join([fields["vendor_id"], ident, *(f for f in ISA_FLAGS if f in flags)])


@functools.cache
def _cpu_signature() -> str:
    try:
        return cpu_signature(Path("/proc/cpuinfo").read_text())
    except OSError:
        return "unknown"


def cpu_environment() -> dict:
    """What decides a CPU run's float sums besides the stage key: the CPU (its name, and its vendor, family, model
    and vector extensions: ``cpu_id``), the instruction set torch's kernels dispatch to, and the caps set on it.
    The same key gives the same bytes on one machine; on a CPU of another
    kind oneDNN may pick other kernels, and the numbers move (README: "Across machines")."""
    out = {"cpu": cpu_model(), "cpu_id": _cpu_signature()}
    try:
        import torch

        out["torch_cpu_capability"] = torch.backends.cpu.get_cpu_capability()
    except Exception:  # noqa: BLE001 - an older torch: only the report shows it
        out["torch_cpu_capability"] = "unknown"
    for var in ("ATEN_CPU_CAPABILITY", "ONEDNN_MAX_CPU_ISA", "DNNL_MAX_CPU_ISA", "MKL_CBWR"):
        if os.environ.get(var):
            out[var] = os.environ[var]
    return out


def flatten(d: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict) and v:
            out.update(flatten(v, key + "."))
        else:
            out[key] = v
    return out


def _numeric(d: dict) -> dict:
    return {k: float(v) for k, v in d.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}


def is_iou(key: str) -> bool:
    """IoU-valued results (``miou_19``, ``iou_19/road``, ``miou_13_of_16``): fractions in the harness, % in MLflow."""
    return key.startswith(("miou_", "iou_"))


def to_percent(metrics: dict) -> dict:
    return {k: 100.0 * v if is_iou(k) else v for k, v in _numeric(metrics).items()}


def from_percent(metrics: dict) -> dict:
    return {k: v / 100.0 if is_iou(k) else v for k, v in metrics.items()}


def _ms(seconds: float | None) -> int | None:
    return None if seconds is None else int(seconds * 1000)


class Tracker:
    """Thin wrapper over ``MlflowClient`` with the suite's layout."""

    def __init__(self, uri: str, experiment: str, artifact_root: Path) -> None:
        import mlflow
        from mlflow.tracking import MlflowClient

        os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
        # MLflow's INFO lines (database creation, system-metrics monitor start/stop) would interleave with the
        # progress display and an interrupted run's one-line message; MLFLOW_LOGGING_LEVEL=INFO brings them back
        logging.getLogger("mlflow").setLevel(os.environ.get("MLFLOW_LOGGING_LEVEL", "WARNING").upper())
        mlflow.set_tracking_uri(uri)
        # The first client of a SQLite file creates and migrates it, and two runs could both create the
        # experiment: one process at a time.
        with _db_lock(uri):
            self.uri, self.client = uri, MlflowClient(tracking_uri=uri)
            exp = self.client.get_experiment_by_name(experiment)
            if exp is None:  # explicit artifact root: the default is relative to the CWD
                art = Path(artifact_root).resolve() / experiment
                self.experiment_id = self.client.create_experiment(experiment, artifact_location=art.as_uri())
            else:
                self.experiment_id = exp.experiment_id

    def start(self, name: str, kind: str, tags: dict, parent: str | None = None, params: dict | None = None,
              start_time: float | None = None) -> str:
        """A new run; ``start_time`` (epoch seconds): when the work it records really began (default: now)."""
        all_tags = {"kind": kind, **{k: str(v) for k, v in tags.items()}}
        if parent:
            all_tags["mlflow.parentRunId"] = parent
        run = self.client.create_run(self.experiment_id, run_name=name, tags=all_tags, start_time=_ms(start_time))
        if params:
            self.log_params(run.info.run_id, params)
        return run.info.run_id

    def log_params(self, run_id: str, params: dict) -> None:
        from mlflow.entities import Param

        items = [Param(k, json.dumps(v, default=str)[:PARAM_MAX] if not isinstance(v, str) else v[:PARAM_MAX])
                 for k, v in flatten(params).items()]
        for i in range(0, len(items), 100):
            self.client.log_batch(run_id, params=items[i:i + 100])

    def log_metrics(self, run_id: str, metrics: dict, step: int = 0, model_id: str | None = None,
                    dataset: tuple[str, str] | None = None) -> None:
        """Metrics of a run; with ``model_id`` they are the logged model's too (measured on ``dataset``: name,
        digest)."""
        self.log_history(run_id, [{"step": step, **_numeric(metrics)}], model_id=model_id, dataset=dataset)

    def log_history(self, run_id: str, rows: list[dict], t0: float | None = None, t1: float | None = None,
                    model_id: str | None = None, dataset: tuple[str, str] | None = None) -> None:
        """``rows`` = [{"step": s, "time": epoch s, key: value, ...}] as the stage's metrics.jsonl holds them.
        Each point keeps the time it was written; rows from before ``time`` was recorded are spread over
        [t0, t1] by step (the stage's real span), else stamped now."""
        from mlflow.entities import Metric

        ds_name, ds_digest = dataset or (None, None)

        last = max((int(r.get("step", 0)) for r in rows), default=0) or 1

        def stamp(r: dict) -> int:
            if isinstance(r.get("time"), (int, float)):
                return _ms(r["time"])
            if t0 is not None and t1 is not None:
                return _ms(t0 + (t1 - t0) * int(r.get("step", 0)) / last)
            return _ms(time.time())

        items = [Metric(k, float(v), stamp(r), int(r.get("step", 0)), model_id=model_id, dataset_name=ds_name,
                        dataset_digest=ds_digest) for r in rows
                 for k, v in r.items() if k not in ("step", "time") and isinstance(v, (int, float))]
        for i in range(0, len(items), 1000):
            self.client.log_batch(run_id, metrics=items[i:i + 1000])

    def log_external_model(self, run_id: str, name: str, spec: dict, params: dict, tags: dict) -> str:
        """A LoggedModel (MLflow 3's Models tab) whose weights stay where they are (``tags["cache_dir"]``): no copy,
        only an ``MLmodel`` marking it external and ``spec`` as ``model_spec.json``. Produced by ``run_id`` and
        listed as its output; READY → its id."""
        import tempfile

        from mlflow.entities import LoggedModelOutput, LoggedModelStatus
        from mlflow.models.utils import get_external_mlflow_model_spec
        from mlflow.utils.mlflow_tags import MLFLOW_MODEL_IS_EXTERNAL

        safe = "".join("-" if c in "/:.%\"'" else c for c in name)  # characters MLflow refuses in model names
        model = self.client.create_logged_model(
            self.experiment_id, name=safe, source_run_id=run_id, model_type="segmenter",
            tags={MLFLOW_MODEL_IS_EXTERNAL: "true", **{k: str(v) for k, v in tags.items()}},
            params={k: (v if isinstance(v, str) else json.dumps(v, default=str))[:PARAM_MAX]
                    for k, v in flatten(params).items()})
        try:
            mlmodel = get_external_mlflow_model_spec(model)
            mlmodel.metadata = {**(mlmodel.metadata or {}),
                                **{k: str(v) for k, v in tags.items() if not k.startswith("mlflow.")}}
            with tempfile.TemporaryDirectory() as tmp:
                mlmodel.save(str(Path(tmp) / "MLmodel"))
                (Path(tmp) / "model_spec.json").write_text(json.dumps(spec, indent=1, default=str))
                self.client.log_model_artifacts(model.model_id, tmp)
            self.client.finalize_logged_model(model.model_id, LoggedModelStatus.READY)
        except Exception:
            self.client.finalize_logged_model(model.model_id, LoggedModelStatus.FAILED)
            raise
        self.client.log_outputs(run_id, [LoggedModelOutput(model.model_id, 0)])
        return model.model_id

    def log_artifact(self, run_id: str, path: Path, artifact_path: str | None = None) -> None:
        self.client.log_artifact(run_id, str(path), artifact_path)

    def end(self, run_id: str, ok: bool = True, end_time: float | None = None) -> None:
        self.client.set_terminated(run_id, "FINISHED" if ok else "FAILED", end_time=_ms(end_time))


def load_results(uri: str, experiment: str, invocation: str | None = None) -> tuple[list[dict], str]:
    """The experiment runs of one invocation (default: the latest one that logged experiments) as result
    dicts (method, variant, target, seed, and every metric) → (results, invocation run id)."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=uri)
    exp = client.get_experiment_by_name(experiment)
    if exp is None:
        raise LookupError(f"no MLflow experiment {experiment!r} at {uri}; run `bench run {experiment}` first")
    if invocation is None:
        parents = client.search_runs([exp.experiment_id], "tags.kind = 'invocation'",
                                     order_by=["attributes.start_time DESC"], max_results=50)
        for p in parents:
            if client.search_runs([exp.experiment_id], f"tags.invocation = '{p.info.run_id}'", max_results=1):
                invocation = p.info.run_id
                break
        if invocation is None:
            raise LookupError(f"MLflow experiment {experiment!r} has no finished experiment runs")
    runs = client.search_runs([exp.experiment_id],
                              f"tags.invocation = '{invocation}' and tags.kind = 'experiment'",
                              order_by=["attributes.start_time ASC"], max_results=10_000)
    results = []
    for r in runs:
        t = r.data.tags
        res = {"method": t["method"], "variant": t.get("variant", ""), "target": t.get("target", ""),
               "seed": int(t["seed"]), "protocol": t.get("protocol", ""), "run_id": r.info.run_id,
               "cache_key": t.get("cache_key", "")}  # the eval stage's directory: per-image matrices live there
        # MLflow holds percent (tags.units); the harness computes with fractions (runs from before: fractions)
        res.update(from_percent(r.data.metrics) if t.get("units") == "percent" else r.data.metrics)
        results.append(res)
    return results, invocation


COMPARE_FILTER = "tags.kind = 'experiment'"
# The saved runs view every suite's MLflow experiment gets (an experiment tag, as the UI's own "Save view" writes
# it): experiment runs only, best mIoU first, mIoU as the first column and the first chart section.
VIEW_KEY = "bench-methods"
VIEW_NAME = "Methods by mIoU"
VIEW_TAG = "mlflow.sharedViewState." + VIEW_KEY


def miou_metrics(subsets) -> list[str]:
    """The suite's mIoU metrics, headline first: ``miou_<subset>`` per evaluated subset (+ ``miou_13_of_16``)."""
    subsets = [str(s) for s in subsets] or ["19"]
    return [f"miou_{s}" for s in subsets] + (["miou_13_of_16"] if {"16", "13"} <= set(subsets) else [])


def comparison_view_state(metrics: list[str]) -> dict:
    """The runs page's state for a method-by-method comparison, in the form of MLflow 3's saved views (search
    facets + UI state): the experiment runs sorted by ``metrics[0]``, the mIoU columns right after the run name
    (then models and datasets), and in chart mode a first section with one bar chart per mIoU metric (every run
    shown, not the first 10); the per-class and other charts follow in sections of their own."""
    cols, extra = [f"metrics.`{m}`" for m in metrics], ["attributes.`Models`", "attributes.`Dataset`"]
    charts = [{"uuid": f"bench-{m}", "type": "BAR", "runsCountToCompare": 100, "metricSectionId": "bench-miou",
               "deleted": False, "isGenerated": True, "displayName": m, "metricKey": m} for m in metrics]
    return {"searchFilter": COMPARE_FILTER, "orderByKey": cols[0], "orderByAsc": False,
            "selectedColumns": [*cols, *extra],
            "columnOrder": ["attributes.`Run Name`", "runDateAndNestInfo", *cols, *extra],  # name, created pinned
            "columnWidths": {c: 150 for c in cols}, "runsHiddenMode": "SHOW_ALL",
            "compareRunSections": [{"uuid": "bench-miou", "name": "mIoU (%)", "display": True, "isReordered": True}],
            "compareRunCharts": charts, "isAccordionReordered": True}


def save_comparison_view(client, experiment_id: str, metrics: list[str]) -> None:
    """Write (or refresh) the suite's saved view; the UI lists it under "Views" and :func:`view_url` opens it."""
    now = int(time.time() * 1000)
    try:
        created = json.loads(client.get_experiment(experiment_id).tags.get(VIEW_TAG, "{}")).get("createdAt", now)
    except (ValueError, AttributeError):
        created = now
    client.set_experiment_tag(experiment_id, VIEW_TAG, json.dumps(
        {"name": VIEW_NAME, "createdAt": created, "updatedAt": now,
         "state": json.dumps(comparison_view_state(metrics))}))


def view_url(base: str, experiment_id: str) -> str:
    """The saved comparison view of one suite (its state is read from the experiment's tag)."""
    return f"{base}/#/experiments/{experiment_id}/runs?viewStateShareKey={VIEW_KEY}"


def comparison_url(base: str, experiment_id: str, metric: str = "miou_19") -> str:
    """The UI's runs view of one suite: experiment runs only (no stage or invocation runs), best mIoU first."""
    from urllib.parse import quote

    return (f"{base}/#/experiments/{experiment_id}/runs?searchFilter={quote(COMPARE_FILTER)}"
            f"&orderByKey={quote(f'metrics.`{metric}`')}&orderByAsc=false")


def comparison_urls(uri: str, base: str) -> list[str]:
    """``name: url`` for every suite in the store: its saved view, or for a store from before saved views the
    search URL ([] when the store cannot be read: the UI starts anyway)."""
    if uri.startswith("sqlite:///") and not Path(uri[len("sqlite:///"):]).is_file():
        return []  # no store yet (reading would create one)
    try:
        from mlflow.tracking import MlflowClient

        exps = MlflowClient(uri).search_experiments()
    except Exception:  # noqa: BLE001 - a missing or fresh store: nothing to point at yet
        return []
    return [f"{e.name}: " + (view_url if VIEW_TAG in e.tags else comparison_url)(base, e.experiment_id)
            for e in exps if e.name != "Default"]


def ui_command(uri: str, port: int = 5000) -> tuple[list[str], dict]:
    """The ``mlflow ui`` command sized for a small machine (one worker, no job runner: ~0.5 GiB, not ~3)."""
    env = dict(os.environ, MLFLOW_SERVER_ENABLE_JOB_EXECUTION="false")
    return ["mlflow", "ui", "--backend-store-uri", uri, "--host", "127.0.0.1", "--port", str(port),
            "--workers", "1"], env
