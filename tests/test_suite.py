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
