"""bench.label_coverage: per-class precision, recall and label share of a label stage's pseudo-labels."""

import numpy as np
import pytest
from fixtures import make_cityscapes

from bench.data.datasets import build_dataset
from bench.data.labels import CLASS_NAMES, IGNORE
from bench.label_coverage import coverage, label_sets, main
from bench.pseudo import save_label


@pytest.fixture
def target(tmp_path):
    make_cityscapes(tmp_path / "cs", "train", per_city=2)
    gt = build_dataset("cityscapes", tmp_path / "cs", split="train")
    return gt, [gt.raw(i)[1] for i in range(len(gt))]


def test_top_half_labels_are_exact_with_the_top_halfs_share_as_recall(tmp_path, target):
    gt, labels = target
    for i, lab in enumerate(labels):  # the true class on the top half, nothing below
        pseudo = np.full_like(lab, IGNORE)
        pseudo[: lab.shape[0] // 2] = lab[: lab.shape[0] // 2]
        save_label(tmp_path / "labels", i, pseudo)
    table = coverage(tmp_path / "labels", gt)
    for c, name in enumerate(CLASS_NAMES):
        total = sum(int((lab == c).sum()) for lab in labels)
        top = sum(int((lab[: lab.shape[0] // 2] == c).sum()) for lab in labels)
        if total == 0:
            assert np.isnan(table.loc[name, "recall %"])
            continue
        assert table.loc[name, "recall %"] == pytest.approx(100 * top / total)
        assert table.loc[name, "label share"] == pytest.approx(top / total)
        if top:
            assert table.loc[name, "precision %"] == pytest.approx(100.0)
    assert table.loc["all", "precision %"] == pytest.approx(100.0)


def test_one_class_everywhere_has_that_classs_share_as_precision(tmp_path, target):
    gt, labels = target
    for i, lab in enumerate(labels):
        save_label(tmp_path / "labels", i, np.zeros_like(lab))  # road on every pixel
    table = coverage(tmp_path / "labels", gt)
    road = sum(int((lab == 0).sum()) for lab in labels)
    valid = sum(int((lab != IGNORE).sum()) for lab in labels)
    assert 0 < road < valid
    assert table.loc["road", "precision %"] == pytest.approx(100 * road / valid)
    assert table.loc["road", "recall %"] == pytest.approx(100.0)
    assert table.loc["road", "label share"] == pytest.approx(valid / road)  # void GT pixels are not counted
    assert np.isnan(table.loc["car", "precision %"]) and table.loc["car", "recall %"] == 0


def test_a_label_folder_that_does_not_match_the_target_is_an_error(tmp_path, target):
    gt, labels = target
    save_label(tmp_path / "labels", 0, labels[0])
    with pytest.raises(ValueError, match="1 label files, but the target split has 4 images"):
        coverage(tmp_path / "labels", gt)
    for i, lab in enumerate(labels):
        save_label(tmp_path / "other", i, np.zeros((lab.shape[0] * 2, lab.shape[1]), np.uint8))
    with pytest.raises(ValueError, match="4 label file.s. differ in size"):
        coverage(tmp_path / "other", gt)
    with pytest.raises(FileNotFoundError, match="no labels"):
        label_sets(tmp_path / "cs")


def test_cli_prints_each_label_set_of_a_stage(tmp_path, target, capsys):
    gt, labels = target
    for kind in ("labels_anchor", "labels_prob"):
        for i, lab in enumerate(labels):
            save_label(tmp_path / "stage" / kind, i, lab if kind == "labels_prob" else np.zeros_like(lab))
    main([str(tmp_path / "stage"), "--target", str(tmp_path / "cs")])
    out = capsys.readouterr().out
    assert "stage/labels_anchor:" in out and "stage/labels_prob:" in out
    prob = out.split("stage/labels_prob:")[1]
    assert prob.split("\n")[2].split()[1:3] == ["100.0", "100.0"]  # exact labels: road at 100 % / 100 %
