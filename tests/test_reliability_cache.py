"""A verified cache: DONE records each output's size and sha256; a done stage is checked before it is used; a
corrupt one is reported by file, moved aside and recomputed; an edited result is refused; a garbage meta.json
does not stop `bench cache ls`; `bench cache clear` refuses empty or wildcard-like keys."""

import json
import time

import pytest
import stage_fakes as fk
import torch

from bench.cli import main
from bench.scheduler import Scheduler
from bench.stage_cache import CorruptEntry, StageCache
from bench.stage_exec import load_model
from bench.stage_keys import plan_stages
from methods.base import Stage


def run(finals, cache, messages=None):
    planned = plan_stages(finals, 0, {}, {})
    stages = {p.key: p for p in planned}
    board = _Board(messages) if messages is not None else None
    return planned, Scheduler(stages, {k: {} for k in stages}, {}, cache, executor="local", board=board).run()


class _Board:
    """Collects the scheduler's messages (the real board draws them)."""

    def __init__(self, messages):
        self.messages = messages

    def message(self, line):
        self.messages.append(line)

    def started(self, *a):
        pass

    def finished(self, *a):
        pass


@pytest.fixture
def chain(tmp_path):
    cache = tmp_path / "cache"
    planned, _ = run([fk.chain(1, 2)], cache)
    return cache, [p.key for p in planned]


def test_done_records_size_and_hash_of_each_output(chain):
    cache, (root, mid, leaf) = chain
    record = json.loads((cache / mid / "DONE").read_text())
    assert set(record["files"]) == {"result.json", "meta.json", "value.json"}  # not stage.log, not DONE
    assert record["files"]["value.json"]["size"] == (cache / mid / "value.json").stat().st_size
    assert StageCache(cache).verify(mid, full=True) == []


def test_truncated_output_is_reported_by_file_moved_aside_and_recomputed(chain):
    cache, (root, mid, leaf) = chain
    calls = cache / "calls.txt"
    (cache / mid / "value.json").write_text("")  # truncated
    with pytest.raises(CorruptEntry, match=r"value.json: 0 bytes, DONE recorded 1 \(truncated"):
        StageCache(cache).result(mid)
    messages = []
    _, out = run([fk.chain(1, 2)], cache, messages)
    assert out[mid].status == "done" and out[root].status == out[leaf].status == "cached"
    assert fk.calls(calls).count(mid) == 2  # computed again, once
    assert len(messages) == 1 and f"{mid}" in messages[0] and "value.json" in messages[0]
    aside = [p for p in cache.iterdir() if p.name.startswith(mid + ".corrupt-")]
    assert len(aside) == 1 and aside[0].name in messages[0]
    assert StageCache(cache).verify(mid, full=True) == [] and json.loads((cache / mid / "value.json").read_text()) == 3


def test_an_edited_result_is_refused_and_recomputed(chain):
    cache, (root, mid, leaf) = chain
    res = cache / leaf / "result.json"
    res.write_text(res.read_text().replace('"value": 3', '"value": 8'))  # hand-edited, same size
    messages = []
    _, out = run([fk.chain(1, 2)], cache, messages)
    assert "result.json: sha256 differs" in messages[0]
    assert out[leaf].status == "done" and out[leaf].result["value"] == 3


def test_garbage_result_under_an_old_style_done_is_reported_not_a_traceback(chain):
    cache, (root, mid, leaf) = chain
    (cache / leaf / "DONE").write_text("2024-01-01T00:00:00\n")  # a DONE from before checksums
    assert StageCache(cache).result(leaf)["value"] == 3  # still readable
    (cache / leaf / "result.json").write_text("{garbage")
    messages = []
    _, out = run([fk.chain(1, 2)], cache, messages)
    assert "result.json: unreadable (JSONDecodeError" in messages[0] and out[leaf].status == "done"


def test_cache_ls_survives_a_garbage_meta_json(chain, capsys):
    cache, (root, mid, leaf) = chain
    (cache / mid / "meta.json").write_text("\x00\x01 not json")
    (cache / root / "meta.json").write_text("[1, 2]")
    assert main(["cache", "ls", "--cache", str(cache)]) == 0
    out = capsys.readouterr().out
    assert "3 stage(s)" in out and out.count("meta.json: unreadable") == 2


@pytest.mark.parametrize("arg", ["", "*", ".", "..", "/", "s", "fake", "fake-ro", "fake-root-*"])
def test_cache_clear_refuses_empty_or_wildcard_like_keys(chain, capsys, arg):
    cache, keys = chain
    assert main(["cache", "clear", "--cache", str(cache), arg]) == 2
    assert "error:" in capsys.readouterr().err
    assert all((cache / k / "DONE").is_file() for k in keys)  # nothing removed


def test_cache_clear_by_key_hash_prefix_and_stage_part(chain, capsys):
    cache, (root, mid, leaf) = chain
    assert main(["cache", "clear", "--cache", str(cache), root[:len("fake-root-") + 4]]) == 0
    assert main(["cache", "clear", "--cache", str(cache), "fake-mid"]) == 0
    assert sorted(p.name for p in cache.iterdir() if p.is_dir() and p.name != ".locks") == [leaf]


def test_cache_verify_hashes_every_file_and_moves_corrupt_entries_aside(chain, capsys, monkeypatch):
    import bench.stage_cache as stage_cache

    cache, (root, mid, leaf) = chain
    monkeypatch.setattr(stage_cache, "HASH_ON_READ", 0)  # every file counts as big: a read checks sizes only
    (cache / mid / "value.json").write_text("7")  # same size, other bytes
    assert StageCache(cache).result(mid)["value"] == 3  # the cheap check cannot see it
    assert main(["cache", "verify", "--cache", str(cache)]) == 1
    out = capsys.readouterr().out
    assert f"corrupt  {mid}" in out and "value.json: sha256 differs" in out and "2 intact, 1 corrupt" in out
    assert not (cache / mid).exists() and any(p.name.startswith(mid + ".corrupt-") for p in cache.iterdir())
    assert main(["cache", "verify", "--cache", str(cache)]) == 0


def test_truncated_model_file_names_the_file_and_the_fix(tmp_path):
    from bench.models import build_model

    d = tmp_path / "source_only-train-0123456789abcdef"
    d.mkdir()
    (d / "model.json").write_text(json.dumps({"module": "segmenter", "name": "small", "options": {}}))
    torch.save({"segmenter": build_model("small").state_dict()}, d / "model.pt")
    data = (d / "model.pt").read_bytes()
    (d / "model.pt").write_bytes(data[: len(data) // 2])
    with pytest.raises(RuntimeError, match=r"model.pt: unreadable model file .*bench cache verify "
                                           r"source_only-train-0123456789abcdef"):
        load_model(d)


def test_a_consumer_never_reads_a_corrupt_upstream(chain):
    from bench.stage_exec import execute_stage

    cache, (root, mid, leaf) = chain
    planned = plan_stages([fk.chain(1, 2, extra=5)], 0, {}, {})
    (cache / mid / "value.json").write_text("")
    with pytest.raises(CorruptEntry, match="value.json"):
        execute_stage(planned[-1], str(cache), {}, {})


def test_the_stage_lock_lets_one_computation_through(tmp_path, capfd):
    """A second execution of a stage that another process holds waits, then returns the stored result."""
    import multiprocessing as mp

    from bench.stage_exec import execute_stage

    cache = tmp_path / "cache"
    (planned,) = plan_stages([Stage("fake.slow", "fit", fk.produce, {"value": 4})], 0, {}, {})
    ctx = mp.get_context("spawn")
    with StageCache(cache).lock(planned.key):
        p = ctx.Process(target=execute_stage, args=(planned, str(cache), {}, {}))
        p.start()
        deadline = time.monotonic() + 60
        while "waiting for its result" not in capfd.readouterr().out:  # the child reached the held lock
            assert p.is_alive() and time.monotonic() < deadline
            time.sleep(0.05)
        assert fk.calls(cache / "calls.txt") == []
    p.join(60)
    assert p.exitcode == 0 and fk.calls(cache / "calls.txt") == [planned.key]
    again = execute_stage(planned, str(cache), {}, {})
    assert again["cached"] and again["result"]["value"] == 4 and fk.calls(cache / "calls.txt") == [planned.key]
