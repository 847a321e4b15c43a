"""``bench sweep`` on a tiny MiniCity through Ray Tune with a logical GPU: the shared upstream stages run once,
each trial is a nested MLflow run, a trial whose stages were lost resumes through the cache, over-asking stops."""

import pytest
from fixtures import tiny_minicity_suite, write_suite

from bench.suite_runner import SuiteError

SWEEP = ["methods.cag_uda.pretrain={model: small, model_options: {}, iters: 3, horizon: null, batch_size: 2, "
         "lr: 0.01, weight_decay: 0.0005, aux_weight: 0.0}", "methods.cag_uda.warmup_iters=2",
         "methods.cag_uda.stage_iters=2", "methods.cag_uda.batch_size=2", "methods.cag_uda.warmup_batch_size=2"]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("sweep")
    suite = tiny_minicity_suite(tmp, {"gta5": 6, "synthia": 2, "cityscapes_train": 16, "cityscapes_val": 2},
                                checkpoint_every=1, metrics_every=1)
    return str(write_suite(suite, tmp / "tiny.yaml")), tmp / "results"


@pytest.fixture(scope="module")
def ray_gpu():
    ray = pytest.importorskip("ray")
    pytest.importorskip("ray.tune")
    ray.init(address="local", num_cpus=2, num_gpus=1, include_dashboard=False, log_to_driver=False,
             object_store_memory=80 * 1024**2, logging_level="ERROR")
    yield
    ray.shutdown()


def test_parse_axes_names_studies_methods_and_errors():
    from bench.sweep import parse_axes

    study, space, seeds, over = parse_axes("cag_uda", ["delta_d=0.5,1", "seed=0,1", "train.device=cpu"])
    assert (study.method, study.param, space.kind, space.args, seeds, over) == (
        "cag_uda", "delta_d", "grid", (0.5, 1), [0, 1], ["train.device=cpu"])
    # an ad-hoc sweep reports the label stage of the method's own studies (its PL ratio / precision columns)
    assert (study.label_stage, parse_axes("bismap", ["st_iters=1,2"])[0].label_stage) == ("cag_uda.label",
                                                                                          "bismap.label")
    assert parse_axes("source_only", ["iters=1,2"])[0].label_stage is None  # a method without pseudo-labels
    study, space, _, _ = parse_axes("cag_delta_d", [])
    assert study.param == "delta_d" and space.args == (0.5, 1.0, 1.5, 2.0, 2.5) and study.fixed == {"num_stages": 1}
    study, space, _, _ = parse_axes("cag_delta_d", ["delta_d=uniform(0.5,3.5)"])
    assert (space.kind, space.args, space.probes()) == ("uniform", (0.5, 3.5), [0.5, 3.5])
    with pytest.raises(SuiteError, match="seeds are integers"):
        parse_axes("cag_delta_d", ["seed=a"])
    with pytest.raises(SuiteError, match="exactly one"):
        parse_axes("cag_uda", [])
    with pytest.raises(SuiteError, match="unknown study or method"):
        parse_axes("cag_dd", [])


@pytest.mark.slow
def test_sweep_shares_upstream_records_trials_and_resumes(tiny, ray_gpu):
    from mlflow.tracking import MlflowClient

    from bench.stage_cache import StageCache
    from bench.sweep import run_sweep

    path, results = tiny
    out = run_sweep("cag_delta_d", path, ["delta_d=0.0,0.5", *SWEEP], results_root=results, holdout=True,
                    metric="entropy")
    shared = sorted(o.name for o in out["shared_outcomes"].values())
    # source-only, warm-up and the anchors do not read Δd: computed once for both trials
    assert shared == ["adversarial.feature_warmup", "cag_uda.anchors", "source_only.train"]
    assert out["computed"] == {0: 5, 1: 5}  # label, train, val eval, held-out eval, criteria per trial
    frame = out["frame"]
    assert list(frame.index) == [0.0, 0.5] and (frame["seeds"] == 1).all()
    assert frame.loc[0.0, "PL ratio"] >= frame.loc[0.5, "PL ratio"]  # a larger margin keeps fewer pixels
    assert frame["holdout mIoU"].notna().all() and out["paths"]["png"].is_file()
    md = out["paths"]["md"].read_text()
    assert "paper PL ratio" in md  # BiSMAP's re-run of CAs-PLA beside ours
    # Tune's results are the search table, best (lowest entropy) first, and name the best trial
    search = out["search"]
    assert sorted(search["delta_d"]) == [0.0, 0.5] and search["entropy"].is_monotonic_increasing
    assert search[["val_miou", "holdout_miou", "snd", "iwcv", "dev"]].notna().all().all()
    assert frame.loc[search["delta_d"][0], "entropy"] == pytest.approx(search["entropy"][0])
    assert f"with delta_d={search['delta_d'][0]}" in out["best"] and "Tune search (grid)" in md
    regret = out["regret"].set_index("criterion")
    assert {"entropy", "snd", "info_max", "iwcv", "dev", "holdout mIoU"} < set(regret.index)
    assert (regret["regret"] >= 0).all() and regret.loc["oracle (target val)", "picks"] == frame["mIoU"].idxmax()
    assert "Selection regret" in md and out["paths"]["regret"].is_file() and out["paths"]["search"].is_file()

    client = MlflowClient(out["tracking_uri"])
    runs = client.search_runs([client.get_experiment_by_name("tiny").experiment_id],
                              f"tags.mlflow.parentRunId = '{out['sweep_run']}'")
    assert sorted(r.data.params["delta_d"] for r in runs) == ["0.0", "0.5"]
    assert all("mIoU" in r.data.metrics and "PL_ratio" not in r.data.metrics for r in runs)

    # a trial whose training was lost: only its tail runs again, from the cache's checkpoints
    t1 = out["trials"][1]
    cache = StageCache(results / "cache")
    cache.clear([ps.key for ps in t1.stages if ps.name in ("cag_uda.train", "eval")])
    again = run_sweep("cag_delta_d", path, ["delta_d=0.0,0.5", *SWEEP], results_root=results, holdout=True)
    assert {o.status for o in again["shared_outcomes"].values()} == {"cached"}
    assert again["computed"] == {0: 0, 1: 2}  # the criteria of an unchanged model come from the cache
    assert again["frame"].loc[0.5, "mIoU"] == pytest.approx(frame.loc[0.5, "mIoU"])


def _sampled(space, seed, tmp_path):
    from ray.tune import RunConfig, TuneConfig, Tuner
    from tune_draw import draw

    from bench.sweep_tune import search_setup

    param_space, alg, n = search_setup(space, "random", 3, seed)
    grid = Tuner(draw, param_space=param_space, tune_config=TuneConfig(search_alg=alg, num_samples=n),
                 run_config=RunConfig(storage_path=str(tmp_path), verbose=0)).fit()
    return sorted(r.config["delta_d"] for r in grid)


def test_random_search_with_a_fixed_seed_draws_the_same_values(ray_gpu, tmp_path):
    from bench.sweep_space import parse_space

    space = parse_space("delta_d", "uniform(0.5,3.5)")
    first, again = (_sampled(space, 7, tmp_path / str(i)) for i in range(2))
    assert len(set(first)) == 3 and all(0.5 <= v <= 3.5 for v in first)
    assert first == again  # without the seed two searches draw different values


def test_sweep_asking_for_more_gpus_than_the_cluster_stops_before_running(tiny, ray_gpu):
    from bench.scheduler import ResourceError
    from bench.sweep import run_sweep

    path, results = tiny
    with pytest.raises(ResourceError, match="GPU"):
        run_sweep("cag_delta_d", path, ["delta_d=0.5,1", "resources={gpu: 2}", *SWEEP], results_root=results)


def test_label_share_studies_meet_the_papers_rows_at_their_pl_ratio():
    """bismap_ratio / bismap_cas_ratio sweep the label share; the paper's Table 5 rows are matched by PL ratio
    (value scale 0.01), and a value between rows gets no paper cell."""
    import pandas as pd

    from bench.sweep import all_studies
    from bench.sweep_report import paper_points, sweep_markdown

    STUDIES = all_studies()

    maps, cas = paper_points(STUDIES["bismap_ratio"]), paper_points(STUDIES["bismap_cas_ratio"])
    assert list(maps.index) == list(STUDIES["bismap_ratio"].values) and maps.loc[0.613, "mIoU"] == 57.3
    assert cas.loc[0.678, "mIoU"] == 54.9 and STUDIES["bismap_cas_ratio"].fixed["pla"] == "cas"
    alpha = STUDIES["pixintrada_alpha"]  # Table 5 for a GTA5-format source, Table 8 for SYNTHIA
    assert paper_points(alpha, "gta5").loc[0.85, "mIoU"] == 50.3 and paper_points(alpha, "synthia").loc[0.79,
                                                                                                        "mIoU"] == 55.1
    frame = pd.DataFrame({"seeds": [1, 1], "mIoU": [20.0, 21.0], "mIoU_std": [float("nan")] * 2,
                          "PL ratio": [61.3, 50.0], "PL ratio_std": [float("nan")] * 2}, index=[0.613, 0.5])
    md = sweep_markdown(frame, STUDIES["bismap_ratio"], maps, "t")
    assert "| 0.613 | 1 | 20.0 | 61.3 | 61.3 | 57.3 |" in md and "| 0.5 (best on val) | 1 | 21.0 | 50.0 | – | – |" in md
    frame["threshold"], frame["threshold_std"] = [42.6799, 0.9861], [float("nan")] * 2  # δ resolved per trial
    assert "| 0.613 | 1 | 20.0 | 61.3 | 42.680 | 61.3 | 57.3 |" in sweep_markdown(frame, STUDIES["bismap_ratio"], maps,
                                                                                 "t")


@pytest.mark.parametrize("name", ["cag_delta_d", "bismap_ratio", "pixintrada_alpha"])
def test_perf_sweep_independent_pipeline_is_the_same_trial(name):
    """`bench perf sweep` compares like with like: the overrides it gives `bench run` plan exactly the stages
    (same cache keys) of the sweep's trial for that value."""
    from bench.perf_sweep import independent_overrides
    from bench.suite_plan import dataset_specs, plan_suite
    from bench.suite_runner import load_suite
    from bench.sweep import all_studies
    from bench.sweep_trials import plan_trials

    study = all_studies()[name]
    value = study.values[1]
    suite = load_suite("minicity", independent_overrides(study, value, 0))
    fps = {d: {"spec": {}, "fingerprint": "x" + d, "images": 1} for d in suite["datasets"]}
    (exp,) = plan_suite(suite, {"": fps})[0]
    (trial,) = plan_trials(load_suite("minicity"), study, [value], [0], dataset_specs(load_suite("minicity"), ""),
                           fps, False)
    assert [ps.key for ps in exp.stages] == [ps.key for ps in trial.stages]


def test_a_values_protocol_override_does_not_carry_over_to_the_next():
    """Each swept value is planned as `bench run` plans it: a value that states its own evaluation protocol (ms)
    leaves the next value, which does not, on the suite's protocol — val and held-out evaluation alike."""
    from bench.suite_plan import dataset_specs, plan_suite
    from bench.suite_runner import load_suite
    from bench.sweep import HOLDOUT, Study
    from bench.sweep_trials import plan_trials

    suite = load_suite("minicity")
    specs = dataset_specs(suite, "")
    fps = {d: {"spec": {}, "fingerprint": "x" + d, "images": 1} for d in suite["datasets"]}
    specs["target_holdout"] = {**specs["target_train"], "labels": True, "holdout": HOLDOUT}
    fps["target_holdout"] = {"spec": {"holdout": HOLDOUT}, "fingerprint": "h"}
    study = Study("cag_uda", "eval_protocol", ("ms", None), {"num_stages": 1})
    ms, plain = plan_trials(suite, study, ["ms", None], [0], specs, fps, True)
    suite_protocol = suite["evaluation"]["protocol"]
    assert suite_protocol != "ms"
    assert ms.stages[-1].stage.params["protocol"] == ms.holdout_eval.stage.params["protocol"] == "ms"
    assert plain.stages[-1].stage.params["protocol"] == plain.holdout_eval.stage.params["protocol"] == suite_protocol
    run = load_suite("minicity", ["only=[cag_uda]", "seeds=[0]", "ablations=false", "methods.cag_uda.num_stages=1"])
    (exp,) = plan_suite(run, {"": fps})[0]
    assert [ps.key for ps in plain.stages] == [ps.key for ps in exp.stages]  # the same stages as `bench run`'s


def test_sweep_of_a_categorical_setting_writes_its_plot_and_tables(tmp_path):
    """A sweep over named variants (ssf_dan's `ablation`) has a string index: the plot puts one labelled tick per
    value instead of failing to read the values as numbers, and the tables name each value."""
    import pandas as pd

    from bench.sweep import all_studies
    from bench.sweep_report import sweep_latex, sweep_markdown, sweep_plot

    study = all_studies()["ssf_rho_upper"]  # any study: only its param name is printed
    nan = float("nan")
    frame = pd.DataFrame({"seeds": [1, 1], "mIoU": [29.0, 31.0], "mIoU_std": [nan, nan], "holdout mIoU": [30.0, 32.0],
                          "holdout mIoU_std": [nan, nan], "PL ratio": [nan, nan], "PL ratio_std": [nan, nan]},
                         index=pd.Index(["global", "ssd_car"], dtype=object))
    path = sweep_plot(frame, study, None, tmp_path / "sweep.png")
    assert path.stat().st_size > 1000
    assert "| ssd_car (best on val) (held-out choice) | 1 | 31.0 | 32.0 |" in sweep_markdown(frame, study, None, "t")
    assert "global & 1 & 29.0 & 30.0" in sweep_latex(frame, study, "t")


def test_every_named_study_plans_on_the_default_minicity_suite():
    """Each of the 9 studies still plans on ``minicity`` as shipped (issue 15: the studies must keep running after
    the generator and schedule changes): one trial per value, each with its own model, val and held-out
    evaluation, and the upstream stages (where the method has any) shared by every value."""
    from bench.suite_plan import dataset_specs
    from bench.suite_runner import load_suite
    from bench.sweep import HOLDOUT, all_studies, suite_space
    from bench.sweep_space import Space
    from bench.sweep_trials import plan_trials

    suite = load_suite("minicity")
    specs = dataset_specs(suite, "")
    fps = {d: {"spec": {}, "fingerprint": "x" + d, "images": 1} for d in suite["datasets"]}
    specs["target_holdout"] = {**specs["target_train"], "labels": True, "holdout": HOLDOUT}
    fps["target_holdout"] = {"spec": {"holdout": HOLDOUT}, "fingerprint": "h"}
    studies = {n: s for n, s in all_studies().items() if s.method in suite["methods"]}
    assert len(studies) == 9
    for name, study in studies.items():
        values = suite_space(suite, name, Space(study.param, "grid", study.values), []).args
        trials = plan_trials(suite, study, list(values), [0], specs, fps, True)
        assert len(trials) == len(values), name
        models = [t.stages[-1].stage.upstream["model"] for t in trials]
        assert len(set(models)) == len(models), (name, models)  # every value trains its own model
        assert all(t.holdout_eval is not None for t in trials), name
        first = {ps.key for ps in trials[0].stages}
        shared = first.intersection(*[{ps.key for ps in t.stages} for t in trials[1:]])
        assert shared != first, name  # the swept tail is the value's own
        assert bool(shared) == (len(first) > 2), name  # upstream stages (not SSF-DAN's one training) are shared


def test_a_suite_gives_a_study_its_own_values_and_the_command_line_wins():
    """``studies: {name: [...]}`` replaces a named study's values in that suite (MiniCity's δ in its features' units:
    the paper's δ = 0–150 labels no MiniCity pixel); ``key=…`` on the command line replaces both; a study the suite
    does not name keeps its own."""
    from bench.suite_runner import load_suite
    from bench.sweep import all_studies, parse_axes, suite_space

    suite = load_suite("minicity")
    delta = all_studies()["bismap_delta"]
    _, space, _, _ = parse_axes("bismap_delta", [])
    assert space.args == delta.values == (0.0, 50.0, 100.0, 150.0)
    own = suite_space(suite, "bismap_delta", space, [])
    assert own.key == "delta_override" and own.args == tuple(suite["studies"]["bismap_delta"])
    assert max(own.args) < 0  # log-densities of a 32-d feature
    _, given, _, _ = parse_axes("bismap_delta", ["delta_override=-30,-10", "seed=0"])
    assert suite_space(suite, "bismap_delta", given, ["delta_override=-30,-10", "seed=0"]).args == (-30.0, -10.0)
    _, cag, _, _ = parse_axes("cag_delta_d", [])
    assert suite_space(suite, "cag_delta_d", cag, []) is cag
    assert suite_space(load_suite("minicity", ["studies.cag_delta_d=[1, 2]"]), "cag_delta_d", cag, []).args == (1, 2)


def test_a_suite_sets_what_a_study_needs_and_the_command_line_wins():
    """``studies: {name: {set: {...}}}``: MiniCity gives BiSMAP's CAs study the δ of the MAPs labels its STM needs
    (Table 5's ``pl_ratio_target: null`` would take the paper's δ, which labels no MiniCity pixel); the trials'
    MAPs label stage then carries it, and ``methods.bismap.delta_override=…`` replaces it."""
    from bench.suite_runner import load_suite
    from bench.sweep import all_studies, suite_settings, suite_space, suite_study
    from bench.sweep_space import Space

    suite = load_suite("minicity")
    study = all_studies()["bismap_cas_delta_d"]
    values, settings = suite_study(suite, "bismap_cas_delta_d")
    assert values is None and settings == {"delta_override": -22.67}
    space = Space(study.param, "grid", study.values)
    assert suite_space(suite, "bismap_cas_delta_d", space, []) is space  # the mapping gives no values: the study's
    got = suite_settings(suite, "bismap_cas_delta_d", study, [])
    assert got.fixed == {**study.fixed, "delta_override": -22.67} and study.fixed.get("delta_override") is None
    assert suite_settings(suite, "bismap_cas_delta_d", study, ["methods.bismap.delta_override=-20"]) is study
    assert suite_settings(suite, "cag_delta_d", all_studies()["cag_delta_d"], []) is all_studies()["cag_delta_d"]
    both = load_suite("minicity", ["studies.cag_delta_d={values: [1, 2], set: {num_stages: 2}}"])
    assert suite_study(both, "cag_delta_d") == ([1, 2], {"num_stages": 2})
    assert suite_settings(both, "cag_delta_d", all_studies()["cag_delta_d"], []).fixed == {"num_stages": 2}


def test_the_suites_cas_study_labels_the_stm_with_its_delta():
    """Planned as `bench sweep bismap_cas_delta_d minicity` plans it: every trial's MAPs label stage (the STM's
    labels) has the suite's δ and no label share, and its CAs label stage the swept Δd."""
    from bench.suite_plan import dataset_specs
    from bench.suite_runner import load_suite
    from bench.sweep import all_studies, suite_settings
    from bench.sweep_trials import plan_trials

    suite = load_suite("minicity")
    study = suite_settings(suite, "bismap_cas_delta_d", all_studies()["bismap_cas_delta_d"], [])
    specs = dataset_specs(suite, "")
    fps = {d: {"spec": {}, "fingerprint": "x" + d, "images": 1} for d in suite["datasets"]}
    trials = plan_trials(suite, study, [0.5, 2.0], [0], specs, fps, False)
    for t, d in zip(trials, (0.5, 2.0)):
        maps = [ps.stage.params for ps in t.stages if ps.name == "bismap.label"]
        cas = [ps.stage.params for ps in t.stages if ps.name == "bismap.label_cas"]
        assert maps and all(p["delta_override"] == -22.67 and p["ratio_target"] is None for p in maps)
        assert cas and all(p["delta_d"] == d for p in cas)


@pytest.mark.parametrize("entry, match", [
    ("{vals: [1]}", "a mapping takes `values`"), ("{}", "a mapping takes `values`"),
    ("{values: []}", "expected a non-empty list"), ("{set: [1]}", "expected a mapping of cag_uda settings"),
    ("{set: {delta_dd: 1}}", r"\['delta_dd'\] are not cag_uda settings; valid: \[.*'delta_d'")])
def test_a_studys_suite_mapping_is_checked(entry, match):
    from bench.suite_runner import load_suite

    with pytest.raises(SuiteError, match=match):
        load_suite("minicity", [f"studies.cag_delta_d={entry}"])


def test_values_spanning_decades_get_a_log_axis():
    from bench.sweep_report import log_axis

    assert log_axis([0.0002, 0.0005, 0.001, 0.002, 0.005])  # SSF-DAN's δ: 25×
    assert not log_axis([0.5, 1.0, 1.5, 2.0]) and not log_axis([-25.0, -15.0]) and not log_axis([0.0, 1.0, 100.0])
    assert not log_axis([0.01]) and log_axis([1, 20])


def test_the_papers_points_leave_the_plot_when_their_values_are_in_another_unit():
    """MiniCity's δ (−25…−15) against the paper's (0–150): no shared axis; overlapping ranges keep the points."""
    import pandas as pd

    from bench.sweep_report import paper_on_axis

    paper = pd.DataFrame({"mIoU": [56.4, 57.1, 57.3]}, index=[0.0, 50.0, 100.0])
    assert paper_on_axis([-25.0, -20.0, -15.0], paper) is None
    assert paper_on_axis([-10.0, 20.0], paper) is paper and paper_on_axis([120.0, 150.0], paper) is None
    assert paper_on_axis([], paper) is paper and paper_on_axis([1.0], None) is None


def test_every_study_has_its_own_tune_experiment_and_results_folder():
    """Two studies of one key (SSF-DAN's ssf_rho_upper and ssf_fixed_rho: same method and key, another ablation)
    once shared one Ray Tune experiment folder, so run side by side their trials and experiment state mixed."""
    from bench.sweep import all_studies
    from bench.sweep_tune import run_name

    studies = all_studies()
    names = {name: run_name(study, "grid") for name, study in studies.items()}
    shared = {n for n in names.values() if list(names.values()).count(n) > 1}
    assert not shared, f"studies sharing a Tune experiment: {sorted(k for k, v in names.items() if v in shared)}"
    assert len({s.slug for s in studies.values()}) == len(studies)
    rho, fixed = studies["ssf_rho_upper"], studies["ssf_fixed_rho"]
    assert (rho.method, rho.param) == (fixed.method, fixed.param)
    assert run_name(fixed, "grid") == "sweep-ssf_dan_rho_upper_ablation-fixed_rho-grid"
    assert run_name(rho, "random") == "sweep-ssf_dan_rho_upper-random"


def test_a_plot_names_the_settings_its_study_fixes():
    """ssf_fixed_rho and ssf_rho_upper sweep the same key; their plots' x labels tell them apart."""
    from bench.sweep import all_studies
    from bench.sweep_report import axis_label

    studies = all_studies()
    assert axis_label(studies["ssf_rho_upper"]) == "rho_upper"
    assert axis_label(studies["ssf_fixed_rho"]) == "rho_upper\n(ablation=fixed_rho)"
    long = axis_label(studies["bismap_cas_delta_d"]).split("\n")
    assert long[0] == "cas_delta_d" and "pla=cas" in " ".join(long) and max(map(len, long)) <= 70
