"""Stage keys and planning (executed by ``bench.stage_exec``, stored by ``bench.stage_cache``).

A stage's key hashes everything that determines its output: its name and code version, the config values
it reads, its upstream stages' keys, the specs and fingerprints of the datasets it reads, the seed, and the
runtime that changes numbers: the torch thread count (a CPU float reduction splits differently with another
thread count), the device, AMP, determinism and channels-last. A stage always runs with exactly the threads its
key records (its ``cpu`` share, or the suite's ``train.threads``), whatever else runs, under Ray and in-process
alike — so one key gives one result, bit for bit.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from typing import Any

from bench.fsio import sha256_file
from methods.base import Stage, closure

KEYED_TRAIN_SETTINGS = ("amp", "deterministic", "channels_last")  # harness settings that change numbers


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
