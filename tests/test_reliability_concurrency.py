"""Two runs of one suite on one results root at the same time: both succeed, each stage is computed once (the
second run waits on the stage's lock and reads the result), no metrics row is duplicated, and the MLflow database
is created once. Before the stage lock, both runs trained the same stage (one died renaming the other's
``ckpt_*.pt.tmp``), metrics.jsonl got rows twice, and a fresh ``mlflow.db`` made one run die in alembic."""

import json
import os
import re
import subprocess
import sys
import threading

import pytest
from fixtures import tiny_minicity_suite, write_suite

from bench.fsio import atomic_write_text, file_lock, unique_tmp
from bench.paths import REPO
from bench.suite_runner import ensure_data, load_suite


@pytest.mark.slow
def test_two_concurrent_runs_compute_each_stage_once(tmp_path):
    suite = tiny_minicity_suite(tmp_path, {"gta5": 8, "synthia": 2, "cityscapes_train": 8, "cityscapes_val": 2})
    suite["only"] = ["source_only", "oracle"]
    for m in suite["methods"].values():
        if "iters" in m:
            m.update(iters=8, batch_size=2)
    path = write_suite(suite, tmp_path / "tiny.yaml")
    ensure_data(load_suite(str(path)))
    results = tmp_path / "results"  # no mlflow.db yet: both runs create it
    env = {**os.environ, "OMP_NUM_THREADS": "1",
           "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}
    cmd = [sys.executable, "-m", "bench", "run", str(path), "--executor", "local", "--results", str(results)]
    procs = [subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for _ in range(2)]
    outs = [p.communicate(timeout=300) for p in procs]
    for p, (out, err) in zip(procs, outs, strict=True):
        logs = "".join(f"\n--- {f}\n{f.read_text()[-2000:]}" for f in (results / "cache").glob("*/stage.log"))
        assert p.returncode == 0, out[-3000:] + err[-3000:] + logs
    counts = {"done": 0, "cached": 0}
    for out, _ in outs:
        line = next(ln for ln in out.splitlines() if ln.startswith("stages: "))
        for n, status in re.findall(r"(\d+) (\w+)", line):
            counts[status] = counts.get(status, 0) + int(n)
    assert counts == {"done": 4, "cached": 4}, [o for o, _ in outs]  # 4 unique stages, each computed once

    cache = results / "cache"
    trains = [d for d in cache.iterdir() if d.name.startswith("source_only-train")]
    assert len(trains) == 2
    for d in trains:
        steps = [json.loads(ln)["step"] for ln in (d / "metrics.jsonl").read_text().splitlines()]
        assert steps == [2, 4, 6, 8]  # written by one run only
        assert not list(d.glob(".*.tmp")) and not list(d.glob("*.tmp"))

    from mlflow.tracking import MlflowClient

    client = MlflowClient("sqlite:///" + str(results / "mlflow.db"))
    exp = client.get_experiment_by_name("tiny")
    assert len(client.search_runs([exp.experiment_id], "tags.kind = 'invocation'")) == 2
    stage_runs = client.search_runs([exp.experiment_id], "tags.kind = 'stage'")
    # one MLflow run per unique stage, whichever invocation logged it first (the store's lock decides)
    assert len(stage_runs) == 4 and len({r.data.tags["cache_key"] for r in stage_runs}) == 4
    for r in stage_runs:
        if r.data.tags["stage"] == "source_only.train":
            hist = [m.step for m in client.get_metric_history(r.info.run_id, "loss/segmenter")]
            assert hist == [2, 4, 6, 8]


def test_atomic_writes_use_a_temp_name_per_writer(tmp_path):
    names = {unique_tmp(tmp_path / "ckpt_00000035.pt").name for _ in range(100)}
    assert len(names) == 100 and all(n.startswith(f".ckpt_00000035.pt.{os.getpid()}.") for n in names)
    target = tmp_path / "x.json"
    errors = []

    def writer(i):
        try:
            for _ in range(50):
                atomic_write_text(target, json.dumps({"writer": i, "pad": "x" * 1000}))
        except Exception as e:  # noqa: BLE001 - a fixed temp name made one writer rename the other's away
            errors.append(e)

    threads = [threading.Thread(target=writer, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors and json.loads(target.read_text())["writer"] in range(4)
    assert [p.name for p in tmp_path.iterdir()] == ["x.json"]


def test_file_lock_excludes_and_reports_waiting(tmp_path):
    lock = tmp_path / "k.lock"
    order, waited = [], []
    with file_lock(lock):
        t = threading.Thread(target=lambda: _take(lock, order, waited))
        t.start()
        t.join(0.3)
        assert t.is_alive() and waited == [True]  # the second holder waits while the first holds it
        order.append("first")
    t.join(5)
    assert order == ["first", "second"]


def _take(lock, order, waited):
    with file_lock(lock, on_wait=lambda: waited.append(True)):
        order.append("second")
