"""Progress for file-by-file work (data checks, evaluation): a rich bar on a terminal, plain lines otherwise."""

from __future__ import annotations

import sys
import time
from contextlib import contextmanager


@contextmanager
def task_progress(label: str, stream=None, every: float = 0.1):
    """Yields ``update(done, total, what="")``. Plain mode prints about every ``every`` fraction of the work."""
    stream = stream or sys.stderr
    if hasattr(stream, "isatty") and stream.isatty():
        from rich.console import Console
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

        with Progress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
                      TimeRemainingColumn(), console=Console(file=stream), transient=True) as bar:
            tasks: dict[str, int] = {}

            def update(done: int, total: int, what: str = "") -> None:
                key = f"{label} {what}".strip()
                if key not in tasks:
                    tasks[key] = bar.add_task(key, total=total)
                bar.update(tasks[key], completed=done)

            yield update
        return
    t0, last = time.perf_counter(), {}

    def update(done: int, total: int, what: str = "") -> None:
        step = max(1, int(total * every))
        if done == total or done - last.get(what, 0) >= step:
            last[what] = done
            print(f"{label} {what}: {done}/{total} ({time.perf_counter() - t0:.0f} s)".replace("  ", " "),
                  file=stream, flush=True)

    yield update
