"""Suites, overrides and method configs: unknown names fail with the valid ones."""

import pytest

from bench.suite_runner import SuiteError, load_suite
from methods.base import get_method, make_config, provenance


def test_minicity_suite_loads_and_overrides_apply():
    s = load_suite("minicity", ["seeds=[5]", "methods.oracle.iters=7", "train.device=cpu"])
    assert s["seeds"] == [5] and s["train"]["device"] == "cpu"
    assert s["methods"]["oracle"]["iters"] == 7
    assert s["methods"]["source_only"]["iters"] != 7  # the YAML anchor is not shared after an override


def test_bad_override_and_suite_names():
    with pytest.raises(SuiteError, match="valid: .*methods"):
        load_suite("minicity", ["metods.oracle.iters=3"])
    with pytest.raises(SuiteError, match="valid: .*minicity"):
        load_suite("nosuchsuite")
    with pytest.raises(SuiteError, match="key=value"):
        load_suite("minicity", ["seeds"])


def test_method_registry_and_config_keys():
    with pytest.raises(KeyError, match="valid: .*source_only"):
        get_method("cagg")
    cfg_cls = get_method("source_only").Config
    with pytest.raises(KeyError, match="unknown key.*'lr_head'.*valid"):
        make_config(cfg_cls, {"lr_head": 1})
    cfg = make_config(cfg_cls, {"iters": 10})
    prov = provenance(cfg)
    assert prov["iters"][1] == "override" and prov["lr"] == (2.5e-4, "paper", "")
    assert get_method("oracle").Config().train_domain == "target_train"


@pytest.mark.parametrize("name", ["gta5_cityscapes", "synthia_cityscapes", "cityscapes_crosscity"])
def test_real_suites_stop_before_training_when_data_is_missing(name, tmp_path):
    from bench.suite_runner import SuiteDataError, run_suite

    s = load_suite(name)
    assert s["seeds"] == [0, 1, 2] and "source_only" in s["methods"]
    for domain in ("source", "target_train", "target_val"):
        assert domain in s["datasets"]
    # Missing weights are reported first (they are a single file)...
    with pytest.raises(SuiteDataError, match="init_weights .* does not exist.*never downloads"):
        run_suite(name, results_root=tmp_path, executor="local")
    # ... then a missing dataset, with the `bench data check` command to run.
    weights = tmp_path / "w.pth"
    weights.write_bytes(b"")
    over = [f"methods.{m}.{k}={weights}" for m, v in s["methods"].items() for k in v if k.endswith("weights")]
    over += [f"datasets.{d}.root={tmp_path / 'nothing'}" for d in s["datasets"]]
    with pytest.raises(SuiteDataError, match=r"(?s)is not usable.*bench data check \w+ --root .*nothing"):
        run_suite(name, over, results_root=tmp_path, executor="local")
    assert not (tmp_path / "cache").exists()  # nothing was started


def test_every_weights_file_of_a_method_is_checked_before_training(tmp_path):
    from bench.suite_runner import SuiteDataError, run_suite

    weights = tmp_path / "w.pth"
    weights.write_bytes(b"")
    s = load_suite("gta5_cityscapes")
    over = [f"methods.{m}.init_weights={weights}" for m in s["methods"]] + ["only=[pixintrada]"]
    with pytest.raises(SuiteDataError, match=r"methods\.pixintrada\.intra_init_weights .* does not exist"):
        run_suite("gta5_cityscapes", over, results_root=tmp_path, executor="local")


def test_unknown_top_level_key_is_refused():
    with pytest.raises(SuiteError, match="unknown key.*'seedz'.*valid"):
        load_suite("minicity", ["seedz=[1]"])


@pytest.mark.parametrize("name", ["minicity", "minicity_ablations", "minicity_delta_d", "minicity_quick",
                                  "minicity_clear", "minicity_head", "gta5_cityscapes", "synthia_cityscapes",
                                  "cityscapes_crosscity"])
def test_suites_paper_rows_resolve(name):
    from bench.report import published_rows

    s = load_suite(name)
    for target in s.get("targets") or [""]:
        rows, _ = published_rows(s, target)
        if rows is not None:
            assert len(rows) == len(s["paper"]["rows"]) and rows["mIoU"].notna().any()


def test_quick_suite_runs_the_defaults_own_stages():
    """minicity_quick is seed 0 of three default rows, so it fills the default's cache and reuses it."""
    from bench.suite_plan import dataset_specs, plan_suite

    base, quick = load_suite("minicity"), load_suite("minicity_quick")
    fps = {"": {name: {"spec": {k: v for k, v in spec.items() if k != "root"}, "fingerprint": f"fp-{name}",
                       "images": 1} for name, spec in dataset_specs(base).items()}}  # no dataset on disk needed

    def keys(suite):
        return {(e.method, e.seed): [p.key for p in e.stages] for e in plan_suite(suite, fps)[0]}

    got, default = keys(quick), keys(base)
    assert set(got) == {("source_only", 0), ("oracle", 0), ("adaptsegnet", 0)}
    assert all(got[k] == default[k] for k in got)


def test_head_suite_starts_every_stage_from_the_head_file():
    """minicity_head measures the head pretrained with the backbone: a row left on the backbone-only file would
    mix two starting points in one table."""
    from bench.suite_plan import dataset_specs, plan_suite

    suite = load_suite("minicity_head")
    fps = {"": {name: {"spec": {k: v for k, v in spec.items() if k != "root"}, "fingerprint": f"fp-{name}",
                       "images": 1} for name, spec in dataset_specs(suite).items()}}

    def files(obj):
        if isinstance(obj, dict):
            return [f for v in obj.values() for f in files(v)]
        if isinstance(obj, (list, tuple)):
            return [f for v in obj for f in files(v)]
        return [obj] if isinstance(obj, str) and obj.endswith(".pt") else []

    found = {f for e in plan_suite(suite, fps)[0] for st in e.stages for f in files(st.stage.params)}
    assert found == {"datasets/weights/minicity_generic_small_head.pt"}
    assert suite["minicity"]["pretrain"]["recipe"] == {"keep": "all_but_classifier", "head_norm": "gn"}


def test_misspelt_paper_row_fails_before_training(tmp_path):
    from bench.suite_runner import run_suite

    with pytest.raises(SuiteError, match="not transcribed.*valid"):
        run_suite("gta5_cityscapes", ['paper.rows=["cag_uda:CAG"]'], results_root=tmp_path, executor="local")


def test_only_selects_methods_and_rejects_unknown_ones():
    from bench.suite_plan import method_variants

    s = load_suite("minicity", ["only=[oracle]"])
    assert [m for m, _, _ in method_variants(s)] == ["oracle"]
    with pytest.raises(KeyError, match="not in the suite's methods"):
        method_variants(load_suite("minicity", ["only=[cag]"]))


def test_variants_expand_with_their_overrides():
    from bench.suite_plan import method_configs

    s = load_suite("minicity", ['methods.source_only.variants={fast: {iters: 10}}', "only=[source_only]"])
    got = [(m, v, c.iters) for m, v, c in method_configs(s)]
    base = s["methods"]["source_only"]["iters"]
    assert base != 10 and got == [("source_only", "", base), ("source_only", "fast", 10)]


def test_extends_keeps_the_base_and_updates_one_domain_and_one_method():
    base, sel = load_suite("minicity"), load_suite("minicity_delta_d")
    assert sel["name"] == "minicity_delta_d" and sel["seeds"] == [0] and sel["only"] == ["cag_uda"]
    # one key of a domain changed, the rest inherited
    assert sel["datasets"]["target_val"]["split"] == "train"
    assert sel["datasets"]["target_val"]["root"] == base["datasets"]["target_val"]["root"]
    assert sel["datasets"]["target_train"]["holdout"]["part"] == "rest"
    # one method's schedule kept in step with the base, its variants replaced
    cag_b, cag_s = base["methods"]["cag_uda"], sel["methods"]["cag_uda"]
    assert cag_s["stage_iters"] == cag_b["stage_iters"] and cag_s["num_stages"] == 1
    assert "stage1" not in cag_s["variants"] and "dd_1.0" in cag_s["variants"]
    assert sel["methods"]["source_only"] == base["methods"]["source_only"]


@pytest.mark.parametrize("name", ["gta5_cityscapes", "minicity_ablations"])
def test_table4_ablations_map_every_variant_to_a_paper_row(name):
    """Each named variant of CAG-UDA and SSF-DAN has its Table 4 row, and source-only its baseline row."""
    from bench.ablations import ablation_specs
    from bench.suite_plan import method_variants

    s = load_suite(name)
    for method in ("cag_uda", "ssf_dan"):
        (table,) = ablation_specs(s, method)
        ours = {(m, v) for m, v, _ in method_variants(s) if m == method}
        assert ours - {(method, "no_warmup")} <= set(table.rows) and table.rows[("source_only", "")][0]
        assert len(ours) >= 7  # the table's rows run as variants
        assert table.source.endswith("Table 4")


def test_a_method_can_state_its_own_evaluation_protocol():
    from bench.suite_plan import plan_suite

    s = load_suite("minicity", ["only=[cag_uda]", "methods.cag_uda.variants={ms: {eval_protocol: ms}}",
                                "methods.cag_uda.tables=[]"])
    fps = {"": {d: {"spec": {}, "fingerprint": "x", "images": 1} for d in s["datasets"]}}
    experiments, _, _ = plan_suite(s, fps)
    protocols = {e.variant: e.stages[-1].stage.params["protocol"] for e in experiments if e.seed == 0}
    assert protocols == {"": "B", "ms": "ms"}  # the suite's protocol unless the method says otherwise


def test_a_method_stating_its_input_normalisation_gets_its_own_stages_and_eval_inputs():
    from bench.suite_plan import plan_suite

    s = load_suite("minicity", ["only=[source_only,cag_uda]", "seeds=[0]",
                                "methods.cag_uda.variants={code: {variant: code, model_code: small}}"])
    fps = {"": {d: {"spec": {"options": {"normalize": "imagenet"}}, "fingerprint": "x", "images": 1}
                for d in s["datasets"]}}
    experiments, unique, specs = plan_suite(s, fps)
    first = {(e.method, e.variant): e.stages[0] for e in experiments}
    assert first[("source_only", "")].key == first[("cag_uda", "")].key  # the suite's inputs: one shared stage
    code = first[("cag_uda", "code")]
    assert code.name == "source_only.train" and code.key != first[("source_only", "")].key
    ev = next(e for e in experiments if e.variant == "code").stages[-1]
    assert specs[ev.key]["target_val"]["options"]["normalize"] == "unit"  # the evaluation reads what it trained on
    assert specs[first[("source_only", "")].key]["target_val"]["options"]["normalize"] == "imagenet"
