"""The sweep as a search, without Ray: ranges on the command line, the metric a search may optimise, the search
table, the selection regret on hand-made numbers, the label-free criteria of the select stage, ``--list``."""

import math

import numpy as np
import pandas as pd
import pytest

from bench.suite_runner import SuiteError
from bench.sweep_space import parse_space


def test_ranges_and_lists_parse():
    assert parse_space("delta_d", "uniform(0.5,3.5)").args == (0.5, 3.5)
    lu = parse_space("delta", "loguniform(1e-4, 1e-2)")
    assert (lu.kind, lu.args, lu.is_range) == ("loguniform", (1e-4, 1e-2), True)
    assert parse_space("rounds", "randint(1,4)").probes() == [1, 3]
    ch = parse_space("alpha", "choice([0.7, 0.85])")
    assert (ch.kind, ch.args, ch.is_range, ch.probes()) == ("choice", (0.7, 0.85), False, [0.7, 0.85])
    assert parse_space("delta_d", "0.5,1,2").args == (0.5, 1, 2)


@pytest.mark.parametrize("raw, why", [
    ("uniform(3.5,0.5)", "lo < hi"), ("loguniform(0,1)", "lo > 0"), ("uniform(a,1)", "not a finite number"),
    ("normal(0,1)", "unknown range"), ("uniform(1)", "exactly two bounds"), ("randint(0.5,2)", "integer bounds"),
    ("choice([])", "non-empty list"), ("0.5,,1", "empty value"), ("uniform(0.5,3.5", "cannot read"),
])
def test_bad_ranges_give_one_error_naming_the_key_and_the_fix(raw, why):
    with pytest.raises(SuiteError) as e:
        parse_space("delta_d", raw)
    msg = str(e.value)
    assert "sweep key delta_d" in msg and why in msg and "key=uniform(lo,hi)" in msg and msg.count("\n") == 0


def test_a_range_needs_a_random_or_optuna_search():
    space = parse_space("delta_d", "uniform(0.5,3.5)")
    with pytest.raises(SuiteError, match="--search random"):
        space.check("grid")
    with pytest.raises(SuiteError, match="choose one of grid, random, optuna"):
        space.check("bayes")
    space.check("random")


def test_metric_is_label_free_or_holdout_never_target_val():
    from bench.sweep_tune import resolve_metric

    assert resolve_metric("snd", None, False) == ("snd", "max")
    assert resolve_metric("entropy", None, False) == ("entropy", "min")
    assert resolve_metric("dev", "max", False) == ("dev", "max")
    assert resolve_metric("holdout_miou", None, True) == ("holdout_miou", "max")
    with pytest.raises(SuiteError, match="record only"):
        resolve_metric("val_miou", None, True)
    with pytest.raises(SuiteError, match="needs --holdout"):
        resolve_metric("holdout_miou", None, False)
    with pytest.raises(SuiteError, match="choose one of entropy"):
        resolve_metric("accuracy", None, False)


def test_search_setup_checks_samples_and_names_the_optuna_install(monkeypatch):
    pytest.importorskip("ray.tune")
    from bench.sweep_tune import search_setup

    grid = parse_space("delta_d", "0.5,1")
    with pytest.raises(SuiteError, match="--num-samples is for"):
        search_setup(grid, "grid", 3, 0)
    space, alg, n = search_setup(grid, "grid", None, 0)
    assert space["delta_d"] == {"grid_search": [0.5, 1]} and alg is None and n == 1
    monkeypatch.setitem(__import__("sys").modules, "optuna", None)  # as if not installed
    with pytest.raises(SuiteError, match="pip install optuna"):
        search_setup(parse_space("delta_d", "uniform(0.5,3.5)"), "optuna", 4, 0)


def test_search_frame_puts_the_best_trial_first():
    from bench.sweep_tune import search_frame

    df = pd.DataFrame({"trial_id": ["a", "b", "c"], "config/delta_d": [0.5, 1.0, 1.5], "snd": [2.0, 3.0, 1.0],
                       "entropy": [0.3, 0.2, 0.1], "val_miou": [10.0, 12.0, 11.0], "timestamp": [1, 2, 3],
                       "computed_seed0": [4, 4, 4]})
    t = search_frame(df, "delta_d", "snd", "max")
    assert list(t["trial_id"]) == ["b", "a", "c"] and list(t.columns[:4]) == ["trial_id", "delta_d", "snd",
                                                                              "val_miou"]
    assert "timestamp" not in t and list(search_frame(df, "delta_d", "entropy", "min")["trial_id"])[0] == "c"


def test_selection_regret_on_a_hand_made_sweep():
    from bench.regret import regret_markdown, selection_regret

    frame = pd.DataFrame({"mIoU": [10.0, 30.0, 20.0], "entropy": [0.5, 0.9, 0.1], "snd": [1.0, 2.0, 3.0],
                          "info_max": [5.0, 1.0, 0.0], "iwcv": [0.3, 0.1, 0.2], "dev": [np.nan] * 3,
                          "holdout mIoU": [12.0, 25.0, 28.0]}, index=[1.0, 2.0, 3.0])
    t = selection_regret(frame).set_index("criterion")
    assert t.loc["entropy", "picks"] == 3.0 and t.loc["entropy", "regret"] == 10.0  # lowest entropy: 3 → 20
    assert t.loc["info_max", "picks"] == 1.0 and t.loc["info_max", "regret"] == 20.0
    assert t.loc["iwcv", "picks"] == 2.0 and t.loc["iwcv", "regret"] == 0.0
    assert t.loc["holdout mIoU", "regret"] == 10.0 and "dev" not in t.index  # no DEV values: no row
    assert t.loc["oracle (target val)", "picks"] == 2.0 and t.loc["oracle (target val)", "val mIoU"] == 30.0
    md = regret_markdown(t.reset_index(), "delta_d", "r")
    assert "| entropy | min | 3 | 20.0 | 10.0 |" in md
    with pytest.raises(ValueError, match="target-val column"):
        selection_regret(frame.drop(columns="mIoU"))


def test_regret_matrix_puts_sweeps_side_by_side(tmp_path, capsys):
    from bench.cli import main
    from bench.regret import regret_matrix, regret_matrix_markdown, selection_regret

    a = pd.DataFrame({"mIoU": [10.0, 30.0, 20.0], "snd": [1.0, 2.0, 3.0], "iwcv": [0.3, 0.1, 0.2]}, index=[1, 2, 3])
    b = pd.DataFrame({"mIoU": [40.0, 41.0], "snd": [4.0, 5.0], "iwcv": [0.1, 0.2], "IW degenerate": [1.0, 0.0]},
                     index=[0.5, 1.0])
    m = regret_matrix({"b_sweep": selection_regret(b), "a_sweep": selection_regret(a)}, {"a_sweep": 20.0})
    assert list(m.index) == ["a_sweep", "b_sweep", "mean", "best picked"]
    assert m.loc["a_sweep", "snd"] == 10.0 and m.loc["a_sweep", "iwcv"] == 0.0 and m.loc["a_sweep", "val range"] == 20
    assert np.isnan(m.loc["b_sweep", "val range"]) and "val range" not in regret_matrix({"a": selection_regret(a)})
    assert m.loc["b_sweep", "snd"] == 0.0 and m.loc["b_sweep", "iwcv"] == 1.0 and m.loc["b_sweep", "†"] == 1
    assert m.loc["mean", "snd"] == 5.0 and m.loc["mean", "iwcv"] == 0.5
    assert m.loc["best picked", "snd"] == m.loc["best picked", "iwcv"] == 1
    md = regret_matrix_markdown(m, "t")
    assert "| a_sweep | 10.0 | 0.0 | 20.0 | 0 |" in md and "| best picked | 1 | 1 | – | – |" in md
    root = tmp_path / "minicity" / "sweeps"
    for name, frame in (("a_sweep", a), ("b_sweep", b)):
        (root / name).mkdir(parents=True)
        selection_regret(frame).to_csv(root / name / "regret.csv", index=False)
        frame.to_csv(root / name / "sweep.csv")
    assert main(["sweep", "--regret", "minicity", "--results", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "over 2 sweeps" in out and "| b_sweep | 0.0 | 1.0 | 1.0 | 1 |" in out
    assert "| a_sweep | 10.0 | 0.0 | 20.0 | 0 |" in out
    assert (root / "regret_summary.md").read_text() in out and (root / "regret_summary.csv").exists()
    assert main(["sweep", "--regret", "other", "--results", str(tmp_path)]) == 2
    assert "no sweep with a regret.csv under" in capsys.readouterr().err


def test_regret_summary_counts_a_sweep_run_under_two_names_once(tmp_path):
    import os

    from bench.regret import selection_regret
    from bench.sweep_report import write_regret_summary

    root = tmp_path / "minicity" / "sweeps"
    trials = pd.DataFrame({"value": [1.0, 2.0, 1.0, 2.0], "seed": [0, 0, 1, 1], "mIoU": [30.0, 31.0, 29.0, 32.5]})
    per_value = pd.DataFrame({"mIoU": [29.5, 31.75], "snd": [1.0, 2.0]}, index=[1.0, 2.0])
    runs = {"old_name": trials, "new_name": trials, "other_study": trials.assign(mIoU=trials["mIoU"] + 0.5)}
    for age, (name, t) in enumerate(runs.items()):
        (root / name).mkdir(parents=True)
        t.to_csv(root / name / "trials.csv", index=False)
        per_value.to_csv(root / name / "sweep.csv")
        selection_regret(per_value).to_csv(root / name / "regret.csv", index=False)
        stamp = 1_000_000 + (0 if name == "old_name" else 10 * (age + 1))
        os.utime(root / name / "regret.csv", (stamp, stamp))
    md, paths = write_regret_summary(tmp_path, "minicity")
    kept = pd.read_csv(paths["csv"], index_col=0)
    assert "over 2 sweeps" in md and {"new_name", "other_study"} <= set(kept.index)
    assert "old_name" not in kept.index and "`old_name` (as `new_name`)" in md
    # sweep.csv alone (an older sweep without trials.csv) is compared by its per-value mIoU
    (root / "other_study" / "trials.csv").unlink()
    (root / "new_name" / "trials.csv").unlink()
    (root / "old_name" / "trials.csv").unlink()
    md, _ = write_regret_summary(tmp_path, "minicity")
    assert "over 1 sweep " in md and "`old_name` (as `other_study`)" in md and "`new_name` (as `other_study`)" in md


def test_select_stage_criteria_see_a_shift_and_rank_confident_models():
    from bench.select_stage import criteria_from_outputs, pick_images

    rng = np.random.default_rng(0)
    sharp = np.eye(3)[rng.integers(0, 3, 300)] * 0.97 + 0.01
    flat = np.full((300, 3), 1 / 3)
    src = rng.normal(0, 1, (200, 4))
    tgt = rng.normal(1, 1, (200, 4))
    val = np.r_[rng.normal(0, 1, (100, 4)), rng.normal(1, 1, (100, 4))]
    losses = np.r_[np.zeros(100), np.ones(100)]  # the model fails on the target-like half of source
    a = criteria_from_outputs(sharp, tgt, src, val, losses)
    b = criteria_from_outputs(flat, tgt, src, val, losses)
    assert set(a) == {"entropy", "info_max", "snd", "iwcv", "dev", "iw_ess", "iw_rows", "iw_mean"}
    assert all(math.isfinite(v) for v in a.values()) and a["iw_rows"] == 200 and 1 < a["iw_ess"] < 200
    assert a["entropy"] < b["entropy"] and a["info_max"] > b["info_max"]
    assert a["iwcv"] > losses.mean()  # weighting towards the target counts the failing half more
    assert pick_images(20, 8) == pick_images(20, 8) and len(set(pick_images(20, 8))) == 8
    assert pick_images(3, 8) == [0, 1, 2]


def test_select_stage_flags_a_source_pixel_the_domain_classifier_calls_certainly_target():
    """The v4 SSF-DAN failure in miniature: a channel silent on every source-fit pixel and active on the target, and
    one source-validation pixel active there. Its importance weight takes nearly all of IWCV's mass."""
    from bench.select_stage import criteria_from_outputs
    from bench.selection import weights_degenerate

    rng = np.random.default_rng(1)
    src, tgt, val = rng.normal(0, 1, (300, 3)), rng.normal(0.3, 1, (300, 3)), rng.normal(0, 1, (200, 3))
    mild = criteria_from_outputs(np.full((5, 2), 0.5), tgt, src, val, np.ones(200))  # an ordinary shift
    src[:, 2], tgt[:, 2] = 0.0, np.abs(rng.normal(0, 1, 300))  # a ReLU channel: dead on source, alive on target
    val[:, 2] = 0.0
    val[7, 2] = 0.1
    bad = criteria_from_outputs(np.full((5, 2), 0.5), tgt, src, val, np.ones(200))
    assert not weights_degenerate(mild["iw_ess"], mild["iw_rows"], mild["iw_mean"])
    assert bad["iw_ess"] < 1.5 and bad["iw_mean"] > 10 and weights_degenerate(bad["iw_ess"], 200, bad["iw_mean"])
    assert bad["iwcv"] > 100 * mild["iwcv"]  # every loss is 1: only the weights move IWCV


def test_sweep_tables_mark_iwcv_and_dev_where_the_weights_are_degenerate():
    from bench.regret import IW_BAD, IW_ESS, regret_markdown, selection_regret
    from bench.sweep_report import sweep_latex, sweep_markdown

    study = type("S", (), {"param": "rho_upper"})()
    frame = pd.DataFrame({"seeds": [2, 2], "mIoU": [30.0, 32.0], "iwcv": [0.4, 9e6], "dev": [0.3, 0.2],
                          IW_ESS: [40.0, 0.1], IW_BAD: [0.0, 0.5]}, index=[0.2, 0.8])
    for c in ("mIoU", "iwcv", "dev", IW_ESS):
        frame[f"{c}_std"] = np.nan
    md = sweep_markdown(frame, study, None, "t")
    assert "| 0.2 | 2 | 30.0 | 0.400 | 0.300 | 40.0 |" in md  # sound weights: no mark, flag column not shown
    assert "9000000.000 † | 0.200 † | 0.1 |" in md and "† importance weights degenerate" in md
    assert md.count("†") == 3 and IW_BAD not in md
    tex = sweep_latex(frame, study, "c")
    assert tex.count(r"$^\dagger$") == 3 and "1 \\%" in tex and IW_BAD not in tex
    t = selection_regret(frame).set_index("criterion")
    assert t.loc["iwcv", "note"] == t.loc["dev", "note"] == "weights degenerate on 1 of 2 values"
    assert t.loc["oracle (target val)", "note"] == ""
    assert "| dev | min | 0.8 | 32.0 | 0.0 | weights degenerate on 1 of 2 values |" in regret_markdown(
        t.reset_index(), "rho_upper", "r")
    clean = selection_regret(frame.drop(columns=[IW_BAD, IW_ESS]))
    assert "note" not in regret_markdown(clean, "rho_upper", "r")  # no weights column: the table as before


def test_list_names_every_study_with_method_values_and_paper(capsys):
    from bench.cli import main
    from bench.sweep import all_studies

    assert main(["sweep", "--list"]) == 0
    out = capsys.readouterr().out
    assert len(all_studies()) == 9
    for name, s in all_studies().items():
        assert f"{name}: {s.method}.{s.param} = " in out
    assert "bismap Table 5 (CAs-PLA)" in out and "pixintrada Table 8" in out and " in minicity" not in out
    assert main(["sweep", "--list", "minicity"]) == 0  # what that suite's sweeps use instead
    out = capsys.readouterr().out
    assert "    in minicity: delta_override = -25.0, -22.5, -20.0, -17.5, -15.0\n" in out
    assert "    in minicity: set: {'delta_override': -22.67}" in out and out.count(" in minicity:") == 2
    assert main(["sweep", "--list", "minicty"]) == 2 and "minicity" in capsys.readouterr().err


def test_cli_bad_range_is_one_error_before_anything_runs(capsys):
    from bench.cli import main

    assert main(["sweep", "cag_uda", "delta_d=uniform(3,1)", "--executor", "local"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: sweep key delta_d") and "\n" not in err
    assert main(["sweep", "cag_delta_d", "delta_d=uniform(0.5,3.5)", "--executor", "local"]) == 2
    assert "--search random" in capsys.readouterr().err


def test_search_frame_keeps_one_column_for_a_pl_named_setting():
    """A swept setting whose name starts like the pseudo-label columns (bismap's pl_ratio_target) appears once:
    `bench sweep bismap pl_ratio_target=…` read the value column back as a frame and failed."""
    from bench.sweep_tune import search_frame

    df = pd.DataFrame({"trial_id": ["a", "b"], "config/pl_ratio_target": [0.2, 0.4], "holdout_miou": [30.0, 31.0],
                       "pl_ratio": [20.0, 40.0], "pl_precision": [80.0, 70.0]})
    t = search_frame(df, "pl_ratio_target", "holdout_miou", "max")
    assert list(t.columns) == ["trial_id", "pl_ratio_target", "holdout_miou", "pl_ratio", "pl_precision"]
    assert t["pl_ratio_target"].tolist() == [0.4, 0.2]


def test_a_value_the_data_cannot_support_fails_its_trial_and_the_sweep_goes_on(monkeypatch, tmp_path):
    """A stage's ValueError (BiSMAP's STM when a δ labels no pixel) fails the same way on every rerun: run_value
    reports that trial as failed, with the reason, and NaN columns; another value's trial still runs, and the
    tables mark the failed value instead of dropping it or printing a number for it."""
    from types import SimpleNamespace as NS

    import bench.stage_exec
    import bench.sweep_trials
    from bench.stage_cache import StageCache
    from bench.sweep import all_studies
    from bench.sweep_report import search_markdown, sweep_frame, sweep_markdown, trial_rows
    from bench.sweep_tune import Planner, run_value, search_frame

    study = all_studies()["bismap_delta"]
    cache = StageCache(tmp_path)

    def stage(key):
        return NS(key=key, name=key)

    def trial(value):
        st = [stage(f"label-{value}"), stage(f"stm-{value}"), stage(f"eval-{value}")]
        return NS(value=value, seed=0, specs={}, stages=st, holdout_eval=None, select=None, all_stages=lambda: st,
                  label_stage=lambda name, st=st: st[0])

    def execute(ps, cache_root, specs, train):
        if ps.key == "stm-150.0":
            raise ValueError("stm_entropy: the label stage labelled no target pixel")
        result = {"miou_19": 0.4} if ps.key.startswith("eval") else {"pl_ratio": 0.5, "pl_precision": 0.8}
        cache.dir(ps.key).mkdir(parents=True, exist_ok=True)
        cache.mark_done(ps.key, result, {})
        return {"cached": False}

    monkeypatch.setattr(bench.stage_exec, "execute_stage", execute)
    monkeypatch.setattr(bench.sweep_trials, "plan_trials", lambda suite, study, values, *a: [trial(values[0])])
    planner = Planner({}, study, [0], {}, {}, False, {}, str(tmp_path))
    ok, bad = run_value(planner, 50.0), run_value(planner, 150.0)
    assert ok["val_miou"] == pytest.approx(40.0) and ok["computed_seed0"] == 3 and "failed" not in ok
    assert "labelled no target pixel" in bad["failed"] and math.isnan(bad["val_miou"])
    assert bad["computed_seed0"] == 1 and bad["pl_ratio"] == pytest.approx(50.0)  # its label stage did run
    table = search_frame(pd.DataFrame([{"trial_id": "a", "config/delta_override": 50.0, **ok},
                                       {"trial_id": "b", "config/delta_override": 150.0, **bad}]),
                         "delta_override", "val_miou", "max")
    md = search_markdown(table, "delta_override", "val_miou", "max", "t")
    assert list(table["trial_id"]) == ["a", "b"] and "labelled no target pixel |" in md and "| nan" not in md
    frame = sweep_frame(trial_rows(study, [trial(50.0), trial(150.0)], tmp_path))
    assert "| 150.0 (failed: see the search table) | 1 | – |" in sweep_markdown(frame, study, None, "t")


def test_a_sweep_whose_every_trial_failed_stops_with_each_reason(monkeypatch, capsys):
    """BiSMAP's δ study on MiniCity (δ 0-150 label no pixel of its features): every trial fails, and the sweep
    ends with one error naming each value's reason, not a traceback from the table it cannot write."""
    import bench.sweep
    from bench.cli import main
    from bench.sweep_tune import SweepFailed, check_some_trial_finished

    table = pd.DataFrame({"trial_id": ["a", "b"], "delta_override": [0.0, 50.0],
                          "holdout_miou": [float("nan")] * 2, "failed": ["labelled no target pixel", "out of memory"]})
    with pytest.raises(SweepFailed, match=r"2 of 2.*delta_override=0.0: labelled no target pixel; "
                                              r"delta_override=50.0: out of memory.*cache"):
        check_some_trial_finished(table, "delta_override", "holdout_miou")
    with pytest.raises(SweepFailed, match=r"delta_override=0.0, 50.0: labelled no target pixel. The"):
        check_some_trial_finished(table.assign(failed="labelled no target pixel"), "delta_override", "holdout_miou")
    check_some_trial_finished(table.assign(holdout_miou=[float("nan"), 30.0]), "delta_override", "holdout_miou")

    def run(*a, **k):
        check_some_trial_finished(table, "delta_override", "holdout_miou")

    monkeypatch.setattr(bench.sweep, "run_sweep", run)
    assert main(["sweep", "bismap_delta", "--holdout", "--metric", "holdout_miou"]) == 1
    err = capsys.readouterr().err
    assert err.startswith("error: every trial failed") and "Traceback" not in err and len(err.splitlines()) == 1


def test_a_sweep_whose_shared_stage_failed_stops_with_the_cause(monkeypatch, tmp_path):
    """BiSMAP's CAs-Δd study on MiniCity: the STM every value shares reads MAPs labels at the paper's δ, which
    labels nothing there. The sweep stops with the failed stage and its reason (not the stages it skipped)."""
    from types import SimpleNamespace as NS

    import bench.scheduler
    import bench.sweep
    from bench.sweep_tune import SweepFailed

    outcomes = {"a": NS(name="bismap.stm", status="failed", error="the MAPs label stage labelled no target pixel"),
                "b": NS(name="bismap.self_train", status="skipped", error="upstream bismap.stm did not finish"),
                "c": NS(name="bismap.warmup", status="cached", error=None)}
    monkeypatch.setattr(bench.scheduler, "Scheduler", lambda *a, **k: NS(run=lambda: outcomes))
    monkeypatch.setattr(bench.sweep, "shared_stages", lambda probes: ["a"])
    with pytest.raises(SweepFailed, match=r"shares failed.*bismap.stm: the MAPs label stage labelled no target "
                                          r"pixel. The stages that ran are kept") as e:
        bench.sweep._run_shared([NS(specs={}, stages=[NS(key="a")])], {}, tmp_path, "local", None)
    assert "self_train" not in str(e.value)
