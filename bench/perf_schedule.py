"""``bench perf schedule``: when a suite's results would come, replayed from a finished run's recorded stage times.

The replay is list scheduling, as ``Scheduler._run_ray`` submits: ``slots`` stages run at once; whenever one ends,
the ready stages (every upstream stage ended) start, smallest ``order`` key first, ties in plan order. It compares
the scheduler's ``submission_order`` with longest-chain-first (its order before evaluations and seeds came first)
on the same stage times, so it measures the order, not the machine. What it leaves out: Ray's start-up and the
driver's work between stages (MLflow, reports), a few seconds each.
"""

from __future__ import annotations

import heapq
import json
import statistics
from pathlib import Path


def replay(stages: dict, seconds: dict[str, float], order: dict, slots: int) -> dict[str, tuple[float, float]]:
    """(start, end) in seconds of every stage of ``stages`` (key → PlannedStage) run ``slots`` at a time."""
    if slots < 1:
        raise ValueError(f"slots must be at least 1 (got {slots})")
    plan = {k: i for i, k in enumerate(stages)}
    pending, done, running, timeline, t = set(stages), set(), [], {}, 0.0
    while pending or running:
        ready = sorted((k for k in stages if k in pending and all(u in done for u in stages[k].upstream.values())),
                       key=lambda k: (order[k], plan[k]))
        for k in ready[:max(0, slots - len(running))]:
            pending.discard(k)
            timeline[k] = (t, t + seconds[k])
            heapq.heappush(running, (t + seconds[k], plan[k], k))
        if not running:
            raise ValueError(f"{len(pending)} stages wait on upstream stages outside the plan")
        t, _, k = heapq.heappop(running)
        done.add(k)
    return timeline


def milestones(stages: dict, experiments, timeline: dict) -> dict:
    """Minutes to the first evaluation's end, the median one's, each seed's last stage (its whole table) and the
    end of everything."""
    evals = sorted(end for k, (_, end) in timeline.items() if stages[k].stage.kind == "eval")
    seeds: dict[int, float] = {}
    for e in experiments:
        last = max(timeline[ps.key][1] for ps in e.stages)
        seeds[e.seed] = max(seeds.get(e.seed, 0.0), last)
    return {"first_eval": evals[0] / 60 if evals else None,
            "median_eval": statistics.median(evals) / 60 if evals else None,
            "seeds": {s: v / 60 for s, v in sorted(seeds.items())},
            "end": max(end for _, end in timeline.values()) / 60}


def recorded_seconds(stages: dict, cache_root: Path) -> dict[str, float]:
    """Each stage's ``seconds`` from its cache entry's ``meta.json``; an error names what is missing."""
    out, missing = {}, []
    for k in stages:
        try:
            out[k] = float(json.loads((Path(cache_root) / k / "meta.json").read_text())["seconds"])
        except (OSError, ValueError, KeyError):
            missing.append(k)
    if missing:
        raise FileNotFoundError(f"{len(missing)} of {len(stages)} stages have no recorded time under {cache_root} "
                                f"(first: {missing[0]}); run the suite to completion on this results root first")
    return out


def compare_orders(name: str, overrides, results_root: Path, slot_counts: list[int]) -> str:
    """The text of ``bench perf schedule``: per slot count, the milestones under each order."""
    from bench.scheduler import critical_path, submission_order
    from bench.suite_plan import plan_suite
    from bench.suite_runner import ensure_data, load_suite

    suite = load_suite(name, overrides)
    experiments, stages, _ = plan_suite(suite, ensure_data(suite))
    seconds = recorded_seconds(stages, Path(results_root) / "cache")
    height = critical_path(stages)
    orders = {"submission_order (now)": submission_order(stages),
              "longest chain first": {k: -height[k] for k in stages}}
    seeds = sorted({e.seed for e in experiments})
    head = f"{'slots':>5}  {'order':24s} {'1st mIoU':>8} {'median':>7} " + " ".join(
        f"{'seed ' + str(s):>7}" for s in seeds) + f" {'end':>7}"
    lines = [f"{suite['name']}: {len(stages)} stages, {sum(seconds.values()):,.0f} recorded stage-seconds "
             f"({Path(results_root) / 'cache'}); minutes from the start, replayed", head]
    for n in slot_counts:
        for label, order in orders.items():
            m = milestones(stages, experiments, replay(stages, seconds, order, n))
            first, median = (f"{m[k]:.1f}" if m[k] is not None else "–" for k in ("first_eval", "median_eval"))
            lines.append(f"{n:>5}  {label:24s} {first:>8} {median:>7} "
                         + " ".join(f"{m['seeds'][s]:7.1f}" for s in seeds) + f" {m['end']:7.1f}")
    lines.append("seed N: the end of seed N's last stage (its whole table); 1st mIoU / median: the first and the "
                 "median evaluation's end")
    return "\n".join(lines)
