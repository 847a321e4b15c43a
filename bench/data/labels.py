"""Label spaces: Cityscapes ids → trainIds (from cityscapesscripts' table), SYNTHIA raw ids, class subsets.

Every map is a 256-entry uint8 lookup table filled with 255 (ignore), so any id outside the table —
including ids a corrupt file might hold — becomes ignore rather than landing in another class.
"""

from __future__ import annotations

import numpy as np
from cityscapesscripts.helpers.labels import labels as _CS_LABELS

IGNORE = 255
NUM_CLASSES = 19

# The 19 evaluated classes, ordered by trainId, straight from cityscapesscripts.
_TRAIN_LABELS = sorted((lb for lb in _CS_LABELS if 0 <= lb.trainId < IGNORE), key=lambda lb: lb.trainId)
CLASS_NAMES: tuple[str, ...] = tuple(lb.name for lb in _TRAIN_LABELS)
PALETTE: np.ndarray = np.array([lb.color for lb in _TRAIN_LABELS], dtype=np.uint8)  # [19, 3] RGB
MAX_LABEL_ID = max(lb.id for lb in _CS_LABELS)  # 33: the largest id a labelIds / GTA5 file may hold


def _lut(pairs: dict[int, int]) -> np.ndarray:
    lut = np.full(256, IGNORE, dtype=np.uint8)
    for src, dst in pairs.items():
        lut[src] = dst
    return lut


# Cityscapes label id → trainId. Also the GTA5 map: its palette indices are Cityscapes label ids.
ID_TO_TRAINID = _lut({lb.id: lb.trainId for lb in _CS_LABELS if lb.id >= 0 and 0 <= lb.trainId < IGNORE})
TRAINID_TO_ID = np.array([lb.id for lb in _TRAIN_LABELS], dtype=np.uint8)  # [19]
# Full Cityscapes colour table indexed by label id (0–33): the palette GTA5 label PNGs carry.
ID_PALETTE = np.zeros((256, 3), dtype=np.uint8)
for _lb in _CS_LABELS:
    if _lb.id >= 0:
        ID_PALETTE[_lb.id] = _lb.color

# SYNTHIA-RAND-CITYSCAPES raw class id (R channel of GT/LABELS) → 19-space trainId of the 16 benchmark
# classes. Terrain (16), truck (18) and train (20) are mapped to ignore: the 16-class protocol never
# trains or evaluates them (reference/datasets.md §2.3; DADA's 16-class dict).
SYNTHIA_NAMES = (
    "void", "sky", "building", "road", "sidewalk", "fence", "vegetation", "pole", "car", "traffic sign",
    "pedestrian", "bicycle", "motorcycle", "parking-slot", "road-work", "traffic light", "terrain",
    "rider", "truck", "bus", "train", "wall", "lanemarking",
)
SYNTHIA_TO_TRAINID = _lut({
    1: 10, 2: 2, 3: 0, 4: 1, 5: 4, 6: 8, 7: 5, 8: 13, 9: 7, 10: 11, 11: 18, 12: 17, 15: 6, 17: 12,
    19: 15, 21: 3,
})
MAX_SYNTHIA_ID = len(SYNTHIA_NAMES) - 1  # 22

# Class subsets, as trainIds in the 19-space.
SUBSETS: dict[str, tuple[int, ...]] = {
    "19": tuple(range(NUM_CLASSES)),
    # 19 minus terrain, truck, train.
    "16": (0, 1, 2, 3, 4, 5, 6, 7, 8, 10, 11, 12, 13, 15, 17, 18),
    # 16 minus wall, fence, pole; also NTHU Cross-City's 13 classes.
    "13": (0, 1, 2, 6, 7, 8, 10, 11, 12, 13, 15, 17, 18),
}


def map_labels(ids: np.ndarray, lut: np.ndarray) -> np.ndarray:
    """Map an integer id image through a 256-entry LUT; ids ≥ 256 (only possible in 16-bit files) → ignore."""
    if ids.dtype == np.uint8:
        return lut[ids]
    out = np.full(ids.shape, IGNORE, dtype=np.uint8)
    ok = (ids >= 0) & (ids < 256)
    out[ok] = lut[ids[ok].astype(np.int64)]
    return out
