"""Every key of a suite, in its file or as a key=value override, is checked against the suite's schema at any
depth: an unknown key fails with the valid ones and a did-you-mean; a valid key still applies."""

import pytest
from fixtures import write_suite

from bench.cli import main
from bench.live_log import display_names
from bench.suite_plan import plan_suite
from bench.suite_runner import SuiteError, load_suite


@pytest.mark.parametrize("override, path, suggestion", [
    ("seedz=[1]", "seedz", "seeds"),                                                      # depth 1
    ("train.devce=cpu", "train.devce", "train.device"),                                   # depth 2
    ("evaluation.protocl=A", "evaluation.protocl", "evaluation.protocol"),
    ("methods.cag_ud.delta_d=2", "methods.cag_ud", "methods.cag_uda"),
    ("methods.cag_uda.delta_dd=2", "methods.cag_uda.delta_dd", "methods.cag_uda.delta_d"),  # depth 3
    ("datasets.source.optons={}", "datasets.source.optons", "datasets.source.options"),
    ("methods.cag_uda.pretrain.iterz=3", "methods.cag_uda.pretrain.iterz", "methods.cag_uda.pretrain.iters"),
    ("datasets.source.options.flp=true", "datasets.source.options.flp", "datasets.source.options.flip"),
    ("methods.cag_uda.variants.stage1.num_stagez=1", "methods.cag_uda.variants.stage1.num_stagez",
     "methods.cag_uda.variants.stage1.num_stages"),                                      # depth 5
    ("methods.cag_uda={delta_dd: 2}", "methods.cag_uda.delta_dd", "methods.cag_uda.delta_d"),  # a mapping value
    ("studies.bismap_detla=[1]", "studies.bismap_detla", "studies.bismap_delta"),        # a study's values
])
def test_unknown_override_keys_fail_with_valid_keys_and_a_suggestion(override, path, suggestion):
    with pytest.raises(SuiteError) as err:
        load_suite("minicity", [override])
    msg = str(err.value)
    assert f"override {override!r}" in msg and f"at {path} " in msg and f"did you mean {suggestion}?" in msg
    assert "valid: [" in msg


def test_valid_deep_overrides_still_apply():
    s = load_suite("minicity", ["methods.cag_uda.pretrain.iters=3", "evaluation.input_size=[64,32]",
                                "datasets.source.options.flip=false", "methods.cag_uda.tables.t4=[stage1]"])
    assert s["methods"]["cag_uda"]["pretrain"]["iters"] == 3 and s["evaluation"]["input_size"] == [64, 32]
    assert s["datasets"]["source"]["options"]["flip"] is False
    assert s["methods"]["cag_uda"]["tables"]["t4"] == ["stage1"]
    with pytest.raises(SuiteError, match=r"t5.*valid: \['t4'\]"):  # a method's table names are its own
        load_suite("minicity", ["methods.cag_uda.tables.t5=[stage1]"])


def test_a_typo_in_a_suite_file_names_the_file(tmp_path):
    import yaml

    from bench.suite_runner import SUITES_DIR

    suite = yaml.safe_load((SUITES_DIR / "minicity.yaml").read_text())
    suite["methods"]["ssf_dan"]["feature_chanels"] = 80
    path = write_suite(suite, tmp_path / "typo.yaml")
    with pytest.raises(SuiteError, match=rf"suite file {path}: unknown key.*methods\.ssf_dan\.feature_chanels "
                                         r"\(did you mean methods\.ssf_dan\.feature_channels\?\)"):
        load_suite(str(path))


def test_the_cli_reports_a_deep_typo_with_exit_2(capsys):
    assert main(["run", "minicity", "methods.cag_uda.delta_dd=2", "--executor", "local"]) == 2
    assert "did you mean methods.cag_uda.delta_d?" in capsys.readouterr().err


def test_repeated_stages_get_distinct_names():
    """CAG-UDA's self-training stages are all `cag_uda.train`: MLflow names them stage1..3."""
    suite = load_suite("minicity", ["only=[cag_uda]", "seeds=[0]"])
    fps = {"": {d: {"spec": {k: v for k, v in s.items() if k != "root"}, "fingerprint": d}
                for d, s in suite["datasets"].items()}}
    experiments, unique, _ = plan_suite(suite, fps)
    names = display_names(experiments)
    assert len(set(names.values())) == len(unique)  # one name per unique stage
    full = next(e for e in experiments if not e.variant)
    assert [names[ps.key] for ps in full.stages if ps.name == "cag_uda.train"] == [
        "cag_uda.stage1.train", "cag_uda.stage2.train", "cag_uda.stage3.train"]
    assert names[full.eval.key] == "eval(cag_uda.stage3.train)"
    stage1 = next(e for e in experiments if e.variant == "stage1")  # shares stage 1: the same name there
    assert names[stage1.eval.key] == "eval(cag_uda.stage1.train)"


@pytest.mark.parametrize("values", ["[]", "[1, [2]]", "[null]", "3"])
def test_a_studys_suite_values_must_be_a_list_of_values(values):
    with pytest.raises(SuiteError, match=r"studies.cag_delta_d = .*expected a non-empty list"):
        load_suite("minicity", [f"studies.cag_delta_d={values}"])
