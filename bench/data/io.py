"""File readers for images and the three label formats, each failing loudly on the wrong kind of file.

- GTA5 labels: palette ("P") PNGs whose *index* is the Cityscapes label id. Converting to RGB/L destroys it.
- Cityscapes / Cross-City labels: single-channel 8-bit label-id PNGs.
- SYNTHIA labels: 3-channel 16-bit PNGs, class id in R. Pillow decodes these to 8 bits (wrong ids), so they
  are read with OpenCV ``IMREAD_UNCHANGED``, which returns uint16 in BGR order: the class is ``[..., 2]``.
"""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
from PIL import Image

from bench.data.labels import MAX_LABEL_ID, MAX_SYNTHIA_ID


class DataError(ValueError):
    """A dataset file or layout that cannot be read correctly; the message names the file and the fix."""


def read_image(path: Path) -> np.ndarray:
    """RGB uint8 ``[H, W, 3]``; corrupt or truncated files raise DataError naming the file."""
    try:
        with Image.open(path) as im:
            im.load()
            return np.asarray(im.convert("RGB"))
    except FileNotFoundError:
        raise DataError(f"{path}: image file missing") from None
    except Exception as e:  # Pillow raises several types for truncated/corrupt data
        raise DataError(f"{path}: cannot decode image ({e}); re-extract this file from the dataset archive") from e


def image_size(path: Path) -> tuple[int, int]:
    """(width, height) from the file header only."""
    try:
        with Image.open(path) as im:
            return im.size
    except Exception as e:
        raise DataError(f"{path}: cannot read image header ({e})") from e


def _open_label(path: Path) -> Image.Image:
    try:
        im = Image.open(path)
        im.load()
        return im
    except FileNotFoundError:
        raise DataError(f"{path}: label file missing") from None
    except Exception as e:
        raise DataError(f"{path}: cannot decode label PNG ({e}); re-extract this file") from e


def _check_range(ids: np.ndarray, path: Path, max_id: int, what: str) -> np.ndarray:
    top = int(ids.max()) if ids.size else 0
    if top > max_id:
        raise DataError(
            f"{path}: label id {top} is out of range for {what} (max {max_id}); this is not a {what} "
            "label file (wrong folder, or colour images instead of id images?)"
        )
    return ids


def read_gta5_label(path: Path) -> np.ndarray:
    """Cityscapes label ids ``[H, W]`` uint8 from a GTA5 palette PNG."""
    im = _open_label(path)
    if im.mode not in ("P", "L"):
        raise DataError(
            f"{path}: GTA5 label has mode {im.mode!r}; expected a palette ('P') PNG whose index is the label "
            "id. A colour (RGB) copy cannot be used: re-extract the original labels archive"
        )
    return _check_range(np.asarray(im), path, MAX_LABEL_ID, "Cityscapes-id (GTA5)")


def read_labelids(path: Path) -> np.ndarray:
    """Cityscapes label ids ``[H, W]`` uint8 from an 8-bit single-channel labelIds PNG."""
    im = _open_label(path)
    if im.mode not in ("L", "P"):
        raise DataError(
            f"{path}: label has mode {im.mode!r}; expected a single-channel 8-bit *_labelIds.png "
            "(not *_color.png)"
        )
    return _check_range(np.asarray(im), path, MAX_LABEL_ID, "Cityscapes labelIds")


def read_synthia_label(path: Path) -> np.ndarray:
    """SYNTHIA raw class ids ``[H, W]`` uint16 from a 16-bit 3-channel GT/LABELS PNG (class in R)."""
    if not Path(path).is_file():
        raise DataError(f"{path}: label file missing")
    raw = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
    if raw is None:
        raise DataError(f"{path}: OpenCV cannot decode this PNG; re-extract it from the SYNTHIA archive")
    if raw.dtype != np.uint16 or raw.ndim != 3:
        raise DataError(
            f"{path}: SYNTHIA GT/LABELS must be a 3-channel 16-bit PNG (got {raw.dtype}, {raw.ndim}-D). "
            "An 8-bit file here was converted by a tool that drops the low byte (e.g. Pillow); use the "
            "original GT/LABELS files, not GT/COLOR"
        )
    return _check_range(raw[..., 2], path, MAX_SYNTHIA_ID, "SYNTHIA")
