"""Quality control of a segmentation result: is it plausible enough to be trusted without a look?

:func:`judge` checks, per class of the model:

* **empty mask** (0 voxels);
* **volume** in mL against a plausible range for the class and modality (:data:`PLAUSIBLE_ML`);
* **several components** before post-processing (pieces of at least ``min_piece_fraction`` of the
  largest one; post-processing keeps the largest and, in the pipeline, those that touch the region
  stage 1 found, so the others were dropped);
* **the ROI border**: the mask reaches a face of the ROI box or the edge of the image, so the
  organ may be cut off;
* **high uncertainty**: the mean of the method's uncertainty map
  (:meth:`voxmetric.methods.Method.uncertainty`) inside the segment exceeds
  ``max_mean_uncertainty``;

and, for the whole run, that stage 1 found the organ. The verdict is ``OK`` when nothing was
flagged, else ``CHECK`` with the reasons in words. A CHECK is a warning, not an error: the result
was written and should be reviewed (the ``segment`` command still exits 0).

Plausible prostate volumes (:data:`PLAUSIBLE_ML`): healthy adult glands measure about 20–30 mL;
benign prostatic hyperplasia commonly gives 30–100 mL and rarely more than 200 mL; glands below
15 mL occur after androgen-deprivation therapy and in young men. We flag MR results outside
10–250 mL. Prostate contours on CT are larger than on MR (by roughly a third in radiotherapy
studies, e.g. Roach et al., Int J Radiat Oncol Biol Phys 1996), so CT allows up to 300 mL. Classes
without an entry (e.g. "Bladder", whose volume depends on filling) are not judged by volume.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from .volume import Box, Volume

#: class name (lower case) → modality → (min mL, max mL). See the module docstring for the sources.
PLAUSIBLE_ML: dict[str, dict[str, tuple[float, float]]] = {
    "prostate": {"mr": (10.0, 250.0), "ct": (10.0, 300.0)},
}
OK, CHECK = "OK", "CHECK"
#: What :func:`judge` can flag (``QCReport.codes``).
CODES = ("not_found", "empty", "volume", "pieces", "roi_border", "image_edge", "uncertainty")
#: The codes that make a refined result untrustworthy (no organ, or not a plausible one): the
#: pipeline then tries stage 1's next region, and ``segment`` does not call the result found.
IMPLAUSIBLE = ("empty", "volume")


@dataclass(frozen=True)
class QCLimits:
    """Thresholds of :func:`judge`."""

    plausible_ml: Mapping[str, Mapping[str, tuple[float, float]]] = field(default_factory=lambda: PLAUSIBLE_ML)
    max_mean_uncertainty: float = 0.8  # used when judge() is given no limit of the map's own kind
    min_piece_fraction: float = 0.1


@dataclass
class ClassQC:
    """What :func:`judge` measured for one class (``None`` = not measured)."""

    name: str
    voxels: int
    volume_ml: float
    plausible_ml: tuple[float, float] | None = None
    pieces: int | None = None
    touches_roi: bool | None = None
    touches_image_edge: bool | None = None
    mean_uncertainty: float | None = None


@dataclass
class QCReport:
    """``verdict`` "OK" or "CHECK", ``reasons`` (words, one per problem) and their ``codes``
    (:data:`CODES`, same order), per-class figures."""

    verdict: str
    reasons: list[str]
    classes: list[ClassQC] = field(default_factory=list)
    uncertainty_kind: str | None = None
    codes: list[str] = field(default_factory=list)

    def flag(self, code: str, text: str) -> None:
        """Add a problem: the verdict becomes CHECK."""
        self.codes.append(code)
        self.reasons.append(text)
        self.verdict = CHECK

    def has(self, *codes: str) -> bool:
        """True when one of ``codes`` was flagged."""
        return any(c in self.codes for c in codes)

    @property
    def ok(self) -> bool:
        return self.verdict == OK

    def line(self) -> str:
        """``result: OK — Prostate 31.2 mL (mean uncertainty 0.06)`` or ``result: CHECK — reason; …``."""
        if not self.ok:
            return f"result: {CHECK} — " + "; ".join(self.reasons)
        parts = [f"{c.name} {c.volume_ml:.1f} mL" + ("" if c.mean_uncertainty is None else
                                                     f" (mean uncertainty {c.mean_uncertainty:.2f})")
                 for c in self.classes]
        return f"result: {OK} — " + (", ".join(parts) if parts else "ROI placed")

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready: verdict, reasons, line, uncertainty_kind, classes {name: figures}."""
        def clean(v: Any) -> Any:
            if isinstance(v, float):
                return round(v, 4)
            return list(v) if isinstance(v, tuple) else v

        return {"verdict": self.verdict, "ok": self.ok, "reasons": list(self.reasons), "codes": list(self.codes),
                "line": self.line(),
                "uncertainty_kind": self.uncertainty_kind,
                "classes": {c.name: {k: clean(v) for k, v in asdict(c).items() if k != "name"} for c in self.classes}}


def count_pieces(mask: np.ndarray, min_fraction: float = 0.1) -> int:
    """Number of 26-connected components of a boolean array with at least ``min_fraction`` of the
    largest one's voxels (0 when empty)."""
    from .morphology import label

    labels, n = label(np.asarray(mask, bool), full=True)
    if n <= 1:
        return n
    sizes = np.bincount(labels.ravel())[1:]
    return int((sizes >= min_fraction * sizes.max()).sum())


def touches_box(mask: Volume, box: Box, tolerance_mm: float | None = None) -> bool:
    """True when a voxel centre of the (non-zero) mask lies within ``tolerance_mm`` (default: the
    largest voxel spacing) of a face of ``box`` — the organ may continue beyond the box."""
    idx = np.argwhere(np.asarray(mask.array) > 0)
    if idx.size == 0:
        return False
    tol = float(np.max(mask.spacing)) if tolerance_mm is None else float(tolerance_mm)
    local = (mask.index_to_physical(idx[:, ::-1].astype(float)) - box.center) @ box.axes  # box coordinates (mm)
    return bool(np.any(np.abs(local) >= box.size / 2.0 - tol))


def touches_edge(mask: np.ndarray) -> bool:
    """True when the mask has a voxel on a face of the array (the scan ends there)."""
    m = np.asarray(mask) > 0
    return bool(m[0].any() or m[-1].any() or m[:, 0].any() or m[:, -1].any() or m[:, :, 0].any() or m[:, :, -1].any())


def _plausible(limits: QCLimits, name: str, modality: str) -> tuple[float, float] | None:
    entry = limits.plausible_ml.get(name.strip().lower())
    if not entry:
        return None
    return entry.get(modality) or next(iter(entry.values()))


def judge(mask: Volume | None, classes: Sequence[str], modality: str, *, found: bool = True, box: Box | None = None,
          pieces: Mapping[str, int] | None = None, uncertainty: Volume | None = None,
          uncertainty_kind: str | None = None, uncertainty_limit: float | None = None,
          limits: QCLimits | None = None) -> QCReport:
    """The QC verdict of one result: ``mask`` a label map (value k = ``classes[k - 1]``; None when
    only stage 1 ran), ``found`` stage 1's verdict, ``box`` the ROI the mask was made in,
    ``pieces`` per class the components counted before post-processing (:func:`count_pieces`),
    ``uncertainty`` a float map on ``mask``'s grid (or on a sub-grid of it with the same spacing
    and axes, e.g. the ROI's voxels), what it measures and the mean above which a segment is
    flagged (:attr:`voxmetric.methods.Method.uncertainty_limit`; default ``limits``')."""
    lim = limits or QCLimits()
    max_unc = lim.max_mean_uncertainty if uncertainty_limit is None else float(uncertainty_limit)
    report = QCReport(OK, [], [], uncertainty_kind)
    if not found:
        report.flag("not_found", "stage 1 found no prostate-like region (the ROI box is a default placement)")
    if mask is None:
        return report
    labels = np.asarray(mask.array)
    voxel_ml = float(np.prod(mask.spacing)) / 1000.0
    unc = _on_mask_grid(uncertainty, mask) if uncertainty is not None else None
    for k, name in enumerate(classes, 1):
        m = labels == k
        n = int(m.sum())
        c = ClassQC(name, n, n * voxel_ml, _plausible(lim, name, modality))
        report.classes.append(c)
        if n == 0:
            report.flag("empty", f"{name}: empty mask (0 mL)")
            continue
        if c.plausible_ml is not None and not c.plausible_ml[0] <= c.volume_ml <= c.plausible_ml[1]:
            lo, hi = c.plausible_ml
            report.flag("volume", f"{name}: implausible volume {c.volume_ml:.1f} mL (expected {lo:g}–{hi:g} mL "
                                  f"for {modality.upper()})")
        if pieces is not None and name in pieces:
            c.pieces = int(pieces[name])
            if c.pieces > 1:
                kept = count_pieces(m, 0.0)
                report.flag("pieces", f"{name}: {c.pieces} separate pieces before clean-up "
                                      + ("(only the largest was kept)" if kept == 1 else
                                         f"({kept} kept: the largest and those touching the region stage 1 found)"))
        if box is not None:
            c.touches_roi = touches_box(mask.with_array(m), box)
            if c.touches_roi:
                report.flag("roi_border", f"{name}: touches the ROI border (it may be cut off: enlarge the box and "
                                          "refine)")
        c.touches_image_edge = touches_edge(m)
        if c.touches_image_edge:
            report.flag("image_edge", f"{name}: touches the edge of the image (the scan may not cover all of it)")
        if unc is not None:
            c.mean_uncertainty = float(unc[m].mean())
            if c.mean_uncertainty > max_unc:
                report.flag("uncertainty", f"{name}: high uncertainty (mean {c.mean_uncertainty:.2f} > "
                                           f"{max_unc:g} inside the segment)")
    return report


def _on_mask_grid(uncertainty: Volume, mask: Volume) -> np.ndarray:
    """The uncertainty values on ``mask``'s grid (0 outside a sub-grid's extent)."""
    if uncertainty.shape == mask.shape and uncertainty.same_grid(mask):
        return np.asarray(uncertainty.array, np.float32)
    lo = np.rint(mask.physical_to_index(uncertainty.origin)[::-1]).astype(int)  # z, y, x of its first voxel
    out = np.zeros(mask.shape, np.float32)
    src = np.asarray(uncertainty.array, np.float32)
    a, b = np.maximum(lo, 0), np.minimum(lo + np.array(src.shape), np.array(mask.shape))
    if np.all(b > a):
        out[a[0]:b[0], a[1]:b[1], a[2]:b[2]] = src[a[0] - lo[0]:b[0] - lo[0], a[1] - lo[1]:b[1] - lo[1],
                                                    a[2] - lo[2]:b[2] - lo[2]]
    return out


def paste_on_grid(values: Volume, reference: Volume) -> Volume:
    """A sub-grid map (same spacing and axes as ``reference``, origin on one of its voxels) put on
    ``reference``'s whole grid, 0 elsewhere (e.g. the ROI's uncertainty on the input scan)."""
    return reference.with_array(_on_mask_grid(values, reference))


__all__ = ["CHECK", "CODES", "OK", "PLAUSIBLE_ML", "ClassQC", "QCLimits", "QCReport", "count_pieces", "judge",
           "paste_on_grid", "touches_box", "touches_edge"]
