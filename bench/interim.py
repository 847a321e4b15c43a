"""Interim reports: the tables of every seed whose experiments have all finished, while later seeds still run.

The scheduler prefers seed 0's stages to seed 1's (``scheduler.submission_order``), so on a 2-core machine the
3-seed MiniCity default has seed 0's whole table at about a third of its wall time. This writes it then, to the
same ``report.md`` the run rewrites at its end, with a banner that says it is interim.
"""

from __future__ import annotations

import sys
import time


class SeedProgress:
    """Which seeds have every stage of every experiment finished (done, cached, failed or skipped)."""

    def __init__(self, experiments) -> None:
        self.keys_of: dict[int, set[str]] = {}
        for e in experiments:
            self.keys_of.setdefault(e.seed, set()).update(ps.key for ps in e.stages)
        self.finished: set[str] = set()
        self.complete: list[int] = []

    def stage_finished(self, key: str) -> list[int]:
        """Record a finished stage; returns the seeds it completes (usually none)."""
        self.finished.add(key)
        new = [s for s, keys in sorted(self.keys_of.items()) if s not in self.complete and keys <= self.finished]
        self.complete += new
        return new

    def all_complete(self) -> bool:
        return len(self.complete) == len(self.keys_of)


RUNNING = "The run rewrites this report when it ends; until then every row shows the finished seeds only."
STOPPED = ("The run stopped before its end (interrupted, or its final report failed): every row shows the seeds "
           "that had finished; `bench table` re-renders from everything the cache and MLflow hold.")


def _seeds(seeds) -> str:
    return f"seed{'s' if len(seeds) > 1 else ''} {', '.join(str(s) for s in seeds)}"


def interim_banner(complete: list[int], seeds: list[int], finished: int, total: int, seconds: float) -> str:
    rest = [s for s in seeds if s not in complete]
    return (f"> **Interim report** after {seconds / 60:.0f} min: every experiment of {_seeds(sorted(complete))} "
            f"has finished ({finished} of {total} stages); {_seeds(rest)} still running. {RUNNING}")


class InterimReports:
    """The scheduler's ``on_finished`` wrapper: passes each stage on, and writes the report when a seed completes
    while another has not. A report that cannot be written is a warning: the run goes on."""

    def __init__(self, on_finished, write, experiments, total: int, board=None, t0: float | None = None,
                 pending=lambda: True) -> None:
        """``write(note, seeds)`` writes the report of the complete ``seeds`` with ``note`` under its title and
        returns its path; ``pending()``: whether any stage is still to compute (none: every stage came from the
        cache, and the final report follows at once); ``t0``: the run's start (``time.perf_counter``)."""
        self.on_finished, self.write, self.board, self.pending = on_finished, write, board, pending
        self.progress = SeedProgress(experiments)
        self.seeds = sorted(self.progress.keys_of)
        self.total, self.t0 = total, time.perf_counter() if t0 is None else t0
        self.written: list[list[int]] = []
        self.path = None

    def __call__(self, ps, o) -> None:
        self.on_finished(ps, o)
        if not self.progress.stage_finished(ps.key) or self.progress.all_complete() or not self.pending():
            return
        complete = list(self.progress.complete)
        note = interim_banner(complete, self.seeds, len(self.progress.finished), self.total,
                              time.perf_counter() - self.t0)
        try:
            path = self.write(note, complete)
        except Exception as e:  # noqa: BLE001 - the final report is written at the end either way
            print(f"warning: the interim report for seeds {complete} not written ({type(e).__name__}: {e})",
                  file=sys.stderr)
            return
        self.written.append(complete)
        self.path = path
        line = f"{_seeds(complete)} complete: interim report {path}"
        if self.board:
            self.board.message(line)
        else:
            print(line, file=sys.stderr)

    def stopped(self) -> None:
        """The run ends without its final report: the interim report, if any, says so instead of promising one."""
        try:
            if self.path is not None:
                text = self.path.read_text()
                self.path.write_text(text.replace(RUNNING, STOPPED, 1))
        except OSError:
            pass  # the banner stays as it was; the report's numbers are right either way

    def final(self, write_report):
        """``write_report()``, the run's own report; if it fails, the interim report says the run stopped."""
        try:
            return write_report()
        except BaseException:
            self.stopped()
            raise
