"""The command line around the outputs: --version, help on every option, `bench ui` becoming the server, and
`bench table` re-rendering an invocation with its recorded overrides and timings."""

import argparse
import json

import pytest

from bench import cli
from bench.paths import REPO
from bench.scheduler import Outcome


def test_version(capsys):
    with pytest.raises(SystemExit) as e:
        cli.main(["--version"])
    assert e.value.code == 0 and capsys.readouterr().out.strip() == f"bench {cli.version()}"
    assert cli.version()[0].isdigit()


def test_run_help_lists_every_suite_with_examples():
    text = cli.build_parser()._subparsers._group_actions[0].choices["run"].format_help()
    for suite in sorted((REPO / "bench" / "suites").glob("*.yaml")):
        assert f"\n  {suite.stem} " in text, suite.stem
    assert "MiniCity (GTA5-format" in text and "examples:" in text and "bench run minicity seeds=[0]" in text


def _subparsers(parser):
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                yield name, sub
                yield from ((f"{name} {n}", s) for n, s in _subparsers(sub))


@pytest.mark.parametrize("command", ["data check", "data minicity", "ui", "run", "table"])
def test_every_option_has_help(command):
    sub = dict(_subparsers(cli.build_parser()))[command]
    bare = [a.dest for a in sub._actions if not a.help and not isinstance(a, argparse._HelpAction)]
    assert not bare, f"bench {command}: options without help {bare}"


@pytest.mark.parametrize("host,warns", [("127.0.0.1", False), ("0.0.0.0", True)])
def test_ui_replaces_itself_with_the_server(monkeypatch, capsys, tmp_path, host, warns):
    calls = []
    monkeypatch.setattr("os.execvpe", lambda file, args, env: calls.append((file, args, env)))
    cli.main(["ui", "--host", host, "--port", "5099", "--results", str(tmp_path)])
    (file, args, env), = calls  # exec'd once: no child process left behind when a signal stops it
    assert file == args[0] and file.endswith("mlflow") and args[1] == "ui"
    assert args[args.index("--host") + 1] == host and args[args.index("--port") + 1] == "5099"
    assert str(tmp_path) in args[args.index("--backend-store-uri") + 1]
    assert ("warning:" in capsys.readouterr().err) == warns


def test_split_overrides():
    assert cli.split_overrides("seeds=[0, 1] train.device=cpu only=[a, b]") == [
        "seeds=[0, 1]", "train.device=cpu", "only=[a, b]"]
    assert cli.split_overrides("-") == [] and cli.split_overrides("a={x: 1, y: 2}") == ["a={x: 1, y: 2}"]


@pytest.fixture
def recorded(tmp_path):
    """An MLflow store with one minicity invocation run with overrides and a timings.json artifact."""
    from bench.tracking import Tracker, default_tracking_uri

    uri = default_tracking_uri(tmp_path)
    tracker = Tracker(uri, "minicity", tmp_path / "mlartifacts")
    inv = tracker.start("minicity", "invocation", {"suite": "minicity", "overrides": "seeds=[0] only=[a, b]"})
    tracker.start("source_only seed 0", "experiment", {"method": "source_only", "seed": 0, "invocation": inv},
                  parent=inv)
    timings = tmp_path / "timings.json"
    timings.write_text(json.dumps({"wall_seconds": 2345.0, "summary": ["50 stages"],
                                   "stages": {"k1": ["done", 120.5], "k2": ["cached", 0.0]}}))
    tracker.log_artifact(inv, timings)
    return uri, inv


def test_table_reapplies_the_recorded_overrides(monkeypatch, tmp_path, recorded):
    uri, inv = recorded
    got = {}
    monkeypatch.setattr("bench.suite_runner.render_suite", lambda suite, overrides, **kw: got.update(
        suite=suite, overrides=overrides, **kw) or tmp_path / "report.md")
    assert cli.main(["table", "minicity", "train.device=cpu", "--tracking-uri", uri]) == 0
    assert got["overrides"] == ["seeds=[0]", "only=[a, b]", "train.device=cpu"]  # the command line's come last
    assert got["invocation"] == inv


def test_table_keeps_the_recorded_timings(recorded):
    from bench.report import recorded_timings

    uri, inv = recorded
    now = {"k1": Outcome("k1", "s.train", "cached", seconds=0.0), "k3": Outcome("k3", "eval", "pending")}
    outcomes, summary, wall = recorded_timings(uri, inv, now, ["re-render"], 0.0)
    assert wall == 2345.0 and summary[0] == "50 stages"
    assert (outcomes["k1"].status, outcomes["k1"].seconds) == ("done", 120.5) and outcomes["k3"].status == "pending"
    assert now["k1"].status == "cached"  # the caller's outcomes are left alone
    assert recorded_timings(uri, "0" * 32, now, ["x"], 1.0)[2] == 1.0  # no record: unchanged
