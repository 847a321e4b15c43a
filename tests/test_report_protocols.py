"""A report over experiments evaluated under two protocols: every caption names the protocol recorded with its
numbers (the experiment run's ``protocol`` tag, from the eval stage's params), not the suite's ``evaluation``."""

import dataclasses
from types import SimpleNamespace

from bench.data.labels import CLASS_NAMES
from bench.scheduler import Outcome


@dataclasses.dataclass
class Config:
    lr: float = dataclasses.field(default=0.1, metadata={"source": "paper"})


def experiment(method, variant, target, protocol):
    ev = SimpleNamespace(key=f"eval-{method}-{variant}-{target}", stage=SimpleNamespace(params={"protocol": protocol}))
    return SimpleNamespace(method=method, variant=variant, target=target, seed=0, config=Config(), eval=ev, stages=[],
                           label=f"{method} {target}")


def test_each_table_is_captioned_with_its_rows_recorded_protocol(tmp_path):
    from bench.report import write_outputs
    from bench.tracking import Tracker, default_tracking_uri

    suite = {"name": "protocols", "seeds": [0], "evaluation": {"protocol": "B", "subsets": ["19"]},
             "targets": {"rome": {}, "tokyo": {}},
             "datasets": {"target_val": {"name": "cityscapes", "split": "val", "root": str(tmp_path / "cs")}}}
    runs = [("adaptsegnet", "", "rome", "B"), ("cag_uda", "ms", "rome", "ms"), ("cag_uda", "ms", "tokyo", "ms")]
    uri = default_tracking_uri(tmp_path)
    tracker = Tracker(uri, suite["name"], tmp_path / "mlartifacts")
    inv = tracker.start("protocols", "invocation", {"suite": suite["name"]})
    for i, (method, variant, target, protocol) in enumerate(runs):
        run = tracker.start(method, "experiment", {"method": method, "variant": variant, "target": target, "seed": 0,
                                                   "protocol": protocol, "invocation": inv}, parent=inv)
        tracker.log_metrics(run, {"miou_19": 0.3 + 0.1 * i, **{f"iou_19/{c}": 0.3 + 0.1 * i for c in CLASS_NAMES}})
    exps = [experiment(*r) for r in runs]
    outcomes = {e.eval.key: Outcome(e.eval.key, "eval") for e in exps}
    out = write_outputs(suite, uri, inv, tmp_path / "report", exps, outcomes, {}, [], 0.0,
                        cache_root=tmp_path / "cache")
    tables = tmp_path / "report" / "tables"
    assert "protocol B; ms for cag_uda (ms), final iterate" in (tables / "per_class_19_rome.md").read_text()
    tokyo = (tables / "per_class_19_tokyo.md").read_text()
    assert "protocol ms, final iterate" in tokyo and "protocol B" not in tokyo
    assert "protocol ms, final iterate" in (tables / "per_class_19_tokyo.tex").read_text()
    assert "- evaluation protocol B; ms for cag_uda (ms) (see bench/protocols.py)" in out["path"].read_text()
