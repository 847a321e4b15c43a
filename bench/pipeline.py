"""Stages and the content-addressed stage cache.

A stage's key hashes everything that determines its output: its name and code version, the config values
it reads, its upstream stages' keys, the specs and fingerprints of the datasets it reads, the seed, and the
harness settings that change numbers (AMP, determinism). Its outputs live in ``<cache>/<key>/``; the
directory is complete only once ``DONE`` exists, written last and atomically. A directory without ``DONE``
is a partial stage: running it again resumes from its last checkpoint (the trainer looks there).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import socket
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from methods.base import Stage, closure

DONE, RESULT, META, METRICS, PROGRESS = "DONE", "result.json", "meta.json", "metrics.jsonl", "progress.json"
KEYED_TRAIN_SETTINGS = ("amp", "deterministic")  # harness settings that change numbers


def _canonical(obj: Any) -> str:
    return json.dumps(obj, sort_keys=True, default=str, separators=(",", ":"))


def stage_key(stage: Stage, upstream_keys: dict, datasets: dict, seed: int, train: dict) -> str:
    """The cache key. ``datasets`` maps a domain to ``{"spec": ..., "fingerprint": ...}``."""
    missing = [d for d in stage.datasets if d not in datasets]
    if missing:
        raise KeyError(f"stage {stage.name!r} reads dataset domain(s) {missing}; the suite defines {sorted(datasets)}")
    payload = {
        "stage": stage.name,
        "version": stage.version,
        "params": stage.params,
        "upstream": upstream_keys,
        "datasets": {d: datasets[d] for d in sorted(stage.datasets)},
        "seed": seed if stage.seeded else None,
        "train": {k: train.get(k) for k in KEYED_TRAIN_SETTINGS} if stage.kind == "train" else None,
    }
    return stage.name.replace(".", "-") + "-" + hashlib.sha256(_canonical(payload).encode()).hexdigest()[:16]


@dataclass
class PlannedStage:
    """A stage bound to one seed, with its key and the keys of its upstream stages."""

    stage: Stage
    key: str
    seed: int
    upstream: dict  # alias -> key

    @property
    def name(self) -> str:
        return self.stage.name


def plan_stages(finals: list[Stage], seed: int, datasets: dict, train: dict) -> list[PlannedStage]:
    """Key every stage the ``finals`` need, upstream first."""
    keys: dict[int, str] = {}
    out = []
    for s in closure(finals):
        up = {a: keys[id(u)] for a, u in s.upstream.items()}
        keys[id(s)] = stage_key(s, up, datasets, seed, train)
        out.append(PlannedStage(s, keys[id(s)], seed, up))
    return out


# -------------------------------------------------------------------------------------------- cache
class StageCache:
    """``root/<key>/`` per stage; ``DONE`` marks a complete one."""

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)

    def dir(self, key: str) -> Path:
        return self.root / key

    def is_done(self, key: str) -> bool:
        return (self.root / key / DONE).is_file()

    def result(self, key: str) -> dict:
        path = self.root / key / RESULT
        if not self.is_done(key):
            raise FileNotFoundError(f"stage {key} is not complete ({self.root / key} has no {DONE})")
        return json.loads(path.read_text())

    def mark_done(self, key: str, result: dict, meta: dict) -> None:
        d = self.root / key
        _atomic_write(d / RESULT, json.dumps(result, indent=1, default=_jsonable))
        _atomic_write(d / META, json.dumps(meta, indent=1, default=_jsonable))
        _atomic_write(d / DONE, time.strftime("%Y-%m-%dT%H:%M:%S\n"))  # last

    def entries(self) -> list[dict]:
        """One dict per cache directory: key, stage, state (done | partial), bytes, modified, meta."""
        out = []
        if not self.root.is_dir():
            return out
        for d in sorted(p for p in self.root.iterdir() if p.is_dir()):
            meta_path = d / META
            meta = json.loads(meta_path.read_text()) if meta_path.is_file() else {}
            files = [f for f in d.rglob("*") if f.is_file()]
            out.append({
                "key": d.name, "stage": meta.get("stage", d.name.rsplit("-", 1)[0]),
                "state": "done" if (d / DONE).is_file() else "partial",
                "bytes": sum(f.stat().st_size for f in files),
                "modified": max((f.stat().st_mtime for f in files), default=d.stat().st_mtime),
                "meta": meta,
            })
        return out

    def clear(self, keys=None, stage: str | None = None, partial_only: bool = False) -> list[dict]:
        """Delete matching entries (``keys`` = key prefixes); returns what was removed."""
        removed = []
        for e in self.entries():
            if keys and not any(e["key"].startswith(k) for k in keys):
                continue
            if stage and e["stage"] != stage:
                continue
            if partial_only and e["state"] != "partial":
                continue
            shutil.rmtree(self.root / e["key"])
            removed.append(e)
        return removed


def _jsonable(obj: Any) -> Any:
    if hasattr(obj, "tolist"):
        return obj.tolist()
    if isinstance(obj, Path):
        return str(obj)
    return str(obj)


def _atomic_write(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


# ------------------------------------------------------------------------------------------ context
class MetricsLog:
    """Trainer callback: appends the window means of the losses to ``metrics.jsonl`` every ``every`` steps
    and keeps ``progress.json`` current, so the driver can draw progress and MLflow gets the curves."""

    def __init__(self, out_dir: Path, every: int, total: int | None = None) -> None:
        self.path, self.progress = out_dir / METRICS, out_dir / PROGRESS
        self.every, self.total = max(1, every), total
        self._sums: dict[str, float] = {}
        self._n = 0
        self._last_progress = 0.0

    def __call__(self, step: int, metrics: dict) -> None:
        self._n += 1
        for k, v in metrics.items():
            if isinstance(v, (int, float)):
                self._sums[k] = self._sums.get(k, 0.0) + float(v)
        if step % self.every == 0 or step == self.total:
            row = {"step": step, **{k: v / self._n for k, v in self._sums.items()}}
            with self.path.open("a") as f:
                f.write(json.dumps(row) + "\n")
            self._sums, self._n = {}, 0
        now = time.monotonic()
        if now - self._last_progress > 1.0 or step == self.total:
            self._last_progress = now
            _atomic_write(self.progress, json.dumps({"step": step, "total": self.total}))


def read_metrics(out_dir: Path) -> list[dict]:
    path = Path(out_dir) / METRICS
    if not path.is_file():
        return []
    rows = {}
    for line in path.read_text().splitlines():
        if line.strip():
            row = json.loads(line)
            rows[row["step"]] = row  # a resumed stage logs its last window again: keep the latest
    return [rows[s] for s in sorted(rows)]


@dataclass
class StageContext:
    """What a stage function receives."""

    out_dir: Path
    seed: int
    dataset_specs: dict  # domain -> build_dataset kwargs (root absolute)
    train: dict  # the suite's train section (device, amp, log_every, ...)
    inputs: dict = field(default_factory=dict)  # alias -> upstream output dir
    metrics_every: int = 20
    _datasets: dict = field(default_factory=dict)

    def dataset(self, domain: str, plain: bool = False, labels: bool = True, options: dict | None = None,
                root: Path | None = None):
        """The suite's dataset for ``domain``, built once, seeded with this stage's seed. ``plain``: without
        random augmentation (label and fit stages). ``labels=False``: images only — every label is 255, so a
        method cannot train on target labels by accident (MiniCity's target train is labelled for the oracle).
        ``options``: transform settings a method's recipe overrides (e.g. CAG-UDA's random scale and crop).
        ``root``: the same layout at another place — an upstream stage's mirror of the tree (e.g. a stylised
        source written by a ``data`` stage)."""
        key = (domain, plain, labels, json.dumps(options, sort_keys=True), str(root))
        if key not in self._datasets:
            from bench.data import build_dataset
            from bench.pseudo import plain_spec

            if domain not in self.dataset_specs:
                raise KeyError(f"dataset domain {domain!r} is not in the suite; it has {sorted(self.dataset_specs)}")
            spec = plain_spec(self.dataset_specs[domain]) if plain else dict(self.dataset_specs[domain])
            if root is not None:
                spec["root"] = str(root)
            opts = {**(spec.pop("options", {}) or {}), **(options or {})}
            ds = build_dataset(spec.pop("name"), spec.pop("root"), spec.pop("split", None), seed=self.seed,
                               **spec, **opts)
            if not labels:
                import dataclasses

                ds.samples = [dataclasses.replace(s, label=None) for s in ds.samples]
            self._datasets[key] = ds
        return self._datasets[key]

    def ground_truth(self, domain: str):
        """``domain``'s images with their label files, for diagnostics only (pseudo-label precision); None
        when the tree has no labels."""
        from bench.data import DataError

        spec = dict(self.dataset_specs[domain])
        spec["labels"] = True
        try:
            ctx = StageContext(self.out_dir, self.seed, {domain: spec}, self.train)
            ds = ctx.dataset(domain, plain=True)
        except (DataError, FileNotFoundError):
            return None
        return ds if all(s.label is not None for s in ds.samples[:1]) else None

    def train_config(self, iters: int, horizon: int | None, batch_sizes: dict):
        from bench.train import TrainConfig

        # harness-only keys: metrics window, torch threads of the local executor
        settings = {k: v for k, v in self.train.items() if k not in ("metrics_every", "threads")}
        return TrainConfig(max_iters=iters, horizon=horizon, batch_sizes=batch_sizes, seed=self.seed, **settings)

    def callbacks(self, total: int) -> list:
        return [MetricsLog(self.out_dir, self.metrics_every, total)]

    @property
    def device(self):
        from bench.train import resolve_device

        return resolve_device(self.train.get("device", "auto"))

    def save_model_spec(self, module: str, name: str, options: dict) -> None:
        """Record how to rebuild the trained segmenter from this stage's ``model.pt``."""
        _atomic_write(self.out_dir / "model.json", json.dumps({"module": module, "name": name, "options": options}))

    def start_model(self, p: dict):
        """The segmenter a stage trains: the upstream ``init`` model when the stage has one, else ``p["model"]``
        built with ``p["model_options"]`` from the local file ``p["init_weights"]`` (or randomly initialised)."""
        if "init" in self.inputs:
            return self.load_model("init")
        from bench.models import build_model
        from bench.plan import resolve_root

        init = p["init_weights"] and resolve_root(p["init_weights"])
        return build_model(p["model"], init_weights=init, **p["model_options"])

    def record_model(self, p: dict) -> None:
        """``model.json`` for a model made by :meth:`start_model`."""
        if "init" in self.inputs:
            self.copy_model_spec("init")
        else:
            self.save_model_spec("segmenter", p["model"], dict(p["model_options"]))

    def copy_model_spec(self, alias: str) -> None:
        """This stage's segmenter has the same architecture as the upstream ``alias``'s."""
        spec = json.loads((self.inputs[alias] / "model.json").read_text())
        self.save_model_spec(spec["module"], spec["name"], spec["options"])

    def load_model(self, alias: str = "model"):
        return load_model(self.inputs[alias])


def load_model(stage_dir: Path):
    """Rebuild and load the segmenter a train stage left in ``stage_dir`` (``model.json`` + ``model.pt``)."""
    import torch

    from bench.models import build_model
    from bench.train import MODEL_FILE

    stage_dir = Path(stage_dir)
    spec_path = stage_dir / "model.json"
    if not spec_path.is_file():
        raise FileNotFoundError(f"{spec_path}: not a train stage's output (no model.json); clear it with "
                                f"`bench cache clear {stage_dir.name}`")
    spec = json.loads(spec_path.read_text())
    model = build_model(spec["name"], **spec["options"])
    state = torch.load(stage_dir / MODEL_FILE, map_location="cpu", weights_only=True)
    model.load_state_dict(state[spec["module"]])
    return model


# -------------------------------------------------------------------------------------------- execute
def execute_stage(planned: PlannedStage, cache_root: str, dataset_specs: dict, train: dict,
                  threads: int | None = None) -> dict:
    """Run one planned stage into its cache directory (or return its cached result).

    Returns ``{"key", "result", "seconds", "cached", "host"}``. Safe to call in a Ray worker.
    """
    cache = StageCache(cache_root)
    key = planned.key
    if cache.is_done(key):
        return {"key": key, "result": cache.result(key), "seconds": 0.0, "cached": True, "host": socket.gethostname()}
    if threads:
        import torch

        torch.set_num_threads(max(1, int(threads)))
    for alias, up in planned.upstream.items():
        if not cache.is_done(up):
            raise RuntimeError(f"stage {planned.name}: upstream {alias!r} ({up}) is not complete")
    out_dir = cache.dir(key)
    out_dir.mkdir(parents=True, exist_ok=True)
    ctx = StageContext(out_dir, planned.seed, dataset_specs, dict(train),
                       inputs={a: cache.dir(k) for a, k in planned.upstream.items()},
                       metrics_every=int(train.get("metrics_every", 20)))
    meta = {"stage": planned.name, "kind": planned.stage.kind, "version": planned.stage.version,
            "params": planned.stage.params, "upstream": planned.upstream, "seed": planned.seed,
            "datasets": list(planned.stage.datasets), "host": socket.gethostname()}
    _atomic_write(out_dir / META, json.dumps(meta, indent=1, default=_jsonable))  # lets `cache ls` name partials
    t0 = time.perf_counter()
    result = planned.stage.fn(dict(planned.stage.params), ctx) or {}
    seconds = time.perf_counter() - t0
    result = dict(result)
    result.setdefault("stage_seconds", seconds)
    cache.mark_done(key, result, {**meta, "seconds": seconds})
    return {"key": key, "result": result, "seconds": seconds, "cached": False, "host": socket.gethostname()}
