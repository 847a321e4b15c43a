"""Bad settings stop the run when the suite is loaded — one line naming the setting, before any data is generated
or any stage runs — instead of inside a stage after a retry or after training; YAML syntax errors give file:line;
Ctrl-C gives one line and the resume hint; Ray is shut down when a command ends."""

import os
import signal
import subprocess
import sys
import time
import types

import pytest
from fixtures import tiny_minicity_suite, write_suite

from bench.cli import main
from bench.paths import REPO


@pytest.fixture
def suite_file(tmp_path):
    suite = tiny_minicity_suite(tmp_path, {"gta5": 8, "synthia": 2, "cityscapes_train": 8, "cityscapes_val": 2})
    suite["only"] = ["source_only"]
    return write_suite(suite, tmp_path / "tiny.yaml")


@pytest.mark.parametrize("override, names", [
    ("methods.source_only.iters=abc", "methods.source_only.iters = 'abc': expected an integer"),
    ("methods.source_only.iters=2.5", "methods.source_only.iters = 2.5: expected an integer"),
    ("methods.source_only.iters=0", "methods.source_only.iters = 0: expected > 0"),
    ("methods.source_only.lr=-1", "methods.source_only.lr = -1: expected ≥ 0"),
    ("methods.source_only.batch_size=0", "methods.source_only.batch_size = 0: expected > 0"),
    ("methods.source_only.lr=.nan", "methods.source_only.lr = nan: expected ≥ 0 and finite"),
    ("evaluation.protocol=Z", "evaluation.protocol = 'Z': expected one of ['A', 'B', 'ms']"),
    ("evaluation.subsets=[19]", "evaluation.subsets = [19]"),
    ("seeds=abc", "seeds = 'abc': expected a non-empty list of integers"),
    ("seeds=5", "seeds = 5: expected a non-empty list of integers, e.g. seeds=[0,1,2]"),
    ("seeds=[0,0]", "a seed is listed twice"),
    ("train.threads=0", "train.threads = 0: expected an integer > 0"),
    ("train.amp=fp8", "train.amp = 'fp8'"),
    ("train.checkpoint_every=-1", "train.checkpoint_every = -1"),
    ("train.deterministic=maybe", "train.deterministic = 'maybe'"),
    ("resources={gpu: -1}", "resources.gpu = -1"),
    ("seeds=[0", "override 'seeds=[0': the value is not valid YAML"),
])
def test_bad_settings_stop_before_any_work(suite_file, tmp_path, capsys, override, names):
    assert main(["run", str(suite_file), override, "--results", str(tmp_path / "results")]) == 2
    err = capsys.readouterr().err
    assert names in err and err.startswith("error: ") and len(err.strip().splitlines()) == 1, err
    assert "Traceback" not in err
    assert not (tmp_path / "mc").exists() and not (tmp_path / "results").exists()  # no data, no stage


def test_a_yaml_syntax_error_is_one_line_with_file_and_line(tmp_path, capsys):
    bad = tmp_path / "broken.yaml"
    bad.write_text("datasets:\n  source: {name: gta5, root: x\nseeds: [0]\n")
    assert main(["run", str(bad)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and f"{bad}:3:" in err and "YAML syntax error" in err, err


def test_a_valid_suite_still_loads(suite_file):
    from bench.suite_plan import method_configs
    from bench.suite_runner import load_suite

    suite = load_suite(str(suite_file), ["methods.source_only.lr=1", "methods.source_only.horizon=null",
                                         "train.threads=2", "seeds=[3,4]"])
    assert [m for m, _, _ in method_configs(suite)] == ["source_only"]


@pytest.mark.slow
@pytest.mark.parametrize(("sig", "rc", "word"), [(signal.SIGINT, 130, "interrupted"),
                                                  (signal.SIGTERM, 143, "terminated (SIGTERM)")])
def test_ctrl_c_stops_with_one_line_and_the_resume_hint(suite_file, tmp_path, sig, rc, word):
    results = tmp_path / "results"
    env = {**os.environ, "OMP_NUM_THREADS": "1",
           "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}
    # far more iterations than the test waits for, so a signal acted on late still finds the run training
    proc = subprocess.Popen([sys.executable, "-m", "bench", "run", str(suite_file), "methods.source_only.iters=100000",
                             "--executor", "local", "--results", str(results)], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))  # not an inherited SIG_IGN
    deadline = time.monotonic() + 120
    while not list((results / "cache").glob("source_only-train-*/ckpt_*.pt")):  # training, past a checkpoint
        assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()
        time.sleep(0.05)
    proc.send_signal(sig)
    try:
        _, err = proc.communicate(timeout=60)
    except subprocess.TimeoutExpired:
        proc.kill()
        raise
    assert proc.returncode == rc
    assert "Traceback" not in err and "rerun `bench run" in err and "resumes from its last checkpoint" in err, err
    assert err.strip().startswith(word), err
    assert len([ln for ln in err.splitlines() if ln.strip()]) == 1, err


def test_ray_is_shut_down_when_a_command_ends(monkeypatch, capsys):
    calls = []
    fake = types.SimpleNamespace(is_initialized=lambda: True, shutdown=lambda: calls.append("shutdown"))
    monkeypatch.setitem(sys.modules, "ray", fake)

    def interrupted(a):
        raise KeyboardInterrupt

    import bench.cli as cli

    monkeypatch.setattr(cli, "cmd_run", interrupted)
    assert main(["run", "minicity"]) == 130 and calls == ["shutdown"]
    assert "interrupted" in capsys.readouterr().err


def test_sigterm_handler_is_ours_again_after_ray_init(monkeypatch):
    """Ray's ``init`` installs its own SIGTERM handler on the driver (``sys.exit`` after a C++ stack dump);
    ``init_ray`` puts back the one that stops a run like Ctrl-C, which Ray's blocking calls re-raise as a plain
    KeyboardInterrupt: the handler's record still tells ``main`` it was SIGTERM."""
    import bench.scheduler
    import bench.signals
    from bench.signals import Terminated, _on_sigterm, terminated

    monkeypatch.setattr(bench.signals, "_RECEIVED", [])  # the handler's record must not outlive the test

    def ray_init(**kw):
        signal.signal(signal.SIGTERM, lambda *a: sys.exit(15))  # what Ray's driver does

    fake = types.SimpleNamespace(is_initialized=lambda: False, init=ray_init, cluster_resources=lambda: {"CPU": 2})
    monkeypatch.setitem(sys.modules, "ray", fake)
    monkeypatch.setattr(bench.scheduler, "_watch_local_ray", lambda: None)
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    before = signal.getsignal(signal.SIGTERM)
    try:
        assert bench.scheduler.init_ray(2, 0) == {"CPU": 2}
        assert signal.getsignal(signal.SIGTERM) is _on_sigterm
        assert not terminated(KeyboardInterrupt())
        with pytest.raises(Terminated):
            _on_sigterm(signal.SIGTERM, None)
        assert terminated(KeyboardInterrupt())  # Ray re-raises the handler's exception as a plain interrupt
    finally:
        signal.signal(signal.SIGTERM, before)
