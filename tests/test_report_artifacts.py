"""log_outputs: a file another run of the suite replaced meanwhile costs a warning, not the run."""

from bench.report import TIMINGS, log_outputs, replace_figures


class _Tracker:
    def __init__(self, gone):
        self.gone, self.logged = gone, []

    def log_artifact(self, run, path, sub):
        if path.name == self.gone:
            raise FileNotFoundError(path)
        self.logged.append((sub, path.name))


def test_a_vanished_output_is_skipped_with_a_warning_and_the_rest_is_logged(tmp_path, capsys):
    for rel in ("report.md", TIMINGS, "tables/t.md", "plots/a.png", "plots/qualitative.png"):
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_text("x")
    tracker = _Tracker("qualitative.png")
    log_outputs(tracker, "run", tmp_path)
    assert tracker.logged == [(None, "report.md"), (None, TIMINGS), ("tables", "t.md"), ("plots", "a.png")]
    err = capsys.readouterr().err
    assert "qualitative.png" in err and "not logged" in err and "another run of this suite" in err


def test_figures_are_overwritten_before_the_leftovers_go(tmp_path):
    path = tmp_path / "qualitative.png"
    for name in ("qualitative.png", "qualitative_1.png", "qualitative_2.png", "other.png"):
        (tmp_path / name).write_text("old")
    seen = {}

    def write():
        seen["during"] = sorted(p.name for p in tmp_path.iterdir())
        path.write_text("new")
        return [path]

    assert replace_figures(path, write) == [path]
    assert seen["during"] == ["other.png", "qualitative.png", "qualitative_1.png", "qualitative_2.png"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["other.png", "qualitative.png"]
    assert path.read_text() == "new"
