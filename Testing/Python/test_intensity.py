"""Intensity normalisation, body masks and the CT detector (voxmetric.intensity)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from voxmetric.errors import ConfigError, InputError
from voxmetric.intensity import body_box, body_mask, looks_like_ct, normalize, normalize_ct, normalize_mr
from voxmetric.volume import Volume


def test_normalize_ct_window() -> None:
    hu = np.array([-1000.0, -200.0, 25.0, 250.0, 3000.0])
    out = normalize_ct(hu)
    assert out.dtype == np.float32
    np.testing.assert_allclose(out, [0.0, 0.0, 127.5, 255.0, 255.0], atol=1e-4)
    np.testing.assert_allclose(normalize_ct(np.array([0.0, 50.0, 100.0]), window=(0, 100)), [0, 127.5, 255])
    np.testing.assert_allclose(normalize(hu.astype(np.int16), "CT"), out)
    with pytest.raises(ConfigError, match="low < high"):
        normalize_ct(hu, window=(100, -100))


def test_normalize_mr_percentiles_and_mask() -> None:
    rng = np.random.default_rng(0)
    a = rng.normal(300, 50, size=(8, 30, 30)).astype(np.float32)
    a[0, 0, 0] = 1e6  # an outlier must not squash the range
    out = normalize_mr(a)
    assert out.dtype == np.float32 and out.min() == 0.0 and out.max() == 255.0
    lo, hi = np.percentile(a, [0.5, 99.5])
    assert np.isclose(np.median(out), (np.median(a) - lo) / (hi - lo) * 255, atol=1e-3)
    assert np.mean(out == 255.0) < 0.01
    mask = np.zeros(a.shape, bool)
    mask[:, 10:20, 10:20] = True
    b = a.copy()
    b[~mask] = 0.0
    np.testing.assert_allclose(normalize_mr(b, mask=mask)[mask], normalize_mr(a[mask]), atol=1e-3)
    assert not normalize_mr(np.full((2, 3, 4), 7.0)).any()
    np.testing.assert_allclose(normalize(a, "mr"), out)
    with pytest.raises(ConfigError, match="Unknown modality 'pet'"):
        normalize(a, "pet")
    with pytest.raises(InputError, match="mask is empty"):
        normalize_mr(a, mask=np.zeros(a.shape, bool))


def pelvis(modality: str) -> tuple[Volume, np.ndarray]:
    """An elliptic body with a hole (air pocket) and a loose air-level blob outside it."""
    z, y, x = np.indices((12, 40, 50))
    body = ((x - 24) / 18.0) ** 2 + ((y - 20) / 12.0) ** 2 <= 1.0
    gut = ((x - 20) / 3.0) ** 2 + ((y - 20) / 3.0) ** 2 <= 1.0
    table = (y >= 37) & (x > 5) & (x < 45) & (z < 3)  # a small separate object
    if modality == "ct":
        a = np.full(body.shape, -1000.0)
        a[body] = 40.0
        a[gut] = -900.0
        a[table] = 200.0
    else:
        a = np.random.default_rng(1).normal(5.0, 2.0, body.shape)
        a[body] = 400.0
        a[gut] = 3.0
        a[table] = 300.0
    return Volume(a.astype(np.float32), (0.8, 0.8, 2.0), (0.0, 0.0, 0.0)), body


@pytest.mark.parametrize("modality", ["ct", "mr"])
def test_body_mask_largest_component_holes_filled(modality: str) -> None:
    vol, body = pelvis(modality)
    m = body_mask(vol, modality)
    assert m.dtype == bool and m.shape == vol.shape
    np.testing.assert_array_equal(m, body)


def test_mr_body_box_spans_the_bright_pieces_around_dark_muscle() -> None:
    """T2-like: muscle (150) fills the body; bright fat (600) lies in a band in front and a smaller
    one behind, apart. Otsu's threshold (between muscle and fat) splits the body into both bands;
    the largest alone boxes the front third (on phantom a-MR 5103 such a box left the prostate
    out), both together span the body. Specks of the air's noise above it stay out."""
    z, y, x = np.indices((12, 60, 60))
    body = ((x - 30) / 26.0) ** 2 + ((y - 30) / 22.0) ** 2 <= 1.0
    front, back = body & (y < 16), body & (y > 46)
    rng = np.random.default_rng(2)
    a = rng.normal(5.0, 2.0, body.shape)
    a[body] = rng.normal(150.0, 20.0, int(body.sum()))
    a[front | back] = rng.normal(600.0, 40.0, int((front | back).sum()))
    a[0, 0, 0] = a[5, 59, 59] = 700.0  # noise specks, far from the body
    vol = Volume(a.astype(np.float32), (1.0, 1.0, 3.0))
    np.testing.assert_array_equal(body_mask(vol, "mr"), front | back)
    ys = np.nonzero(body.any((0, 2)))[0]
    np.testing.assert_allclose(body_box(vol, "mr", margin_mm=0.0).size[1], np.ptp(ys) + 1)


def test_body_box_margin_and_clip() -> None:
    vol, body = pelvis("ct")
    box = body_box(vol, "ct", margin_mm=1.6)  # two voxels in x and y, clipped in z
    np.testing.assert_allclose(box.axes, np.eye(3))
    xs, ys = np.nonzero(body.any(0))[1], np.nonzero(body.any(0))[0]
    np.testing.assert_allclose(box.size[:2], [(np.ptp(xs) + 1 + 4) * 0.8, (np.ptp(ys) + 1 + 4) * 0.8])
    np.testing.assert_allclose(box.size[2], 12 * 2.0)
    np.testing.assert_allclose(box.center, vol.index_to_physical([(xs.min() + xs.max()) / 2, (ys.min() + ys.max()) / 2, 5.5]))
    with pytest.raises(InputError, match="No body found"):
        body_box(vol.with_array(np.full(vol.shape, -1000.0, np.float32)), "ct")


def test_looks_like_ct() -> None:
    vol, _ = pelvis("ct")
    assert looks_like_ct(vol.array) and looks_like_ct(vol.array.astype(np.int16))
    mr, _ = pelvis("mr")
    assert not looks_like_ct(mr.array)
    assert not looks_like_ct(vol.array + 1024.0)  # stored values, rescale not applied
    assert not looks_like_ct(np.full((2, 2, 2), np.nan))


def test_real_data_modality_and_body(shared_data: Path) -> None:
    from voxmetric.io import read_volume

    ct = read_volume(shared_data / "pelvis_ct" / "example_ct.nii.gz")
    mr = read_volume(shared_data / "promise12_demo" / "case0_t2w_UNKNOWN_SPACING.nii.gz")
    assert looks_like_ct(ct.array) and not looks_like_ct(mr.array)
    m = body_mask(ct, "ct")
    assert 0.2 < m.mean() < 0.9
    box = body_box(ct, "ct")
    assert np.all(box.size <= ct.size_xyz * ct.spacing + 1e-6)
    out = normalize(ct.array, "ct")
    assert out.min() == 0.0 and out.max() == 255.0
    # T2 MR: the body's box is the whole scan in-plane (the prostate-centred field of view)
    for case in (0, 1):
        mr = read_volume(shared_data / "promise12_demo" / f"case{case}_t2w_UNKNOWN_SPACING.nii.gz")
        np.testing.assert_allclose(body_box(mr, "mr", margin_mm=0.0).size[:2], [128.0, 128.0])
