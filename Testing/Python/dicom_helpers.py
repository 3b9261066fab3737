"""Test helpers: write synthetic DICOM series (pydicom) and build a multi-series study around
the real series in ``shared/data`` at test time (nothing is stored in the repository)."""

from __future__ import annotations

import os
import warnings
from pathlib import Path

import numpy as np

from voxmetric.volume import Volume

MR_CLASS, CT_CLASS = "1.2.840.10008.5.1.4.1.1.4", "1.2.840.10008.5.1.4.1.1.2"
REAL_SERIES = ("ncisbi_mr_unlabeled", "dicom_Prostate3T-03-0001")


def write_slice(path: Path, pixels: np.ndarray, origin, row, col, spacing_rc, tags: dict) -> None:
    """One single-frame DICOM image: ``pixels`` (rows, cols) int16 at ``origin`` (LPS mm of the
    first pixel), ``row`` / ``col`` direction cosines, ``spacing_rc`` (row spacing, column spacing)."""
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, generate_uid

    ds = Dataset()
    ds.PatientName, ds.PatientID, ds.PatientBirthDate, ds.PatientSex = "Phantom^VoxMetric", "VM0001", "", "O"
    ds.StudyDate, ds.StudyTime, ds.StudyID, ds.AccessionNumber, ds.ReferringPhysicianName = (
        "20240101", "120000", "1", "", "")
    ds.SOPClassUID = CT_CLASS if tags.get("Modality", "MR") == "CT" else MR_CLASS
    ds.SOPInstanceUID = generate_uid()
    ds.Modality, ds.SeriesNumber, ds.InstanceNumber = "MR", 1, 1
    ds.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL"]
    ds.Manufacturer, ds.PositionReferenceIndicator = "VoxMetric tests", ""
    ds.ImagePositionPatient = [f"{v:.6f}" for v in origin]
    ds.ImageOrientationPatient = [f"{v:.8f}" for v in (*row, *col)]
    ds.PixelSpacing = [f"{v:.6f}" for v in spacing_rc]
    ds.SliceThickness = "1"
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    a = np.ascontiguousarray(pixels, dtype=np.int16)
    ds.Rows, ds.Columns = a.shape
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 1
    ds.RescaleIntercept, ds.RescaleSlope = "0", "1"
    for k, v in tags.items():
        setattr(ds, k, v)
    ds.PixelData = a.tobytes()
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID = ds.SOPClassUID, ds.SOPInstanceUID
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta = meta
    path.parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(str(path), enforce_file_format=True)


def right_handed(vol: Volume) -> Volume:
    """``vol`` with its z axis reversed when its direction is left-handed, so that z = row × col
    as in a DICOM series (same physical image)."""
    if np.linalg.det(vol.direction) > 0:
        return vol
    d = vol.direction.copy()
    d[:, 2] *= -1
    origin = vol.index_to_physical_matrix @ np.array([0, 0, vol.shape[0] - 1, 1.0])
    return Volume(vol.array[::-1].copy(), vol.spacing, origin[:3], d)


def write_series(vol: Volume, folder: Path, tags: dict | None = None, positions: list | None = None,
                 skip: tuple[int, ...] = ()) -> Volume:
    """Write ``vol`` (right-handed direction) as one file per slice; ``tags`` are set on every
    slice (give StudyInstanceUID / SeriesInstanceUID / FrameOfReferenceUID to share them);
    ``positions`` overrides slice origins; slices in ``skip`` are left out. Returns ``vol``."""
    from pydicom.uid import generate_uid

    assert np.linalg.det(vol.direction) > 0, "use right_handed(vol)"
    tags = {"StudyInstanceUID": generate_uid(), "SeriesInstanceUID": generate_uid(),
            "FrameOfReferenceUID": generate_uid(), **(tags or {})}
    d = vol.direction
    n = vol.shape[0]
    for k in range(n):
        if k in skip:
            continue
        origin = positions[k] if positions is not None else (vol.index_to_physical_matrix @ [0, 0, k, 1.0])[:3]
        write_slice(folder / f"IM{n - k:04d}", vol.array[k], origin, d[:, 0], d[:, 1],
                    (vol.spacing[1], vol.spacing[0]), {**tags, "InstanceNumber": k + 1})  # file order ≠ slice order
    return vol


def real_series(shared_data: Path) -> Path:
    folder = shared_data.joinpath(*REAL_SERIES)
    if not folder.is_dir():
        import pytest

        pytest.skip(f"the real DICOM series {folder} is absent")
    return folder


def dicom_files(folder: Path) -> list[Path]:
    """The DICOM files (DICM preamble) directly in ``folder``, sorted by name."""
    def is_dicom(f: Path) -> bool:
        with open(f, "rb") as fh:
            return fh.read(132)[128:] == b"DICM"

    return [f for f in sorted(folder.iterdir()) if f.is_file() and is_dicom(f)]


def link_series(src: Path, dst: Path, skip: tuple[int, ...] = ()) -> Path:
    """Symlink the DICOM files of ``src`` into ``dst`` (those at sorted positions ``skip`` left out)."""
    dst.mkdir(parents=True)
    for i, f in enumerate(dicom_files(src)):
        if i not in skip:
            os.symlink(f, dst / f.name)
    return dst


def build_mr_study(root: Path, shared_data: Path, twin: bool = False) -> Path:
    """A prostate MR study folder, listed in series-number order: a 3-plane localizer (#1), a
    sagittal T2 with more slices (#2), the real axial T2 series (#3), a DWI with two b-values per
    position (#4) and an ADC map (#5); all but #3 are synthetic and must not be chosen. ``twin``
    adds a second axial T2 with the same slice count (#6), which makes the choice ambiguous."""
    import pydicom

    real = real_series(shared_data)
    link_series(real, root / "t2_tse_tra")
    h = pydicom.dcmread(dicom_files(real)[0], stop_before_pixels=True)
    study = {"StudyInstanceUID": h.StudyInstanceUID, "FrameOfReferenceUID": h.FrameOfReferenceUID,
             "PatientID": h.PatientID, "PatientName": h.PatientName}
    rng = np.random.default_rng(0)
    # The real series' slab, at 4 mm in-plane: for the ADC, DWI and twin series.
    from voxmetric.dicom import list_series

    t2 = list_series(root / "t2_tse_tra")[0]
    small = Volume(rng.integers(0, 1000, (t2.size[2], 48, 48)).astype(np.int16), (4.0, 4.0, t2.spacing[2]),
                   t2.origin, t2.direction)
    mr = {**study, "Modality": "MR"}
    write_series(small, root / "adc", {**mr, "SeriesNumber": 6, "SeriesDescription": "ep2d_diff_tra_ADC",
                                       "ImageType": ["DERIVED", "PRIMARY", "DIFFUSION", "ADC"]})
    dwi = {**mr, "SeriesNumber": 5, "SeriesDescription": "ep2d_diff_tra"}
    from pydicom.uid import generate_uid

    dwi["SeriesInstanceUID"] = generate_uid()
    write_series(small, root / "dwi" / "b0", dwi)
    write_series(small.with_array(small.array // 2), root / "dwi" / "b800", dwi)
    sag = Volume(rng.integers(0, 1000, (24, 40, 40)).astype(np.int16), (4.0, 4.0, 3.0), (-36.0, -80.0, -60.0),
                 np.column_stack([[0, 1, 0], [0, 0, -1], [-1, 0, 0]]).astype(float))
    write_series(sag, root / "t2_sag", {**mr, "SeriesNumber": 3, "SeriesDescription": "t2_tse_sag"})
    loc = {**mr, "SeriesNumber": 1, "SeriesDescription": "localizer", "SeriesInstanceUID": generate_uid()}
    planes = [((1, 0, 0), (0, 1, 0)), ((1, 0, 0), (0, 0, -1)), ((0, 1, 0), (0, 0, -1))]
    for i, (r, c) in enumerate(planes):
        write_slice(root / "loc" / f"IM{i}", rng.integers(0, 1000, (32, 32)), (-100.0, -100.0, 50.0), r, c,
                    (8.0, 8.0), {**loc, "InstanceNumber": i + 1})
    if twin:
        write_series(small, root / "t2_repeat", {**mr, "SeriesNumber": 7, "SeriesDescription": "t2_tse_tra_repeat"})
    return root


def build_ct_study(root: Path) -> tuple[Path, Volume]:
    """A CT study: a topogram (1 image, LOCALIZER, #1), the axial CT (#2, 12 slices) and a
    coronal MPR of it (DERIVED, 16 slices, #3). Returns (folder, the axial CT volume)."""
    from pydicom.uid import generate_uid

    rng = np.random.default_rng(1)
    study = {"StudyInstanceUID": generate_uid(), "FrameOfReferenceUID": generate_uid(), "Modality": "CT"}
    ct = Volume(rng.integers(-1000, 1000, (12, 20, 24)).astype(np.int16), (1.5, 1.5, 2.5), (-18.0, -15.0, -40.0))
    write_series(ct, root / "axial", {**study, "SeriesNumber": 2, "SeriesDescription": "Pelvis 2.5 mm"})
    write_slice(root / "topo" / "IM1", rng.integers(0, 1000, (40, 30)), (-100.0, 0.0, 100.0), (1, 0, 0), (0, 0, -1),
                (2.0, 2.0), {**study, "SeriesNumber": 1, "SeriesDescription": "Topogram 0.6 T20f",
                             "SeriesInstanceUID": generate_uid(), "ImageType": ["ORIGINAL", "PRIMARY", "LOCALIZER"]})
    cor = Volume(rng.integers(-1000, 1000, (16, 12, 24)).astype(np.int16), (1.5, 2.5, 1.5), (-18.0, -15.0, -12.5),
                 np.column_stack([[1, 0, 0], [0, 0, -1], [0, 1, 0]]).astype(float))
    write_series(cor, root / "mpr", {**study, "SeriesNumber": 3, "SeriesDescription": "Pelvis cor MPR",
                                     "ImageType": ["DERIVED", "SECONDARY", "MPR"]})
    return root, ct


# -- independent readers (test extra: dcmqi, dicompyler-core) -----------------------------------
def source_image(folder: Path):
    """The one series in ``folder`` read by SimpleITK/GDCM alone (the independent reference grid)."""
    import SimpleITK as sitk

    reader = sitk.ImageSeriesReader()
    reader.SetFileNames(sitk.ImageSeriesReader.GetGDCMSeriesFileNames(str(folder)))
    return reader.Execute()


def dcmqi_tool() -> Path | None:
    """dcmqi's ``segimage2itkimage`` (PyPI package dcmqi) when it runs here, else None."""
    import shutil
    import subprocess
    import sys

    exe = Path(sys.executable).parent / "segimage2itkimage"
    found = exe if exe.exists() else (Path(p) if (p := shutil.which("segimage2itkimage")) else None)
    if found is None:
        return None
    try:
        ok = subprocess.run([str(found), "--version"], capture_output=True, timeout=60).returncode == 0
    except (OSError, subprocess.SubprocessError):
        return None
    return found if ok else None


def dcmqi_read(seg_file: Path, reference, work: Path) -> tuple[dict[str, np.ndarray], dict]:
    """Read a DICOM SEG with dcmqi (segimage2itkimage) → {segment label: boolean mask (z, y, x) on
    ``reference``'s grid (SimpleITK image, nearest-neighbour resampling)}, and dcmqi's meta.json."""
    import json
    import subprocess

    import SimpleITK as sitk

    tool = dcmqi_tool()
    assert tool is not None
    work.mkdir(parents=True, exist_ok=True)
    r = subprocess.run([str(tool), "--inputDICOM", str(seg_file), "--outputDirectory", str(work), "-t", "nrrd"],
                       capture_output=True, encoding="utf-8", errors="replace", timeout=300)
    assert r.returncode == 0, r.stdout + r.stderr
    meta = json.loads((work / "meta.json").read_text())
    masks = {}
    for i, group in enumerate(meta["segmentAttributes"], start=1):
        (attrs,) = group
        img = sitk.ReadImage(str(work / f"{i}.nrrd"))
        on_ref = sitk.Resample(img, reference, sitk.Transform(), sitk.sitkNearestNeighbor, 0, img.GetPixelID())
        masks[attrs["SegmentLabel"]] = sitk.GetArrayFromImage(on_ref) != 0
    return masks, meta


def rt_read(rt_file: Path, reference) -> dict[str, dict]:
    """Read an RT Structure Set with dicompyler-core and fill each ROI's contours on
    ``reference``'s grid (pixel centres inside, even-odd rule for several contours on a slice)
    → {ROI name: {"mask": (z, y, x) bool, "color": (r, g, b), "type": interpreted type}}."""
    import pydicom
    import pydicom.dicomio
    from matplotlib.path import Path as Polygon

    if not hasattr(pydicom.dicomio, "read_file"):  # dicompyler-core 0.5.6 predates pydicom 3 (its issue #380)
        pydicom.dicomio.read_file = pydicom.dcmread  # type: ignore[attr-defined]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # it imports pydicom.pixel_data_handlers
        from dicompylercore import dicomparser

    parser = dicomparser.DicomParser(str(rt_file))
    size = reference.GetSize()
    yy, xx = np.mgrid[: size[1], : size[0]]
    centres = np.column_stack([xx.ravel(), yy.ravel()])
    out = {}
    for number, st in parser.GetStructures().items():
        mask = np.zeros(size[::-1], bool)
        for plane in parser.GetStructureCoordinates(number).values():
            for contour in plane:
                pts = np.asarray(contour["data"], float)
                idx = np.array([reference.TransformPhysicalPointToContinuousIndex(tuple(p)) for p in pts])
                k = int(round(float(idx[:, 2].mean())))
                assert np.abs(idx[:, 2] - k).max() < 1e-3, "contour not on a source slice"
                mask[k] ^= Polygon(idx[:, :2]).contains_points(centres).reshape(size[1], size[0])
        out[st["name"]] = {"mask": mask, "color": tuple(int(c) for c in st["color"]), "type": st.get("type")}
    return out


def dsc(a: np.ndarray, b: np.ndarray) -> float:
    s = int(a.sum()) + int(b.sum())
    return 1.0 if s == 0 else 2.0 * int(np.logical_and(a, b).sum()) / s


def phantom_series(folder: Path, seed: int = 3, shape=(36, 112, 112), spacing=(2.5, 2.5, 2.5),
                   tags: dict | None = None) -> tuple[Volume, Volume]:
    """``voxmetric.phantom`` CT case written as a CT DICOM series (extra ``tags``, e.g. a shared
    StudyInstanceUID) → (image, labels) on the series grid."""
    from voxmetric import phantom

    case = phantom.make_case(seed, "ct", shape=shape, spacing=spacing)
    image, labels = right_handed(case.image), right_handed(case.labels)
    write_series(image, folder, {"Modality": "CT", "SeriesDescription": "phantom pelvis CT", "SeriesNumber": 2,
                                 "ImageType": ["ORIGINAL", "PRIMARY", "AXIAL"], **(tags or {})})
    return image, labels
