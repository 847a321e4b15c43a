"""Run planned stages as a DAG: on Ray (default; local or ``RAY_ADDRESS=auto``) or in-process.

A stage is submitted once all its upstream stages are complete. A failed stage is resubmitted (it resumes
from its last checkpoint) up to ``retries`` times; stages that depend on a stage that finally failed are
skipped; everything else goes on. The driver draws the only progress display, from each running stage's
``progress.json``.
"""

from __future__ import annotations

import contextlib
import os
import sys
import traceback
from dataclasses import dataclass, field

from bench.stage_cache import PROGRESS, StageCache
from bench.stage_exec import execute_stage
from bench.stage_keys import PlannedStage, stage_runtime


class ResourceError(RuntimeError):
    """A stage asks for more than the cluster has (Ray would wait forever)."""


@dataclass
class Outcome:
    key: str
    name: str
    status: str = "pending"  # done | cached | failed | skipped
    result: dict = field(default_factory=dict)
    seconds: float = 0.0
    attempts: int = 0
    error: str = ""
    started: float | None = None  # epoch seconds of the attempt that computed it (None: from the cache)
    ended: float | None = None


def _stage_log_run(planned, cache_root, specs, train):
    """Worker entry: run the stage with its stdout/stderr in ``<stage dir>/stage.log``."""
    log = StageCache(cache_root).dir(planned.key) / "stage.log"
    log.parent.mkdir(parents=True, exist_ok=True)
    with log.open("a") as f, contextlib.redirect_stdout(f), contextlib.redirect_stderr(f):
        try:
            return execute_stage(planned, cache_root, specs, train)
        except BaseException:
            traceback.print_exc(file=f)
            raise


def _error_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    lines = [ln for ln in text if ln.strip()]
    tail = lines[-1] if lines else type(exc).__name__
    return tail[:400]


def init_ray(num_cpus: int | None = None, num_gpus: int | None = None):
    """Start a local Ray (the machine's resources) or join ``RAY_ADDRESS``; returns the cluster resources."""
    import ray

    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    if not ray.is_initialized():
        address = os.environ.get("RAY_ADDRESS")
        kw = dict(include_dashboard=False, log_to_driver=False, logging_level="ERROR")
        if address:
            ray.init(address=address, **kw)
        else:
            ray.init(address="local", num_cpus=num_cpus, num_gpus=num_gpus, **kw)
            _watch_local_ray()
        from bench.signals import catch_sigterm

        catch_sigterm()  # ray.init replaced the driver's SIGTERM handler with its own
    return ray.cluster_resources()


def _watch_local_ray() -> None:
    """A driver killed with SIGKILL cannot shut its Ray down: a watchdog does (``bench.ray_watchdog``)."""
    from bench import ray_watchdog

    try:  # Ray's own record of the head processes it started (a private module: absent → no watchdog)
        from ray._private import worker
    except ImportError:
        return
    node = getattr(worker, "_global_node", None)
    procs = getattr(node, "all_processes", None) or {}
    pids = [info.process.pid for infos in procs.values() for info in infos if getattr(info, "process", None)]
    if pids:
        ray_watchdog.start(os.getpid(), pids)


def stage_resources(planned: PlannedStage, cluster: dict) -> tuple[float, float]:
    """(cpus, gpus) to ask Ray for: as many CPUs as the stage runs threads (its key records them), and the
    stage's GPU share when the cluster has GPUs."""
    gpus_total = float(cluster.get("GPU", 0))
    gpu = planned.stage.gpu if gpus_total > 0 else 0.0
    runtime = planned.runtime or stage_runtime(planned.stage, {})
    cpu = float(runtime["threads"])
    if gpu > gpus_total or cpu > float(cluster.get("CPU", 0)):
        raise ResourceError(f"stage {planned.name} asks for {cpu} CPU / {gpu} GPU; the cluster has "
                            f"{cluster.get('CPU', 0)} CPU / {gpus_total} GPU — lower the stage's share "
                            "(suite resources.gpu, train.threads) or add nodes")
    return cpu, gpu


class Scheduler:
    """Drives the DAG; ``executor`` is "ray" or "local" (in-process, one stage at a time)."""

    def __init__(self, stages: dict, specs: dict, train: dict, cache_root, executor: str = "ray",
                 retries: int = 1, board=None, gpu_share: float | None = None, on_finished=None) -> None:
        """``on_finished(planned, outcome)``: called in the driver as each stage ends (done, cached, failed or
        skipped), e.g. to log it to MLflow while the rest of the suite runs."""
        self.stages, self.specs, self.train = stages, specs, train
        self.cache = StageCache(cache_root)
        self.executor, self.retries, self.board = executor, retries, board
        self.gpu_share, self.on_finished = gpu_share, on_finished
        self.outcomes = {k: Outcome(k, ps.name) for k, ps in stages.items()}

    def _finished(self, key: str) -> None:
        if self.board:
            self.board.finished(self.stages[key], self.outcomes[key])
        if self.on_finished:
            self.on_finished(self.stages[key], self.outcomes[key])

    def _ready(self, key: str) -> bool:
        return all(self.outcomes[u].status in ("done", "cached") for u in self.stages[key].upstream.values())

    def _blocked(self, key: str) -> str | None:
        for u in self.stages[key].upstream.values():
            if self.outcomes[u].status in ("failed", "skipped"):
                return u
        return None

    def _message(self, line: str) -> None:
        if self.board:
            self.board.message(line)
        else:
            print(line, file=sys.stderr)

    def run(self) -> dict[str, Outcome]:
        # Complete stages are answered from the cache without a worker, once verified; a corrupt entry is
        # reported, moved aside and recomputed.
        cached = []
        for key in self.stages:
            result = self.cache.cached_result(key, report=self._message)
            if result is not None:
                o = self.outcomes[key]
                o.status, o.result = "cached", result
                cached.append(key)
        for key in cached:  # told once every hit is known: what is left to compute is then what is pending
            self._finished(key)
        if self.executor == "local":
            self._run_local()
        elif self.executor == "ray":
            self._run_ray()
        else:
            raise ValueError(f"executor {self.executor!r}; valid: ray, local")
        return self.outcomes

    def _pending(self) -> list[str]:
        return [k for k, o in self.outcomes.items() if o.status == "pending"]

    def _skip_blocked(self) -> None:
        changed = True
        while changed:
            changed = False
            for k in self._pending():
                up = self._blocked(k)
                if up:
                    o = self.outcomes[k]
                    o.status, o.error = "skipped", f"upstream {self.outcomes[up].name} ({up}) did not finish"
                    changed = True
                    self._finished(k)

    def _record(self, key: str, res: dict | None, exc: BaseException | None) -> bool:
        """Store a finished attempt; returns True when the stage should be resubmitted."""
        o = self.outcomes[key]
        o.attempts += 1
        if exc is None:
            # "cached": another run on the same root computed it while this one waited for the stage's lock
            o.status = "cached" if res.get("cached") else "done"
            o.result, o.seconds = res["result"], res["seconds"]
            o.started, o.ended = res.get("started"), res.get("ended")
        elif o.attempts <= self.retries:
            o.error = _error_line(exc)
            if self.board:
                self.board.message(f"{o.name} ({key}) failed: {o.error}; retry {o.attempts}/{self.retries} "
                                   "from its last checkpoint")
            return True
        else:
            o.status, o.error = "failed", _error_line(exc)
        self._finished(key)
        return False

    def _run_local(self) -> None:
        order = submission_order(self.stages)
        while True:
            self._skip_blocked()
            ready = [k for k in self._pending() if self._ready(k)]
            if not ready:
                return
            key = min(ready, key=order.__getitem__)
            while True:
                if self.board:
                    self.board.started(self.stages[key], self.cache.dir(key))
                try:
                    res, exc = _stage_log_run(self.stages[key], str(self.cache.root), self.specs[key], self.train), None
                except Exception as e:  # noqa: BLE001 - every failure is reported in the summary
                    res, exc = None, e
                # outside the try: an error of what is told of the stage's end (on_finished) is not the stage's
                if not self._record(key, res, exc):
                    break

    def _run_ray(self) -> None:
        import ray

        if not self._pending():
            return  # everything came from the cache: no need to start Ray
        cluster = init_ray()
        remote = ray.remote(_stage_log_run)
        res_of = {}
        for k, ps in self.stages.items():
            if self.outcomes[k].status == "pending":
                cpu, gpu = stage_resources(ps, cluster)
                if self.gpu_share is not None and gpu > 0:
                    gpu = min(gpu, self.gpu_share)
                device = (ps.runtime or {}).get("device", "cpu")
                if device.startswith("cuda") and gpu <= 0:
                    raise ResourceError(f"stage {ps.name} runs on {device} but the Ray cluster gives it no GPU "
                                        f"(cluster: {cluster.get('GPU', 0)} GPU, resources.gpu={self.gpu_share}); "
                                        "use train.device=cpu or a cluster with a GPU")
                res_of[k] = (cpu, gpu)
        running: dict = {}
        cache_root = str(self.cache.root.resolve())

        total_cpus = max(1, int(cluster.get("CPU", 1)))

        def submit(key: str) -> None:
            # The stage's threads and device come from its plan (and key), never from what else runs now.
            cpu, gpu = res_of[key]
            ref = remote.options(num_cpus=cpu, num_gpus=gpu, max_retries=0).remote(
                self.stages[key], cache_root, self.specs[key], self.train)
            running[ref] = key
            if self.board:
                self.board.started(self.stages[key], self.cache.dir(key))

        # Submit no more than the cluster runs at once, in ``submission_order``: Ray would otherwise queue
        # everything FIFO, and the evaluations (the numbers a user waits for) would all run last.
        order = submission_order(self.stages)
        gpus = float(cluster.get("GPU", 0))
        shares = [g for _, g in res_of.values() if g > 0]
        # no more than Ray can run at once: a stage Ray queues itself would run in Ray's order, not this one
        slots = max(1, int(total_cpus // max(c for c, _ in res_of.values())))
        if gpus and shares:
            slots = min(slots, int(gpus / min(shares)))
        while True:
            self._skip_blocked()
            ready = [k for k in self._pending() if k not in running.values() and self._ready(k)]
            ready.sort(key=order.__getitem__)
            free = max(0, slots - len(running))
            for k in ready[:free]:
                submit(k)
            if not running:
                return
            done, _ = ray.wait(list(running), num_returns=1, timeout=1.0)
            if self.board:
                self.board.poll({k: self.cache.dir(k) / PROGRESS for k in running.values()})
            for ref in done:
                key = running.pop(ref)
                try:
                    res, exc = ray.get(ref), None
                except Exception as e:  # noqa: BLE001
                    res, exc = None, getattr(e, "cause", None) or e
                if self._record(key, res, exc):
                    submit(key)


def submission_order(stages: dict) -> dict[str, tuple]:
    """Per stage, its sort key among the stages ready to start (smallest first):

    1. evaluations: they take seconds, and a row's mIoU is what a user waits for;
    2. the lower seed (stages shared by every seed first): a free slot goes to seed 1 only when no stage of seed 0
       is ready, so seed 0's table comes early (strictly first on one slot, as the local executor runs);
    3. the longest chain of train stages still ahead (``critical_path``), so a long method does not start last.

    The recorded stage times of the 3-seed MiniCity default, replayed on 2 slots: the first mIoU comes at 4 min
    (longest chain first alone: 123 min), seed 0's table at 49 min, all of it at 137 min (the same). On 4 slots
    seed 0's table comes at 35 min instead of 61, the end at 81 instead of 75: the last seed's long chains start
    later."""
    height = critical_path(stages)
    return {k: (ps.stage.kind != "eval", ps.seed if ps.stage.seeded else -1, -height[k])
            for k, ps in stages.items()}


def critical_path(stages: dict) -> dict[str, float]:
    """Per stage: train stages (1 each; label/fit/eval 0.1) on the longest path from it to the end of the DAG."""
    children: dict[str, list[str]] = {k: [] for k in stages}
    for k, ps in stages.items():
        for up in ps.upstream.values():
            if up in children:
                children[up].append(k)
    memo: dict[str, float] = {}

    def h(k: str) -> float:
        if k not in memo:
            own = 1.0 if stages[k].stage.kind == "train" else 0.1
            memo[k] = own + max((h(c) for c in children[k]), default=0.0)
        return memo[k]

    return {k: h(k) for k in stages}


def summary_lines(outcomes: dict[str, Outcome]) -> list[str]:
    """Counts and every failure with its reason."""
    by = {}
    for o in outcomes.values():
        by.setdefault(o.status, []).append(o)
    counts = ", ".join(f"{len(v)} {k}" for k, v in sorted(by.items()))
    lines = [f"stages: {counts}"]
    for o in by.get("failed", []) + by.get("skipped", []):
        lines.append(f"  {o.status}: {o.name} ({o.key}) after {o.attempts} attempt(s): {o.error}")
    return lines

