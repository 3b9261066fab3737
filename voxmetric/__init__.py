"""VoxMetric engine: two-stage prostate segmentation in CT and MR (no Slicer imports here)."""

__version__ = "0.1.0"
