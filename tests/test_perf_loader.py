"""``bench perf loader``: the loaders of a suite's train stages timed on stand-in data, against the GPU's need."""

import csv

import pytest

from bench import perf_loader as pl
from bench import rehearse as rh
from bench.suite_runner import load_suite

pytestmark = pytest.mark.usefixtures("one_torch_thread")

TINY = ["only=[source_only,adaptsegnet]", "datasets.source.options.resize=[64,36]",
        "datasets.target_train.options.resize=[64,32]"]
COUNTS = {"source": 3, "target_train": 2, "target_val": 1}


@pytest.fixture
def tiny_native(monkeypatch):
    """The rehearsal's stand-in trees at a tiny size instead of the datasets' native ones."""
    monkeypatch.setitem(rh.NATIVE, "gta5", (96, 52))
    monkeypatch.setitem(rh.NATIVE, "cityscapes", (128, 64))


def test_need_and_stage_rate_hand_worked():
    # BiSMAP self-training: 4 source + 4 target images per iteration at an assumed 2.5 GPU it/s
    assert pl.need_images_per_s(4, 2.5) == 10.0
    # source at 10 img/s (batch 1: 100 ms) and target at 20 img/s (50 ms) sharing the CPU: 1 / 0.15 s = 6.67 it/s
    assert pl.stage_its([100.0, 50.0]) == pytest.approx(1 / 0.15)
    # against 4 GPU it/s: need 2 × 4 = 8 img/s, the pair gives 13.3 img/s, headroom 1.67
    assert 2 * pl.stage_its([100.0, 50.0]) / (2 * 4.0) == pytest.approx(5 / 3)


def test_every_train_stage_of_the_real_suites_has_its_loaders():
    for name in ("gta5_cityscapes", "synthia_cityscapes", "cityscapes_crosscity"):
        stages, notes = pl.stage_loaders(load_suite(name, ["ablations=true"]))
        assert not notes and stages, name
    stages, _ = pl.stage_loaders(load_suite("gta5_cityscapes", ["ablations=false"]))
    by = {s["stage"]: s for s in stages if s["stage"] != "source_only.train"}
    cag = {lo.role: lo for lo in by["cag_uda.train"]["loaders"]}
    assert cag["target_train"].pseudo and not cag["target_train"].labels
    assert cag["source"].options["crop"] == [1280, 640] and cag["source"].options["resize"] is None
    assert [(lo.role, lo.batch) for lo in by["bismap.self_train"]["loaders"]] == [("source", 4), ("target_train", 4)]
    assert by["bismap.self_train"]["specs"]["source"]["options"]["normalize"] == "imagenet"  # the method's hook
    assert [lo.role for lo in by["intrada.train"]["loaders"]] == ["easy", "hard"]


def test_tiny_run_counts_images_and_computes_the_need(tmp_path, tiny_native):
    out = pl.measure("gta5_cityscapes", TINY, workers=(0, 2), batches=2, repeats=2, gpu_its=2.5,
                     data_root=tmp_path / "data", out=tmp_path / "out", counts=COUNTS, progress=lambda _: None)
    rows = out["loaders"]
    assert {(r["domain"], r["workers"]) for r in rows} == {(d, w) for d in ("source", "target_train") for w in (0, 2)}
    for r in rows:
        assert r["images"] == r["batches"] * r["batch"] == 2 * 2 * r["batch"]
        assert r["images_per_s"] > 0 and r["need_images_per_s"] == r["batch"] * 2.5
        assert r["headroom"] == pytest.approx(r["images_per_s"] / r["need_images_per_s"])
    st = {s["stage"]: s for s in out["stages"]}
    asn = st["adaptsegnet.train"]
    assert asn["images_per_iter"] == 2 and asn["need_images_per_s"] == 5.0
    ms = [r["ms_per_batch"] for r in rows if r["workers"] == 0]
    assert asn["its_w0"] == pytest.approx(1000 / sum(ms))
    assert asn["headroom_w0"] == pytest.approx(asn["its_w0"] / 2.5)
    with (tmp_path / "out" / "loader.csv").open() as f:
        got = list(csv.DictReader(f))
    assert list(got[0]) == ["domain", "dataset", "role", "transform", "batch", "workers", "stages", "images", "batches",
                            "images_per_s", "ms_per_batch", "startup_s", "need_images_per_s", "headroom",
                            "break_even_gpu_its"]
    assert len(got) == 4
    with (tmp_path / "out" / "loader_stages.csv").open() as f:
        assert list(next(csv.DictReader(f))) == ["stage", "methods", "loaders", "images_per_iter", "need_images_per_s",
                                                 "its_w0", "headroom_w0", "its_w2", "headroom_w2"]
    text = (tmp_path / "out" / "loader.md").read_text()
    assert "stand-in data" in text and "ASSUMED" in text and "| source (gta5) | source | resize 64×36 · caffe |" in text


def test_a_batch_of_three_counts_three_images(tmp_path, tiny_native):
    suite = load_suite("gta5_cityscapes", TINY)
    roots = rh.standin_data(suite, tmp_path, COUNTS)
    specs = {d: {**s, "root": str(roots[d])} for d, s in suite["datasets"].items()}
    ds = pl.build_loader_dataset(specs, pl.Loader("source", "source", 3))
    r = pl.time_loader(ds, 3, 0, batches=2, repeats=3, name="source")
    assert r["images"] == 18 and r["batches"] == 6 and len(r["rates"]) == 3
    assert r["ms_per_batch"] > 0 and r["images_per_s"] == pytest.approx(sorted(r["rates"])[1])
