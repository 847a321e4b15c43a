"""``bench data check``: every file read, errors collected, a stable fingerprint."""

import numpy as np
from fixtures import make_cityscapes, make_gta5, write_l_label, write_palette_label

from bench.cli import main
from bench.data.check import check_dataset, format_report
from bench.data.labels import ID_TO_TRAINID


def test_check_counts_classes_and_fingerprint(tmp_path):
    ids = make_gta5(tmp_path, n=3)
    rep = check_dataset("gta5", tmp_path)
    assert rep.ok and rep.splits[0].count == 3
    train = np.concatenate([ID_TO_TRAINID[i].ravel() for i in ids])
    assert rep.splits[0].class_pixels[0] == (train == 0).sum()  # road
    assert rep.splits[0].class_pixels[19] == (train == 255).sum()
    assert len(rep.fingerprint) == 16 and rep.fingerprint == check_dataset("gta5", tmp_path).fingerprint


def test_check_collects_every_bad_file(tmp_path, capsys):
    make_gta5(tmp_path, n=4)
    (tmp_path / "images" / "00001.png").write_bytes(b"\x89PNG\r\n\x1a\nbroken")
    write_l_label(tmp_path / "labels" / "00002.png", np.full((16, 32), 99, np.uint8))
    write_palette_label(tmp_path / "labels" / "00003.png", np.zeros((10, 10), np.uint8))
    rep = check_dataset("gta5", tmp_path)
    s = rep.splits[0]
    assert len(s.errors) == 2 and len(s.size_mismatches) == 1
    text = format_report(rep)
    assert "00001.png" in text and "label id 99" in text and "FAILED: 2 bad files" in text
    assert main(["data", "check", "gta5", "--root", str(tmp_path)]) == 1


def test_cityscapes_size_mismatch_is_an_error(tmp_path):
    make_cityscapes(tmp_path, "val", cities=("lindau",), per_city=1)
    lbl = next((tmp_path / "gtFine" / "val" / "lindau").glob("*.png"))
    write_l_label(lbl, np.zeros((8, 8), np.uint8))
    rep = check_dataset("cityscapes", tmp_path, ["val"])
    assert not rep.ok and "image 32x16, label 8x8" in rep.splits[0].errors[0]


def test_cli_layout_error_names_expected_folder(tmp_path, capsys):
    (tmp_path / "images").mkdir()
    assert main(["data", "check", "gta5", "--root", str(tmp_path)]) == 2
    assert "labels" in capsys.readouterr().err
