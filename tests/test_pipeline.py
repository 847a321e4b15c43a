"""End to end on a tiny MiniCity: generate, train source-only and oracle, evaluate, tabulate, reuse."""

import json

import pytest
import yaml

from bench.suite_runner import SUITES_DIR, run_suite


@pytest.fixture(scope="module")
def tiny_suite(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("suite")
    suite = yaml.safe_load((SUITES_DIR / "minicity.yaml").read_text())
    root = tmp / "mc"
    suite["minicity"] = {"root": str(root), "seed": 0, "size": [64, 32],
                         "counts": {"gta5": 12, "synthia": 2, "cityscapes_train": 12, "cityscapes_val": 4}}
    for domain, d in zip(["source", "target_train", "target_val"], ["gta5", "cityscapes", "cityscapes"]):
        suite["datasets"][domain]["root"] = str(root / d)
    suite["seeds"] = [0]
    suite["train"].update(device="cpu", log_every=0, checkpoint_every=3)
    for m in suite["methods"].values():
        m.update(iters=6, batch_size=2)
    path = tmp / "tiny.yaml"
    path.write_text(yaml.safe_dump(suite, sort_keys=False))
    return path, tmp / "results"


@pytest.mark.slow
def test_source_only_and_oracle_end_to_end(tiny_suite, capsys):
    path, results = tiny_suite
    res = run_suite(str(path), results_root=results)
    assert [r["method"] for r in res] == ["source_only", "oracle"]
    for r in res:
        assert 0.0 <= r["miou_19"] <= 1.0 and r["images"] == 4 and r["protocol"] == "B"
    out = capsys.readouterr().out
    assert "per-class IoU" in out and "oracle" in out and "mIoU" in out
    assert (results / "tiny" / "per_class_19.csv").is_file()
    runs = sorted((results / "tiny" / "runs").iterdir())
    assert len(runs) == 2 and all((r / "result.json").is_file() and (r / "model.pt").is_file() for r in runs)

    # A second run reuses the finished runs and reproduces the same numbers.
    again = run_suite(str(path), results_root=results)
    assert [a["miou_19"] for a in again] == [r["miou_19"] for r in res]
    assert "reused" in capsys.readouterr().out

    # Same seed, fresh directory (a changed, unread key forces a new hash): identical metrics.
    fresh = run_suite(str(path), ["train.log_every=1000"], results_root=results)
    assert json.dumps([f["miou_19"] for f in fresh]) == json.dumps([r["miou_19"] for r in res])
