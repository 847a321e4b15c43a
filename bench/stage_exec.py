"""Running one planned stage (``bench.stage_keys``) into its cache directory: the stage context a method's stage
function gets (datasets, models, metrics, callbacks), and the execution under the stage's lock.

Its outputs live in ``<cache>/<key>/``; the directory is complete only once ``DONE`` exists, written last and
atomically, holding the size and sha256 of every output file. A directory without ``DONE`` is a partial stage:
running it again resumes from its last checkpoint (the trainer looks there). A stage is computed under an
exclusive file lock (``<cache>/.locks/<key>.lock``): a second run waits for it and then reads its result.
Reading a done stage checks every file's size and the hash of the small ones; a corrupt entry is moved aside
(``<key>.corrupt-<time>``) and recomputed.
"""

from __future__ import annotations

import contextlib
import json
import socket
import time
from dataclasses import dataclass, field
from pathlib import Path

from bench.fsio import atomic_write_text
from bench.stage_cache import META, METRICS, PROGRESS, CorruptEntry, StageCache, _jsonable
from bench.stage_keys import PlannedStage, stage_runtime
from bench.tracking import cpu_environment


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
            # the time: MLflow shows each point when it was computed, not when the driver logged it
            row = {"step": step, "time": time.time(), **{k: v / self._n for k, v in self._sums.items()}}
            with self.path.open("a") as f:
                f.write(json.dumps(row) + "\n")
            self._sums, self._n = {}, 0
        now = time.monotonic()
        if now - self._last_progress > 1.0 or step == self.total:
            self._last_progress = now
            atomic_write_text(self.progress, json.dumps({"step": step, "total": self.total}))


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
        atomic_write_text(self.out_dir / "model.json", json.dumps({"module": module, "name": name, "options": options}))

    def start_model(self, p: dict):
        """The segmenter a stage trains: the upstream ``init`` model when the stage has one, else ``p["model"]``
        built with ``p["model_options"]`` from the local file ``p["init_weights"]`` (or randomly initialised)."""
        if "init" in self.inputs:
            return self.load_model("init")
        from bench.models import build_model
        from bench.paths import resolve_root

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
    path = stage_dir / MODEL_FILE
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except (OSError, RuntimeError, EOFError, ValueError) as e:  # a truncated zip: "PytorchStreamReader failed ..."
        raise RuntimeError(f"{path}: unreadable model file ({str(e).splitlines()[0] if str(e) else type(e).__name__})"
                           f"; check the entry with `bench cache verify {stage_dir.name}` (moves a corrupt one "
                           f"aside so the next run recomputes it) or remove it with "
                           f"`bench cache clear {stage_dir.name}`") from e
    model.load_state_dict(state[spec["module"]])
    return model


# -------------------------------------------------------------------------------------------- execute
@contextlib.contextmanager
def torch_threads(n: int):
    """Run the block with exactly ``n`` intra-op torch threads, restoring the caller's count afterwards (the
    local executor runs stages in the driver). Inter-op threads are set once per process where torch still
    allows it; they only schedule independent ops and never change a result."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(n)
    if torch.get_num_interop_threads() != n:
        with contextlib.suppress(RuntimeError):  # "cannot set ... after parallel work has started"
            torch.set_num_interop_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def execute_stage(planned: PlannedStage, cache_root: str, dataset_specs: dict, train: dict) -> dict:
    """Run one planned stage into its cache directory (or return its cached result).

    The stage runs under its lock, with the thread count and device its key records. A run that finds the lock
    held waits, then returns the other run's result. Returns ``{"key", "result", "seconds", "cached", "host"}``.
    Safe to call in a Ray worker.
    """
    cache = StageCache(cache_root)
    key = planned.key
    runtime = planned.runtime or stage_runtime(planned.stage, train)
    host = socket.gethostname()

    def waiting() -> None:
        print(f"stage {key}: another run is computing it; waiting for its result", flush=True)

    with cache.lock(key, on_wait=waiting):
        result = cache.cached_result(key, locked=True)
        if result is not None:
            return {"key": key, "result": result, "seconds": 0.0, "cached": True, "host": host}
        for alias, up in planned.upstream.items():
            if not cache.is_done(up):
                raise RuntimeError(f"stage {planned.name}: upstream {alias!r} ({up}) is not complete")
            problems = cache.verify(up)
            if problems:
                raise CorruptEntry(up, cache.dir(up), problems)
        out_dir = cache.dir(key)
        out_dir.mkdir(parents=True, exist_ok=True)
        train = {**train, "device": runtime["device"]}
        ctx = StageContext(out_dir, planned.seed, dataset_specs, train,
                           inputs={a: cache.dir(k) for a, k in planned.upstream.items()},
                           metrics_every=int(train.get("metrics_every", 20)))
        meta = {"stage": planned.name, "kind": planned.stage.kind, "version": planned.stage.version,
                "params": planned.stage.params, "upstream": planned.upstream, "seed": planned.seed,
                "datasets": list(planned.stage.datasets), "runtime": runtime, "host": host,
                "cpu": cpu_environment(), "started": time.time()}  # cpu: the kernels' ISA moves float sums
        # lets `cache ls` name partials
        atomic_write_text(out_dir / META, json.dumps(meta, indent=1, default=_jsonable))
        from bench.sysmetrics import Sampler

        t0 = time.perf_counter()
        with torch_threads(runtime["threads"]), Sampler(out_dir):
            result = planned.stage.fn(dict(planned.stage.params), ctx) or {}
        seconds = time.perf_counter() - t0
        result = dict(result)
        result.setdefault("stage_seconds", seconds)
        ended = meta["started"] + seconds
        cache.mark_done(key, result, {**meta, "seconds": seconds, "ended": ended})
    return {"key": key, "result": result, "seconds": seconds, "cached": False, "host": host,
            "started": meta["started"], "ended": ended}
