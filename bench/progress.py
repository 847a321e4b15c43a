"""Training progress: a rich bar on a terminal, plain periodic lines otherwise (CI logs, Ray workers)."""

from __future__ import annotations

import sys
import time
from collections import defaultdict
from typing import IO


def _fmt(value: float) -> str:
    return f"{value:.3g}" if abs(value) < 1e-2 or abs(value) >= 1e4 else f"{value:.4f}"


def _hms(seconds: float) -> str:
    s = int(round(seconds))
    return f"{s // 3600}:{s % 3600 // 60:02d}:{s % 60:02d}"


class TrainProgress:
    """Report iterations ``start+1 .. total``.

    Plain mode prints one line every ``log_every`` iterations with the window's mean of every
    ``loss/*`` and ``lr/*`` metric, the rate and the ETA. Rich mode (``use_rich`` None = auto: stdout is a
    terminal) draws a bar with it/s, ETA and the latest losses. ``log_every <= 0`` silences plain mode.
    """

    def __init__(
        self, total: int, start: int, log_every: int, use_rich: bool | None = None, stream: IO | None = None
    ) -> None:
        self.total, self.log_every = total, log_every
        self.stream = stream if stream is not None else sys.stdout
        if use_rich is None:
            use_rich = hasattr(self.stream, "isatty") and self.stream.isatty()
        self._sums: dict[str, float] = defaultdict(float)
        self._count = 0
        self._window_start = (start, time.perf_counter())
        self._bar = None
        if use_rich:
            from rich.console import Console
            from rich.progress import (
                BarColumn,
                MofNCompleteColumn,
                Progress,
                TextColumn,
                TimeElapsedColumn,
                TimeRemainingColumn,
            )

            self._bar = Progress(
                TextColumn("[bold]train"),
                BarColumn(),
                MofNCompleteColumn(),
                TextColumn("{task.fields[rate]}"),
                TimeElapsedColumn(),
                TimeRemainingColumn(),
                TextColumn("{task.fields[metrics]}"),
                console=Console(file=self.stream),
                refresh_per_second=4,
            )
            self._bar.start()
            self._task = self._bar.add_task("train", total=total, completed=start, rate="", metrics="")

    def update(self, step: int, metrics: dict[str, float]) -> None:
        """Record that iteration ``step`` (1-based) finished with ``metrics``."""
        shown = {k: v for k, v in metrics.items() if k.startswith(("loss/", "lr/"))}
        if self._bar is not None:
            speed = self._bar.tasks[0].speed
            losses = " ".join(f"{k[5:]}={_fmt(v)}" for k, v in shown.items() if k.startswith("loss/"))
            self._bar.update(self._task, completed=step, rate=f"{speed:.2f} it/s" if speed else "", metrics=losses)
            return
        for k, v in shown.items():
            self._sums[k] += v
        self._count += 1
        if self.log_every > 0 and (step % self.log_every == 0 or step == self.total):
            it0, t0 = self._window_start
            now = time.perf_counter()
            rate = (step - it0) / max(now - t0, 1e-9)
            means = " ".join(f"{k}={_fmt(v / self._count)}" for k, v in self._sums.items())
            eta = _hms((self.total - step) / rate) if rate > 0 else "?"
            self.message(f"it {step}/{self.total} {means} {rate:.2f} it/s eta {eta}")
            self._sums.clear()
            self._count = 0
            self._window_start = (step, now)

    def message(self, text: str) -> None:
        """Print one line above the bar (or plainly)."""
        if self._bar is not None:
            self._bar.console.print(text)
        else:
            print(text, file=self.stream, flush=True)

    def close(self) -> None:
        """Stop the live bar, if any."""
        if self._bar is not None:
            self._bar.stop()
            self._bar = None
