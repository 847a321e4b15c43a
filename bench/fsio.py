"""Files shared by concurrent runs: unique temp names for atomic writes, OS file locks, content hashes.

Several ``bench`` processes (two runs on one results root, Ray workers on shared storage) may write the same
paths. Every atomic write goes through a temp name no other writer can pick (pid + uuid), so one writer can
never rename or truncate another's half-written file; a stage, the MLflow database and MiniCity are created
under an exclusive ``flock`` that the OS releases when its holder dies (``kill -9`` included).
"""

from __future__ import annotations

import fcntl
import hashlib
import os
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path


def unique_tmp(path: str | Path) -> Path:
    """A temp name in ``path``'s directory that no other process or thread picks (hidden, ends in .tmp)."""
    path = Path(path)
    return path.with_name(f".{path.name}.{os.getpid()}.{uuid.uuid4().hex[:12]}.tmp")


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    """Write to a unique temp file, fsync, then ``os.replace``: readers see the old file or the new one."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = unique_tmp(path)
    try:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def atomic_write_text(path: str | Path, text: str) -> None:
    atomic_write_bytes(path, text.encode())


@contextmanager
def file_lock(path: str | Path, on_wait: Callable[[], None] | None = None) -> Iterator[None]:
    """Hold an exclusive ``flock`` on ``path`` (created if missing) for the block; ``on_wait`` is called once
    when another holder makes us wait. Lock files are never deleted: unlinking one while a process waits on it
    would let a third process lock a new file of the same name."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            if on_wait is not None:
                on_wait()
            fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # releases the lock


def sha256_file(path: str | Path, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()
