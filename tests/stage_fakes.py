"""Tiny stage functions for pipeline/scheduler tests (importable by Ray workers via PYTHONPATH)."""

import json
from pathlib import Path

from methods.base import Stage


def count_call(ctx) -> None:
    """Every real execution appends its key to ``<cache root>/calls.txt`` (so tests can count re-runs)."""
    with open(ctx.out_dir.parent / "calls.txt", "a") as f:
        f.write(f"{ctx.out_dir.name}\n")


def produce(p, ctx):
    count_call(ctx)
    value = p["value"] + sum(json.loads((d / "value.json").read_text()) for d in ctx.inputs.values())
    (ctx.out_dir / "value.json").write_text(json.dumps(value))
    return {"value": value}


def flaky(p, ctx):
    """Fails on the first ``fail_times`` attempts (counted in its own directory), then succeeds."""
    count_call(ctx)
    marker = ctx.out_dir / "attempts"
    n = int(marker.read_text()) if marker.is_file() else 0
    marker.write_text(str(n + 1))
    if n < p["fail_times"]:
        raise RuntimeError(f"planned failure {n + 1}")
    (ctx.out_dir / "value.json").write_text("1")
    return {"value": 1}


def where(p, ctx):
    """Reports the GPU ids Ray gave this task and the device the harness picked."""
    import ray

    count_call(ctx)
    (ctx.out_dir / "value.json").write_text("0")
    return {"gpu_ids": [str(g) for g in ray.get_gpu_ids()], "device": str(ctx.device)}


def chain(a: int, b: int, extra: int = 0, gpu: float = 1.0) -> Stage:
    """root(a) → mid(b) → leaf(extra): ``extra`` is read only by the leaf."""
    root = Stage("fake.root", "fit", produce, {"value": a}, gpu=gpu)
    mid = Stage("fake.mid", "train", produce, {"value": b}, upstream={"x": root}, gpu=gpu)
    return Stage("fake.leaf", "label", produce, {"value": extra}, upstream={"x": mid}, gpu=gpu)


def calls(path: Path) -> list[str]:
    return path.read_text().split() if path.is_file() else []


def evaluated_row(tag: int, long: bool = False, gpu: float = 0.0) -> Stage:
    """fit → train (→ train when ``long``) → eval: a method's row; ``tag`` keeps two rows' keys apart."""
    top = Stage("fake.root", "fit", produce, {"value": tag}, gpu=gpu)
    top = Stage("fake.mid", "train", produce, {"value": 1}, upstream={"x": top}, gpu=gpu)
    if long:
        top = Stage("fake.mid2", "train", produce, {"value": 2}, upstream={"x": top}, gpu=gpu)
    return Stage("fake.eval", "eval", produce, {"value": 0}, upstream={"x": top}, gpu=gpu)
