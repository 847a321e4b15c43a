"""``bench perf``: measured figures that go into notes (never asserted in unit tests)."""

from __future__ import annotations

import time

import numpy as np
import torch

from bench.metrics import ConfusionMatrix


def evaluator_throughput(images: int = 20, height: int = 1024, width: int = 2048, seed: int = 0) -> str:
    """Pixels/s of ``ConfusionMatrix.update`` (CPU, and GPU when present) vs a numpy bincount-per-image loop."""
    rng = np.random.default_rng(seed)
    preds = [rng.integers(0, 19, (height, width)).astype(np.int64) for _ in range(images)]
    gts = [np.where(rng.random((height, width)) < 0.1, 255, rng.integers(0, 19, (height, width))) for _ in preds]
    px = images * height * width

    t = time.perf_counter()
    ref = np.zeros((19, 19), np.int64)
    for p, g in zip(preds, gts):  # AdaptSegNet's fast_hist, with the range check it lacks
        k = (g >= 0) & (g < 19)
        ref += np.bincount(19 * g[k] + p[k], minlength=361).reshape(19, 19)
    t_np = time.perf_counter() - t
    lines = [f"{images} images {width}x{height} ({px / 1e6:.0f} Mpx)",
             f"numpy bincount per image : {px / t_np / 1e6:8.1f} Mpx/s"]

    devices = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
    for dev in devices:
        tp = [torch.from_numpy(p).to(dev) for p in preds]
        tg = [torch.from_numpy(g).to(dev) for g in gts]
        cm = ConfusionMatrix(19, device=dev)
        cm.update(tp[0], tg[0])  # warm-up (CUDA context, allocator)
        cm = ConfusionMatrix(19, device=dev)
        if dev == "cuda":
            torch.cuda.synchronize()
        t = time.perf_counter()
        for p, g in zip(tp, tg):
            cm.update(p, g)
        if dev == "cuda":
            torch.cuda.synchronize()
        dt = time.perf_counter() - t
        assert np.array_equal(cm.numpy(), ref), "evaluator disagrees with the numpy baseline"
        lines.append(f"ConfusionMatrix ({dev:4s})   : {px / dt / 1e6:8.1f} Mpx/s  (matrix identical to numpy)")
    return "\n".join(lines)
