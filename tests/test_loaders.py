"""Loaders on fixture trees in the exact formats; every bad input raises its own clear error."""

import numpy as np
import pytest
import torch
from fixtures import (
    make_cityscapes,
    make_crosscity,
    make_gta5,
    make_synthia,
    write_l_label,
    write_palette_label,
    write_rgb,
)
from PIL import Image

from bench.data import DataError, build_dataset
from bench.data.labels import ID_TO_TRAINID, SYNTHIA_TO_TRAINID


def test_gta5_palette_indices_are_label_ids(tmp_path):
    ids = make_gta5(tmp_path, n=3)
    ds = build_dataset("gta5", tmp_path, normalize="unit")
    assert len(ds) == 3
    item = ds[1]
    assert item["image"].dtype == torch.float32 and item["image"].shape == (3, 16, 32)
    assert item["label"].dtype == torch.int64
    np.testing.assert_array_equal(item["label"].numpy(), ID_TO_TRAINID[ids[1]])
    assert item["name"] == "images/00002.png"


def test_gta5_rgb_label_rejected(tmp_path):
    make_gta5(tmp_path, n=1)
    p = tmp_path / "labels" / "00001.png"
    Image.open(p).convert("RGB").save(p)
    with pytest.raises(DataError, match="00001.png.*palette"):
        build_dataset("gta5", tmp_path)[0]


def test_gta5_size_mismatch_resized_and_missing_pairs_counted(tmp_path):
    make_gta5(tmp_path, n=3, size=(32, 16))
    write_palette_label(tmp_path / "labels" / "00002.png", np.full((15, 30), 7, np.uint8))
    (tmp_path / "labels" / "00003.png").unlink()
    ds = build_dataset("gta5", tmp_path)
    assert len(ds) == 2 and ds.missing_labels == 1
    item = ds[1]
    assert item["label"].shape == (16, 32) and (item["label"] == 0).all()
    assert ds.size_mismatches == 1


def test_synthia_16bit_decoded_right_where_pillow_fails(tmp_path):
    cls = make_synthia(tmp_path, n=2)
    p = tmp_path / "GT" / "LABELS" / "0000000.png"
    # The trap is real: Pillow's 8-bit view of this file does not hold the class ids.
    pil = np.asarray(Image.open(p).convert("RGB"))[..., 0]
    assert not np.array_equal(pil, cls[0])
    ds = build_dataset("synthia", tmp_path, normalize="caffe")
    np.testing.assert_array_equal(ds[0]["label"].numpy(), SYNTHIA_TO_TRAINID[cls[0]])


def test_synthia_8bit_label_rejected(tmp_path):
    make_synthia(tmp_path, n=1)
    write_rgb(tmp_path / "GT" / "LABELS" / "0000000.png", np.zeros((16, 32, 3)))
    with pytest.raises(DataError, match="16-bit"):
        build_dataset("synthia", tmp_path)[0]


def test_cityscapes_val_and_label_ids(tmp_path):
    labels = make_cityscapes(tmp_path, "val")
    ds = build_dataset("cityscapes", tmp_path, "val")
    assert len(ds) == 4
    for i in range(len(ds)):
        item = ds[i]
        np.testing.assert_array_equal(item["label"].numpy(), ID_TO_TRAINID[labels[item["name"]]])
    unl = build_dataset("cityscapes", tmp_path, "val", labels=False)
    assert (unl[0]["label"] == 255).all()


def test_cityscapes_missing_label_and_test_split(tmp_path):
    make_cityscapes(tmp_path, "val")
    next((tmp_path / "gtFine" / "val" / "lindau").glob("*.png")).unlink()
    with pytest.raises(DataError, match="labelIds.*label missing|label missing"):
        build_dataset("cityscapes", tmp_path, "val")
    with pytest.raises(DataError, match="placeholders"):
        build_dataset("cityscapes", tmp_path, "test")


def test_crosscity(tmp_path):
    labels = make_crosscity(tmp_path, "Rome")
    ds = build_dataset("crosscity", tmp_path, "test", city="Rome")
    assert len(ds) == 2
    item = ds[0]
    np.testing.assert_array_equal(item["label"].numpy(), ID_TO_TRAINID[labels["pano_00000_1_180"]])
    assert set(np.unique(item["label"].numpy())) <= {0, 1, 2, 6, 7, 8, 10, 11, 12, 13, 15, 17, 18, 255}
    train = build_dataset("crosscity", tmp_path, "train", city="Rome")
    assert len(train) == 2 and (train[0]["label"] == 255).all()
    with pytest.raises(DataError, match="city"):
        build_dataset("crosscity", tmp_path, "test", city="Paris")


@pytest.mark.parametrize("bad", ["root", "layout", "corrupt", "range", "option", "name"])
def test_bad_inputs(tmp_path, bad):
    make_gta5(tmp_path / "g", n=2)
    if bad == "root":
        with pytest.raises(DataError, match="dataset root not found"):
            build_dataset("gta5", tmp_path / "nope")
    elif bad == "layout":
        (tmp_path / "g" / "labels").rename(tmp_path / "g" / "gt")
        with pytest.raises(DataError, match=r"labels.*expected GTA5 labels"):
            build_dataset("gta5", tmp_path / "g")
    elif bad == "corrupt":
        p = tmp_path / "g" / "images" / "00001.png"
        p.write_bytes(p.read_bytes()[:60])
        with pytest.raises(DataError, match="00001.png: cannot decode image"):
            build_dataset("gta5", tmp_path / "g")[0]
    elif bad == "range":
        write_l_label(tmp_path / "g" / "labels" / "00001.png", np.full((16, 32), 200, np.uint8))
        with pytest.raises(DataError, match="label id 200 is out of range"):
            build_dataset("gta5", tmp_path / "g")[0]
    elif bad == "option":
        with pytest.raises(TypeError, match="unknown dataset option.*crop_size"):
            build_dataset("gta5", tmp_path / "g", crop_size=(8, 8))
    else:
        with pytest.raises(KeyError, match="valid"):
            build_dataset("mapillary", tmp_path / "g")


def test_augmentation_is_seeded(tmp_path):
    make_gta5(tmp_path, n=2, size=(32, 16))
    ds = build_dataset("gta5", tmp_path, resize=(24, 12), scale=(0.8, 1.5), crop=(16, 8), flip=True)
    a, b = ds[(0, 5)], ds[(0, 5)]
    assert a["image"].shape == (3, 8, 16) and a["label"].shape == (8, 16)
    assert torch.equal(a["image"], b["image"]) and torch.equal(a["label"], b["label"])
    others = [ds[(0, s)]["image"] for s in range(6, 12)]
    assert any(not torch.equal(a["image"], o) for o in others)


def test_normalisations(tmp_path):
    make_gta5(tmp_path, n=1)
    raw = np.asarray(Image.open(tmp_path / "images" / "00001.png").convert("RGB")).astype(np.float32)
    unit = build_dataset("gta5", tmp_path, normalize="unit")[0]["image"].numpy()
    np.testing.assert_allclose(unit[0], raw[..., 0] / 255, atol=1e-6)
    caffe = build_dataset("gta5", tmp_path, normalize="caffe")[0]["image"].numpy()
    np.testing.assert_allclose(caffe[0], raw[..., 2] - 104.00698793, atol=1e-4)  # channel 0 is B
    inet = build_dataset("gta5", tmp_path, normalize="imagenet")[0]["image"].numpy()
    np.testing.assert_allclose(inet[1], (raw[..., 1] / 255 - 0.456) / 0.224, atol=1e-5)


def test_list_file(tmp_path):
    make_gta5(tmp_path / "g", n=3)
    lst = tmp_path / "train.txt"
    lst.write_text("00003.png\n00001.png\n")
    ds = build_dataset("gta5", tmp_path / "g", list_file=lst)
    assert [s.name for s in ds.samples] == ["images/00003.png", "images/00001.png"]
    lst.write_text("00009.png\n")
    with pytest.raises(DataError, match="not in"):
        build_dataset("gta5", tmp_path / "g", list_file=lst)


def test_fingerprint_changes_with_content(tmp_path):
    make_gta5(tmp_path, n=2)
    f1 = build_dataset("gta5", tmp_path).fingerprint()
    assert f1 == build_dataset("gta5", tmp_path).fingerprint()
    write_rgb(tmp_path / "images" / "00001.png", np.zeros((16, 32, 3)))
    assert build_dataset("gta5", tmp_path).fingerprint() != f1


def test_holdout_split_is_a_fixed_partition_by_name():
    from bench.data.datasets import holdout_split
    from bench.data.layouts import Sample

    samples = [Sample(f"img{i}.png", None, f"city/img{i}.png") for i in range(400)]
    held = holdout_split(samples, 0.2, seed=0, part="held")
    rest = holdout_split(samples, 0.2, seed=0, part="rest")
    assert {s.name for s in held}.isdisjoint({s.name for s in rest}) and len(held) + len(rest) == 400
    assert 50 <= len(held) <= 110  # binomial(400, 0.2): mean 80, sd 8
    # the order and the other files do not matter; another seed is another split
    assert {s.name for s in holdout_split(samples[::-1][:200], 0.2, part="held")} == \
        {s.name for s in held if int(s.name[8:-4]) >= 200}
    assert {s.name for s in holdout_split(samples, 0.2, seed=1, part="held")} != {s.name for s in held}
    with pytest.raises(ValueError, match="part"):
        holdout_split(samples, 0.2, part="val")
    with pytest.raises(ValueError, match="leaves no sample"):
        holdout_split(samples[:1], 0.01, seed=0, part="held")
