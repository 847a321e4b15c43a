"""The paired-bootstrap intervals where users read them: the results and ablation tables (every renderer) and the
report, against an independent bootstrap."""

from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest
from confusion_fakes import C, noisy, per_image_sklearn, random_maps

from bench.metrics import PER_IMAGE_FILE, iou_from_confusion, miou_from_confusion, save_per_image
from bench.stats import MISSING, format_difference, paired_bootstrap_seeds


def results_from(per_image: dict) -> list[dict]:
    """MLflow-like result dicts whose mIoU/IoU come from the summed per-image matrices (as the eval stage's do)."""
    from bench.data.labels import CLASS_NAMES

    out = []
    for (method, variant, seed), mats in per_image.items():
        iou = iou_from_confusion(mats.sum(0))
        r = {"method": method, "variant": variant, "seed": seed, "miou_19": float(miou_from_confusion(mats.sum(0)))}
        r.update({f"iou_19/{CLASS_NAMES[c]}": float(v) for c, v in enumerate(iou)})
        out.append(r)
    return out


@pytest.fixture(scope="module")
def three_rows():
    """source_only, a clearly better method, and a method equal to source-only but for a few pixels; 3 seeds,
    the same 30 validation images under every seed."""
    rng = np.random.default_rng(20)
    gt = random_maps(rng, n=30, shape=(12, 16))
    names = [f"val/{i}.png" for i in range(len(gt))]
    mats = {}
    for s in range(3):
        base = noisy(rng, gt, 0.35)
        near = base.copy()
        near[:3, :2, :2] = rng.integers(0, C, (3, 2, 2))  # a few pixels moved: no real difference
        mats[("source_only", "", s)] = per_image_sklearn(base, gt)
        mats[("good", "", s)] = per_image_sklearn(noisy(rng, gt, 0.2), gt)
        mats[("same", "", s)] = per_image_sklearn(near, gt)
    lookup = {(m if not v else f"{m} ({v})", s): (x, names) for (m, v, s), x in mats.items()}
    return mats, lookup


def test_results_table_differences_equal_an_independent_bootstrap(three_rows):
    from bench.data.labels import CLASS_NAMES
    from bench.tables import add_differences, comparison_frame, per_class_frame, row_differences

    mats, lookup = three_rows
    ours = per_class_frame(results_from(mats))
    diffs = row_differences(ours, lookup, "source_only", classes="19")
    frame = add_differences(comparison_frame(ours, None, list(CLASS_NAMES)), diffs, "source_only")
    by = frame.set_index("method")
    for m in ("good", "same"):
        delta, lo, hi = paired_bootstrap_seeds([mats[(m, "", s)] for s in range(3)],
                                               [mats[("source_only", "", s)] for s in range(3)])
        assert by.loc[m, "delta"] == pytest.approx(by.loc[m, "mIoU"] - by.loc["source_only", "mIoU"])
        assert by.loc[m, "delta"] == pytest.approx(delta)  # same seeds: the plain and paired deltas agree
        assert (by.loc[m, "delta_lo"], by.loc[m, "delta_hi"]) == pytest.approx((lo, hi))
    assert by.loc["good", "delta_excludes_0"] and not by.loc["same", "delta_excludes_0"]
    assert by.loc["source_only", "delta_note"] == "reference" and by.loc["source_only", "delta"] == 0


def test_every_renderer_shows_intervals_marks_and_the_missing_ones(three_rows, tmp_path):
    from bench.data.labels import CLASS_NAMES
    from bench.table_render import render_terminal, to_latex, to_markdown, write_tables
    from bench.tables import add_differences, comparison_frame, per_class_frame, row_differences, verdict_lines

    mats, lookup = three_rows
    lookup = dict(lookup)
    results = results_from(mats) + [{**r, "method": "old"} for r in results_from(mats) if r["method"] == "good"]
    for s in range(3):
        lookup[("old", s)] = None  # an eval stage from before per-image matrices
    ours = per_class_frame(results)
    diffs = row_differences(ours, lookup, "source_only", classes="19")
    frame = add_differences(comparison_frame(ours, None, list(CLASS_NAMES)), diffs, "source_only")
    by = frame.set_index("method")
    good = format_difference(diffs["good"])
    assert good.endswith("†") and "[" in good and np.isnan(by.loc["old", "delta_lo"])
    assert by.loc["old", "delta"] == pytest.approx(by.loc["good", "delta"]) and by.loc["old", "delta_note"] == MISSING

    md = to_markdown(frame, "T")
    rows = {ln.split("|")[1].strip(): ln.split("|")[-2].strip() for ln in md.splitlines() if ln.startswith("| ")}
    assert rows["Method"] == "Δ mIoU vs source_only" and rows["source_only"] == "reference"
    assert rows["good"] == good and rows["same"] == format_difference(diffs["same"]) and "†" not in rows["same"]
    assert rows["old"] == f"{by.loc['old', 'delta']:+.1f}"  # no brackets: no interval
    assert "† the interval excludes 0" in md and f"No interval, plain difference of the means: old ({MISSING})" in md

    tex = to_latex(frame, "T", "tab:t")
    body = [ln for ln in tex.splitlines() if ln.endswith(r"\\")]
    assert all(ln.count(" & ") == body[0].count(" & ") for ln in body)  # every row has the extra column
    assert r"$\Delta$ mIoU vs source\_only" in body[0] and r"]$^\dagger$ \\" in body[2]
    assert tex.index(r"\end{tabular}") < tex.index(r"{\footnotesize $\Delta$: difference") < tex.index(r"\end{table}")

    term = render_terminal(frame, "T")
    assert "Δ vs source_only" in term and good in term and "the interval excludes 0" in term

    paths = write_tables(frame, tmp_path, "t", "T")
    back = pd.read_csv(paths["csv"])
    assert {"delta", "delta_lo", "delta_hi", "delta_excludes_0", "delta_note"} <= set(back.columns)
    assert back.set_index("method").loc["good", "delta_excludes_0"]

    words = "\n".join(verdict_lines(diffs, "source_only"))
    assert f"- good vs source_only: {good[:-1]} mIoU points — distinguishable" in words
    assert "- same vs source_only: " in words and "not distinguishable" in words.split("- same")[1]
    assert f"- old vs source_only: {by.loc['old', 'delta']:+.1f} mIoU points — no interval: {MISSING}" in words


def test_ablation_tables_carry_gain_intervals(three_rows, tmp_path):
    from bench.ablations import ablation_tables

    mats, lookup = three_rows
    renamed = {("m", {"source_only": "", "good": "good", "same": "same"}[k[0]], k[2]): v for k, v in mats.items()}
    lookup = {(f"m ({v})" if v else "m", s): (x, lookup[("source_only", 0)][1]) for (_, v, s), x in renamed.items()}
    (tmp_path / "tables").mkdir()
    from bench.tables import per_class_frame

    ours = per_class_frame(results_from(renamed))
    suite = {"paper": {}}
    md = "\n".join(ablation_tables(suite, ours, "19", tmp_path, "", per_image=lookup))
    abl = pd.read_csv(tmp_path / "tables" / "ablation_m_19.csv", index_col=0)
    # the table's base row is the full method ("m"): the gains are against it
    ref = paired_bootstrap_seeds([renamed[("m", "good", s)] for s in range(3)],
                                 [renamed[("m", "", s)] for s in range(3)])
    assert (abl.loc["m (good)", "gain_lo"], abl.loc["m (good)", "gain_hi"]) == pytest.approx(ref[1:])
    assert abl.loc["m (good)", "gain_excludes_0"] and not abl.loc["m (same)", "gain_excludes_0"]
    assert abl.loc["m", "gain_note"] == "reference" and abl.loc["m", "gain"] == 0
    assert "| m | 3 |" in md and "| — |" in md and "†" in md and "gain: difference in mIoU points" in md
    assert "- m (good) vs m: " in md and "- m (same) vs m: " in md
    assert "not distinguishable" in md.split("- m (same)")[1]
    tex = (tmp_path / "tables" / "ablation_m_19.tex").read_text()
    assert r"$^\dagger$" in tex and r"\footnotesize" in tex
    # without per-image data the table is the plain one
    plain = "\n".join(ablation_tables(suite, ours, "19", tmp_path, ""))
    assert "[" not in plain.split("### ")[1] and "†" not in plain


def test_report_finds_each_rows_eval_directory_and_logs_the_matrices(tmp_path):
    from bench.report import log_per_image, per_image_lookup

    mats = np.zeros((2, C, C), np.int64)
    for key in ("eval-new", "eval-old", "eval-planned"):
        (tmp_path / key).mkdir()
    save_per_image(tmp_path / "eval-new" / PER_IMAGE_FILE, mats + 1, ["a", "b"])
    save_per_image(tmp_path / "eval-planned" / PER_IMAGE_FILE, mats + 2, ["a", "b"])
    results = [{"method": "m", "variant": "", "target": "", "seed": 0, "cache_key": "eval-new", "run_id": "r0"},
               {"method": "m", "variant": "v", "target": "", "seed": 0, "cache_key": "eval-old", "run_id": "r1"},
               {"method": "s", "variant": "", "target": "", "seed": 1, "run_id": "r2"}]  # an older record: no tag
    experiments = [SimpleNamespace(method="s", variant="", target="", seed=1, eval=SimpleNamespace(key="eval-planned"))]
    got = per_image_lookup(results, experiments, tmp_path)
    assert got[("m (v)", 0)] is None and got[("m", 0)][1] == ["a", "b"] and (got[("m", 0)][0] == 1).all()
    assert (got[("s", 1)][0] == 2).all()
    logged = []
    tracker = SimpleNamespace(log_artifact=lambda run, path, where: logged.append((run, path.parent.name, where)))
    assert log_per_image(tracker, results, experiments, tmp_path) == 2
    assert logged == [("r0", "eval-new", "eval"), ("r2", "eval-planned", "eval")]
