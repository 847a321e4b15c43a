"""Results as early as the DAG allows: evaluations first and seed 0 before seed 1 (the scheduler's submission
order, and its replay in ``bench perf schedule``), and an interim report as each seed's experiments complete while
later seeds still run."""

import shutil
from types import SimpleNamespace

import pytest
import stage_fakes as fk
from fixtures import tiny_minicity_suite, write_suite

from bench.interim import InterimReports, SeedProgress
from bench.scheduler import Scheduler, submission_order
from bench.stage_keys import plan_stages
from methods.base import Stage

DATASETS = {"source": {"spec": {"name": "gta5"}, "fingerprint": "aaa"}}


def _plan(seeds) -> dict:
    """Two rows per seed (one with a longer chain), seeds planned in the given order."""
    rows = [fk.evaluated_row(10), fk.evaluated_row(20, long=True)]
    planned = [p for s in seeds for p in plan_stages(rows, s, DATASETS, {})]
    return {p.key: p for p in planned}


def test_submission_order_puts_evaluations_then_the_lower_seed_then_the_longer_chain_first():
    stages = _plan([1, 0])  # seed 1 planned first: the order must not come from the plan
    order = submission_order(stages)
    ranked = sorted(stages, key=order.__getitem__)
    described = [(stages[k].stage.kind, stages[k].seed) for k in ranked]
    assert described[:2] == [("eval", 0), ("eval", 0)] and described[2:4] == [("eval", 1), ("eval", 1)]
    trains = [k for k in ranked if stages[k].stage.kind != "eval"]
    assert {stages[k].seed for k in trains[:5]} == {0} and {stages[k].seed for k in trains[5:]} == {1}
    # within seed 0, the root of the longer chain (fit → train → train → eval) before the shorter one's
    roots = [stages[k].stage.params["value"] for k in trains[:5] if stages[k].name == "fake.root"]
    assert roots == [20, 10]
    unseeded = Stage("fake.shared", "data", fk.produce, {"value": 3}, seeded=False)
    both = {p.key: p for p in plan_stages([unseeded], 1, DATASETS, {})} | stages
    first_train = min((k for k in both if both[k].stage.kind != "eval"), key=submission_order(both).__getitem__)
    assert both[first_train].name == "fake.shared"  # shared by every seed: before seed 0's own stages


def test_the_local_executor_runs_each_evaluation_once_its_model_exists_and_seed_0_first(tmp_path):
    stages = _plan([1, 0])
    finished = []
    Scheduler(stages, {k: {} for k in stages}, {}, tmp_path / "cache", executor="local",
              on_finished=lambda ps, o: finished.append(ps)).run()
    assert [ps.seed for ps in finished] == [0] * 7 + [1] * 7
    for i, ps in enumerate(finished):
        if ps.stage.kind == "eval":  # straight after the train stage it evaluates
            assert finished[i - 1].key in ps.upstream.values()
    assert fk.calls(tmp_path / "cache" / "calls.txt") == [ps.key for ps in finished]  # the order they ran in


def test_replay_of_recorded_times_matches_a_schedule_worked_out_by_hand(tmp_path):
    """Two seeds × (fit 1 s → train 4 s → eval 1 s, and fit 1 s → train 4 s → train 4 s → eval 1 s) on 2 slots,
    worked out by hand. Submission order: the first eval ends at 6 s, seed 0's last at 10, everything at 16 (32 s
    of work, no slot idle). Longest chain first: no eval before 15 s, seed 0 done at 15, the end also at 16."""
    from bench.perf_schedule import milestones, recorded_seconds, replay
    from bench.scheduler import critical_path

    stages = _plan([0, 1])
    seconds = {k: {"fake.root": 1.0, "fake.mid": 4.0, "fake.mid2": 4.0, "fake.eval": 1.0}[ps.name]
               for k, ps in stages.items()}
    exps = [SimpleNamespace(seed=s, stages=[ps for ps in stages.values() if ps.seed == s]) for s in (0, 1)]
    now = milestones(stages, exps, replay(stages, seconds, submission_order(stages), 2))
    assert (60 * now["first_eval"], {s: 60 * v for s, v in now["seeds"].items()}, 60 * now["end"]) == \
        (6.0, {0: 10.0, 1: 16.0}, 16.0)
    height = critical_path(stages)
    before = milestones(stages, exps, replay(stages, seconds, {k: -height[k] for k in stages}, 2))
    assert (60 * before["first_eval"], 60 * before["seeds"][0], 60 * before["end"]) == (15.0, 15.0, 16.0)
    one = replay(stages, seconds, submission_order(stages), 1)
    assert max(end for _, end in one.values()) == 32.0  # one slot: the work, end to end

    Scheduler(stages, {k: {} for k in stages}, {}, tmp_path / "cache", executor="local").run()
    assert set(recorded_seconds(stages, tmp_path / "cache")) == set(stages)
    (tmp_path / "cache" / next(iter(stages)) / "meta.json").unlink()
    with pytest.raises(FileNotFoundError, match="1 of 14 stages have no recorded time"):
        recorded_seconds(stages, tmp_path / "cache")


def test_an_interim_report_says_so_when_the_run_stops_before_its_own(tmp_path):
    from bench.interim import RUNNING, STOPPED

    report = tmp_path / "report.md"

    def write(note, seeds):
        report.write_text(f"# s\n\n{note}\n\nrows\n")
        return report

    rep = InterimReports(lambda ps, o: None, write, [_exp(0, ["a"]), _exp(1, ["b"])], total=2)
    rep(SimpleNamespace(key="a"), None)
    assert RUNNING in report.read_text()
    with pytest.raises(KeyboardInterrupt):
        rep.final(lambda: (_ for _ in ()).throw(KeyboardInterrupt()))
    text = report.read_text()
    assert STOPPED in text and RUNNING not in text and text.endswith("rows\n")
    assert rep.final(lambda: 7) == 7  # a final report that is written: nothing to change


def _exp(seed, keys):
    return SimpleNamespace(seed=seed, stages=[SimpleNamespace(key=k) for k in keys])


def test_seed_progress_completes_a_seed_only_with_every_stage_of_every_experiment():
    p = SeedProgress([_exp(0, ["a", "b"]), _exp(0, ["a", "c"]), _exp(1, ["a", "d"])])
    assert p.stage_finished("a") == [] and p.stage_finished("b") == []
    assert p.stage_finished("c") == [0] and not p.all_complete()
    assert p.stage_finished("c") == []  # told once
    assert p.stage_finished("d") == [1] and p.all_complete()


def test_interim_reports_are_written_for_every_seed_but_the_last_and_a_failing_write_is_a_warning(capsys):
    told, notes = [], []
    rep = InterimReports(lambda ps, o: told.append(ps.key), lambda note, seeds: notes.append(note) or "r.md",
                         [_exp(0, ["a"]), _exp(1, ["b"]), _exp(2, ["c"])], total=3)
    rep(SimpleNamespace(key="a"), None)
    assert told == ["a"] and len(notes) == 1
    assert "seed 0 has finished (1 of 3 stages); seeds 1, 2 still running" in notes[0]
    rep(SimpleNamespace(key="b"), None)
    rep(SimpleNamespace(key="c"), None)  # the last seed: the run's own report follows
    assert told == ["a", "b", "c"] and len(notes) == 2 and rep.written == [[0], [0, 1]]
    assert "seeds 0, 1 has finished" in notes[1]
    assert "seeds 0, 1 complete: interim report r.md" in capsys.readouterr().err

    rep = InterimReports(lambda ps, o: None, lambda note, seeds: notes.append(note), [_exp(0, ["a"]), _exp(1, ["b"])],
                         total=2, pending=lambda: False)
    rep(SimpleNamespace(key="a"), None)  # nothing left to compute (all from the cache): the final report follows
    assert len(notes) == 2 and rep.written == []

    def refuse(note, seeds):
        raise OSError("disk full")

    rep = InterimReports(lambda ps, o: None, refuse, [_exp(0, ["a"]), _exp(1, ["b"])], total=2)
    rep(SimpleNamespace(key="a"), None)
    assert rep.written == [] and "interim report for seeds [0] not written (OSError: disk full)" in \
        capsys.readouterr().err


@pytest.mark.slow
def test_a_two_seed_suite_reports_seed_0_alone_before_seed_1_is_done(tmp_path, monkeypatch):
    """Seed 1's source-only comes from the cache (an earlier run), so its result exists when seed 0 completes: the
    interim report must still show seed 0 only, every row over the same seeds."""
    import bench.report
    from bench.suite_runner import run_suite

    suite = tiny_minicity_suite(tmp_path, {"gta5": 4, "synthia": 2, "cityscapes_train": 4, "cityscapes_val": 2})
    suite.update(only=["source_only"], seeds=[1])
    suite["methods"]["source_only"].update(iters=2, batch_size=2)
    suite["methods"]["oracle"].update(iters=2, batch_size=2)
    run_suite(str(write_suite(suite, tmp_path / "tiny.yaml")), results_root=tmp_path / "r", executor="local")
    suite.update(only=["source_only", "oracle"], seeds=[0, 1])
    snapshots = []
    real = bench.report.write_outputs

    def spy(*a, **k):
        out = real(*a, **k)
        done = sorted(p.parent.name.split("-")[0] for p in k["cache_root"].glob("*/DONE"))
        snapshots.append((out["path"].read_text(), done))
        shutil.copy(out["path"], tmp_path / f"report{len(snapshots)}.md")
        return out

    monkeypatch.setattr(bench.report, "write_outputs", spy)
    out = run_suite(str(write_suite(suite, tmp_path / "tiny.yaml")), results_root=tmp_path / "r", executor="local")
    assert sorted(o.status for o in out["outcomes"].values()) == ["cached"] * 2 + ["done"] * 6
    (interim, done_then), (final, _) = snapshots
    assert done_then.count("eval") == 3 and done_then.count("source_only") == 3  # seed 1's oracle not yet
    assert interim.startswith("# tiny\n\n> **Interim report**") and "seed 1 still running" in interim
    assert "ours = mean±std over seeds [0] (of the suite's [0, 1])" in interim
    assert "| source_only | ours (1 seed) |" in interim and "| oracle | ours (1 seed) |" in interim
    assert "Interim report" not in final and "over seeds [0, 1]\n" in final
    assert "| source_only | ours (2 seeds) |" in final and "| oracle | ours (2 seeds) |" in final
    again = run_suite(str(tmp_path / "tiny.yaml"), results_root=tmp_path / "r", executor="local")
    assert {o.status for o in again["outcomes"].values()} == {"cached"}
    assert len(snapshots) == 3 and "Interim report" not in snapshots[2][0]  # all from the cache: the final alone
