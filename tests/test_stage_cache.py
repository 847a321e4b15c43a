"""Stage cache semantics: hit, miss, partial resume, unrelated field → hit; keys; DONE last."""

import json

import pytest
import stage_fakes as fk

from bench.scheduler import Scheduler
from bench.stage_cache import StageCache
from bench.stage_keys import plan_stages, stage_key
from methods.base import Stage

DATASETS = {"source": {"spec": {"name": "gta5"}, "fingerprint": "aaa"}}


def run_local(finals, cache, seed=0, retries=0, datasets=DATASETS):
    planned = plan_stages(finals, seed, datasets, {})
    stages = {p.key: p for p in planned}
    out = Scheduler(stages, {k: {} for k in stages}, {}, cache, executor="local", retries=retries).run()
    return planned, out


@pytest.fixture
def calls(tmp_path):
    return tmp_path / "cache" / "calls.txt"


def test_hit_miss_and_unrelated_field(tmp_path, calls):
    cache = tmp_path / "cache"
    planned, out = run_local([fk.chain(1, 2)], cache)
    assert [o.status for o in out.values()] == ["done"] * 3 and len(fk.calls(calls)) == 3
    leaf = planned[-1].key
    assert json.loads((cache / leaf / "value.json").read_text()) == 3
    assert StageCache(cache).result(leaf)["value"] == 3

    _, again = run_local([fk.chain(1, 2)], cache)
    assert [o.status for o in again.values()] == ["cached"] * 3 and len(fk.calls(calls)) == 3

    # A value only the leaf reads: root and mid are hits, only the leaf runs.
    planned2, changed = run_local([fk.chain(1, 2, extra=10)], cache)
    assert [o.status for o in changed.values()] == ["cached", "cached", "done"]
    assert fk.calls(calls)[-1] == planned2[-1].key and planned2[-1].key != leaf
    assert StageCache(cache).result(planned2[-1].key)["value"] == 13

    # A value the root reads changes every key downstream.
    planned3, _ = run_local([fk.chain(5, 2)], cache)
    assert not {p.key for p in planned3} & {p.key for p in planned}


def test_key_inputs():
    s = Stage("fake.root", "train", fk.produce, {"value": 1}, datasets=("source",))
    base = stage_key(s, {}, DATASETS, 0, {"amp": "auto", "log_every": 5})
    assert stage_key(s, {}, DATASETS, 0, {"amp": "auto", "log_every": 50}) == base  # logging is not content
    assert stage_key(s, {}, DATASETS, 0, {"amp": "off"}) != base
    assert stage_key(s, {}, DATASETS, 1, {"amp": "auto"}) != base
    other = {"source": {"spec": {"name": "gta5"}, "fingerprint": "bbb"}}
    assert stage_key(s, {}, other, 0, {"amp": "auto"}) != base
    s2 = Stage("fake.root", "train", fk.produce, {"value": 1}, datasets=("source",), version="2")
    assert stage_key(s2, {}, DATASETS, 0, {"amp": "auto"}) != base
    unseeded = Stage("fake.root", "data", fk.produce, {"value": 1}, seeded=False)
    assert stage_key(unseeded, {}, DATASETS, 0, {}) == stage_key(unseeded, {}, DATASETS, 7, {})
    with pytest.raises(KeyError, match="target_val"):
        stage_key(Stage("x", "eval", fk.produce, {}, datasets=("target_val",)), {}, DATASETS, 0, {})


def test_partial_stage_resumes_and_is_never_read(tmp_path, calls):
    cache = tmp_path / "cache"
    stage = Stage("fake.flaky", "train", fk.flaky, {"fail_times": 1})
    planned, out = run_local([stage], cache, retries=0)
    key = planned[0].key
    assert out[key].status == "failed" and "planned failure 1" in out[key].error
    assert not StageCache(cache).is_done(key) and (cache / key / "attempts").read_text() == "1"
    with pytest.raises(FileNotFoundError, match="not complete"):
        StageCache(cache).result(key)
    assert StageCache(cache).entries()[0]["state"] == "partial"
    # The next run finds the partial directory and carries on from its state.
    _, out2 = run_local([stage], cache, retries=0)
    assert out2[key].status == "done" and (cache / key / "attempts").read_text() == "2"
    assert (cache / key / "DONE").stat().st_mtime >= (cache / key / "result.json").stat().st_mtime


def test_failure_is_retried_then_reported_and_dependents_skipped(tmp_path, calls):
    cache = tmp_path / "cache"
    bad = Stage("fake.flaky", "train", fk.flaky, {"fail_times": 5})
    child = Stage("fake.leaf", "label", fk.produce, {"value": 0}, upstream={"x": bad})
    good = fk.chain(1, 1)
    planned, out = run_local([child, good], cache, retries=2)
    assert [p.name for p in planned] == ["fake.flaky", "fake.leaf", "fake.root", "fake.mid", "fake.leaf"]
    assert [out[p.key].status for p in planned] == ["failed", "skipped", "done", "done", "done"]
    flaky = out[planned[0].key]
    assert flaky.attempts == 3 and "planned failure 3" in flaky.error
    assert out[planned[1].key].status == "skipped" and "fake.flaky" in out[planned[1].key].error


def test_cache_ls_and_clear(tmp_path, calls):
    cache = tmp_path / "cache"
    run_local([fk.chain(1, 2)], cache)
    run_local([Stage("fake.flaky", "train", fk.flaky, {"fail_times": 9})], cache)
    c = StageCache(cache)
    entries = c.entries()
    assert sorted(e["state"] for e in entries) == ["done", "done", "done", "partial"]
    assert {e["stage"] for e in entries} == {"fake.root", "fake.mid", "fake.leaf", "fake.flaky"}
    assert [e["stage"] for e in c.clear(partial_only=True)] == ["fake.flaky"]
    assert [e["stage"] for e in c.clear(stage="fake.mid")] == ["fake.mid"]
    assert len(c.entries()) == 2


def test_critical_path_puts_long_chains_first():
    from bench.scheduler import critical_path

    long_chain = fk.chain(1, 2)  # fit → train → label
    lone = Stage("fake.flaky", "train", fk.flaky, {"fail_times": 0})
    planned = plan_stages([long_chain, lone], 0, DATASETS, {})
    h = critical_path({p.key: p for p in planned})
    by_name = {p.name: h[p.key] for p in planned}
    # root: 0.1 + mid 1.0 + leaf 0.1 = 1.2; the lone train stage: 1.0
    assert by_name["fake.root"] == pytest.approx(1.2) and by_name["fake.flaky"] == pytest.approx(1.0)
    assert by_name["fake.mid"] == pytest.approx(1.1) and by_name["fake.leaf"] == pytest.approx(0.1)


def test_an_error_in_on_finished_is_not_the_stages(tmp_path, calls):
    """What is told of a stage's end (MLflow logging, ``on_finished``) failing must not make the stage a failure
    and run it again: before, the local executor caught it with the stage's own errors (a concurrent MLflow write
    made a finished evaluation 'failed after 2 attempts')."""
    planned = plan_stages([fk.chain(1, 2)], 0, DATASETS, {})
    stages = {p.key: p for p in planned}
    told = []

    def on_finished(ps, o):
        told.append(o.status)
        raise RuntimeError("the store refused the write")

    sched = Scheduler(stages, {k: {} for k in stages}, {}, tmp_path / "cache", executor="local", retries=1,
                      on_finished=on_finished)
    with pytest.raises(RuntimeError, match="refused"):
        sched.run()
    assert told == ["done"] and len(fk.calls(calls)) == 1  # the first stage ran once, and was not retried
    assert sched.outcomes[planned[0].key].status == "done"
