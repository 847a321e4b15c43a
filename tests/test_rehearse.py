"""``bench rehearse``: every stage of the real GTA5 → Cityscapes pipelines (main rows of CAG-UDA, SSF-DAN and
BiSMAP, with their shared source-only, warm-up, GPA, label and fit stages) for 1 iteration on stand-in data at
native resolution with the small network (`bench rehearse` itself defaults to 2), and the projection of the full
recipe."""

import pytest

from bench import rehearse as rh
from bench.suite_runner import load_suite

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def test_rehearsal_suite_shortens_every_stage_and_says_what_it_replaced(tmp_path):
    suite = load_suite("gta5_cityscapes")
    roots = {d: tmp_path / d for d in suite["datasets"]}
    reh, notes = rh.rehearsal_suite(suite, roots, 3, "small")
    cag = reh["methods"]["cag_uda"]
    assert cag["warmup_iters"] == cag["stage_iters"] == cag["pretrain"]["iters"] == 3 and cag["model"] == "small"
    assert reh["methods"]["bismap"]["st_iters"] == reh["methods"]["bismap"]["distill_iters"] == 3
    assert reh["seeds"] == [0] and all(s["root"] == str(roots[d]) for d, s in reh["datasets"].items())
    assert any("bismap.init_weights" in n and "random initialisation" in n for n in notes)
    with pytest.raises(ValueError, match="--model"):
        rh.rehearsal_suite(suite, roots, 3, "huge")


def test_rehearse_gta5_cityscapes_small(tmp_path, capsys):
    # e_c from the code's constants: after 2 iterations the MAPs stage labels no target pixel (no class has enough
    # correctly predicted source features), and e_c from pseudo-labels is then undefined
    # one CAG stage of K: its stages 2..K repeat stage 1's code (a third of this test's time when they ran)
    out = rh.rehearse("gta5_cityscapes", ["ablations=false", "only=[cag_uda,ssf_dan,bismap]",
                                          "methods.bismap.stm_entropy=code", "methods.cag_uda.num_stages=1",
                                          "train.num_workers=0"], iters=1,
                      model="small", results_root=tmp_path, executor="local",
                      counts={"source": 2, "target_train": 3, "target_val": 1})  # 3: the STM needs ≥ 40 target cells
    rows = out["rows"]
    failed = [(r["stage"], r["status"]) for r in rows if r["status"] != "done"]
    assert not failed, failed
    names = {r["stage"] for r in rows}
    assert {"source_only.train", "adversarial.feature_warmup", "cag_uda.anchors", "cag_uda.label", "cag_uda.train",
            "ssf_dan.train", "gpa.source", "bismap.warmup", "bismap.maps", "bismap.stm", "bismap.self_train",
            "bismap.distill", "eval"} <= names
    train = [r for r in rows if r["kind"] == "train"]
    by = {r["stage"]: r for r in train}
    assert by["cag_uda.train"]["iters"] == 59_500 and by["bismap.self_train"]["iters"] == 90_000  # the real recipe
    assert all(r["s_per_it"] > 0 and r["projected_s"] == pytest.approx(r["iters"] * r["s_per_it"]) for r in train)
    assert all(0.0 <= r["data_share"] <= 1.0 and r["rss_mb"] > 0 for r in rows)
    text = capsys.readouterr().out
    assert "gta5_cityscapes, 3 seeds:" in text and "CPU-hours" in text
    assert out["report"].read_text().count("| eval |") >= 3
