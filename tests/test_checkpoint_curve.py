"""bench.checkpoint_curve: per-checkpoint mIoU, class IoU and confusion shares of a train stage."""

import json

import numpy as np
import pytest
import torch
from fixtures import make_cityscapes

from bench.checkpoint import atomic_save, checkpoint_path
from bench.checkpoint_curve import confusion_share, curve, main
from bench.data.datasets import build_dataset
from bench.data.labels import CLASS_NAMES, IGNORE
from bench.models import build_model

ROAD, CAR = CLASS_NAMES.index("road"), CLASS_NAMES.index("car")


def _constant_checkpoint(stage, it: int, cls: int) -> None:
    """A segmenter whose every pixel is ``cls``: a zero classifier with one large bias."""
    model = build_model("small")
    with torch.no_grad():
        model.classifier.weight.zero_()
        model.classifier.bias.fill_(-10.0)
        model.classifier.bias[cls] = 10.0
    atomic_save({"modules": {"segmenter": model.state_dict()}}, checkpoint_path(stage, it))


@pytest.fixture
def stage(tmp_path):
    make_cityscapes(tmp_path / "cs", "val", per_city=2)
    d = tmp_path / "stage"
    d.mkdir()
    (d / "model.json").write_text(json.dumps({"module": "segmenter", "name": "small", "options": {}}))
    _constant_checkpoint(d, 200, CAR)
    _constant_checkpoint(d, 100, ROAD)
    ds = build_dataset("cityscapes", tmp_path / "cs", split="val", normalize="imagenet")
    labels = np.concatenate([ds.raw(i)[1].ravel() for i in range(len(ds))])
    return d, ds, labels[labels != IGNORE], tmp_path / "cs"


def test_share_of_a_hand_matrix():
    cm = np.array([[6, 2, 0], [1, 3, 0], [0, 0, 0]])  # rows: ground truth
    assert confusion_share(cm, 0, 1) == pytest.approx(25.0) and confusion_share(cm, 1, 0) == pytest.approx(25.0)
    assert confusion_share(cm, 0, 0) == pytest.approx(75.0)
    assert np.isnan(confusion_share(cm, 2, 0))


def test_a_constant_model_scores_its_classs_share_and_sends_every_pixel_there(stage):
    d, ds, valid, _ = stage
    table = curve(d, ds, [ROAD, CAR], [(ROAD, CAR)])
    assert list(table.index) == [100, 200]  # oldest first, whatever the write order
    present = len(np.unique(valid))
    road, car = (valid == ROAD).mean(), (valid == CAR).mean()
    assert 0 < road < 1 and 0 < car < 1
    assert table.loc[100, "road"] == pytest.approx(100 * road) and table.loc[100, "car"] == 0
    assert table.loc[100, "mIoU"] == pytest.approx(100 * road / present)
    assert table.loc[100, "road→car %"] == 0
    assert table.loc[200, "car"] == pytest.approx(100 * car) and table.loc[200, "road→car %"] == pytest.approx(100)


def test_missing_spec_checkpoints_or_a_foreign_file_name_what_to_do(stage, tmp_path):
    d, ds, _, _ = stage
    (d / "model.json").rename(tmp_path / "model.json")
    with pytest.raises(FileNotFoundError, match="--spec"):
        curve(d, ds, [], [])
    assert len(curve(d, ds, [], [], spec_dir=tmp_path)) == 2
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(FileNotFoundError, match="keep_checkpoints=0"):
        curve(empty, ds, [], [], spec_dir=tmp_path)
    torch.save({"modules": {"segmenter": {"not": torch.zeros(1)}}}, checkpoint_path(empty, 300))
    with pytest.raises(RuntimeError, match="ckpt_00000300.pt: not a checkpoint"):
        curve(empty, ds, [], [], spec_dir=tmp_path)


def test_cli_prints_one_row_per_checkpoint(stage, capsys):
    d, _, _, root = stage
    main([str(d), "--split", "val", "--target", str(root), "--classes", "road", "--pairs", "road:car"])
    out = capsys.readouterr().out
    assert "road→car %" in out and "target val" in out
    rows = [line.split() for line in out.splitlines() if line.split() and line.split()[0] in ("100", "200")]
    assert [r[0] for r in rows] == ["100", "200"] and float(rows[0][-1]) == 0.0 and float(rows[1][-1]) == 100.0
    with pytest.raises(SystemExit):
        main([str(d), "--split", "val", "--target", str(root), "--pairs", "road-car"])
