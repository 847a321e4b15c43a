"""Stop the local Ray a driver started when the driver dies without cleaning up (``kill -9``, OOM killer).

A killed driver cannot run ``ray.shutdown``; its GCS, raylet and the raylet's agents then linger for minutes.
``start`` launches this module in its own session, watching the driver's PID; when the driver is gone it
terminates the recorded head processes and everything they spawned. Each PID is recorded with its start time,
so a PID that the OS reused for an unrelated process is left alone.
"""

from __future__ import annotations

import subprocess
import sys
import time

POLL_S = 0.5


def start(driver_pid: int, pids: list[int]) -> subprocess.Popen | None:
    """Launch the watchdog for ``pids`` (the Ray head processes) of ``driver_pid``; None without psutil."""
    try:
        import psutil
    except ImportError:  # an optional safety net: the run itself does not need it
        return None
    recorded = {}
    for pid in pids:
        try:
            recorded[pid] = psutil.Process(pid).create_time()
        except psutil.NoSuchProcess:
            continue
    # the agents the raylet has already started too: a driver killed at once leaves the watchdog no time to look
    args = [f"{pid}:{created!r}" for pid, created in descendants(recorded).items()]
    return subprocess.Popen([sys.executable, "-m", "bench.ray_watchdog", str(driver_pid), *args],
                            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)


def _alive(psutil, pid: int, created: float | None = None) -> bool:
    try:
        p = psutil.Process(pid)
        return p.status() != psutil.STATUS_ZOMBIE and (created is None or p.create_time() == created)
    except psutil.NoSuchProcess:
        return False


def descendants(recorded: dict[int, float]) -> dict[int, float]:
    """The recorded processes (those still the same processes) and everything they have spawned so far: the
    raylet's agents and workers outlive it, so they are recorded while it runs."""
    import psutil

    out = dict(recorded)
    for pid, created in recorded.items():
        if _alive(psutil, pid, created):
            try:
                out.update({c.pid: c.create_time() for c in psutil.Process(pid).children(recursive=True)})
            except psutil.NoSuchProcess:
                pass
    return out


def reap(recorded: list[tuple[int, float]]) -> int:
    """Terminate the recorded processes that are still the same processes, and their descendants; return how
    many were signalled."""
    import psutil

    procs = []
    for pid, created in descendants(dict(recorded)).items():
        if _alive(psutil, pid, created):
            procs.append(psutil.Process(pid))
    for p in procs:
        try:
            p.terminate()
        except psutil.NoSuchProcess:
            pass
    _, left = psutil.wait_procs(procs, timeout=3)
    for p in left:
        try:
            p.kill()
        except psutil.NoSuchProcess:
            pass
    return len(procs)


def main(argv: list[str]) -> int:
    import psutil

    driver = int(argv[0])
    heads = {int(pid): float(created) for pid, created in (a.split(":", 1) for a in argv[1:])}
    known = dict(heads)
    while _alive(psutil, driver):
        if not any(_alive(psutil, pid, c) for pid, c in heads.items()):
            return 0  # the driver shut Ray down itself
        known.update(descendants(heads))
        time.sleep(POLL_S)
    reap(list(known.items()))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
