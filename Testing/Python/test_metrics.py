"""voxmetric.metrics: hand-computed cases, MONAI/medpy cross-checks, empty-mask policy, files, CLI."""

from __future__ import annotations

import json
import math
import warnings

import numpy as np
import pytest

from voxmetric.errors import GeometryError, InputError
from voxmetric.metrics import (
    METRIC_KEYS,
    case_id,
    evaluate_masks,
    format_table,
    summarize,
    surface,
    union_grid,
    write_report,
)
from voxmetric.volume import Volume


def cube(shape=(12, 12, 12), lo=(3, 3, 3), size=4) -> np.ndarray:
    m = np.zeros(shape, np.uint8)
    m[lo[0]:lo[0] + size, lo[1]:lo[1] + size, lo[2]:lo[2] + size] = 1
    return m


def ellipsoid(shape, spacing, center, radii) -> np.ndarray:
    z, y, x = (((np.arange(n) + 0.5) * s - c) / r for n, s, c, r in zip(shape, spacing, center, radii))
    return (z[:, None, None] ** 2 + y[None, :, None] ** 2 + x[None, None, :] ** 2) <= 1.0


def random_pair(rng: np.random.Generator):
    shape = tuple(int(n) for n in rng.integers(14, 30, size=3))
    sp = (float(rng.uniform(1.0, 4.0)), float(rng.uniform(0.4, 1.2)), float(rng.uniform(0.4, 1.2)))
    ext = np.array(shape) * np.array(sp)

    def blob():
        m = np.zeros(shape, bool)
        for _ in range(int(rng.integers(1, 3))):
            m |= ellipsoid(shape, sp, ext * rng.uniform(0.3, 0.7, 3), ext * rng.uniform(0.1, 0.3, 3))
        m[tuple(int(rng.integers(0, n)) for n in shape)] = rng.random() < 0.3  # sometimes a stray voxel
        return m

    return blob(), blob(), sp


# ---- hand-computed -------------------------------------------------------------------------
def test_cube_shifted_one_voxel_along_z_hand_computed():
    # 4³ cube: 56 surface voxels. Shifted by one voxel along z (2.0 mm): in each direction the 16
    # voxels of the uncovered z-face are sz = 2.0 mm from the other surface, the 4 inner voxels of the
    # far z-face are min(sz, sy, sx) = 0.5 mm away (a y/x side face is one voxel off), the other 36
    # lie on both surfaces (0 mm).
    ref = cube()
    pred = np.roll(ref, 1, axis=0)
    r = evaluate_masks(pred, ref, (2.0, 0.8, 0.5))
    assert r["dsc"] == pytest.approx(2 * 48 / 128)
    assert r["ppv"] == pytest.approx(0.75) and r["sen"] == pytest.approx(0.75)
    assert r["asd"] == pytest.approx((16 * 2.0 + 4 * 0.5) / 56)
    assert r["hd"] == pytest.approx(2.0)
    assert r["hd95"] == pytest.approx(2.0)  # 95th pct of 36×0, 4×0.5, 16×2.0 (index 52.25 of 55)
    assert r["arvd"] == 0.0
    assert r["vol_ref_ml"] == pytest.approx(64 * 2.0 * 0.8 * 0.5 / 1000)
    assert list(r) == list(METRIC_KEYS) and all(isinstance(v, float) for v in r.values())


def test_cube_shifted_along_x_is_cheaper_than_along_z():
    ref = cube()
    r = evaluate_masks(np.roll(ref, 1, axis=2), ref, (2.0, 0.8, 0.5))
    assert r["hd"] == pytest.approx(0.5)
    assert r["asd"] == pytest.approx(20 * 0.5 / 56)


def test_anisotropic_spacing_changes_mm_values_not_overlap():
    ref = cube()
    pred = np.roll(ref, 2, axis=0)  # 2 slices off along z
    iso = evaluate_masks(pred, ref, (1.0, 1.0, 1.0))
    thick = evaluate_masks(pred, ref, (3.0, 1.0, 1.0))
    assert iso["dsc"] == thick["dsc"] == pytest.approx(0.5)
    assert iso["hd"] == pytest.approx(2.0) and thick["hd"] == pytest.approx(6.0)
    assert thick["asd"] > iso["asd"] * 2
    # one-number spacing broadcasts
    assert evaluate_masks(pred, ref, 1.0) == iso


def test_hd95_directed_vs_pooled_on_an_outlier():
    # Reference: a 6³ cube (152 surface voxels); prediction: the same cube plus 20 stray voxels
    # > 20 mm away. Directed pred→ref: 20 of 172 (11.6 %) are far, so its P95 is far; ref→pred: all 0.
    ref = np.zeros((40, 12, 40), np.uint8)
    ref[3:9, 3:9, 3:9] = 1
    pred = ref.copy()
    pred[30, 5, 5:25] = 1  # a line of 20 voxels at z=30, ≥ 22 mm from the cube's top face z=8
    r = evaluate_masks(pred, ref, 1.0)
    d = np.sort(np.r_[np.zeros(152), np.sqrt(22.0 ** 2 + np.maximum(0, np.arange(5, 25) - 8) ** 2.0)])
    assert r["hd95"] == pytest.approx(np.percentile(d, 95))
    pooled = evaluate_masks(pred, ref, 1.0, hd95_definition="pooled")
    assert pooled["hd95"] < r["hd95"]  # pooling with 152 zeros from ref→pred dilutes the outliers
    assert pooled["hd"] == r["hd"] and pooled["asd"] == r["asd"]
    with pytest.raises(InputError, match="hd95_definition"):
        evaluate_masks(pred, ref, 1.0, hd95_definition="median")


def test_surface_is_6_connected_shell_and_touches_image_border():
    m = np.ones((5, 5, 5), bool)
    s = surface(m)
    assert s.sum() == 125 - 27  # everything but the 3³ core; the outside counts as background
    single = np.zeros((3, 3, 3), bool)
    single[1, 1, 1] = True
    assert surface(single).sum() == 1


def test_mask_at_image_border_same_as_padded():
    ref = np.zeros((8, 9, 10), np.uint8)
    ref[0:4, 0:5, 6:10] = 1  # touches three faces of the array
    pred = np.roll(ref, 1, axis=1)
    sp = (2.5, 0.8, 0.7)
    a = evaluate_masks(pred, ref, sp)
    b = evaluate_masks(np.pad(pred, 3), np.pad(ref, 3), sp)
    assert a == pytest.approx(b)


# ---- cross-checks against independent implementations ------------------------------------
@pytest.mark.parametrize("seed", range(4))
def test_matches_monai_on_random_anisotropic_shapes(seed):
    torch = pytest.importorskip("torch")
    from monai.metrics import compute_average_surface_distance, compute_hausdorff_distance

    pred, ref, sp = random_pair(np.random.default_rng(seed))
    ours = evaluate_masks(pred, ref, sp)
    p = torch.from_numpy(pred[None, None].astype(np.float32))
    r = torch.from_numpy(ref[None, None].astype(np.float32))
    kw = dict(include_background=True, spacing=list(sp))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        hd = float(compute_hausdorff_distance(p, r, **kw))
        hd95 = float(compute_hausdorff_distance(p, r, percentile=95, **kw))  # max of directed P95s
        asd = 0.5 * float(compute_average_surface_distance(p, r, symmetric=False, **kw)
                          + compute_average_surface_distance(r, p, symmetric=False, **kw))
    dsc = 2 * (pred & ref).sum() / (pred.sum() + ref.sum())
    assert ours["dsc"] == pytest.approx(dsc, abs=1e-6)
    assert ours["hd"] == pytest.approx(hd, abs=1e-3)
    assert ours["hd95"] == pytest.approx(hd95, abs=1e-3)
    assert ours["asd"] == pytest.approx(asd, abs=1e-3)


@pytest.mark.parametrize("seed", range(10, 13))
def test_matches_medpy_on_random_anisotropic_shapes(seed):
    binary = pytest.importorskip("medpy.metric.binary")
    pred, ref, sp = random_pair(np.random.default_rng(seed))
    ours = evaluate_masks(pred, ref, sp)
    pooled = evaluate_masks(pred, ref, sp, hd95_definition="pooled")
    assert ours["dsc"] == pytest.approx(binary.dc(pred, ref), abs=1e-6)
    assert ours["hd"] == pytest.approx(binary.hd(pred, ref, voxelspacing=sp), abs=1e-6)
    # medpy's asd is directed; its assd (0.5.x) pools both sets, as does its hd95.
    directed_mean = 0.5 * (binary.asd(pred, ref, voxelspacing=sp) + binary.asd(ref, pred, voxelspacing=sp))
    assert ours["asd"] == pytest.approx(directed_mean, abs=1e-6)
    assert pooled["hd95"] == pytest.approx(binary.hd95(pred, ref, voxelspacing=sp), abs=1e-6)


# ---- empty masks and validation ------------------------------------------------------------
def test_empty_mask_policy():
    z = np.zeros((6, 6, 6), np.uint8)
    both = evaluate_masks(z, z, 1.0)
    assert both == dict(dsc=1.0, ppv=1.0, sen=1.0, asd=0.0, hd=0.0, hd95=0.0, arvd=0.0, vol_pred_ml=0.0, vol_ref_ml=0.0)
    c = cube((6, 6, 6), (1, 1, 1), 3)
    missed = evaluate_masks(z, c, 1.0)  # prediction empty
    assert missed["dsc"] == missed["ppv"] == missed["sen"] == 0.0
    assert math.isinf(missed["asd"]) and math.isinf(missed["hd"]) and math.isinf(missed["hd95"])
    assert missed["arvd"] == 100.0
    false_alarm = evaluate_masks(c, z, 1.0)  # reference empty
    assert false_alarm["dsc"] == false_alarm["ppv"] == false_alarm["sen"] == 0.0
    assert math.isinf(false_alarm["hd"]) and math.isinf(false_alarm["arvd"])


def test_validation_and_nonbinary_labels():
    a = cube()
    with pytest.raises(GeometryError, match="shape"):
        evaluate_masks(a, a[:-1], 1.0)
    with pytest.raises(InputError, match="positive"):
        evaluate_masks(a, a, (1.0, 0.0, 1.0))
    with pytest.raises(InputError, match="3 positive"):
        evaluate_masks(a, a, (1.0, 1.0))
    with pytest.raises(InputError, match="spacing"):
        evaluate_masks(a, a)
    labels = a.astype(np.int16) * 7  # label value 7 → foreground
    labels[0, 0, 0] = -3  # negative values are background
    assert evaluate_masks(labels, a, 1.0)["dsc"] == 1.0
    assert evaluate_masks(a.astype(np.float32) * 0.5, a.astype(bool), 1.0)["hd"] == 0.0


def test_volumes_carry_spacing_and_must_share_grid():
    a = cube()
    va = Volume(a, spacing=(0.5, 0.8, 2.0))  # (x, y, z)
    vb = Volume(np.roll(a, 1, axis=0), spacing=(0.5, 0.8, 2.0))
    assert evaluate_masks(vb, va)["hd"] == pytest.approx(2.0)  # z spacing 2.0 taken from the Volume
    with pytest.raises(GeometryError, match="spacing"):
        evaluate_masks(Volume(a, spacing=(1, 1, 1)), va)


def test_union_grid_aligns_cropped_masks():
    full = cube((10, 10, 10), (2, 3, 4), 3)
    va = Volume(full[1:7, 2:8, 3:9], spacing=(0.7, 0.8, 2.5), origin=(3 * 0.7, 2 * 0.8, 1 * 2.5))
    vb = Volume(full[2:10, 0:7, 4:10], spacing=(0.7, 0.8, 2.5), origin=(4 * 0.7, 0.0, 2 * 2.5))
    a2, b2 = union_grid(va, vb)
    assert a2.same_grid(b2) and a2.shape == (9, 8, 7)
    assert int(a2.array.sum()) == int(b2.array.sum()) == 27
    assert evaluate_masks(a2, b2)["dsc"] == 1.0
    with pytest.raises(GeometryError):
        union_grid(va, Volume(vb.array, spacing=(0.7, 0.8, 2.5), origin=(0.3, 0.0, 0.0)))


def test_summarize_counts_failures_and_ignores_text():
    rows = [{"case": "a", "dsc": 0.8, "hd": 2.0}, {"case": "b", "dsc": 0.6, "hd": 4.0},
            {"case": "c", "dsc": 0.0, "hd": math.inf}]
    s = summarize(rows)
    assert set(s) == {"dsc", "hd"}
    assert s["dsc"]["mean"] == pytest.approx(1.4 / 3) and s["dsc"]["n"] == 3 and s["dsc"]["n_inf"] == 0
    assert s["dsc"]["median"] == pytest.approx(0.6)
    assert s["dsc"]["std"] == pytest.approx(np.std([0.8, 0.6, 0.0], ddof=1))
    assert s["hd"]["mean"] == 3.0 and s["hd"]["n"] == 2 and s["hd"]["n_inf"] == 1
    assert summarize([{"dsc": 0.5}])["dsc"]["std"] == 0.0


def test_report_files_and_table(tmp_path):
    ref = cube()
    rows = [dict(case="c1", **evaluate_masks(np.roll(ref, 1, 0), ref, 1.0)),
            dict(case="c2", **evaluate_masks(np.zeros_like(ref), ref, 1.0))]
    text = format_table(rows)
    assert "c1" in text and "mean ± std" in text and "median" in text
    csv_path, json_path = write_report(tmp_path, rows, meta={"segment": "Prostate"})
    doc = json.loads(json_path.read_text(encoding="utf-8"))
    assert doc["format"] == "voxmetric-metrics/1" and doc["segment"] == "Prostate"
    assert doc["cases"][1]["hd"] == "inf" and doc["summary"]["hd"]["n_inf"] == 1
    assert doc["definitions"]["hd95_definition"] == "directed"
    lines = csv_path.read_text(encoding="utf-8").splitlines()
    assert lines[0].startswith("case,dsc,") and len(lines) == 3 and ",inf," in lines[2]


def test_case_id():
    assert case_id("x/case001.seg.nrrd") == ("case001", True)
    assert case_id("case001.nrrd") == ("case001", False)
    assert case_id("Case_7_label.nii.gz") == ("Case_7", True)
    assert case_id("p.mha") == ("p", False)


# ---- files and CLI -------------------------------------------------------------------------
@pytest.fixture
def case_folders(tmp_path):
    """ref/ holds caseN.nrrd images + caseN.seg.nrrd labels; pred/ holds caseN.seg.nrrd predictions
    cropped (as Slicer does) to a sub-extent; case 1's prediction is shifted by one z slice."""
    io = pytest.importorskip("voxmetric.io")
    ref_dir, pred_dir = tmp_path / "ref", tmp_path / "pred"
    ref_dir.mkdir()
    pred_dir.mkdir()
    sp = (0.8, 0.8, 2.5)
    for i in range(2):
        img = Volume(np.arange(12 * 16 * 16, dtype=np.int16).reshape(12, 16, 16), spacing=sp, origin=(-5.0, 3.0, 7.0))
        m = cube((12, 16, 16), (3, 4, 5), 5)
        io.write_volume(img, ref_dir / f"case{i}.nrrd")
        seg_infos = [io.segment_info("Prostate", 1), io.segment_info("Bladder", 2)]
        lab = m.copy()
        lab[0:2, 0:3, 0:3] = 2
        io.write_segmentation(ref_dir / f"case{i}.seg.nrrd", img.with_array(lab), seg_infos)
        pm = np.roll(m, i, axis=0)
        crop = (slice(2, 11), slice(3, 12), slice(4, 13))
        origin = img.index_to_physical(np.array([4.0, 3.0, 2.0]))
        pv = Volume(pm[crop], spacing=sp, origin=origin)
        io.write_segmentation(pred_dir / f"case{i}.seg.nrrd", pv, [io.segment_info("Prostate", 1)])
    return pred_dir, ref_dir


def test_evaluate_files_folders(case_folders):
    from voxmetric.metrics import evaluate_files

    pred_dir, ref_dir = case_folders
    rows = evaluate_files(pred_dir, ref_dir, "prostate")
    assert [r["case"] for r in rows] == ["case0", "case1"]
    assert rows[0]["dsc"] == 1.0 and rows[0]["hd"] == 0.0
    assert rows[1]["dsc"] == pytest.approx(0.8) and rows[1]["hd"] == pytest.approx(2.5)
    with_images = evaluate_files(pred_dir, ref_dir, "Prostate", reference_images=ref_dir)
    assert [r["dsc"] for r in with_images] == [r["dsc"] for r in rows]
    single = evaluate_files(pred_dir / "case1.seg.nrrd", ref_dir / "case1.seg.nrrd", "Prostate")
    assert len(single) == 1 and single[0]["hd"] == pytest.approx(2.5)


def test_cli_evaluate_end_to_end(case_folders, tmp_path, capsys):
    from voxmetric.cli import main

    pred_dir, ref_dir = case_folders
    out = tmp_path / "report"
    rc = main(["evaluate", "--pred", str(pred_dir), "--ref", str(ref_dir), "--segment", "Prostate", "--out", str(out)])
    text = capsys.readouterr().out
    assert rc == 0
    assert "case1" in text and "mean ± std" in text
    doc = json.loads((out / "metrics.json").read_text(encoding="utf-8"))
    assert doc["summary"]["dsc"]["mean"] == pytest.approx(0.9)
    assert doc["summary"]["hd"]["median"] == pytest.approx(1.25)
    assert (out / "metrics.csv").read_text(encoding="utf-8").count("\n") == 3
    rc = main(["evaluate", "--pred", str(pred_dir), "--ref", str(ref_dir), "--segment", "Liver"])
    assert rc == 2 and "Liver" in capsys.readouterr().err
    rc = main(["evaluate", "--pred", str(tmp_path / "nope"), "--ref", str(ref_dir)])
    assert rc == 2 and "does not exist" in capsys.readouterr().err


def test_match_cases_pairs_warns_and_refuses(tmp_path):
    from voxmetric.metrics import match_cases

    (tmp_path / "ref").mkdir()
    (tmp_path / "pred").mkdir()
    for n in ("a.nrrd", "a.seg.nrrd", "b_label.nii.gz", "b.nii.gz", "c.seg.nrrd"):
        (tmp_path / "ref" / n).write_bytes(b"")
    for n in ("a.seg.nrrd", "b_pred.nii.gz", "z.seg.nrrd"):
        (tmp_path / "pred" / n).write_bytes(b"")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        pairs = match_cases(tmp_path / "pred", tmp_path / "ref")
    msgs = sorted(str(w.message) for w in caught)
    assert len(msgs) == 2 and "no reference" in msgs[0] and ": z" in msgs[0] and "no prediction" in msgs[1] and ": c" in msgs[1]
    assert [(c, p.name, r.name) for c, p, r in pairs] == [
        ("a", "a.seg.nrrd", "a.seg.nrrd"), ("b", "b_pred.nii.gz", "b_label.nii.gz")]
    (tmp_path / "ref" / "a_seg.nrrd").write_bytes(b"")
    with pytest.raises(InputError, match="several files"):
        match_cases(tmp_path / "pred", tmp_path / "ref")
    with pytest.raises(InputError, match="No case names match"):
        match_cases(tmp_path / "pred", tmp_path / "ref" / "c.seg.nrrd")


def test_real_prostate_label_against_dilated_copy(shared_data, tmp_path):
    import SimpleITK as sitk
    from scipy import ndimage

    from voxmetric.metrics import evaluate_files

    ref = shared_data / "promise12_demo" / "case0_prostate_label_UNKNOWN_SPACING.nii.gz"
    lab = sitk.ReadImage(str(ref))
    arr = sitk.GetArrayFromImage(lab) > 0
    grown = sitk.GetImageFromArray(ndimage.binary_dilation(arr, ndimage.generate_binary_structure(3, 1)).astype(np.uint8))
    grown.CopyInformation(lab)
    pred = tmp_path / "case0.nii.gz"
    sitk.WriteImage(grown, str(pred))
    (row,) = evaluate_files(pred, ref)
    assert row["sen"] == 1.0 and 0.8 < row["dsc"] < 1.0
    # Every grown-surface voxel is one 6-step (1 mm in this file) from the label's surface; the
    # other direction can be longer (a staircase of the label's surface lies inside the grown mask).
    from voxmetric.metrics import directed_surface_distances

    d_pr, d_rp = directed_surface_distances(sitk.GetArrayFromImage(grown) > 0, arr, np.ones(3))
    assert d_pr.max() == pytest.approx(1.0) and row["hd"] == pytest.approx(max(1.0, d_rp.max()))
    assert 0.0 < row["asd"] <= row["hd95"] <= row["hd"]
