"""Adding a method without touching the harness (README, "Adding a method"): a toy paper defined in this file —
its equation, Config, stage and ablation table — is registered at run time, runs through a tiny MiniCity suite,
gets its table beside its own transcribed rows, and is swept by its study. The last test checks that the harness
itself never names a registered method, so a real method needs its folder, a registry line and a suite entry."""

from __future__ import annotations

import re
from dataclasses import dataclass

import pandas as pd
import pytest
import torch
import torch.nn.functional as F
from fixtures import tiny_minicity_suite, write_suite

from bench.data.labels import IGNORE
from bench.paths import REPO
from methods.base import Method, Paper, PaperTable, Stage, Study, method_names, param, reads, register, unregister
from methods.training import Parts, schedule, stage_result, train_segmenter


# ---------------------------------------------------------------- the toy paper ("ToyNet", equations.py)
def smoothed_ce(logits: torch.Tensor, label: torch.Tensor, eps: float) -> torch.Tensor:
    """ToyNet Eq. 1: cross-entropy against labels smoothed by ``eps`` (mass ``eps`` spread over the C classes),
    logits upsampled to the label size, mean over non-ignore pixels."""
    logits = F.interpolate(logits, size=label.shape[-2:], mode="bilinear", align_corners=True)
    return F.cross_entropy(logits.float(), label, ignore_index=IGNORE, label_smoothing=eps)


# ---------------------------------------------------------------- config.py
@dataclass
class ToyConfig(schedule(iters=4, horizon=None, batch_size=2, lr=0.01, momentum=0.9, weight_decay=5e-4, power=0.9,
                         source="paper")):
    model: str = param("small", "paper")
    model_options: dict = param({}, "harness")
    init_weights: str | None = param(None, "harness", "local init file")
    smoothing: float = param(0.1, "paper", "ε of Eq. 1")


# ---------------------------------------------------------------- stages.py
def train_toy(p: dict, ctx) -> dict:
    """Stage ``toy.train``: supervised source training with Eq. 1."""
    def parts(model):
        def losses(batch, it):
            b = batch["source"]
            return {"segmenter": {"ce": smoothed_ce(model(b["image"]).logits, b["label"], p["smoothing"])}}
        return Parts(losses, {"source": ctx.dataset("source")})

    return stage_result(train_segmenter(p, ctx, parts, {"source": p["batch_size"]}))


def toy_stages(cfg: ToyConfig) -> list[Stage]:
    fields = ("model", "model_options", "init_weights", "iters", "horizon", "batch_size", "lr", "momentum",
              "weight_decay", "power", "smoothing")
    return [Stage("toy.train", "train", train_toy, reads(cfg, *fields), datasets=("source",))]


def toy_method(rows_dir) -> Method:
    table = PaperTable("toy", 1, {"plain": ("ToyNet w/o smoothing", {"smoothing": 0.0}), "": ("ToyNet", {})},
                       base="plain", benchmark="minicity")
    study = Study("toy", "smoothing", (0.0, 0.3), note="ToyNet Fig. 2")
    return Method("toy", ToyConfig, toy_stages, paper=Paper("toy", "ToyNet", rows_dir=str(rows_dir)),
                  tables={"t1": table}, studies={"toy_smoothing": study})


# ---------------------------------------------------------------- the tests
def test_smoothed_ce_matches_a_hand_computed_value():
    # two classes, logits (0, ln 3): p = (1/4, 3/4); label 1, ε = 0.2 → targets (0.1, 0.9):
    # −(0.1·ln 1/4 + 0.9·ln 3/4) = 0.1·1.386294 + 0.9·0.287682 = 0.397543
    logits = torch.tensor([0.0, float(torch.log(torch.tensor(3.0)))]).view(1, 2, 1, 1)
    assert smoothed_ce(logits, torch.tensor([[[1]]]), 0.2).item() == pytest.approx(0.397543, abs=1e-5)


@pytest.fixture
def toy(tmp_path):
    rows = tmp_path / "paper_rows"
    rows.mkdir()
    pd.DataFrame({"paper": ["toy", "toy"], "table": [1, 1], "row": ["ToyNet w/o smoothing", "ToyNet"],
                  "mIoU": [40.0, 42.5]}).to_csv(rows / "toy_t1_ablation.csv", index=False)
    method = register(toy_method(rows))
    yield method
    unregister("toy")


@pytest.mark.slow
def test_a_toy_method_runs_shows_its_table_and_is_swept(toy, tmp_path, one_torch_thread):
    from bench.suite_runner import run_suite
    from bench.sweep import all_studies, run_sweep

    assert "toy" in method_names() and "toy_smoothing" in all_studies()
    suite = tiny_minicity_suite(tmp_path, {"gta5": 6, "synthia": 2, "cityscapes_train": 6, "cityscapes_val": 2})
    suite["methods"] = {"toy": {"init_weights": suite["methods"]["source_only"]["init_weights"], "tables": ["t1"]}}
    suite["paper"] = {}
    path = write_suite(suite, tmp_path / "toy.yaml")
    out = run_suite(str(path), results_root=tmp_path / "results", executor="local")
    assert {o.status for o in out["outcomes"].values()} == {"done"}
    assert sorted(o.name for o in out["outcomes"].values()) == ["eval", "eval", "toy.train", "toy.train"]
    table = (tmp_path / "results" / "toy" / "tables" / "ablation_toy_19.md").read_text()
    assert "ToyNet, Table 1" in table and "minicity" in table
    assert re.search(r"\| ToyNet w/o smoothing \| 40\.0 \|", table) and re.search(r"\| ToyNet \| 42\.5 \|", table)
    sweep = run_sweep("toy_smoothing", str(path), [], results_root=tmp_path / "results", executor="local")
    assert sorted(sweep["frame"].index) == [0.0, 0.3], sweep["frame"]
    # stages each trial computed: ε = 0 is the table's "plain" row (training and evaluation from the cache, only
    # its label-free selection stage is new); ε = 0.3 trains, evaluates and selects
    assert sweep["computed"] == {0: 1, 1: 3}


def test_the_harness_names_no_paper_method():
    """bench/ asks the papers' methods only through the contract: no harness module compares with, indexes by or
    imports a paper method by name (``bench perf``, whose benchmarks time a method's own building blocks, may
    import them: perf*.py). Baselines the harness measures gains against (source-only, the oracle) are not papers."""
    from methods.base import all_methods

    names = sorted(m.name for m in all_methods() if m.paper is not None)
    assert len(names) == 4
    literal = re.compile(r"""["'](""" + "|".join(names) + r""")["']""")
    imported = re.compile(r"(from|import) methods\.(" + "|".join(names) + r")\b")
    offenders = []
    for f in sorted((REPO / "bench").rglob("*.py")):
        for i, line in enumerate(f.read_text().splitlines(), 1):
            if literal.search(line) or (imported.search(line) and not f.name.startswith("perf")):
                offenders.append(f"{f.relative_to(REPO)}:{i}: {line.strip()}")
    assert not offenders, "\n".join(offenders)
