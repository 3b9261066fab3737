"""Volume / Box geometry: index ↔ physical, resampling, crop → paste, SimpleITK round trips."""

from __future__ import annotations

import numpy as np
import pytest
import SimpleITK as sitk

from voxmetric.errors import GeometryError, InputError
from voxmetric.volume import Box, Volume, box_grid, crop, paste, resample, resample_to


def rotation(ax: float, ay: float, az: float) -> np.ndarray:
    """Proper rotation (det +1) from Euler angles in degrees."""
    x, y, z = np.radians([ax, ay, az])
    rx = np.array([[1, 0, 0], [0, np.cos(x), -np.sin(x)], [0, np.sin(x), np.cos(x)]])
    ry = np.array([[np.cos(y), 0, np.sin(y)], [0, 1, 0], [-np.sin(y), 0, np.cos(y)]])
    rz = np.array([[np.cos(z), -np.sin(z), 0], [np.sin(z), np.cos(z), 0], [0, 0, 1]])
    return rz @ ry @ rx


OBLIQUE = rotation(10, -20, 35)


def dice(a: np.ndarray, b: np.ndarray) -> float:
    a, b = a.astype(bool), b.astype(bool)
    return 2.0 * (a & b).sum() / (a.sum() + b.sum())


def sphere_volume(shape=(30, 36, 40), spacing=(1.0, 1.0, 1.0), radius=9.0, direction=np.eye(3)) -> Volume:
    vol = Volume(np.zeros(shape, np.uint8), spacing, (-5.0, 3.0, 12.0), direction)
    zyx = np.indices(shape).reshape(3, -1).T[:, ::-1]  # (n, 3) x, y, z indices
    pts = vol.index_to_physical(zyx)
    centre = vol.index_to_physical((np.array(shape[::-1]) - 1) / 2.0)
    inside = np.linalg.norm(pts - centre, axis=1) <= radius
    return vol.with_array(inside.reshape(shape).astype(np.uint8))


def test_index_physical_round_trip_oblique_matches_sitk() -> None:
    vol = Volume(np.zeros((5, 6, 7), np.int16), (0.7, 1.1, 2.5), (12.0, -30.0, 4.0), OBLIQUE)
    idx = np.array([[0, 0, 0], [6, 5, 4], [2.5, 1.25, 3.75]])
    pts = vol.index_to_physical(idx)
    np.testing.assert_allclose(vol.physical_to_index(pts), idx, atol=1e-9)
    img = vol.to_sitk()
    for i, p in zip(idx, pts):
        np.testing.assert_allclose(img.TransformContinuousIndexToPhysicalPoint(tuple(i)), p, atol=1e-9)
    np.testing.assert_allclose(vol.index_to_physical_matrix @ np.r_[idx[2], 1.0], np.r_[pts[2], 1.0], atol=1e-9)
    np.testing.assert_allclose(vol.index_to_physical(np.zeros(3)), vol.origin)


def test_sitk_round_trip_keeps_oblique_geometry_and_values() -> None:
    arr = np.arange(4 * 5 * 6, dtype=np.float32).reshape(4, 5, 6)
    vol = Volume(arr, (0.5, 0.8, 3.0), (1.0, 2.0, 3.0), OBLIQUE)
    back = Volume.from_sitk(vol.to_sitk())
    assert back.same_grid(vol)
    np.testing.assert_array_equal(back.array, arr)
    assert np.array(vol.to_sitk().GetSize()).tolist() == [6, 5, 4]
    assert vol.size_xyz.tolist() == [6, 5, 4] and vol.spacing_zyx.tolist() == [3.0, 0.8, 0.5]


def test_volume_rejects_bad_input() -> None:
    with pytest.raises(InputError, match="Expected a 3D volume"):
        Volume(np.zeros((4, 4)))
    with pytest.raises(InputError, match="spacing must be positive"):
        Volume(np.zeros((2, 2, 2)), (1, 0, 1))
    with pytest.raises(InputError, match="not orthonormal"):
        Volume(np.zeros((2, 2, 2)), direction=np.diag([1, 2, 1]))
    with pytest.raises(InputError, match="2D image"):
        Volume.from_sitk(sitk.Image(4, 4, sitk.sitkUInt8))


def test_check_same_grid_names_the_difference() -> None:
    a = Volume(np.zeros((3, 4, 5)), (1, 1, 1))
    a.check_same_grid(Volume(np.ones((3, 4, 5)), (1, 1, 1.0001)))
    with pytest.raises(GeometryError, match=r"spacing \(mm\) \(1.0, 1.0, 1.0\) vs \(1.0, 1.0, 2.0\)"):
        a.check_same_grid(Volume(np.zeros((3, 4, 5)), (1, 1, 2)))
    with pytest.raises(GeometryError, match=r"size \(z, y, x\) \(3, 4, 5\) vs \(3, 4, 6\)"):
        a.check_same_grid(Volume(np.zeros((3, 4, 6))))
    with pytest.raises(GeometryError, match=r"origin \(mm\).*Export the label"):
        a.check_same_grid(Volume(np.zeros((3, 4, 5)), origin=(0, 0, 0.5)))
    with pytest.raises(GeometryError, match="direction"):
        a.check_same_grid(Volume(np.zeros((3, 4, 5)), direction=OBLIQUE))


def test_resample_linear_and_label_preserving() -> None:
    z, y, x = np.meshgrid(np.arange(8), np.arange(10), np.arange(12), indexing="ij")
    ramp = Volume((2.0 * x + 3.0 * y + 0.5 * z).astype(np.float32), (2.0, 2.0, 2.0), (0, 0, 0), OBLIQUE)
    fine = resample(ramp, (1.0, 1.0, 1.0))
    assert fine.shape == (16, 20, 24) and fine.array.dtype == np.float32
    np.testing.assert_allclose(fine.spacing, 1.0)
    # Same physical extent, centred: the first voxel edge stays put.
    edge = lambda v: v.origin - v.direction @ (v.spacing / 2)  # noqa: E731
    np.testing.assert_allclose(edge(fine), edge(ramp), atol=1e-9)
    # Linear interpolation of a linear ramp is exact inside the original voxel centres.
    inner = fine.array[2:-2, 2:-2, 2:-2]
    idx = np.indices(fine.shape)[:, 2:-2, 2:-2, 2:-2].reshape(3, -1).T[:, ::-1]
    src = ramp.physical_to_index(fine.index_to_physical(idx))
    expected = 2.0 * src[:, 0] + 3.0 * src[:, 1] + 0.5 * src[:, 2]
    np.testing.assert_allclose(inner.ravel(), expected, atol=1e-3)

    labels = np.zeros((8, 10, 12), np.uint8)
    labels[2:6, 3:7, 4:9] = 7
    labels[1:3, 1:3, 1:3] = 200
    lab = Volume(labels, (2.0, 2.0, 2.0), (0, 0, 0), OBLIQUE)
    out = resample(lab, (0.9, 1.3, 0.7), is_label=True)
    assert out.array.dtype == np.uint8
    assert set(np.unique(out.array)) == {0, 7, 200}
    vox = np.prod(out.spacing)
    assert abs((out.array == 7).sum() * vox - 4 * 4 * 5 * 8) / (4 * 4 * 5 * 8) < 0.1


def test_crop_paste_axis_aligned_box_is_exact() -> None:
    vol = sphere_volume(spacing=(0.8, 0.9, 1.5), direction=OBLIQUE, radius=12)
    vol = vol.with_array(vol.array * 1)  # values 0/1
    # A box whose voxel centres sit on the volume's voxel centres (voxels x 4..25, y 6..29, z 5..24).
    lo, hi = np.array([4, 6, 5]), np.array([25, 29, 24])
    box = Box(vol.index_to_physical((lo + hi) / 2.0), (hi - lo + 1) * vol.spacing, vol.direction)
    cut = crop(vol, box, vol.spacing, is_label=True)
    assert cut.shape == tuple((hi - lo + 1)[::-1])
    np.testing.assert_array_equal(cut.array, vol.array[5:25, 6:30, 4:26])
    back = paste(cut, vol)
    expected = np.zeros_like(vol.array)
    expected[5:25, 6:30, 4:26] = vol.array[5:25, 6:30, 4:26]
    np.testing.assert_array_equal(back, expected)
    assert back.dtype == vol.array.dtype
    # Multi-label values survive too (nearest neighbour path).
    multi = cut.with_array(cut.array * 3)
    np.testing.assert_array_equal(paste(multi, vol), expected * 3)


def test_crop_paste_rotated_box_dice() -> None:
    vol = sphere_volume(shape=(40, 40, 40), radius=11)
    box = Box(vol.index_to_physical(np.array([19.5, 19.5, 19.5])), (30.0, 30.0, 30.0), rotation(0, 0, 30))
    cut = crop(vol, box, (1.0, 1.0, 1.0), is_label=True)
    np.testing.assert_allclose(cut.direction, rotation(0, 0, 30))
    back = paste(cut, vol)
    assert dice(back, vol.array) >= 0.99  # linear + 0.5 threshold; plain nearest gives 0.988
    soft = paste(crop(vol.with_array(vol.array.astype(np.float32)), box, (1, 1, 1)), vol, is_label=False)
    assert soft.dtype == np.float32 and dice(soft >= 0.5, vol.array) >= 0.98
    # Outside the box: nothing.
    far = np.zeros_like(vol.array)
    far[:2, :2, :2] = 1
    assert paste(crop(vol.with_array(far), box, (1, 1, 1), is_label=True), vol).sum() == 0


def test_box_grid_and_extent() -> None:
    box = Box((10.0, -4.0, 7.0), (20.0, 12.0, 9.0), rotation(0, 30, 0))
    grid = box_grid(box, (2.0, 2.0, 3.0))
    assert grid.shape == (3, 6, 10)
    np.testing.assert_allclose(grid.index_to_physical((grid.size_xyz - 1) / 2.0), box.center, atol=1e-9)
    assert box.contains(grid.index_to_physical(np.indices(grid.shape).reshape(3, -1).T[:, ::-1])).all()
    vol = Volume(np.zeros((4, 5, 6)), (1.0, 2.0, 3.0), (1.0, 1.0, 1.0), OBLIQUE)
    ext = Box.from_volume_extent(vol)
    np.testing.assert_allclose(ext.size, [6.0, 10.0, 12.0])
    assert ext.contains(vol.index_to_physical(np.array([[0, 0, 0], [5, 4, 3]]))).all()
    assert box_grid(ext, vol.spacing).same_grid(vol)


def test_oblique_direction_survives_resample_crop_paste() -> None:
    vol = sphere_volume(shape=(20, 22, 24), spacing=(1.0, 1.2, 2.0), direction=OBLIQUE, radius=8)
    res = resample(vol, (1.5, 1.5, 1.5), is_label=True)
    np.testing.assert_allclose(res.direction, OBLIQUE)
    box = Box.from_volume_extent(vol)
    cut = crop(vol, box, vol.spacing, is_label=True)
    assert cut.same_grid(vol)
    np.testing.assert_array_equal(cut.array, vol.array)
    np.testing.assert_array_equal(paste(cut, vol), vol.array)
    back = Volume.from_sitk(resample_to(res, vol, is_label=True).to_sitk())
    assert back.same_grid(vol) and dice(back.array, vol.array) > 0.9
