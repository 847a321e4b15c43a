"""Stages and the content-addressed stage cache.

A stage's key hashes everything that determines its output: its name and code version, the config values
it reads, its upstream stages' keys, the specs and fingerprints of the datasets it reads, the seed, and the
runtime that changes numbers: the torch thread count (a CPU float reduction splits differently with another
thread count), the device, AMP, determinism and channels-last. A stage always runs with exactly the threads its
key records (its ``cpu`` share, or the suite's ``train.threads``), whatever else runs, under Ray and in-process
alike — so one key gives one result, bit for bit.

Its outputs live in ``<cache>/<key>/``; the directory is complete only once ``DONE`` exists, written last and
atomically, holding the size and sha256 of every output file. A directory without ``DONE`` is a partial stage:
running it again resumes from its last checkpoint (the trainer looks there). A stage is computed under an
exclusive file lock (``<cache>/.locks/<key>.lock``): a second run waits for it and then reads its result.
Reading a done stage checks every file's size and the hash of the small ones; a corrupt entry is moved aside
(``<key>.corrupt-<time>``) and recomputed.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import re
import shutil
import socket
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench.fsio import atomic_write_text, file_lock, sha256_file
from methods.base import Stage, closure

DONE, RESULT, META, METRICS, PROGRESS = "DONE", "result.json", "meta.json", "metrics.jsonl", "progress.json"
KEYED_TRAIN_SETTINGS = ("amp", "deterministic", "channels_last")  # harness settings that change numbers
LOCKS = ".locks"
USERS = ".users.json"  # key → the suite rows (method, variant, seed, target) that use it, for `bench cache ls`
# Not outputs: the log, system metrics and progress are rewritten by later attempts; checkpoints only serve a resume.
UNRECORDED = re.compile(r"^(DONE|stage\.log|system\.jsonl|progress\.json|ckpt_\d+\.pt|\..*)$")
HASH_ON_READ = 4 << 20  # files up to this size are hashed on every read; bigger ones get a size check
CORRUPT = ".corrupt-"


def _canonical(obj: Any) -> str:
    return json.dumps(obj, sort_keys=True, default=str, separators=(",", ":"))


def resolve_device_name(device: str | None) -> str:
    """ "auto" → "cuda" when this process sees a GPU, else "cpu" (resolved once, by the planner, so the key
    names the device the stage really runs on)."""
    device = str(device or "auto")
    if device != "auto":
        return device
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def stage_runtime(stage: Stage, train: dict) -> dict:
    """How the stage runs, as far as it changes numbers: torch threads (``train.threads``, else the stage's
    ``cpu`` share; at least 1) and the device (a stage that asks for no GPU runs on the CPU)."""
    threads = train.get("threads")
    threads = int(threads) if threads else max(1, int(stage.cpu))
    device = "cpu" if stage.gpu == 0 else resolve_device_name(train.get("device"))
    return {"threads": threads, "device": device}


_FILE_HASHES: dict[tuple, str] = {}


def init_file_hashes(params: dict) -> dict:
    """``{param: sha256}`` of the local init files a stage reads (top-level ``*weights`` params naming a file),
    so that replacing a weights file at the same path (e.g. a rebuilt MiniCity pretraining) changes the key.
    Hashes are remembered per (path, size, mtime) for the planner's many calls."""
    from bench.paths import resolve_root

    out = {}
    for name, value in sorted(params.items()):
        if not (name.endswith("weights") and isinstance(value, str) and value):
            continue
        path = resolve_root(value)
        if not path.is_file():
            continue  # a missing file fails where the stage loads it, with where to get it
        st = path.stat()
        memo = (str(path), st.st_size, st.st_mtime_ns)
        if memo not in _FILE_HASHES:
            _FILE_HASHES[memo] = sha256_file(path)
        out[name] = _FILE_HASHES[memo]
    return out


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
        # every kind: label, fit and eval stages run networks too (eval under AMP on a GPU)
        "train": {k: train.get(k) for k in KEYED_TRAIN_SETTINGS},
        "runtime": stage_runtime(stage, train),
    }
    files = init_file_hashes(stage.params)
    if files:  # only then: keys of stages that read no init file stay what they were
        payload["files"] = files
    return stage.name.replace(".", "-") + "-" + hashlib.sha256(_canonical(payload).encode()).hexdigest()[:16]


@dataclass
class PlannedStage:
    """A stage bound to one seed, with its key and the keys of its upstream stages."""

    stage: Stage
    key: str
    seed: int
    upstream: dict  # alias -> key
    runtime: dict | None = None  # {"threads", "device"}: what the key records, so what the stage runs with

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
        out.append(PlannedStage(s, keys[id(s)], seed, up, stage_runtime(s, train)))
    return out


# -------------------------------------------------------------------------------------------- cache
class CorruptEntry(RuntimeError):
    """A done cache entry whose files do not match what its ``DONE`` recorded."""

    def __init__(self, key: str, path: Path, problems: list[str]) -> None:
        self.key, self.path, self.problems = key, path, problems
        super().__init__(f"cache entry {path} is corrupt: " + "; ".join(problems))


def _manifest(d: Path) -> dict:
    """{relative path: {"size", "sha256"}} of every output file in a stage directory."""
    out = {}
    for f in sorted(d.rglob("*")):
        rel = f.relative_to(d)
        if f.is_file() and not any(UNRECORDED.match(part) for part in rel.parts):
            out[rel.as_posix()] = {"size": f.stat().st_size, "sha256": sha256_file(f)}
    return out


class StageCache:
    """``root/<key>/`` per stage; ``DONE`` marks a complete one and records its files' sizes and hashes."""

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)

    def dir(self, key: str) -> Path:
        return self.root / key

    def lock(self, key: str, on_wait=None):
        """The exclusive lock under which ``key`` is computed (or moved aside)."""
        return file_lock(self.root / LOCKS / f"{key}.lock", on_wait)

    def is_done(self, key: str) -> bool:
        """``DONE`` exists (cheap; :meth:`verify` says whether the entry is intact)."""
        return (self.root / key / DONE).is_file()

    def verify(self, key: str, full: bool = False) -> list[str]:
        """Problems of a done entry, one per file ([] = intact): every recorded file must exist with its size;
        files up to ``HASH_ON_READ`` bytes (all of them with ``full``) must have their recorded sha256."""
        d = self.root / key
        try:
            record = json.loads((d / DONE).read_text())
        except (OSError, UnicodeDecodeError, json.JSONDecodeError):
            record = None
        if not isinstance(record, dict) or not isinstance(record.get("files"), dict):
            # a DONE from before checksums: only the result can be checked
            try:
                json.loads((d / RESULT).read_text())
                return []
            except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
                return [f"{RESULT}: unreadable ({type(e).__name__}: {e})"]
        problems = []
        for rel, rec in record["files"].items():
            f = d / rel
            if not f.is_file():
                problems.append(f"{rel}: missing")
                continue
            size = f.stat().st_size
            if size != rec["size"]:
                problems.append(f"{rel}: {size} bytes, DONE recorded {rec['size']} (truncated or overwritten)")
            elif (full or size <= HASH_ON_READ) and sha256_file(f) != rec["sha256"]:
                problems.append(f"{rel}: sha256 differs from the one DONE recorded (edited or corrupt)")
        if RESULT not in record["files"]:
            problems.append(f"{RESULT}: not recorded in DONE")
        return problems

    def result(self, key: str) -> dict:
        """The result of a done stage, after :meth:`verify`; raises ``CorruptEntry`` naming the bad files."""
        if not self.is_done(key):
            raise FileNotFoundError(f"stage {key} is not complete ({self.root / key} has no {DONE})")
        problems = self.verify(key)
        if problems:
            raise CorruptEntry(key, self.root / key, problems)
        return json.loads((self.root / key / RESULT).read_text())

    def move_aside(self, key: str) -> Path:
        """Rename a corrupt entry to ``<key>.corrupt-<time>`` (kept for inspection; ``cache clear`` removes it)
        so that the stage is computed afresh."""
        aside = self.root / f"{key}{CORRUPT}{time.strftime('%Y%m%d-%H%M%S')}"
        n = 1
        while aside.exists():
            aside = aside.with_name(f"{key}{CORRUPT}{time.strftime('%Y%m%d-%H%M%S')}-{n}")
            n += 1
        (self.root / key).rename(aside)
        return aside

    def cached_result(self, key: str, report=None, locked: bool = False) -> dict | None:
        """The verified result of a done stage; None when it is not done. A corrupt entry is reported through
        ``report(line)`` (default: stderr), moved aside, and None returned: the caller recomputes it.
        ``locked``: the caller holds the stage's lock (a second flock on it from this process would wait forever)."""
        if not self.is_done(key):
            return None
        try:
            return self.result(key)
        except CorruptEntry as e:
            with contextlib.nullcontext() if locked else self.lock(key):
                if not self.is_done(key):
                    return None  # another run moved it aside meanwhile
                if not self.verify(key):
                    return json.loads((self.root / key / RESULT).read_text())  # another run redid it meanwhile
                aside = self.move_aside(key)
            (report or (lambda m: print(m, file=sys.stderr)))(f"{e}; moved to {aside.name}, recomputing the stage")
            return None

    def mark_done(self, key: str, result: dict, meta: dict) -> None:
        d = self.root / key
        atomic_write_text(d / RESULT, json.dumps(result, indent=1, default=_jsonable))
        atomic_write_text(d / META, json.dumps(meta, indent=1, default=_jsonable))
        record = {"done": time.strftime("%Y-%m-%dT%H:%M:%S"), "files": _manifest(d)}
        atomic_write_text(d / DONE, json.dumps(record, indent=1))  # last

    def record_users(self, suite: str, experiments) -> None:
        """Remember which rows of ``suite`` use each stage (merged with earlier runs'; a cache is shared by suites)."""
        with file_lock(self.root / LOCKS / "users.lock"):
            index = self.users()
            for e in experiments:
                row = {"suite": suite, "method": e.method, "variant": e.variant, "seed": e.seed, "target": e.target}
                for ps in e.stages:
                    rows = index.setdefault(ps.key, [])
                    if row not in rows:
                        rows.append(row)
            atomic_write_text(self.root / USERS, json.dumps(index, indent=0))

    def users(self) -> dict[str, list[dict]]:
        """The index :meth:`record_users` keeps ({} when missing or unreadable: it is only a listing aid)."""
        try:
            index = json.loads((self.root / USERS).read_text())
            return index if isinstance(index, dict) else {}
        except (OSError, ValueError):
            return {}

    def entries(self) -> list[dict]:
        """One dict per cache directory: key, stage, state (done | partial | corrupt), bytes, modified, meta.
        An unreadable ``meta.json`` gives ``meta = {}`` and ``meta_error``; it never stops the listing."""
        out = []
        if not self.root.is_dir():
            return out
        for d in sorted(p for p in self.root.iterdir() if p.is_dir() and not p.name.startswith(".")):
            meta_path, meta, meta_error = d / META, {}, ""
            if meta_path.is_file():
                try:
                    meta = json.loads(meta_path.read_text())
                    if not isinstance(meta, dict):
                        raise ValueError(f"a JSON {type(meta).__name__}, not an object")
                except (OSError, UnicodeDecodeError, ValueError) as e:
                    meta, meta_error = {}, f"{meta_path}: unreadable ({type(e).__name__})"
            files = [f for f in d.rglob("*") if f.is_file()]
            state = "corrupt" if CORRUPT in d.name else "done" if (d / DONE).is_file() else "partial"
            out.append({
                "key": d.name, "stage": meta.get("stage", d.name.split(CORRUPT)[0].rsplit("-", 1)[0]),
                "state": state,
                "bytes": sum(f.stat().st_size for f in files),
                "modified": max((f.stat().st_mtime for f in files), default=d.stat().st_mtime),
                "meta": meta, "meta_error": meta_error,
            })
        return out

    def clear(self, keys=None, stage: str | None = None, partial_only: bool = False) -> list[dict]:
        """Delete matching entries; returns what was removed. ``keys``: each a whole stage part of a key
        (``source_only-train``: every entry of that stage) or that plus a prefix of the hash; never a bare
        prefix of a name (``s``, ``""``), which would sweep unrelated stages (:func:`key_matches`)."""
        for k in keys or ():
            check_key_prefix(k)
        removed = []
        for e in self.entries():
            if keys and not any(key_matches(e["key"], k) for k in keys):
                continue
            if stage and e["stage"] != stage:
                continue
            if partial_only and e["state"] != "partial":
                continue
            with self.lock(e["key"].split(CORRUPT)[0]):
                shutil.rmtree(self.root / e["key"], ignore_errors=True)
            removed.append(e)
        return removed


KEY_CHARS = re.compile(r"^[a-z0-9_][a-z0-9_.-]*$")


def check_key_prefix(prefix: str) -> str:
    """``cache clear KEY``: refuse an empty or wildcard-like argument (``""``, ``*``, ``.``, a path) outright."""
    if not isinstance(prefix, str) or not KEY_CHARS.match(prefix):
        raise ValueError(f"cache key {prefix!r} is not a key: give one as `bench cache ls` prints it (e.g. "
                         "source_only-train-106b…, or the stage part source_only-train for all of that stage), or use "
                         "--stage NAME, --partial or --all")
    return prefix


def key_matches(key: str, prefix: str) -> bool:
    """``prefix`` is ``key``'s whole stage part, or the stage part, ``-`` and a prefix of the hash (a moved-aside
    ``<key>.corrupt-<time>`` entry matches as its key does, or by its full name)."""
    base = key.split(CORRUPT)[0]
    stage_part = base.rsplit("-", 1)[0]
    return prefix in (stage_part, key) or (prefix.startswith(stage_part + "-") and base.startswith(prefix))


def _jsonable(obj: Any) -> Any:
    if hasattr(obj, "tolist"):
        return obj.tolist()
    if isinstance(obj, Path):
        return str(obj)
    return str(obj)


def _atomic_write(path: Path, text: str) -> None:
    atomic_write_text(path, text)


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
                "datasets": list(planned.stage.datasets), "runtime": runtime, "host": host, "started": time.time()}
        _atomic_write(out_dir / META, json.dumps(meta, indent=1, default=_jsonable))  # lets `cache ls` name partials
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
