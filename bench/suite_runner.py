"""Load a suite, apply ``key=value`` overrides, run every method × seed, print and save per-class tables.

Runs go one after the other for now; each lives in ``results/<suite>/runs/<method>-seed<k>-<confighash>/``
so a finished run is reused and a killed one resumes from its last checkpoint, while any change of its
config gets a fresh directory (never a stale number).
"""

from __future__ import annotations

import copy
import hashlib
import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

import yaml

from bench.data import build_dataset
from bench.evaluate import evaluate
from bench.train import TrainConfig
from methods.base import get_method, make_config

REPO = Path(__file__).resolve().parent.parent
SUITES_DIR = Path(__file__).resolve().parent / "suites"


class SuiteError(ValueError):
    """A suite file or override that cannot be applied."""


def load_suite(name: str, overrides=()) -> dict:
    path = Path(name) if name.endswith((".yaml", ".yml")) else SUITES_DIR / f"{name}.yaml"
    if not path.is_file():
        valid = sorted(p.stem for p in SUITES_DIR.glob("*.yaml"))
        raise SuiteError(f"unknown suite {name!r} ({path} not found); valid: {valid}")
    suite = yaml.safe_load(path.read_text())
    suite["name"] = path.stem
    for ov in overrides:
        apply_override(suite, ov)
    return suite


def apply_override(suite: dict, text: str) -> None:
    """``a.b.c=value`` (value parsed as YAML). Every key but the last must exist."""
    if "=" not in text:
        raise SuiteError(f"override {text!r} is not key=value")
    key, raw = text.split("=", 1)
    parts = key.split(".")
    node = suite
    for i, p in enumerate(parts[:-1]):
        if not isinstance(node, dict) or p not in node:
            where = ".".join(parts[:i]) or "the suite"
            valid = sorted(node) if isinstance(node, dict) else []
            raise SuiteError(f"override {key!r}: {p!r} is not a key of {where}; valid: {valid}")
        node[p] = copy.deepcopy(node[p])  # YAML anchors share dicts: override one method only
        node = node[p]
    node[parts[-1]] = yaml.safe_load(raw)


@dataclass
class RunContext:
    """What a method's ``run`` receives: datasets, where to write, how to train and evaluate."""

    datasets: dict
    out_dir: Path
    seed: int
    train: dict
    evaluation: dict
    callbacks: list = field(default_factory=list)

    def train_config(self, iters: int, horizon: int | None, batch_sizes: dict) -> TrainConfig:
        return TrainConfig(max_iters=iters, horizon=horizon, batch_sizes=batch_sizes, seed=self.seed, **self.train)

    def evaluate(self, model) -> dict:
        from bench.train import resolve_device

        ev = dict(self.evaluation)
        return evaluate(model, self.datasets["target_val"], protocol=ev.pop("protocol", "B"),
                        subsets=tuple(ev.pop("subsets", ("19",))), device=resolve_device(self.train.get("device",
                                                                                                            "auto")),
                        **ev)


def _resolve(root: str) -> Path:
    p = Path(root)
    return p if p.is_absolute() else REPO / p


def build_datasets(suite: dict, seed: int) -> dict:
    out = {}
    for domain, spec in suite["datasets"].items():
        spec = dict(spec)
        opts = spec.pop("options", {}) or {}
        out[domain] = build_dataset(spec.pop("name"), _resolve(spec.pop("root")), spec.pop("split", None),
                                    seed=seed, **spec, **opts)
    return out


def config_hash(*parts) -> str:
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:10]


def run_suite(name: str, overrides=(), results_root: Path | None = None) -> list[dict]:
    """Run a suite; returns the per-run results (also written under ``results/<suite>/``)."""
    from bench.tables import per_class_frame, render_terminal

    suite = load_suite(name, overrides)
    if "minicity" in suite:
        from bench.data.minicity import ensure_minicity

        mc = suite["minicity"]
        extra = {k: tuple(mc[k]) if k == "size" else mc[k] for k in ("size", "counts") if k in mc}
        st = ensure_minicity(_resolve(mc["root"]), seed=mc.get("seed", 0), **extra)
        if st.get("regenerated"):
            print(f"MiniCity generated at {mc['root']}: {st['files']} files, {st['bytes'] / 1e6:.1f} MB, "
                  f"{st['seconds']:.0f} s")
    methods = {m: make_config(get_method(m).Config, v) for m, v in suite["methods"].items()}
    out_root = Path(results_root or REPO / "results") / suite["name"]
    results = []
    for seed in suite["seeds"]:
        datasets = build_datasets(suite, seed)
        for mname, cfg in methods.items():
            h = config_hash(mname, asdict(cfg), suite["datasets"], suite["evaluation"], suite["train"], seed)
            run_dir = out_root / "runs" / f"{mname}-seed{seed}-{h}"
            done = run_dir / "result.json"
            if done.is_file():
                res = json.loads(done.read_text())
                print(f"[{mname} seed {seed}] reused {run_dir}")
            else:
                print(f"[{mname} seed {seed}] training → {run_dir}")
                ctx = RunContext(datasets, run_dir, seed, dict(suite["train"]), dict(suite["evaluation"]))
                res = get_method(mname).run(cfg, ctx)
                res.pop("confusion", None)
                res.update(method=mname, seed=seed)
                tmp = done.with_suffix(".tmp")
                tmp.write_text(json.dumps(res, indent=1, default=float))
                tmp.replace(done)  # written last: a run without it is incomplete
            results.append(res)
            print(f"[{mname} seed {seed}] mIoU {100 * res['miou_19']:.1f} (protocol {res['protocol']})")
    for subset in suite["evaluation"].get("subsets", ["19"]):
        frame = per_class_frame(results, subset)
        out_root.mkdir(parents=True, exist_ok=True)
        frame.to_csv(out_root / f"per_class_{subset}.csv", index=False)
        title = (f"{suite['name']}: per-class IoU (%), {subset} classes, protocol "
                 f"{suite['evaluation'].get('protocol', 'B')}, final iterate, mean±std over seeds {suite['seeds']}")
        text = render_terminal(frame, title)
        (out_root / f"per_class_{subset}.txt").write_text(text)
        print(text)
    return results
