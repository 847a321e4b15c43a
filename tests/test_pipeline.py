"""End to end on a tiny MiniCity through Ray: generate, train source-only and oracle, evaluate, record in
MLflow, tabulate from MLflow, then hit the cache."""

import pytest
from fixtures import tiny_minicity_suite, write_suite

from bench.suite_runner import render_suite, run_suite
from bench.tracking import load_results


@pytest.fixture(scope="module")
def tiny_suite(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("suite")
    suite = tiny_minicity_suite(tmp, {"gta5": 12, "synthia": 2, "cityscapes_train": 12, "cityscapes_val": 4})
    suite["only"] = ["source_only", "oracle"]  # tests that need other methods say so
    for m in suite["methods"].values():
        if "iters" in m:  # the one-stage methods; multi-stage ones are set per test
            m.update(iters=6, batch_size=2)
    return write_suite(suite, tmp / "tiny.yaml"), tmp / "results"


@pytest.fixture(scope="module")
def ray_local():
    ray = pytest.importorskip("ray")
    ray.init(address="local", num_cpus=2, num_gpus=0, include_dashboard=False, log_to_driver=False,
             object_store_memory=80 * 1024**2, logging_level="ERROR")
    yield
    ray.shutdown()


@pytest.mark.slow
def test_suite_through_ray_mlflow_tables_and_cache(tiny_suite, ray_local, capsys):
    path, results = tiny_suite
    out = run_suite(str(path), results_root=results)
    res = out["results"]
    assert sorted(r["method"] for r in res) == ["oracle", "source_only"]
    for r in res:
        assert 0.0 <= r["miou_19"] <= 1.0 and r["images"] == 4 and r["protocol"] == "B"
        assert 0.0 <= r["iou_19/road"] <= 1.0
    assert {o.status for o in out["outcomes"].values()} == {"done"}
    assert len(out["outcomes"]) == 4  # two train + two eval stages

    # Tables were built from MLflow: the recorded runs give back the same numbers.
    from_mlflow, inv = load_results(out["tracking_uri"], "tiny")
    assert inv == out["invocation"]
    assert sorted((r["method"], r["miou_19"]) for r in from_mlflow) == sorted((r["method"], r["miou_19"]) for r in res)
    from mlflow.tracking import MlflowClient

    client = MlflowClient(out["tracking_uri"])
    exp = client.get_experiment_by_name("tiny")
    stages = client.search_runs([exp.experiment_id], "tags.kind = 'stage'")
    assert len(stages) == 4 and {r.data.tags["cache"] for r in stages} == {"done"}
    train_run = next(r for r in stages if r.data.tags["stage"] == "source_only.train")
    assert [m.step for m in client.get_metric_history(train_run.info.run_id, "loss/segmenter")] == [2, 4, 6]

    suite_dir = results / "tiny"
    for f in ("report.md", "tables/per_class_19.tex", "tables/per_class_19.md", "tables/per_class_19.csv",
              "plots/per_class_19.png", "plots/training_curves.png", "plots/qualitative.png"):
        assert (suite_dir / f).is_file(), f
    report = (suite_dir / "report.md").read_text()
    assert "Fidelity ledger" in report and "| lr | `0.01` | suite override | `0.00025` (paper) |" in report
    assert "source_only" in capsys.readouterr().out

    # Again, with a setting no stage reads changed: every stage is a cache hit, numbers identical.
    again = run_suite(str(path), ["train.log_every=1000"], results_root=results)
    assert {o.status for o in again["outcomes"].values()} == {"cached"}
    assert sorted(r["miou_19"] for r in again["results"]) == sorted(r["miou_19"] for r in res)

    # A setting only the oracle reads: source-only's stages are hits, the oracle retrains.
    third = run_suite(str(path), ["methods.oracle.lr=0.02"], results_root=results)
    by_name = sorted((o.name, o.status) for o in third["outcomes"].values())
    assert by_name == [("eval", "cached"), ("eval", "done"), ("source_only.train", "cached"),
                       ("source_only.train", "done")]

    assert render_suite(str(path), results_root=results).is_file()


@pytest.mark.slow
def test_cag_uda_chain_on_tiny_minicity_shares_source_only(tiny_suite):
    """Every CAG-UDA stage runs in order (in-process), the source-only stage is computed once for both rows."""
    path, results = tiny_suite
    over = ["only=[source_only,cag_uda]", "methods.source_only.iters=4",
            # the suite's source_only net (model_options), so the paper variant shares that row's stage
            "methods.cag_uda.pretrain={model: small, model_options: {bn_mode: frozen, bn_scope: backbone, "
            "head_norm: gn}, iters: 4, horizon: null, batch_size: 2, lr: 0.01, weight_decay: 0.0005, aux_weight: 0.0}",
            "methods.cag_uda.warmup_iters=2", "methods.cag_uda.stage_iters=2", "methods.cag_uda.batch_size=2",
            "methods.cag_uda.warmup_batch_size=2", "methods.cag_uda.num_stages=2", "methods.cag_uda.delta_d=0.0",
            # the official code's recipe on the small net: online labels, code anchors, class-mean SmoothL1
            "methods.cag_uda.tables=[]",
            "methods.cag_uda.variants={code: {variant: code, model_code: small, feature_layer_code: decoder, "
            "stage_iters_code: 2, batch_size_code: 2, crop_code: null, resize_scale_code: null, "
            "anchor_min_pixels_code: 1, dis_min_pixels_code: 1}}"]
    out = run_suite(str(path), over, results_root=results / "cag", executor="local")
    names = sorted(o.name for o in out["outcomes"].values())
    # the code variant's network reads RGB/255 inputs: its own source-only and warm-up; the paper variant shares
    # the source_only row's stage
    assert names.count("source_only.train") == 2 and names.count("cag_uda.train") == 4
    assert names.count("cag_uda.anchors_code") == 1  # the code computes its anchors once, for every stage
    assert names.count("adversarial.feature_warmup") == 2
    assert {o.status for o in out["outcomes"].values()} == {"done"}
    assert all(o.result["iterations"] == 2 for o in out["outcomes"].values() if o.name == "cag_uda.train")
    labels = [o.result for o in out["outcomes"].values() if o.name == "cag_uda.label"]
    # Δd = 0: every pixel with two finite anchors is active; MiniCity's target train has labels to score them
    assert all(r["pl_ratio"] > 0.5 and 0.0 <= r["pl_precision"] <= 1.0 for r in labels)
    assert {r["method"] for r in out["results"]} == {"source_only", "cag_uda"}
    assert {r["variant"] for r in out["results"] if r["method"] == "cag_uda"} == {"", "code"}
