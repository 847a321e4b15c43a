"""System metrics of a running stage, sampled in its worker into ``system.jsonl``.

MLflow's own monitor (``log_system_metrics``) logs from the process that owns the run; our stages run in Ray
workers while only the driver writes to MLflow (one SQLite writer). So the worker samples with psutil (MLflow's
metric names, so the UI's system-metrics view shows them) and the driver logs the rows, with their times, when
the stage ends. Without psutil nothing is sampled.
"""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path

SYSTEM = "system.jsonl"
INTERVAL = 10.0  # seconds, as MLflow's default sampling interval


def sample(proc) -> dict:
    """One row: the machine's CPU and memory (as MLflow names them), this process's RSS, CUDA memory in use."""
    import psutil

    vm = psutil.virtual_memory()
    row = {"time": time.time(), "system/cpu_utilization_percentage": psutil.cpu_percent(),
           "system/system_memory_usage_megabytes": vm.used / 1e6,
           "system/system_memory_usage_percentage": vm.used / vm.total * 100,
           "system/process_rss_megabytes": proc.memory_info().rss / 1e6}
    try:
        import torch

        for i in range(torch.cuda.device_count() if torch.cuda.is_initialized() else 0):
            row[f"system/gpu_{i}_memory_usage_megabytes"] = torch.cuda.memory_reserved(i) / 1e6
    except Exception:  # noqa: BLE001 - a metric, never a reason to fail the stage
        pass
    return row


class Sampler:
    """``with Sampler(out_dir): ...`` appends a row at the start, every ``interval`` seconds and at the end."""

    def __init__(self, out_dir: Path, interval: float = INTERVAL) -> None:
        self.path, self.interval = Path(out_dir) / SYSTEM, interval
        self._stop = threading.Event()
        self._thread = None

    def _write(self, proc) -> None:
        with self.path.open("a") as f:
            f.write(json.dumps(sample(proc)) + "\n")

    def _loop(self, proc) -> None:
        while not self._stop.wait(self.interval):
            self._write(proc)

    def __enter__(self):
        try:
            import psutil
        except ImportError:
            return self
        proc = psutil.Process()
        psutil.cpu_percent()  # the first call only starts the measuring window
        self._write(proc)
        self._thread = threading.Thread(target=self._loop, args=(proc,), daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        if self._thread is not None:
            self._stop.set()
            self._thread.join()
            import psutil

            self._write(psutil.Process())


def read_system(out_dir: Path) -> list[dict]:
    path = Path(out_dir) / SYSTEM
    if not path.is_file():
        return []
    return [json.loads(ln) for ln in path.read_text().splitlines() if ln.strip()]
