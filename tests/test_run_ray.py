"""The stage DAG on a local Ray with a logical GPU: placement, fractional shares, retries, over-asking."""

import pytest
import stage_fakes as fk

from bench.scheduler import ResourceError, Scheduler, summary_lines
from bench.stage_keys import plan_stages
from methods.base import Stage


@pytest.fixture(scope="module")
def ray_gpu():
    ray = pytest.importorskip("ray")
    ray.init(address="local", num_cpus=2, num_gpus=1, include_dashboard=False, log_to_driver=False,
             object_store_memory=80 * 1024**2, logging_level="ERROR")
    yield ray
    ray.shutdown()


def schedule(finals, cache, retries=0, gpu_share=None):
    planned = plan_stages(finals, 0, {}, {})
    stages = {p.key: p for p in planned}
    sched = Scheduler(stages, {k: {} for k in stages}, {"device": "auto"}, cache, executor="ray",
                      retries=retries, gpu_share=gpu_share)
    return planned, sched.run()


def test_dag_placement_retry_and_failure_summary(ray_gpu, tmp_path):
    cache = tmp_path / "cache"
    half = [Stage("fake.where", "train", fk.where, {"i": i}, gpu=0.5) for i in range(2)]
    retried = Stage("fake.flaky", "train", fk.flaky, {"fail_times": 1}, gpu=0.5)
    broken = Stage("fake.flaky", "train", fk.flaky, {"fail_times": 9}, gpu=0.5)
    after_broken = Stage("fake.leaf", "label", fk.produce, {"value": 0}, upstream={"x": broken})
    planned, out = schedule([*half, fk.chain(1, 2, extra=4, gpu=0.5), retried, after_broken], cache, retries=1)
    by_key = {p.key: p for p in planned}
    status = {by_key[k].name + str(by_key[k].stage.params): o.status for k, o in out.items()}
    assert status == {"fake.where{'i': 0}": "done", "fake.where{'i': 1}": "done", "fake.root{'value': 1}": "done",
                      "fake.mid{'value': 2}": "done", "fake.leaf{'value': 4}": "done",
                      "fake.leaf{'value': 0}": "skipped",
                      "fake.flaky{'fail_times': 1}": "done", "fake.flaky{'fail_times': 9}": "failed"}
    # The logical GPU is assigned, the torch device falls back to the CPU.
    for p in planned[:2]:
        assert out[p.key].result["gpu_ids"] == ["0"] and out[p.key].result["device"] == "cpu"
    # The DAG order held: mid read root's output (1 + 2).
    mid = next(p for p in planned if p.name == "fake.mid")
    assert out[mid.key].result["value"] == 3
    flaky_ok = next(o for o in out.values() if o.name == "fake.flaky" and o.status == "done")
    assert flaky_ok.attempts == 2
    lines = summary_lines(out)
    assert lines[0] == "stages: 6 done, 1 failed, 1 skipped"
    assert any("failed: fake.flaky" in ln and "planned failure 2" in ln for ln in lines)
    assert any("skipped: fake.leaf" in ln for ln in lines)


def test_asking_for_more_gpus_than_the_cluster_has_stops_at_once(ray_gpu, tmp_path):
    with pytest.raises(ResourceError, match="2.0 GPU; the cluster has .* 1.0 GPU"):
        schedule([Stage("fake.where", "train", fk.where, {"i": 9}, gpu=2.0)], tmp_path / "cache")
    assert fk.calls(tmp_path / "cache" / "calls.txt") == []


def test_ray_starts_evaluations_first_then_seed_0_and_never_more_than_it_can_run(ray_gpu, tmp_path):
    """One GPU, whole-GPU stages: one at a time, in ``submission_order`` (seed 1 planned first must not matter).
    With 2 CPUs and stages of 2 threads, Ray runs one at a time too: the driver must not queue a second in Ray,
    where it would run in Ray's order."""
    for gpu, train in ((1.0, {"device": "auto"}), (0.0, {"device": "cpu", "threads": 2})):
        rows = [fk.evaluated_row(10, gpu=gpu), fk.evaluated_row(20, gpu=gpu)]
        planned = [p for s in (1, 0) for p in plan_stages(rows, s, {}, train)]
        stages = {p.key: p for p in planned}
        cache = tmp_path / f"cache_{gpu}"
        seen: list = []
        Scheduler(stages, {k: {} for k in stages}, train, cache, executor="ray",
                  on_finished=lambda ps, o, seen=seen: seen.append(ps)).run()
        assert fk.calls(cache / "calls.txt") == [ps.key for ps in seen]  # one at a time: ran = finished order
        assert [ps.seed for ps in seen] == [0] * 6 + [1] * 6
        for i, ps in enumerate(seen):
            if ps.stage.kind == "eval":  # straight after the model it evaluates
                assert seen[i - 1].key in ps.upstream.values()
