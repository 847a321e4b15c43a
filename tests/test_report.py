"""The run report's Markdown: the fidelity ledger renders as one table row per setting, whatever its notes hold."""

import dataclasses
from types import SimpleNamespace

from markdown_it import MarkdownIt

from bench.report import ledger_lines, ledger_rows

AWKWARD = ["|x| = max(a | b)", "code: `a || b`", "line one\nline two", "ends with a pipe |", "``quoted``", ""]


@dataclasses.dataclass
class Config:
    lr: float = dataclasses.field(default=2.5e-4, metadata={"source": "paper", "note": AWKWARD[0]})
    loss: str = dataclasses.field(default="a|b", metadata={"source": "code", "note": AWKWARD[1]})
    mask: str = dataclasses.field(default="`x`", metadata={"note": AWKWARD[2]})
    weights: list = dataclasses.field(default_factory=lambda: [1, 2], metadata={"note": AWKWARD[3]})
    tau: float = dataclasses.field(default=0.5, metadata={"source": "inferred | guessed", "note": AWKWARD[4]})
    seeds: int = dataclasses.field(default=3, metadata={"note": AWKWARD[5]})


def test_ledger_escapes_markdown_and_keeps_one_row_per_setting():
    exps = [SimpleNamespace(method="m", variant="", config=Config()),
            SimpleNamespace(method="m", variant="a|b", config=Config(lr=0.01, loss="c|d", mask="`|`")),
            SimpleNamespace(method="m", variant="", config=Config())]  # a second seed: listed once
    ledger = ledger_rows(exps)
    assert [n for n, _ in ledger] == ["m", "m (a|b)"]
    html = MarkdownIt("commonmark").enable("table").render("\n".join(ledger_lines(exps)))
    tables = html.split("<table>")[1:]
    assert len(tables) == len(ledger)
    for (_, rows), table in zip(ledger, tables):
        body = table.split("<tbody>")[1]
        assert body.count("<tr>") == len(rows)  # a broken row would merge into its neighbour or vanish
        assert all(tr.count("<td") == 5 for tr in body.split("<tr>")[1:])  # and no cell split on a `|`
    assert "|x| = max(a | b)" in html
    assert "<code>&quot;c|d&quot;</code>" in html and "<code>&quot;a|b&quot;</code>" in html
    assert "suite override" in tables[1] and "(paper)" in tables[1]


def test_one_training_curve_per_unique_stage_named_apart():
    def stage(name, key, kind="train"):
        return SimpleNamespace(name=name, key=key, stage=SimpleNamespace(kind=kind))

    warm, src = stage("source_only.train", "k0"), stage("eval", "e0", "eval")
    exps = [SimpleNamespace(method="source_only", variant="", seed=0, stages=[warm, src]),
            SimpleNamespace(method="cag_uda", variant="", seed=0,
                            stages=[warm, stage("cag_uda.train", "k1"), stage("cag_uda.train", "k2")]),
            SimpleNamespace(method="cag_uda", variant="lr", seed=0, stages=[warm, stage("cag_uda.train", "k3")]),
            SimpleNamespace(method="cag_uda", variant="", seed=1, stages=[stage("cag_uda.train", "k9")])]
    from bench.report import curve_labels

    assert curve_labels(exps) == {"k0": "source_only.train", "k1": "cag_uda.train #1", "k2": "cag_uda.train #2",
                                  "k3": "cag_uda.train"}
    exps[2].stages.append(stage("cag_uda.train", "k4"))  # now its two stages collide with the method's labels
    labels = curve_labels(exps)
    assert labels["k3"] == "cag_uda.train #1 [cag_uda (lr)]" and labels["k1"] == "cag_uda.train #1 [cag_uda]"
    assert len(set(labels.values())) == len(labels)
