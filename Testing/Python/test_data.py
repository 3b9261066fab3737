"""voxmetric.data: case discovery, manifests, validation, cached preprocessing, slab patches."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch

from voxmetric import cases as C
from voxmetric import data as D
from voxmetric import io as vio
from voxmetric import sampling as S
from voxmetric.errors import ConfigError, GeometryError, InputError, SegmentNotFoundError, VoxMetricError
from voxmetric.volume import Volume

SHAPE = (40, 60, 60)  # z, y, x
SPACING = (0.9, 0.9, 2.0)  # x, y, z mm
RADII = np.array([10.0, 8.0, 12.0])  # x, y, z mm of the "prostate" ellipsoid


def synthetic_case(shape=SHAPE, spacing=SPACING, modality="ct", seed=0, origin=(-20.0, 10.0, 5.0)):
    """(image, label) Volumes: an elliptic body in air (CT HU or MR units) holding an
    ellipsoid label at the centre of the volume."""
    rng = np.random.default_rng(seed)
    sp = np.asarray(spacing, float)
    z, y, x = np.indices(shape, dtype=float)
    cz, cy, cx = (np.array(shape) - 1) / 2
    phys = [(x - cx) * sp[0], (y - cy) * sp[1], (z - cz) * sp[2]]
    body = (phys[0] / (0.35 * shape[2] * sp[0])) ** 2 + (phys[1] / (0.3 * shape[1] * sp[1])) ** 2 <= 1
    label = sum((p / r) ** 2 for p, r in zip(phys, RADII)) <= 1
    if modality == "ct":
        img = np.where(body, 40.0, -1000.0) + 30 * label + rng.normal(0, 10, shape)
        img = img.astype(np.int16)
    else:
        img = (np.where(body, 300.0, 5.0) + 150 * label + rng.normal(0, 10, shape)).astype(np.float32)
    geo = dict(spacing=sp, origin=np.array(origin, float))
    return Volume(img, **geo), Volume(label.astype(np.uint8), **geo)


def write_seg(path, label: Volume, names=("Prostate",)):
    infos = [vio.segment_info(n, i + 1) for i, n in enumerate(names)]
    return vio.write_segmentation(path, label, infos)


@pytest.fixture(scope="module")
def folder(tmp_path_factory) -> Path:
    """case001: .nrrd + .seg.nrrd (segments Prostate, Bladder); case002: .nii.gz + _label.nii.gz."""
    d = tmp_path_factory.mktemp("cases")
    img, lab = synthetic_case(seed=1)
    vio.write_volume(img, d / "case001.nrrd")
    two = lab.with_array(lab.array + 2 * (img.array > 0) * (lab.array == 0))  # Bladder = body outside label
    write_seg(d / "case001.seg.nrrd", two.with_array(two.array.astype(np.uint8)), ("Prostate", "Bladder"))
    img2, lab2 = synthetic_case(spacing=(1.1, 1.1, 1.5), modality="mr", seed=2)
    vio.write_volume(img2, d / "case002.nii.gz")
    vio.write_volume(lab2, d / "case002_label.nii.gz")
    (d / "notes.txt").write_text("not a case")
    return d


# ---- discovery and manifests ----------------------------------------------------------------
def test_load_cases_folder(folder):
    recs = C.load_cases(folder, segment="Prostate")
    assert [r.id for r in recs] == ["case001", "case002"]
    assert recs[0].image.name == "case001.nrrd" and recs[0].label.name == "case001.seg.nrrd"
    assert recs[1].image.name == "case002.nii.gz" and recs[1].label.name == "case002_label.nii.gz"
    assert all(r.segment == "Prostate" and r.modality is None for r in recs)


def test_manifest_round_trip(folder, tmp_path):
    recs = C.load_cases(folder)
    recs[0].segment, recs[0].modality = "Prostate", "ct"
    out = C.write_manifest(recs, tmp_path / "m" / "manifest.json")
    text = json.loads(out.read_text(encoding="utf-8"))
    assert text["format"] == "voxmetric-cases/1" and text["cases"][0]["segment"] == "Prostate"
    assert Path(text["cases"][0]["image"]).is_absolute()  # outside the manifest's folder
    again = C.load_cases(out, segment="Label 1")
    assert [(r.id, r.image, r.label, r.modality) for r in again] == [(r.id, r.image.resolve(), r.label.resolve(), r.modality) for r in recs]
    assert [r.segment for r in again] == ["Label 1", "Label 1"]  # the user's flag wins over the manifest
    assert [r.segment for r in C.load_cases(out)] == ["Prostate", None]  # no flag: the manifest's
    # paths inside the manifest's folder are relative; a folder holding manifest.json uses it
    rel = C.write_manifest([C.CaseRecord("x", tmp_path / "sub" / "x.nrrd", tmp_path / "x.seg.nrrd")], tmp_path / "mm.json")
    assert json.loads(rel.read_text(encoding="utf-8"))["cases"][0] == {"id": "x", "image": "sub/x.nrrd", "label": "x.seg.nrrd"}
    C.write_manifest(recs[:1], folder / "sub" / "manifest.json")
    assert [r.id for r in C.load_cases(folder / "sub")] == ["case001"]


def test_no_cases_found(tmp_path):
    with pytest.raises(InputError, match=r"No cases found.*case001\.seg\.nrrd.*_label"):
        C.load_cases(tmp_path)
    (tmp_path / "x.seg.nrrd").write_bytes(b"")
    with pytest.raises(InputError, match="found only label files: x.seg.nrrd"):
        C.load_cases(tmp_path)
    with pytest.raises(InputError, match="does not exist"):
        C.load_cases(tmp_path / "nope")


def test_label_missing(tmp_path):
    img, _ = synthetic_case()
    vio.write_volume(img, tmp_path / "a.nrrd")
    with pytest.raises(InputError, match=r"1 case\(s\).*no label: a \(a\.nrrd\)"):
        C.load_cases(tmp_path)
    assert C.load_cases(tmp_path, require_labels=False)[0].label is None


def test_manifest_errors(tmp_path):
    m = tmp_path / "manifest.json"
    m.write_text("{not json")
    with pytest.raises(InputError, match="Cannot read the case manifest"):
        C.load_cases(m)
    m.write_text(json.dumps({"cases": []}))
    with pytest.raises(InputError, match="not a VoxMetric case manifest.*voxmetric-cases/1"):
        C.load_cases(m)
    m.write_text(json.dumps({"format": "voxmetric-cases/1", "cases": [{"id": "c1", "image": "c1.nrrd", "label": "c1.seg.nrrd"}]}))
    with pytest.raises(InputError, match=r"c1: image .*c1\.nrrd does not exist; c1: label .* does not exist"):
        C.load_cases(m)
    m.write_text(json.dumps({"format": "voxmetric-cases/1", "cases": [{"image": "c1.nrrd", "modality": "pet"}]}))
    with pytest.raises(InputError, match="modality 'pet'"):
        C.load_cases(m)


# ---- eager validation -----------------------------------------------------------------------
def test_validate_ok_and_segment_missing(folder):
    recs = C.load_cases(folder, segment="Prostate")
    recs[1].segment = "Label 1"
    C.validate_cases(recs)  # passes
    bad = C.load_cases(folder, segment="Rectum")
    with pytest.raises(SegmentNotFoundError) as e:
        C.validate_cases(bad)
    msg = str(e.value)
    assert "2 cases cannot be used" in msg
    assert "case 'case001': segment 'Rectum' is not in case001.seg.nrrd; its segments are: 'Prostate', 'Bladder'" in msg
    assert "case 'case002'" in msg and "'Label 1'" in msg
    with pytest.raises(SegmentNotFoundError, match="no segment name given.*several segments: 'Prostate', 'Bladder'"):
        C.validate_cases(C.load_cases(folder)[:1])


def test_validate_unreadable_header(tmp_path):
    img, lab = synthetic_case()
    vio.write_volume(img, tmp_path / "a.nrrd")
    (tmp_path / "a_label.nrrd").write_bytes(b"this is no image")
    with pytest.raises(InputError, match="^Case 'a': Cannot read the header of .*a_label.nrrd"):
        C.validate_cases(C.load_cases(tmp_path))


def test_validate_geometry_mismatch(tmp_path):
    img, lab = synthetic_case()
    vio.write_volume(img, tmp_path / "a.nrrd")
    other = Volume(lab.array, spacing=(1.0, 1.0, 2.0), origin=lab.origin)
    write_seg(tmp_path / "a.seg.nrrd", other)
    vio.write_volume(img, tmp_path / "b.nrrd")
    vio.write_volume(Volume(lab.array, spacing=SPACING, origin=lab.origin + 0.4), tmp_path / "b_label.nrrd")
    with pytest.raises(GeometryError) as e:
        C.validate_cases(C.load_cases(tmp_path))
    msg = str(e.value)
    assert "case 'a': a.seg.nrrd is not on the image's voxel grid" in msg
    assert "image and label of case 'b' do not share a voxel grid: origin" in msg
    rec = C.load_cases(tmp_path)[0]
    with pytest.raises(GeometryError, match="Case 'a':"):  # also when preparing without validation
        D.prepare_case(rec)


def test_empty_label(tmp_path):
    img, lab = synthetic_case()
    vio.write_volume(img, tmp_path / "a.nrrd")
    vio.write_volume(lab.with_array(np.zeros_like(lab.array)), tmp_path / "a_label.nrrd")
    rec = C.load_cases(tmp_path)[0]
    with pytest.raises(VoxMetricError, match=r"Case 'a': .*a_label.nrrd .*empty"):
        D.prepare_case(rec)
    seg = lab.with_array(np.where(lab.array > 0, 2, 0).astype(np.uint8))  # Prostate (1) is empty
    write_seg(tmp_path / "a.seg.nrrd", seg, ("Prostate", "Bladder"))
    rec = C.load_cases(tmp_path, segment="prostate")[0]
    with pytest.raises(InputError, match="Case 'a': the segment 'prostate' in a.seg.nrrd is empty"):
        D.prepare_case(rec)
    # Slicer records an empty segment's extent as "0 -1 0 -1 0 -1": caught from the header alone
    import slicerio

    seg = {"voxels": np.zeros(lab.array.shape[::-1], np.uint8), "ijkToLPS": lab.index_to_physical_matrix,
           "segments": [{"id": "Segment_1", "name": "Prostate", "labelValue": 1, "layer": 0, "extent": [0, -1, 0, -1, 0, -1]}]}
    slicerio.write_segmentation(str(tmp_path / "a.seg.nrrd"), seg)
    with pytest.raises(InputError, match="^Case 'a': segment 'Prostate' in a.seg.nrrd is empty"):
        C.validate_cases(C.load_cases(tmp_path, segment="Prostate"))


# ---- preprocessing and cache ----------------------------------------------------------------
def test_prepare_case_and_cache(folder, tmp_path, monkeypatch):
    rec = C.load_cases(folder, segment="Prostate")[0]
    cache = tmp_path / "cache"
    case = D.prepare_case(rec, D.DataRecipe(), cache_dir=cache)
    assert case.id == "case001" and case.modality == "ct"
    assert np.allclose(case.image.spacing, 1.0) and case.image.same_grid(case.mask)
    a = case.image.array
    assert a.dtype == np.float32 and a.min() >= 0 and a.max() <= 255
    assert case.mask.array.dtype == np.uint8 and set(np.unique(case.mask.array)) == {0, 1}
    vol = 4 / 3 * np.pi * RADII.prod()
    assert abs(case.mask.array.sum() - vol) / vol < 0.1  # 1 mm³ voxels
    # cropped to the body (+5 mm each side): 2 * 0.35 * 54 + 10 mm in x, 2 * 0.3 * 54 + 10 mm in y
    assert 46 <= case.image.shape[2] <= 49 and 41 <= case.image.shape[1] <= 44
    files = list(cache.glob("*.npz"))
    assert len(files) == 1 and files[0].name.startswith("case001-")
    mtime = files[0].stat().st_mtime_ns

    def no_read(*a, **k):
        raise AssertionError("the cache was not used")

    monkeypatch.setattr(vio, "read_volume", no_read)
    again = D.prepare_case(rec, D.DataRecipe(), cache_dir=cache)
    assert files[0].stat().st_mtime_ns == mtime
    np.testing.assert_array_equal(again.image.array, a)
    np.testing.assert_array_equal(again.mask.array, case.mask.array)
    assert again.image.same_grid(case.image) and again.modality == "ct"
    monkeypatch.undo()
    # a changed source file or recipe spacing is a new cache entry
    assert D.cache_key(rec, D.DataRecipe(spacing_mm=4)) != D.cache_key(rec, D.DataRecipe())
    st = rec.image.stat()
    os.utime(rec.image, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))
    try:
        D.prepare_case(rec, D.DataRecipe(), cache_dir=cache)
        assert len(list(cache.glob("*.npz"))) == 2
    finally:
        os.utime(rec.image, ns=(st.st_atime_ns, st.st_mtime_ns))
    # a broken cache entry is rebuilt, not trusted
    files[0].write_bytes(b"garbage")
    np.testing.assert_array_equal(D.prepare_case(rec, D.DataRecipe(), cache_dir=cache).image.array, a)


def test_prepare_mr_body_at_4mm(folder):
    rec = C.load_cases(folder)[1]
    case = D.prepare_case(rec, D.DataRecipe(spacing_mm=4.0, region="body"))
    assert case.modality == "mr"  # guessed: no HU air
    assert np.allclose(case.image.spacing, 4.0) and case.image.same_grid(case.mask)
    assert 0 <= case.image.array.min() and case.image.array.max() <= 255
    assert abs(case.mask.array.sum() * 64 - 4 / 3 * np.pi * RADII.prod()) < 0.35 * 4 / 3 * np.pi * RADII.prod()
    pre, modality = D.preprocess_image(vio.read_volume(rec.image), spacing_mm=4.0)
    assert modality == "mr" and pre.same_grid(case.image)
    np.testing.assert_allclose(pre.array, case.image.array)


# ---- regions and patches --------------------------------------------------------------------
def coded_case(shape=(20, 50, 50), label_box=((8, 12), (20, 30), (20, 30)), spacing=(1.0, 1.0, 1.0)) -> D.PreparedCase:
    """Image value = 10000 z + 100 y + x + 1 (tells where a patch came from); box label."""
    z, y, x = np.indices(shape)
    img = (10000 * z + 100 * y + x + 1).astype(np.float32)
    m = np.zeros(shape, np.uint8)
    (z0, z1), (y0, y1), (x0, x1) = label_box
    m[z0:z1 + 1, y0:y1 + 1, x0:x1 + 1] = 1
    return D.PreparedCase("coded", Volume(img, spacing=spacing), Volume(m, spacing=spacing), "ct")


def slabs(cases, recipe: dict | None = None, seed: int = 0) -> S.PatchDataset:
    """2.5D slab patches (as SlabMethod draws them) with sampling settings ``recipe``: slab,
    patch, per_case, fg_fraction, augment, margin_mm."""
    r = dict(recipe or {})
    margin = r.pop("margin_mm", (10.0, 30.0))
    keys = {"slab": "depth", "patch": "size"}
    return S.PatchDataset(cases, D.DataRecipe(margin_mm=margin),
                          S.PatchSampling(**{keys.get(k, k): v for k, v in r.items()}), seed=seed)


def decode(v):
    v = int(round(float(v))) - 1
    return v // 10000, (v % 10000) // 100, v % 100


def same(a: dict, b: dict) -> bool:
    """Items (dicts of tensors) are identical (torch.testing is slow to import)."""
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_patches_shapes_fg_and_geometry():
    case = coded_case()
    recipe = dict(slab=3, patch=16, per_case=200, fg_fraction=0.5, augment=False, margin_mm=(2, 6))
    ds = slabs([case], recipe, seed=3)
    assert len(ds) == 200
    fg_centre = 0
    for i in range(200):
        item = ds[i]
        img, lab = item["image"], item["label"]
        assert img.shape == (3, 16, 16) and img.dtype == torch.float32
        assert lab.shape == (16, 16) and lab.dtype == torch.int64
        assert set(lab.unique().tolist()) <= {0, 1}
        zc, yc, xc = decode(img[1, 8, 8].item())
        # centre inside the label box + at most 6 mm, and the label agrees with the coded position
        assert 8 - 6 <= zc <= 12 + 6 and 20 - 6 <= yc <= 30 + 6 and 20 - 6 <= xc <= 30 + 6
        assert lab[8, 8].item() == int(8 <= zc <= 12 and 20 <= yc <= 30 and 20 <= xc <= 30)
        np.testing.assert_array_equal(decode(img[0, 8, 8].item())[0], max(zc - 1, 0))
        np.testing.assert_array_equal(decode(img[2, 8, 8].item())[0], min(zc + 1, 19))
        fg_centre += lab[8, 8].item()
    assert 0.45 <= fg_centre / 200 <= 0.68  # 50% forced + ~11% random hits (measured 0.565 on 400)
    ds_all = slabs([case], dict(patch=16, per_case=50, fg_fraction=1.0, augment=False), seed=0)
    assert all(ds_all[i]["label"][8, 8] == 1 for i in range(50))


def test_edge_replication_and_zero_padding():
    case = coded_case(shape=(6, 20, 20), label_box=((0, 0), (0, 2), (0, 2)))  # label at a corner, slice 0
    recipe = dict(slab=5, patch=16, per_case=20, fg_fraction=1.0, augment=False)
    item = slabs([case], recipe, seed=0)[0]
    img = item["image"].numpy()
    assert decode(img[2, 8, 8])[0] == 0
    np.testing.assert_array_equal(img[0], img[2])  # slices -2, -1 replicate slice 0
    np.testing.assert_array_equal(img[1], img[2])
    assert decode(img[4, 8, 8])[0] == 2
    zc, yc, xc = decode(img[2, 8, 8])
    assert (img[:, : 8 - yc] == 0).all() and (img[:, :, : 8 - xc] == 0).all()  # outside the volume
    assert (img[:, 8 - yc:, 8 - xc:] > 0).all()


def test_fov_cut_ends_the_case_at_a_plane_that_may_cut_the_label():
    """With ``fov_cut`` = 1 every item sees a smaller field of view: voxels beyond it are zero
    with label 0 (in-plane; along z for stage 2, while stage 1 replicates the last slice), the
    centre stays inside, and some cuts pass through the label box (up to its middle)."""
    case = coded_case(shape=(30, 60, 60), label_box=((10, 19), (20, 39), (20, 39)))
    recipe = dict(slab=5, patch=32, per_case=80, fg_fraction=0.5, augment=False, margin_mm=(2, 6))
    plain, cut = slabs([case], recipe, seed=4), slabs([case], dict(recipe, fov_cut=1.0), seed=4)
    body = S.PatchDataset([case], D.DataRecipe(region="body"), S.PatchSampling(
        depth=5, size=32, per_case=80, augment=False, fov_cut=1.0), seed=4)
    through, zeroed_z, replicated = 0, 0, 0
    for i in range(80):
        img, lab = cut[i]["image"].numpy(), cut[i]["label"].numpy()
        assert img[2, 16, 16] > 0  # the centre is inside the cut field of view
        inside = img[2] > 0
        assert not lab[~inside].any()  # no label where the image is cut away
        coords = np.array([decode(v) for v in img[2][inside]])
        lab_box = (coords[:, 1] >= 20) & (coords[:, 1] <= 39) & (coords[:, 2] >= 20) & (coords[:, 2] <= 39)
        through += bool(lab_box.any() and (~inside).any())
        zeroed_z += bool((img[[0, 1, 3, 4]].reshape(4, -1).max(1) == 0).any())
        b = body[i]["image"].numpy()
        replicated += bool(np.array_equal(b[0], b[1]) or np.array_equal(b[3], b[4]))
        assert not (b.reshape(5, -1).max(1) == 0).any()  # stage 1: never a blank slice
    assert through > 10 and zeroed_z >= 3 and replicated >= 3, (through, zeroed_z, replicated)
    assert sum(not torch.equal(plain[i]["image"], cut[i]["image"]) for i in range(80)) > 20  # measured 31
    assert same(slabs([case], dict(recipe, fov_cut=0.0), seed=4)[3], plain[3])  # off: the old stream
    with pytest.raises(ConfigError, match="fov_cut"):
        slabs([case], dict(recipe, fov_cut=1.5))
    from voxmetric.methods import get_method

    for name in ("Localizer", "MetricUNet-HCP", "CRII", "CRII-3D"):  # the method setting reaches the sampler
        method = get_method(name)
        assert method.dataset([case], method.make_config({"fov_cut": 0.25}), 0).sampling.fov_cut == 0.25


def test_gamma_bends_each_patch_by_its_own_curve():
    """With ``gamma`` = 0.7 each item is ``255 (v / 255)^γ`` of the plain item with its own γ in
    [e^-0.7, e^0.7] (labels and geometry unchanged, zero stays zero); 0 keeps the old stream."""
    rng = np.random.default_rng(0)
    img = rng.uniform(1, 255, (20, 50, 50)).astype(np.float32)
    img[:, :5] = 0
    m = np.zeros(img.shape, np.uint8)
    m[8:13, 20:31, 20:31] = 1
    case = D.PreparedCase("g", Volume(img), Volume(m), "mr")
    recipe = dict(slab=3, patch=32, per_case=40, augment=False, margin_mm=(2, 6))
    plain, bent = slabs([case], recipe, seed=2), slabs([case], dict(recipe, gamma=0.7), seed=2)
    gammas = []
    for i in range(40):
        a, b = plain[i]["image"].numpy(), bent[i]["image"].numpy()
        assert torch.equal(plain[i]["label"], bent[i]["label"])
        assert (b[a == 0] == 0).all()
        v = (a > 5) & (a < 250)
        g = np.log(b[v] / 255) / np.log(a[v] / 255)
        assert np.ptp(g) < 1e-3  # one curve per item
        gammas.append(float(np.median(g)))
    assert np.exp(-0.7) - 1e-3 < min(gammas) < 0.7 and 1.4 < max(gammas) < np.exp(0.7) + 1e-3, gammas
    assert same(slabs([case], dict(recipe, gamma=0.0), seed=2)[5], plain[5])
    with pytest.raises(ConfigError, match="gamma"):
        slabs([case], dict(recipe, gamma=3.0))
    from voxmetric.methods import get_method

    for name in ("Localizer", "MetricUNet-HCP", "CRII"):  # the method setting reaches the sampler
        method = get_method(name)
        assert method.dataset([case], method.make_config({"gamma": 0.5}), 0).sampling.gamma == 0.5


def test_determinism_and_epochs():
    case = coded_case()
    recipe = dict(patch=16, per_case=10)
    a, b = slabs([case, case], recipe, seed=7), slabs([case, case], recipe, seed=7)
    for i in (0, 5, 19, 20, 47):  # 20+ = epoch 1
        assert same(a[i], b[i])
    assert not torch.equal(a[0]["image"], slabs([case, case], recipe, seed=8)[0]["image"])
    assert not torch.equal(a[0]["image"], a[20]["image"])
    per_epoch = [sorted(a.case_of(e * 20 + i) for i in range(20)) for e in range(3)]
    assert all(p == [0] * 10 + [1] * 10 for p in per_epoch)  # every case per_case times per epoch
    assert [a.case_of(i) for i in range(20)] != [a.case_of(20 + i) for i in range(20)]  # reshuffled
    with pytest.raises(ConfigError, match="odd"):
        slabs([case], dict(slab=4))


def blob_case() -> D.PreparedCase:
    """Image = 200 inside an ellipse-shaped label, 20 elsewhere: alignment is visible."""
    shape = (12, 64, 64)
    z, y, x = np.indices(shape)
    m = (((y - 30) / 14.0) ** 2 + ((x - 36) / 7.0) ** 2 <= 1) & (z >= 3) & (z <= 8)
    img = np.where(m, 200.0, 20.0).astype(np.float32)
    return D.PreparedCase("blob", Volume(img), Volume(m.astype(np.uint8)), "ct")


def test_augmentation_changes_data_keeps_alignment():
    case = blob_case()
    base = dict(patch=32, per_case=60, fg_fraction=1.0, augment=False)
    aug = slabs([case], dict(patch=32, per_case=60, fg_fraction=1.0), seed=1)
    plain = slabs([case], base, seed=1)
    changed, mismatch, fg = 0, 0, 0
    for i in range(60):
        it = aug[i]
        changed += not torch.equal(it["image"], plain[i]["image"])
        img, lab = it["image"][1], it["label"]
        # the intensity jitter keeps 200 → ≥ 154 and 20 → ≤ 48: threshold 100 separates them
        mismatch += ((img > 100).long() != lab).sum().item()
        fg += lab.sum().item()
    assert changed == 60
    assert mismatch / fg < 0.04  # only interpolation differences at the boundary
    values = torch.stack([aug[i]["image"][1].max() for i in range(20)])
    assert values.std() > 1.0  # intensity scale/shift jitter is applied


def test_make_loader_resume_and_workers():
    case = coded_case()
    ds = slabs([case], dict(patch=16, per_case=8), seed=2)
    batches = [b for _, b in zip(range(5), S.make_loader(ds, 4, "cpu", 0))]
    assert batches[0]["image"].shape == (4, 3, 16, 16) and batches[0]["label"].shape == (4, 16, 16)
    resumed = next(iter(S.make_loader(ds, 4, "cpu", 0, start_item=3 * 4)))
    assert same(resumed, batches[3])
    with_workers = list(S.make_loader(ds, 4, "cpu", 1, num_items=12))
    assert len(with_workers) == 3
    for got, want in zip(with_workers, batches):
        assert same(got, want)
    ranks = [next(iter(S.make_loader(ds, 2, "cpu", 0, rank=r, world_size=2))) for r in (0, 1)]
    assert torch.equal(ranks[0]["image"], batches[0]["image"][[0, 2]])
    assert torch.equal(ranks[1]["image"], batches[0]["image"][[1, 3]])


def test_whole_slices():
    vol = np.arange(4 * 2 * 3, dtype=np.float32).reshape(4, 2, 3)
    s = S.whole_slices(vol, 3)
    assert s.shape == (4, 3, 2, 3)
    np.testing.assert_array_equal(s[0, 0], vol[0])
    np.testing.assert_array_equal(s[0, 2], vol[1])
    np.testing.assert_array_equal(s[3, 2], vol[3])
    np.testing.assert_array_equal(s[2], vol[1:4])
    t = S.whole_slices(torch.from_numpy(vol), 3)
    np.testing.assert_array_equal(t.numpy(), s)
    np.testing.assert_array_equal(S.whole_slices(vol, 1)[:, 0], vol)
    with pytest.raises(ConfigError):
        S.whole_slices(vol, 2)


def test_shared_promise12_manifest(shared_data, tmp_path):
    """Real MR cases (names fit no folder pattern) load through a manifest and prepare."""
    src = shared_data / "promise12_demo"
    recs = [C.CaseRecord(f"case{i}", src / f"case{i}_t2w_UNKNOWN_SPACING.nii.gz",
                         src / f"case{i}_prostate_label_UNKNOWN_SPACING.nii.gz", None, "mr") for i in (0, 1)]
    m = C.write_manifest(recs, tmp_path / "manifest.json")
    loaded = C.load_cases(m)
    C.validate_cases(loaded)
    case = D.prepare_case(loaded[0], D.DataRecipe(), cache_dir=tmp_path / "cache")
    assert case.modality == "mr" and 0.8 * 18109 < case.mask.array.sum() < 1.2 * 18109
    item = slabs([case], dict(per_case=4), seed=0)[0]
    assert item["image"].shape == (3, 64, 64)


def test_bilinear_and_nearest_match_scipy():
    """The hand-written patch samplers equal scipy's map_coordinates (zero outside)."""
    from scipy import ndimage

    rng = np.random.default_rng(0)
    a = rng.random((3, 20, 30), dtype=np.float32)
    for lo, hi in ((-4.0, 24.0), (2.0, 15.0)):
        y, x = rng.uniform(lo, hi, (16, 16)), rng.uniform(lo, hi + 8, (16, 16))
        ref = np.stack([ndimage.map_coordinates(a[k], [y, x], order=1, mode="grid-constant", cval=0.0,
                                                prefilter=False) for k in range(3)])
        np.testing.assert_allclose(S._bilinear(a, np.arange(3), y, x), ref, atol=1e-6)
        near = ndimage.map_coordinates(a[1], [np.rint(y), np.rint(x)], order=0, mode="grid-constant", cval=0.0)
        np.testing.assert_array_equal(S._nearest(a, np.array([1]), y, x)[0], near)
    iy, ix = np.meshgrid(np.arange(-2, 5), np.arange(25, 33), indexing="ij")
    out = S._bilinear(a, np.array([0, 2]), iy.astype(float), ix.astype(float))  # integer points: exact copy
    inside = (iy >= 0) & (ix < 30)
    np.testing.assert_array_equal(out[1][inside], a[2][iy[inside], ix[inside]])
    assert (out[:, ~inside] == 0).all()


def test_preprocess_image_fast_matches_training_grid(folder):
    """The inference shortcut (no whole-scan 1 mm copy) gives the training grid and close values."""
    for rec in C.load_cases(folder)[:2]:  # a CT and an MR case
        image = vio.read_volume(rec.image)
        slow, m1 = D.preprocess_image(image, spacing_mm=4.0)
        fast, m2 = D.preprocess_image_fast(image, spacing_mm=4.0, coarse_mm=1.0)
        assert m1 == m2 and fast.same_grid(slow) and fast.array.dtype == np.float32
        assert 0 <= fast.array.min() and fast.array.max() <= 255
        assert np.abs(fast.array - slow.array).mean() < 0.1 * max(float(slow.array.std()), 1.0)
    one, _ = D.preprocess_image_fast(image, spacing_mm=1.0)  # at 1 mm it is the training preprocessing
    np.testing.assert_array_equal(one.array, D.preprocess_image(image, spacing_mm=1.0)[0].array)
