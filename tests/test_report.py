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


@dataclasses.dataclass
class Small:
    lr: float = dataclasses.field(default=0.1, metadata={"source": "paper", "note": "Eq. 3"})
    mode: str = dataclasses.field(default="a", metadata={"source": "code"})
    steps: tuple = (1, 2)


def test_ledger_reads_provenance_and_keeps_each_defaults_source(monkeypatch):
    exps = [SimpleNamespace(method="m", variant="v", config=Small(lr=0.5, steps=(3,)))]
    expected = ["### m (v)", "", "| setting | value | source | method default (its source) | note |",
                "|---|---|---|---|---|", "| lr | `0.5` | suite override | `0.1` (paper) | Eq. 3 |",
                '| mode | `"a"` | code |  |  |', "| steps | `[3]` | suite override | `[1, 2]` (harness) |  |", ""]
    assert ledger_lines(exps) == expected
    import methods.base

    seen = []
    real = methods.base.provenance
    monkeypatch.setattr(methods.base, "provenance", lambda cfg: seen.append(cfg) or real(cfg))
    assert ledger_lines(exps) == expected
    assert exps[0].config in seen  # the ledger is the method contract's provenance, not a copy of it


def test_captions_name_the_protocol_recorded_with_the_numbers():
    from bench.report import protocol_lines, recorded_protocols, table_title

    suite = {"name": "s", "seeds": [0], "evaluation": {"protocol": "A", "subsets": ["19"]},
             "datasets": {"target_val": {"name": "cityscapes", "split": "val", "root": "r"}}}

    def exp(method, variant, protocol, seed=0):
        ev = SimpleNamespace(stage=SimpleNamespace(params={"protocol": protocol}))
        return SimpleNamespace(method=method, variant=variant, target="", seed=seed, eval=ev)

    exps = [exp("adaptsegnet", "", "A"), exp("cag_uda", "ms", "ms"), exp("ssf_dan", "", "A")]
    results = [{"method": "adaptsegnet", "variant": "", "target": "", "seed": 0, "protocol": "A"},
               {"method": "cag_uda", "variant": "ms", "target": "", "seed": 0, "protocol": "ms"},
               {"method": "ssf_dan", "variant": "", "target": "", "seed": 0, "protocol": ""}]  # before the tag
    protocols = recorded_protocols(results, exps)
    assert protocols == {"adaptsegnet": "A", "cag_uda (ms)": "ms", "ssf_dan": "A"}
    assert "protocol A; ms for cag_uda (ms), final iterate" in table_title(suite, "", "19", protocols)
    only_ms = recorded_protocols(results[1:2], exps)
    assert "protocol ms, final iterate" in table_title(suite, "", "19", only_ms)  # not the suite's A
    assert "- evaluation protocol A; ms for cag_uda (ms) (see" in "\n".join(protocol_lines(suite, protocols))
    assert "- evaluation protocol A (see" in "\n".join(protocol_lines(suite, {}))  # nothing recorded: the suite's


def test_results_follow_the_suite_order_not_the_finishing_order():
    from bench.report import in_suite_order

    exps = [SimpleNamespace(method=m, variant=v) for m, v in
            [("cag_uda", ""), ("cag_uda", "stage1"), ("cag_uda", ""), ("bismap", "ias"), ("source_only", "")]]
    finished = [{"method": "source_only", "seed": 1}, {"method": "bismap", "variant": "ias", "seed": 0},
                {"method": "cag_uda", "variant": "stage1", "seed": 0}, {"method": "cag_uda", "seed": 1},
                {"method": "cag_uda", "seed": 0}, {"method": "other", "seed": 0}]
    rows = [(r["method"], r.get("variant", ""), r["seed"]) for r in in_suite_order(finished, exps)]
    assert rows == [("cag_uda", "", 0), ("cag_uda", "", 1), ("cag_uda", "stage1", 0), ("bismap", "ias", 0),
                    ("source_only", "", 1), ("other", "", 0)]
