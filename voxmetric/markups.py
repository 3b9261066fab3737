"""Read and write a :class:`Box` as a Slicer markups ROI file (``.mrk.json``).

The file is the one Slicer's ROI storage node writes: ``center`` and ``size`` in mm,
``orientation`` = the 3×3 matrix (row-major) whose columns are the box axes in the file's
coordinate system (LPS by default; RAS files are converted).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from .errors import InputError
from .files import write_json
from .volume import Box

SCHEMA = ("https://raw.githubusercontent.com/slicer/slicer/master/Modules/Loadable/Markups/"
          "Resources/Schema/markups-schema-v1.0.3.json#")
_RAS_TO_LPS = np.diag([-1.0, -1.0, 1.0])


def write_roi(box: Box, path: str | Path, name: str = "Prostate ROI", *, overwrite: bool = True) -> Path:
    """Write ``box`` (LPS) as a Slicer ROI markups file, atomically (an existing file is an
    OutputError unless ``overwrite``)."""
    path = Path(path)
    markup = {
        "type": "ROI", "name": name, "coordinateSystem": "LPS", "coordinateUnits": "mm",
        "roiType": "Box", "center": box.center.tolist(),
        "orientation": box.axes.ravel().tolist(), "size": box.size.tolist(), "insideOut": False,
        # Slicer applies centre/size only to an ROI that has its (single) control point.
        "controlPoints": [{"id": "1", "label": name, "position": box.center.tolist(),
                           "positionStatus": "defined"}],
    }
    return write_json(path, {"@schema": SCHEMA, "markups": [markup]}, overwrite=overwrite)


def read_roi(path: str | Path) -> Box:
    """Read the first ROI of a ``.mrk.json`` file as an LPS :class:`Box`."""
    path = Path(path)
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
        rois = [m for m in doc.get("markups", []) if m.get("type") == "ROI"]
    except (OSError, ValueError, AttributeError) as e:
        raise InputError(f"Cannot read the ROI file {path}: {e}. Save the ROI from Slicer as a "
                         "markups JSON file (.mrk.json).") from e
    if not rois:
        raise InputError(f"{path} holds no ROI markup. Save an ROI (not points) from Slicer.")
    roi = rois[0]
    try:
        center = np.asarray(roi["center"], float)
        size = np.asarray(roi["size"], float)
        axes = np.asarray(roi.get("orientation", np.eye(3).ravel()), float).reshape(3, 3)
    except (KeyError, ValueError) as e:
        raise InputError(f"The ROI in {path} lacks a centre, size or orientation ({e}).") from e
    if str(roi.get("coordinateSystem", "LPS")).upper() == "RAS":
        center, axes = _RAS_TO_LPS @ center, _RAS_TO_LPS @ axes
    return Box(center, size, axes)
