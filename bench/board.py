"""The driver's one progress display for a suite: a rich board on a terminal, plain lines otherwise."""

from __future__ import annotations

import json
import sys
import time


class Board:
    """Overall stage count plus one line per running stage (its iterations from ``progress.json``)."""

    def __init__(self, total: int, labels: dict, use_rich: bool | None = None, plain_every: float = 30.0) -> None:
        self.total, self.labels = total, labels  # key -> human label ("source_only.train seed 0")
        self.finished_count = 0
        self.plain_every, self._last_plain = plain_every, time.monotonic()
        self._running: dict[str, tuple] = {}
        self._progress = None
        if use_rich is None:
            use_rich = sys.stdout.isatty()
        if use_rich:
            from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

            self._progress = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                                      TimeElapsedColumn(), refresh_per_second=2)
            self._progress.start()
            self._overall = self._progress.add_task("[bold]stages", total=total)

    def _label(self, key: str) -> str:
        return self.labels.get(key, key)

    def message(self, text: str) -> None:
        if self._progress:
            self._progress.console.log(text)
        else:
            print(text, flush=True)

    def started(self, planned, out_dir) -> None:
        task = self._progress.add_task(f"  {self._label(planned.key)}", total=None) if self._progress else None
        self._running[planned.key] = (task, time.monotonic())
        self.message(f"start  {self._label(planned.key)} → {out_dir}")

    def finished(self, planned, outcome) -> None:
        task, t0 = self._running.pop(planned.key, (None, None))
        if task is not None:
            self._progress.remove_task(task)
        self.finished_count += 1
        if self._progress:
            self._progress.update(self._overall, completed=self.finished_count)
        extra = f" in {outcome.seconds:.0f} s" if outcome.status == "done" else ""
        why = f": {outcome.error}" if outcome.error and outcome.status != "done" else ""
        metric = outcome.result.get("miou_19") if outcome.result else None
        score = f", mIoU {100 * metric:.1f}" if metric is not None else ""
        self.message(f"{outcome.status:6s} {self._label(planned.key)}{extra}{score}{why} "
                     f"[{self.finished_count}/{self.total}]")

    def poll(self, progress_files: dict) -> None:
        states = {}
        for key, path in progress_files.items():
            try:
                states[key] = json.loads(path.read_text())
            except (OSError, ValueError):
                continue
        if self._progress:
            for key, st in states.items():
                task = self._running.get(key, (None,))[0]
                if task is not None:
                    self._progress.update(task, completed=st.get("step", 0), total=st.get("total"))
        elif time.monotonic() - self._last_plain >= self.plain_every and states:
            self._last_plain = time.monotonic()
            parts = [f"{self._label(k)} {s.get('step')}/{s.get('total')}" for k, s in states.items()]
            print("running: " + "; ".join(parts), flush=True)

    def close(self) -> None:
        if self._progress:
            self._progress.stop()
