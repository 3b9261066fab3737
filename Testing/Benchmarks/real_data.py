"""The real scans of ``../shared/data`` (or ``$VOXMETRIC_SHARED_DATA``) that the benchmarks read;
they are never copied into the repository. Paths only: each script reads what it needs."""

from __future__ import annotations

import os
from pathlib import Path

SHARED = Path(os.environ.get("VOXMETRIC_SHARED_DATA", Path(__file__).resolve().parents[3] / "shared" / "data"))
PROMISE12 = SHARED / "promise12_demo"
PELVIS_CT = SHARED / "pelvis_ct" / "example_ct.nii.gz"


def promise12(case: int) -> tuple[Path, Path]:
    """(T2 image, human prostate label) of PROMISE12 case 0 or 1 (true spacing unknown: 1 mm)."""
    return (PROMISE12 / f"case{case}_t2w_UNKNOWN_SPACING.nii.gz",
            PROMISE12 / f"case{case}_prostate_label_UNKNOWN_SPACING.nii.gz")


def promise12_cases() -> list[int]:
    """The PROMISE12 cases present."""
    return [case for case in (0, 1) if promise12(case)[0].exists()]


def ncisbi() -> list[tuple[str, Path]]:
    """(name, T2 image) of the unlabeled NCI-ISBI scans present, e.g. ("Prostate3T-03-0001", …)."""
    return [(f.name.split("_")[0], f) for f in sorted((SHARED / "ncisbi_mr_unlabeled").glob("*_t2w.nii.gz"))]
