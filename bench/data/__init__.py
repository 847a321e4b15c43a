"""The data layer: loaders for GTA5, Cityscapes, SYNTHIA and NTHU Cross-City, label maps, MiniCity."""

from bench.data.datasets import DATASETS, SegmentationDataset, build_dataset, fingerprint
from bench.data.io import DataError

__all__ = ["DATASETS", "DataError", "SegmentationDataset", "build_dataset", "fingerprint"]
