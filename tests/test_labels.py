"""Label maps against independent sources: cityscapesscripts' table and the dicts UDA code uses."""

import numpy as np
from cityscapesscripts.helpers.labels import id2label, trainId2label

from bench.data.labels import (
    CLASS_NAMES,
    ID_TO_TRAINID,
    PALETTE,
    SUBSETS,
    SYNTHIA_TO_TRAINID,
    TRAINID_TO_ID,
    map_labels,
)

# Typed from reference/datasets.md §2.1 (the dict in AdaptSegNet/ADVENT/DAFormer), independent of our code.
COMPACT = {7: 0, 8: 1, 11: 2, 12: 3, 13: 4, 17: 5, 19: 6, 20: 7, 21: 8, 22: 9, 23: 10, 24: 11, 25: 12, 26: 13,
           27: 14, 28: 15, 31: 16, 32: 17, 33: 18}
# DADA's raw SYNTHIA → 16-index dict, and the 16-index → 19-trainId list (datasets.md §2.2–2.3).
DADA16 = {3: 0, 4: 1, 2: 2, 21: 3, 5: 4, 7: 5, 15: 6, 9: 7, 6: 8, 1: 9, 10: 10, 17: 11, 8: 12, 19: 13, 12: 14, 11: 15}
IDX16_TO_TRAIN = [0, 1, 2, 3, 4, 5, 6, 7, 8, 10, 11, 12, 13, 15, 17, 18]


def test_cityscapes_map_matches_cityscapesscripts_and_compact_dict():
    for i in range(256):
        want = COMPACT.get(i, 255)
        assert ID_TO_TRAINID[i] == want, i
        if i in id2label and id2label[i].trainId not in (255, -1):
            assert ID_TO_TRAINID[i] == id2label[i].trainId


def test_class_names_palette_inverse():
    assert len(CLASS_NAMES) == 19
    for t in range(19):
        assert CLASS_NAMES[t] == trainId2label[t].name
        assert tuple(PALETTE[t]) == trainId2label[t].color
        assert ID_TO_TRAINID[TRAINID_TO_ID[t]] == t


def test_synthia_map_equals_dada_16_class_dict():
    for raw in range(256):
        want = IDX16_TO_TRAIN[DADA16[raw]] if raw in DADA16 else 255
        assert SYNTHIA_TO_TRAINID[raw] == want, raw
    # terrain (16), truck (18), train (20) are ignored in the 16-class protocol
    assert SYNTHIA_TO_TRAINID[[16, 18, 20]].tolist() == [255, 255, 255]


def test_subsets():
    assert len(SUBSETS["16"]) == 16 and len(SUBSETS["13"]) == 13
    names13 = [CLASS_NAMES[c] for c in SUBSETS["13"]]
    assert "wall" not in names13 and "pole" not in names13 and "fence" not in names13
    assert set(SUBSETS["19"]) - set(SUBSETS["16"]) == {9, 14, 16}  # terrain, truck, train


def test_map_labels_16bit_out_of_table_is_ignore():
    ids = np.array([[3, 300], [65535, 8]], dtype=np.uint16)
    assert map_labels(ids, SYNTHIA_TO_TRAINID).tolist() == [[0, 255], [255, 13]]
