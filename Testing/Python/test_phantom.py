"""Synthetic pelvic phantom: determinism, anatomy in physical LPS space, low CT contrast of the
prostate, MR zone contrast, files + manifest readable by voxmetric.io."""

from __future__ import annotations

import json

import numpy as np
import pytest
from scipy import ndimage

from voxmetric.errors import InputError
from voxmetric.phantom import LABELS, make_case, write_cases

COARSE = dict(shape=(64, 96, 96), spacing=(4.0, 4.0, 4.0))  # 384 × 384 × 256 mm: whole pelvis
FINE = dict(shape=(48, 64, 64), spacing=(1.5, 1.5, 1.5))  # 96 mm around the prostate


def centroid_lps(case, value: int) -> np.ndarray:
    """Physical (LPS mm) centroid of a label value."""
    idx_zyx = np.argwhere(case.labels.array == value).mean(axis=0)
    return case.labels.index_to_physical(idx_zyx[::-1])


def test_deterministic_per_seed():
    a, b, c = make_case(7, "ct", **COARSE), make_case(7, "ct", **COARSE), make_case(8, "ct", **COARSE)
    assert np.array_equal(a.image.array, b.image.array)
    assert np.array_equal(a.labels.array, b.labels.array)
    assert np.allclose(a.image.origin, b.image.origin) and np.allclose(a.image.direction, b.image.direction)
    assert not np.array_equal(a.image.array, c.image.array)
    assert a.image.array.dtype == np.int16 and a.labels.array.dtype == np.uint8
    assert a.image.same_grid(a.labels) and a.image.shape == (64, 96, 96)


def test_random_geometry_when_not_given():
    case = make_case(3, "ct")
    sx, sy, sz = case.image.spacing
    assert 0.6 <= sx == sy <= 1.2 and 1.0 <= sz <= 3.0
    assert max(case.image.shape[1:]) <= 512
    assert (case.labels.array == LABELS["Prostate"]).any()


def test_all_labels_present_and_ct_values():
    case = make_case(1, "ct", **COARSE)
    lab, img = case.labels.array, case.image.array
    assert set(np.unique(lab)) == {0, *LABELS.values()}
    assert np.median(img[0][:5, :5]) < -900  # air in the corner
    assert img[lab == LABELS["Femoral head left"]].mean() > 150  # bone
    assert abs(np.median(img[lab == LABELS["Bladder"]])) < 40  # urine ~ water


@pytest.mark.parametrize("seed", range(5))
def test_prostate_volume_in_range(seed):
    case = make_case(seed, "ct", **FINE)
    ml = (case.labels.array == LABELS["Prostate"]).sum() * np.prod(case.labels.spacing) / 1000.0
    assert 20.0 <= ml <= 60.0


def test_prostate_has_low_ct_contrast_and_fuzzy_edge():
    diffs = []
    for seed in range(3):
        case = make_case(seed, "ct", shape=(64, 96, 96), spacing=(1.5, 1.5, 1.5))
        lab, img = case.labels.array, case.image.array.astype(float)
        pro = lab == LABELS["Prostate"]
        core = ndimage.binary_erosion(pro, iterations=2)
        shell = ndimage.binary_dilation(pro, iterations=3) & ~ndimage.binary_dilation(pro, iterations=1) & (lab == 0)
        diffs.append(img[core].mean() - img[shell].mean())
        # fuzzy: the rim voxels lie between core and shell values
        rim = pro & ~ndimage.binary_erosion(pro)
        assert img[shell].mean() - 3 < img[rim].mean() < img[core].mean() + 3
    diffs = np.array(diffs)
    assert np.all(diffs > 0.5) and np.all(diffs < 10), diffs  # a few HU only


def test_femoral_heads_on_the_correct_side_with_flips():
    flipped_x = 0
    for seed in range(12):
        case = make_case(seed, "ct", **COARSE)
        flipped_x += case.image.direction[0, 0] < 0
        p = centroid_lps(case, LABELS["Prostate"])
        left, right = centroid_lps(case, LABELS["Femoral head left"]), centroid_lps(case, LABELS["Femoral head right"])
        assert left[0] - p[0] > 60 and p[0] - right[0] > 60  # LPS: +x = patient left
        bladder, rectum = centroid_lps(case, LABELS["Bladder"]), centroid_lps(case, LABELS["Rectum"])
        assert bladder[2] > p[2] + 15  # bladder superior
        assert rectum[1] > p[1] + 10  # rectum posterior (+y in LPS)
    assert flipped_x > 0  # the seeds above exercise an x flip


def test_mr_zones_and_t2_contrast():
    for seed in range(3):
        case = make_case(seed, "mr", **FINE)
        lab, img = case.labels.array, case.image.array.astype(float)
        pro = np.argwhere(lab == LABELS["Prostate"])
        pts = case.labels.index_to_physical(pro[:, ::-1].astype(float))
        x, y = pts[:, 0] - pts[:, 0].mean(), pts[:, 1]
        central = np.abs(x) < 0.2 * np.ptp(x)
        vals = img[tuple(pro.T)]
        posterior = vals[central & (y > np.percentile(y, 85))]  # peripheral zone
        anterior_central = vals[central & (y > np.percentile(y, 25)) & (y < np.percentile(y, 50))]  # TZ
        assert posterior.mean() > 1.3 * anterior_central.mean()
        assert img[lab == LABELS["Bladder"]].mean() > 1.5 * vals.mean()  # bright urine


def test_bad_arguments():
    with pytest.raises(InputError, match="modality"):
        make_case(0, "pet")
    with pytest.raises(InputError, match="shape"):
        make_case(0, "ct", shape=(0, 10, 10))
    with pytest.raises(InputError, match="spacing"):
        make_case(0, "ct", shape=(8, 8, 8), spacing=(1, -1, 1))


def test_write_cases_round_trip(tmp_path):
    io = pytest.importorskip("voxmetric.io")
    calls = []
    manifest = write_cases(tmp_path / "ph", 2, "ct", seed=5, progress=lambda d, t, m: calls.append((d, t)), **COARSE)
    data = json.loads(manifest.read_text(encoding="utf-8"))
    assert data["format"] == "voxmetric-cases/1" and len(data["cases"]) == 2
    assert calls[-1] == (2, 2)
    for i, entry in enumerate(data["cases"]):
        assert entry["id"] == f"case{i:03d}" and entry["modality"] == "ct" and entry["segment"] == "Prostate"
        case = make_case(5 + i, "ct", **COARSE)
        vol = io.read_volume(manifest.parent / entry["image"])
        assert np.array_equal(vol.array, case.image.array) and vol.same_grid(case.image)
        seg = io.read_segmentation(manifest.parent / entry["label"])
        names = {s.name.lower() for s in seg.segments}
        assert {n.lower() for n in LABELS} <= names
        mask = io.read_segment_mask(manifest.parent / entry["label"], "prostate", reference=case.image)
        assert np.array_equal(mask.array.astype(bool), case.labels.array == LABELS["Prostate"])
