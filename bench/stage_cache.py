"""The stage cache: ``root/<key>/`` per stage, its ``DONE`` manifest (size and sha256 of every output), verified
reads that move a corrupt entry aside, per-stage locks, and the key arguments ``bench cache`` accepts."""

from __future__ import annotations

import contextlib
import json
import re
import shutil
import sys
import time
from pathlib import Path
from typing import Any

from bench.fsio import atomic_write_text, file_lock, sha256_file

DONE, RESULT, META, METRICS, PROGRESS = "DONE", "result.json", "meta.json", "metrics.jsonl", "progress.json"
LOCKS = ".locks"
USERS = ".users.json"  # key → the suite rows (method, variant, seed, target) that use it, for `bench cache ls`
# Not outputs: the log, system metrics and progress are rewritten by later attempts; checkpoints only serve a resume.
UNRECORDED = re.compile(r"^(DONE|stage\.log|system\.jsonl|progress\.json|ckpt_\d+\.pt|\..*)$")
HASH_ON_READ = 4 << 20  # files up to this size are hashed on every read; bigger ones get a size check
CORRUPT = ".corrupt-"


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
