"""Checkpoint files: RNG state capture, atomic writes, rotation and safe loading.

Everything written here loads with ``torch.load(..., weights_only=True)``: RNG states are stored as
tensors, lists and ints, never as pickled custom objects.
"""

from __future__ import annotations

import os
import random
import re
import warnings
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import torch

from bench.fsio import unique_tmp

CKPT_RE = re.compile(r"^ckpt_(\d{8,})\.pt$")


def checkpoint_path(out_dir: str | Path, iteration: int) -> Path:
    """Where the checkpoint after ``iteration`` completed iterations lives."""
    return Path(out_dir) / f"ckpt_{iteration:08d}.pt"


def list_checkpoints(out_dir: str | Path) -> list[tuple[int, Path]]:
    """``(iteration, path)`` of every checkpoint in ``out_dir``, oldest first."""
    d = Path(out_dir)
    if not d.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in d.iterdir() if (m := CKPT_RE.match(p.name))]
    return sorted(found)


def rng_state() -> dict[str, Any]:
    """Python ``random``, NumPy global, torch CPU and (if initialised) CUDA RNG states, weights_only-safe."""
    version, py_state, gauss = random.getstate()
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    state: dict[str, Any] = {
        "python": {"version": version, "state": list(py_state), "gauss": gauss},
        "numpy": {
            "kind": kind,
            "keys": torch.from_numpy(keys.astype(np.int64)),
            "pos": int(pos),
            "has_gauss": int(has_gauss),
            "cached": float(cached),
        },
        "torch": torch.get_rng_state(),
        "cuda": [],
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    """Restore what :func:`rng_state` captured."""
    py = state["python"]
    random.setstate((py["version"], tuple(py["state"]), py["gauss"]))
    npst = state["numpy"]
    keys = npst["keys"].numpy().astype(np.uint32)
    np.random.set_state((npst["kind"], keys, npst["pos"], npst["has_gauss"], npst["cached"]))
    torch.set_rng_state(state["torch"])
    if state["cuda"] and torch.cuda.is_available():
        if len(state["cuda"]) != torch.cuda.device_count():
            warnings.warn(
                f"checkpoint has CUDA RNG states for {len(state['cuda'])} devices, this machine has "
                f"{torch.cuda.device_count()}; CUDA randomness will not continue exactly",
                stacklevel=2,
            )
        for i, s in enumerate(state["cuda"][: torch.cuda.device_count()]):
            torch.cuda.set_rng_state(s, i)


@contextmanager
def preserved_rng():
    """Run a block (e.g. evaluation) without letting it move any global RNG the training reads."""
    saved = rng_state()
    try:
        yield
    finally:
        set_rng_state(saved)


def atomic_save(obj: Any, path: str | Path) -> None:
    """``torch.save`` to a temporary file in the same directory, fsync, then ``os.replace``.

    A crash mid-write leaves the previous file intact and at most a hidden ``*.tmp`` behind, never a truncated
    checkpoint under the real name. The temp name is unique per writer (pid + uuid): two processes saving the
    same checkpoint never rename each other's file away.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = unique_tmp(path)
    try:
        with open(tmp, "wb") as f:
            torch.save(obj, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def prune_checkpoints(out_dir: str | Path, keep: int) -> None:
    """Delete all but the newest ``keep`` checkpoints (``keep <= 0`` keeps all)."""
    if keep <= 0:
        return
    for _, p in list_checkpoints(out_dir)[:-keep]:
        p.unlink(missing_ok=True)


def load_latest(out_dir: str | Path) -> tuple[int, dict] | None:
    """Load the newest readable checkpoint, falling back to older ones if the newest is unreadable."""
    errors = []
    for it, p in reversed(list_checkpoints(out_dir)):
        try:
            return it, torch.load(p, map_location="cpu", weights_only=True)
        except Exception as e:  # noqa: BLE001 - any unreadable file: try the previous one, report all
            errors.append(f"{p}: {type(e).__name__}: {e}")
            warnings.warn(f"skipping unreadable checkpoint {p}: {e}", stacklevel=2)
    if errors:
        raise RuntimeError(
            "no checkpoint in {} could be loaded; delete them to start over:\n  {}".format(out_dir, "\n  ".join(errors))
        )
    return None
