"""Overview pictures of a result: three orthogonal slices through the ROI box's centre with the
box, the ground truth and the prediction (``voxmetric demo``'s ``overview.png``). matplotlib is
an optional dependency (``pip install "voxmetric[demo]"``).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from . import intensity
from .errors import ConfigError
from .volume import Box, Volume


def overview_png(image: Volume, box: Box, path: str | Path, truth: np.ndarray | None = None,
                 prediction: np.ndarray | None = None, title: str = "", overwrite: bool = True) -> Path:
    """Three orthogonal slices (axial, coronal, sagittal of the image grid) through the box
    centre, CT window [-200, 250] HU (MR: 1–99 percentiles), with the box outline (yellow),
    the ground-truth contour (green) and the prediction contour (red). Written with
    matplotlib's Agg backend (an optional dependency: ConfigError saying how to install it when
    it is missing)."""
    return overview_grid_png([(image, box, truth, prediction, title)], path, overwrite=overwrite)


#: One row of :func:`overview_grid_png`: image, box, truth and prediction masks (or None), title.
OverviewRow = tuple[Volume, Box, "np.ndarray | None", "np.ndarray | None", str]


def overview_grid_png(rows: Sequence[OverviewRow], path: str | Path, overwrite: bool = True) -> Path:
    """:func:`overview_png` for several scans, one row each: ``rows`` of (image, box, truth
    (Z,Y,X) bool or None, prediction (Z,Y,X) bool or None, row title)."""
    from .files import atomic_path

    try:
        import matplotlib
    except ImportError:
        raise ConfigError("The overview picture needs matplotlib, which is not installed; "
                          "install it with `pip install matplotlib` (or `pip install \"voxmetric[demo]\"`).") from None

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    legend = "yellow: ROI box · green: ground truth · red: prediction"
    fig = plt.figure(figsize=(13, 4.8 * len(rows)), layout="constrained")
    subfigs = fig.subfigures(len(rows), 1, squeeze=False)[:, 0]
    for sub, (image, box, truth, prediction, title) in zip(subfigs, rows):
        _overview_row(sub.subplots(1, 3), image, box, truth, prediction)
        sub.suptitle(f"{title}\n{legend}" if title else legend)
    path = Path(path)
    try:
        with atomic_path(path, overwrite=overwrite, suffix=".png") as tmp:
            fig.savefig(tmp, dpi=90)
    finally:
        plt.close(fig)
    return path


def _overview_row(axes: Any, image: Volume, box: Box, truth: np.ndarray | None, prediction: np.ndarray | None) -> None:
    """Draw the axial, coronal and sagittal slice through the box centre on three matplotlib axes."""
    from matplotlib.patches import Rectangle

    a = np.asarray(image.array, np.float32)
    ct = intensity.looks_like_ct(a)
    vmin, vmax = (-200.0, 250.0) if ct else tuple(float(v) for v in np.percentile(a, (1, 99)))
    c = np.clip(np.round(image.physical_to_index(box.center)).astype(int), 0, image.size_xyz - 1)  # x, y, z
    corners = image.physical_to_index(box.corners)
    lo, hi = corners.min(0), corners.max(0)  # x, y, z
    sx, sy, sz = image.spacing
    views = [  # (title, slicer, (column axis, row axis), aspect, row origin)
        ("axial", lambda v: v[c[2]], (0, 1), sy / sx, "upper"),
        ("coronal", lambda v: v[:, c[1], :], (0, 2), sz / sx, "lower"),
        ("sagittal", lambda v: v[:, :, c[0]], (1, 2), sz / sy, "lower"),
    ]
    for ax, (name, cut, (ci, ri), aspect, origin) in zip(axes, views):
        ax.imshow(cut(a), cmap="gray", vmin=vmin, vmax=vmax, aspect=aspect, origin=origin, interpolation="nearest")
        ax.add_patch(Rectangle((lo[ci], lo[ri]), hi[ci] - lo[ci], hi[ri] - lo[ri], fill=False, ec="yellow", lw=1.2))
        for m, colour in ((truth, "lime"), (prediction, "red")):
            if m is not None and np.any(cut(np.asarray(m))):
                ax.contour(cut(np.asarray(m)).astype(np.float32), levels=[0.5], colors=colour, linewidths=1.0)
        ax.set_title(name)
        ax.axis("off")


__all__ = ["OverviewRow", "overview_grid_png", "overview_png"]
