"""One cache key, one result: a stage's weights do not depend on the executor, on what runs beside it, or on
an interruption — because it runs with the thread count (and device) its key records.

Before this held, the tiny source-only stage gave different ``model.pt`` bytes with 1 and 2 torch threads, and
the Ray scheduler gave a stage ``total_cpus // (running + ready)`` threads: 2 alone, 1 beside another stage.
"""

import hashlib
import json
import os
import signal
import subprocess
import sys
import time

import pytest
import torch
from fixtures import tiny_minicity_suite, write_suite

from bench.paths import REPO
from bench.scheduler import Scheduler
from bench.suite_plan import plan_suite
from bench.suite_runner import ensure_data, load_suite

COUNTS = {"gta5": 8, "synthia": 2, "cityscapes_train": 8, "cityscapes_val": 2}


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("det")
    suite = tiny_minicity_suite(tmp, COUNTS)
    suite["only"] = ["source_only", "oracle"]
    for m in suite["methods"].values():
        if "iters" in m:
            m.update(iters=6, batch_size=2)
    path = write_suite(suite, tmp / "tiny.yaml")
    ensure_data(load_suite(str(path)))  # MiniCity once, before any subprocess reads it
    return path


def planned(path, overrides=(), only=None):
    suite = load_suite(str(path), [*overrides, *([f"only=[{','.join(only)}]"] if only else [])])
    experiments, unique, specs = plan_suite(suite, ensure_data(suite))
    models = {e.method: e.model.key for e in experiments}
    return unique, specs, dict(suite["train"]), models


def sha(path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture(scope="module")
def ray_2cpu():
    ray = pytest.importorskip("ray")
    ray.init(address="local", num_cpus=2, num_gpus=0, include_dashboard=False, log_to_driver=False,
             object_store_memory=80 * 1024**2, logging_level="ERROR")
    # two warm workers (torch and the harness imported), so that two stages submitted together run side by side
    warm = ray.remote(lambda: (__import__("bench.stage_exec"), __import__("torch"), time.sleep(0.5), os.getpid())[-1])
    ray.get([warm.options(num_cpus=1).remote() for _ in range(2)])
    yield
    ray.shutdown()


@pytest.mark.slow
def test_same_key_same_bytes_under_ray_and_local_alone_and_beside_another_stage(tiny, tmp_path, ray_2cpu):
    over = ["methods.source_only.iters=16", "methods.oracle.iters=16"]
    alone, specs_a, train, models_a = planned(tiny, over, only=["source_only"])
    both, specs_b, _, models_b = planned(tiny, over)
    key = models_a["source_only"]
    assert models_b["source_only"] == key and models_b["oracle"] != key
    assert alone[key].runtime == {"threads": 1, "device": "cpu"}  # a stage's cpu share (1) → 1 thread

    before = torch.get_num_threads()
    torch.set_num_threads(2)  # the driver has 2 threads: the in-process stage must not inherit them
    try:
        local = Scheduler(alone, specs_a, train, tmp_path / "local", executor="local").run()
    finally:
        torch.set_num_threads(before)
    ray_alone = Scheduler(alone, specs_a, train, tmp_path / "alone", executor="ray").run()
    ray_both = Scheduler(both, specs_b, train, tmp_path / "both", executor="ray").run()
    for out in (local, ray_alone, ray_both):
        assert {o.status for o in out.values()} == {"done"}

    hashes = {where: sha(tmp_path / where / key / "model.pt") for where in ("local", "alone", "both")}
    assert len(set(hashes.values())) == 1, hashes
    ev = next(k for k, ps in alone.items() if ps.name == "eval")
    assert both[ev].upstream == {"model": key}  # the same eval key in both plans
    evals = {where: out[ev].result["miou_19"] for where, out in (("local", local), ("alone", ray_alone),
                                                                   ("both", ray_both))}
    assert len(set(evals.values())) == 1, evals
    # "beside": the two train stages of the second Ray run overlapped in time
    spans = []
    for k in models_b.values():
        meta = json.loads((tmp_path / "both" / k / "meta.json").read_text())
        assert meta["runtime"]["threads"] == 1
        spans.append((meta["started"], meta["started"] + meta["seconds"]))
    (a0, a1), (b0, b1) = spans
    assert a0 < b1 and b0 < a1, spans


def test_thread_count_device_and_numerics_flags_are_in_the_key():
    from bench.stage_keys import stage_key
    from methods.base import Stage

    s = Stage("x.train", "train", print, {}, cpu=1)
    base = stage_key(s, {}, {}, 0, {"device": "cpu"})
    assert stage_key(s, {}, {}, 0, {"device": "cpu", "threads": 2}) != base
    assert stage_key(s, {}, {}, 0, {"device": "cpu", "threads": 1}) == base  # = the stage's own share
    assert stage_key(Stage("x.train", "train", print, {}, cpu=2), {}, {}, 0, {"device": "cpu"}) != base
    assert stage_key(s, {}, {}, 0, {"device": "cuda"}) != base
    assert stage_key(s, {}, {}, 0, {"device": "cpu", "channels_last": True}) != base
    assert stage_key(s, {}, {}, 0, {"device": "cpu", "deterministic": True}) != base
    ev = Stage("eval", "eval", print, {})  # an eval under AMP gives other numbers: keyed too
    assert stage_key(ev, {}, {}, 0, {"device": "cpu", "amp": "bf16"}) != stage_key(ev, {}, {}, 0, {"device": "cpu"})
    cpu_only = Stage("x.data", "data", print, {}, gpu=0.0)  # asks for no GPU: runs on the CPU whatever the device
    assert stage_key(cpu_only, {}, {}, 0, {"device": "cuda"}) == stage_key(cpu_only, {}, {}, 0, {"device": "cpu"})


@pytest.mark.slow
def test_kill_and_resume_in_a_multi_stage_suite_is_bit_identical(tiny, tmp_path):
    over = ["methods.source_only.iters=24", "methods.oracle.iters=24", "train.checkpoint_every=2"]
    unique, specs, train, models = planned(tiny, over)
    trains = [models["source_only"], models["oracle"]]

    # Reference: uninterrupted, in this process, whose torch has 2 threads (a machine that is free).
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        Scheduler(unique, specs, train, tmp_path / "ref", executor="local").run()

        # A driver with 1 thread (a machine that is busy), killed after a checkpoint of its second train stage.
        results = tmp_path / "res"
        cache = results / "cache"
        env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": os.pathsep.join([str(REPO),
                                                                                    os.environ.get("PYTHONPATH", "")])}
        proc = subprocess.Popen([sys.executable, "-m", "bench", "run", str(tiny), *over, "--executor", "local",
                                 "--results", str(results)], env=env, start_new_session=True,
                                stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        deadline = time.monotonic() + 180
        while True:
            done = [k for k in trains if (cache / k / "DONE").is_file()]
            partial = [k for k in trains if k not in done and any((cache / k).glob("ckpt_*.pt"))]
            if done and partial:
                break
            if proc.poll() is not None or time.monotonic() > deadline:
                proc.kill()
                pytest.fail(f"the driver ended before it could be interrupted: {proc.communicate()[1][-2000:]!r}")
            time.sleep(0.02)
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        (cut,) = partial
        assert not (cache / cut / "DONE").exists()

        # Resume in this process (2 threads again).
        out = Scheduler(unique, specs, train, cache, executor="local").run()
    finally:
        torch.set_num_threads(before)
    assert out[done[0]].status == "cached" and out[cut].status == "done"
    assert out[cut].result["resumed_from"] > 0
    for k in trains:
        assert sha(cache / k / "model.pt") == sha(tmp_path / "ref" / k / "model.pt"), k
