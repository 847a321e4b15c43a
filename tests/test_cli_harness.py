"""`bench cache` and `bench ui` from the command line."""

import stage_fakes as fk

from bench.cli import main
from bench.scheduler import Scheduler
from bench.stage_keys import plan_stages
from bench.tracking import ui_command
from methods.base import Stage


def test_cache_ls_and_clear(tmp_path, capsys):
    cache = tmp_path / "cache"
    for finals in ([fk.chain(1, 2)], [Stage("fake.flaky", "train", fk.flaky, {"fail_times": 9})]):
        planned = plan_stages(finals, 0, {}, {})
        Scheduler({p.key: p for p in planned}, {p.key: {} for p in planned}, {}, cache, executor="local").run()
    assert main(["cache", "ls", "--cache", str(cache)]) == 0
    out = capsys.readouterr().out
    assert out.count("done") == 3 and out.count("partial") == 1 and "4 stage(s)" in out
    assert main(["cache", "clear", "--cache", str(cache)]) == 2  # refuses to guess what to delete
    assert "say what to clear" in capsys.readouterr().err
    assert main(["cache", "clear", "--cache", str(cache), "--partial"]) == 0
    assert "removed 1 stage(s)" in capsys.readouterr().out
    assert main(["cache", "clear", "--cache", str(cache), "fake-root"]) == 0
    # (.locks holds the stages' lock files)
    assert sorted(p.name.split("-")[1] for p in cache.iterdir() if p.is_dir() and p.name != ".locks") == ["leaf", "mid"]


def test_ui_command_fits_a_small_machine():
    cmd, env = ui_command("sqlite:////x/mlflow.db", 5123)
    assert cmd[:2] == ["mlflow", "ui"] and cmd[cmd.index("--workers") + 1] == "1"
    assert cmd[cmd.index("--host") + 1] == "127.0.0.1" and cmd[cmd.index("--port") + 1] == "5123"
    assert cmd[cmd.index("--backend-store-uri") + 1] == "sqlite:////x/mlflow.db"
    assert env["MLFLOW_SERVER_ENABLE_JOB_EXECUTION"] == "false"


def test_run_reports_a_bad_override_with_exit_2(capsys):
    assert main(["run", "minicity", "methods.source_only.lrr=1", "--executor", "local"]) == 2
    assert "unknown key(s) ['lrr']" in capsys.readouterr().err


def test_perf_ssd_reports_both_paths_and_their_agreement(capsys):
    assert main(["perf", "ssd", "--height", "5", "--width", "6", "--batch", "1", "--present", "3",
                 "--repeats", "1"]) == 0
    out = capsys.readouterr().out
    assert "fast:" in out and "loop:" in out and "ms/step" in out
    diff = float(out.rsplit("=", 1)[1])
    assert diff < 1e-4  # the fast path computes what the 19 modules one by one compute


def test_cache_ls_names_the_rows_that_use_each_stage(tmp_path, capsys):
    """`bench run` records which method/variant/seed rows use each key; `cache ls` prints them next to it."""
    from types import SimpleNamespace

    from bench.stage_cache import StageCache

    cache = tmp_path / "cache"
    planned = plan_stages([fk.chain(1, 2)], 0, {}, {})
    Scheduler({p.key: p for p in planned}, {p.key: {} for p in planned}, {}, cache, executor="local").run()
    row = SimpleNamespace(method="cag_uda", variant="stage1", seed=0, target="", stages=planned)
    StageCache(cache).record_users("minicity", [row])
    StageCache(cache).record_users("other", [SimpleNamespace(**{**vars(row), "variant": "", "stages": planned[:1]})])
    assert main(["cache", "ls", "--cache", str(cache)]) == 0
    lines = capsys.readouterr().out.splitlines()
    root = next(ln for ln in lines if planned[0].key in ln)
    leaf = next(ln for ln in lines if planned[-1].key in ln)
    assert "seed   0" in root and "[minicity: cag_uda[stage1]; other: cag_uda]" in root
    assert leaf.endswith("[minicity: cag_uda[stage1]]")


def test_comparison_url_opens_experiment_runs_best_miou_first():
    from urllib.parse import parse_qs, urlsplit

    from bench.tracking import comparison_url

    url = comparison_url("http://127.0.0.1:5000", "7")
    frag = urlsplit(urlsplit(url).fragment)
    q = parse_qs(frag.query)
    assert frag.path == "/experiments/7/runs" and q["searchFilter"] == ["tags.kind = 'experiment'"]
    assert q["orderByKey"] == ["metrics.`miou_19`"] and q["orderByAsc"] == ["false"]
