"""uda-bench: one reproducible pipeline for domain-adaptive semantic segmentation."""

__version__ = "0.1.0"
