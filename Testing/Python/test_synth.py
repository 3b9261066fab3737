"""Domain-randomised generator (voxmetric.synth): determinism, labels and organs, prostate volume
range, grid ranges, contrast diversity, plausible CT values, geometry, and the cached-case writer
behind `voxmetric phantom --generator synth`. Small grids keep it fast."""

from __future__ import annotations

import json

import numpy as np
import pytest
from scipy import ndimage

from voxmetric import synth
from voxmetric.cases import load_cases, validate_cases
from voxmetric.cli import main as cli_main
from voxmetric.errors import InputError
from voxmetric.phantom import LABELS
from voxmetric.synth import (CLASS_NAMES, CONTRASTS, FAT, MUSCLE, PFAT, URINE, contrast_of, make_synth_case,
                             make_synth_labels, sample_grid)

WIDE = dict(shape=(64, 96, 96), spacing=(4.0, 4.0, 4.0))  # pelvis: 384 × 384 × 256 mm
ROI3 = dict(spacing=(3.0, 3.0, 3.0))  # roi at 3 mm: ~50³ voxels


def ml(labels, value=LABELS["Prostate"]) -> float:
    return float((labels.array == value).sum() * np.prod(labels.spacing) / 1000.0)


def centroid_lps(vol, value: int) -> np.ndarray:
    return vol.index_to_physical(np.argwhere(vol.array == value).mean(axis=0)[::-1])


@pytest.mark.parametrize("fov,kw", [("pelvis", WIDE), ("roi", ROI3)])
def test_deterministic_per_seed(fov, kw):
    a, b, c = (make_synth_case(s, "mix", fov, **kw) for s in (11, 11, 12))
    assert np.array_equal(a.image.array, b.image.array) and np.array_equal(a.labels.array, b.labels.array)
    assert a.image.same_grid(b.image) and a.contrast == b.contrast and a.seed == 11
    assert not np.array_equal(a.labels.array, c.labels.array)
    assert a.image.array.dtype == np.int16 and a.labels.array.dtype == np.uint8


def test_anatomy_does_not_depend_on_contrast():
    """Each seed has one anatomy and one grid; the contrast only changes the image."""
    lab = make_synth_labels(5, "roi", **ROI3)
    for contrast in CONTRASTS:
        case = make_synth_case(5, contrast, "roi", **ROI3)
        assert np.array_equal(case.labels.array, lab.labels.array) and case.labels.same_grid(lab.labels)
        assert case.modality == ("ct" if contrast == "ct" else "mr") and case.contrast == contrast
    assert contrast_of(5, "mr") == "mr" and {contrast_of(s) for s in range(30)} == set(CONTRASTS)


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
def test_every_organ_present_and_geometry(seed):
    case = make_synth_case(seed, "mix", "pelvis", **WIDE)
    img, lab = case.image, case.labels
    assert set(np.unique(lab.array)) == {0, *LABELS.values()}
    for name, value in LABELS.items():
        assert (lab.array == value).sum() * np.prod(lab.spacing) > 1000, name  # > 1 mL each
    assert img.same_grid(lab)
    d = img.direction
    assert np.allclose(d.T @ d, np.eye(3), atol=1e-6)
    # physical anatomy is right whatever the grid's flips, plane and obliquity
    left, right = centroid_lps(lab, LABELS["Femoral head left"]), centroid_lps(lab, LABELS["Femoral head right"])
    pro, bla = centroid_lps(lab, LABELS["Prostate"]), centroid_lps(lab, LABELS["Bladder"])
    rec = centroid_lps(lab, LABELS["Rectum"])
    assert left[0] - right[0] > 100  # LPS x points to the patient's left
    assert bla[2] > pro[2] + 10  # bladder above the prostate
    assert rec[1] > pro[1] + 5  # rectum behind it


def test_prostate_volume_range_over_seeds():
    drawn, measured = [], []
    for seed in range(24):
        lab = make_synth_labels(seed, "roi", spacing=(2.5, 2.5, 2.5))
        drawn.append(lab.prostate_ml)
        measured.append(ml(lab.labels))
        assert set(np.unique(lab.labels.array)) <= {0, *LABELS.values()}
        assert lab.tissue.array.max() < len(CLASS_NAMES) and lab.tissue.same_grid(lab.labels)
    drawn, measured = np.array(drawn), np.array(measured)
    assert np.all((drawn >= 15) & (drawn <= 120))
    assert np.all(np.abs(measured / drawn - 1) < 0.15), np.c_[drawn, measured]
    assert measured.min() < 25 and measured.max() > 80  # the whole 15–120 mL range is used


def test_grid_ranges():
    planes = set()
    for seed in range(30):
        g = sample_grid(seed, "pelvis")
        sx, sy, sz = g.acq
        assert 0.3 <= sx == sy <= 1.5 and 1.0 <= sz <= 6.0
        assert np.allclose(g.spacing, g.acq)  # pelvis: the output grid is the acquisition grid
        assert max(g.shape[1:]) <= 512 and g.shape[0] * g.k * g.shape[1] * g.shape[2] <= synth.MAX_PAINT_VOXELS * 1.01
        assert np.allclose(g.direction.T @ g.direction, np.eye(3), atol=1e-9)
        planes.add(int(np.argmax(np.abs(g.direction[:, 2]))))  # which LPS axis the slices step along
        r = sample_grid(seed, "roi")
        assert np.allclose(r.spacing, 1.0) and r.k == 1
        ext = np.array(r.shape[::-1]) * r.spacing
        assert np.all((ext >= 119) & (ext <= 161))
    assert planes == {0, 1, 2}  # axial, coronal and sagittal acquisitions all occur


def test_roi_case_at_default_size_simulates_its_acquisition():
    case = make_synth_case(21, "mr", "roi")
    assert np.allclose(case.image.spacing, 1.0) and case.image.same_grid(case.labels)
    assert 0.3 <= case.acquisition_spacing[0] <= 1.5 and 1.0 <= case.acquisition_spacing[2] <= 6.0
    assert (case.labels.array == LABELS["Prostate"]).any() and case.fov == "roi"
    a = case.image.array
    assert a.min() >= 0 and a.max() > 100 and np.unique(a).size > 100


def _ring_difference(case) -> float:
    """Mean image inside the prostate (eroded) minus a 2-voxel ring around it."""
    pro = case.labels.array == LABELS["Prostate"]
    core = ndimage.binary_erosion(pro)
    ring = ndimage.binary_dilation(pro, iterations=2) & ~pro
    img = case.image.array.astype(float)
    return float(img[core].mean() - img[ring].mean()) / (np.percentile(img, 99) - np.percentile(img, 1) + 1e-6)


def test_random_contrast_is_diverse():
    diffs, orders = [], set()
    for s in range(8):
        case = make_synth_case(s, "random", "roi", **ROI3)
        t = make_synth_labels(s, "roi", **ROI3).tissue.array
        diffs.append(_ring_difference(case))
        orders.add(tuple(np.argsort([np.median(case.image.array[t == c]) for c in (FAT, MUSCLE, URINE)])))
    diffs = np.array(diffs)
    assert (diffs > 0.02).any() and (diffs < -0.02).any(), diffs  # prostate brighter in some, darker in others
    assert len(orders) >= 3  # no fixed brightness order of fat, muscle and urine


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_ct_values_are_plausible_hounsfield_units(seed):
    case = make_synth_case(seed, "ct", "pelvis", **WIDE)
    t = make_synth_labels(seed, "pelvis", **WIDE).tissue.array
    img = case.image.array.astype(float)
    assert case.modality == "ct" and img.min() >= -1024 and img.max() <= 3071
    assert np.median(img[t == synth.AIR]) < -800
    assert -160 < np.median(img[(t == FAT) | (t == PFAT)]) < -20
    assert 0 < np.median(img[t == MUSCLE]) < 90
    assert np.median(img[(t == synth.CORTEX)]) > 150
    assert -40 < np.median(img[case.labels.array == LABELS["Prostate"]]) < 110


def test_mr_contrast_is_t2_like():
    for seed in range(3):
        case = make_synth_case(seed, "mr", "roi", **ROI3)
        t = make_synth_labels(seed, "roi", **ROI3).tissue.array
        img = case.image.array.astype(float)
        assert np.median(img[t == URINE]) > 2 * np.median(img[t == MUSCLE])


def test_clutter_structures_fat_and_muscle_and_keeps_the_case():
    """``clutter``: same labels, grid and contrast; more edges inside fat and muscle (sub-regions and
    thin sheets: the mean gradient there rises) while the organs' medians barely move; seeded."""
    kw = dict(shape=(24, 96, 96), spacing=(1.5, 1.5, 3.0))
    gains = []
    for seed, contrast in ((1, "mr"), (2, "ct"), (3, "random")):
        plain, busy = (make_synth_case(seed, contrast, "roi", clutter=c, **kw) for c in (False, True))
        assert np.array_equal(plain.labels.array, busy.labels.array) and plain.image.same_grid(busy.image)
        assert busy.contrast == plain.contrast == contrast
        t = make_synth_labels(seed, "roi", **kw).tissue.array
        back = np.isin(t, (FAT, PFAT, MUSCLE, synth.PMUSCLE)) & ndimage.binary_erosion(t != synth.AIR, iterations=2)

        def edges(case) -> float:
            g = np.hypot(*np.gradient(case.image.array.astype(float), axis=(1, 2)))
            return float(g[back].mean())

        gains.append(edges(busy) / edges(plain))
        pro = busy.labels.array == LABELS["Prostate"]
        ref = np.percentile(plain.image.array, 99) - np.percentile(plain.image.array, 1)
        assert abs(np.median(busy.image.array[pro]) - np.median(plain.image.array[pro])) < 0.1 * ref
    assert min(gains) > 1.1, gains  # measured 1.66 (MR), 1.14 (CT: its noise has edges too), 1.51
    assert np.array_equal(make_synth_case(1, "mr", "roi", clutter=True, **kw).image.array,
                          make_synth_case(1, "mr", "roi", clutter=True, **kw).image.array)


def test_render_is_finite_for_every_contrast():
    rng = np.random.default_rng(0)
    g = sample_grid(3, "roi", **ROI3)
    tissue, labels = synth.paint(g.grid, synth.sample_anatomy(np.random.default_rng(np.random.SeedSequence(3).spawn(4)[0])).ops)
    for contrast in CONTRASTS:
        img = synth._render(tissue, labels, g, contrast, rng)
        assert img.shape == g.shape and np.isfinite(img).all()


def test_bad_arguments_are_explained():
    with pytest.raises(InputError, match="contrast"):
        make_synth_case(0, "pet")
    with pytest.raises(InputError, match="field of view"):
        make_synth_case(0, "ct", "thorax")
    with pytest.raises(InputError, match="seed"):
        make_synth_labels(-1)


def test_cli_writes_cases_that_load_and_validate(tmp_path, capsys):
    out = tmp_path / "synth"
    rc = cli_main(["phantom", "--generator", "synth", "--contrast", "mix", "--fov", "roi", "--out", str(out),
                   "--cases", "2", "--seed", "4", "--jobs", "2"])
    assert rc == 0
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["format"] == "voxmetric-cases/1" and len(manifest["cases"]) == 2
    for i, e in enumerate(manifest["cases"]):
        assert e["contrast"] == contrast_of(4 + i) and e["modality"] == ("ct" if e["contrast"] == "ct" else "mr")
        assert e["generator"] == "synth" and e["fov"] == "roi" and e["seed"] == 4 + i
    records = load_cases(out, "Prostate")
    validate_cases(records)
    assert [r.modality for r in records] == [e["modality"] for e in manifest["cases"]]
    from voxmetric import io

    seg = io.read_segmentation(records[0].label)
    assert seg.names == list(LABELS) and "41216001" in (seg.find("Prostate").terminology or "")
    again = make_synth_case(4, "mix", "roi")
    assert np.array_equal(io.read_volume(records[0].image).array, again.image.array)
    assert np.array_equal(seg.mask("Prostate").array, (again.labels.array == 1).astype(np.uint8))
    # the realistic phantom refuses synth-only flags
    assert cli_main(["phantom", "--contrast", "random", "--out", str(tmp_path / "p")]) == 2
    assert "--generator synth" in capsys.readouterr().err
    assert cli_main(["phantom", "--clutter", "--out", str(tmp_path / "p")]) == 2
    assert cli_main(["phantom", "--jobs", "0", "--out", str(tmp_path / "p")]) == 2 and not (tmp_path / "p").exists()
    # --clutter: recorded in the manifest, the same case with structure in fat and muscle
    busy = tmp_path / "busy"
    assert cli_main(["phantom", "--generator", "synth", "--fov", "roi", "--clutter", "--out", str(busy), "--cases", "1",
                     "--seed", "4"]) == 0
    assert json.loads((busy / "manifest.json").read_text())["cases"][0]["clutter"] is True
    cluttered = io.read_volume(load_cases(busy, "Prostate")[0].image).array
    assert np.array_equal(cluttered, make_synth_case(4, "mix", "roi", clutter=True).image.array)
    assert not np.array_equal(cluttered, again.image.array)


# ---- the abdomen field of view ------------------------------------------------------------------
ABD = dict(spacing=(5.0, 5.0, 5.0))  # ~90² × 60–110 voxels
ABDOMINAL = ("liver", "spleen", "kidney", "stomach wall", "pancreas", "colon wall", "aorta", "psoas",
             "intervertebral disc", "spinal canal", "renal pelvis", "perirenal fat", "gallbladder", "lung")

# Fingerprints of pelvis / roi cases recorded from the generator before the abdomen existed (label voxel
# counts 1–5, image mean and std, 8 voxels): the abdomen draws from streams of its own, so these stay.
BEFORE_ABDOMEN = {
    (0, "ct", "pelvis"): [1657, 8717, 2954, 375, 479, -732.773, 425.884, -998, -961, -945, -997, 68, 80, -969, -8],
    (1, "mr", "pelvis"): [984, 5423, 2088, 1689, 1609, 456.311, 563.843, 23, 23, 69, 466, 523, 482, 288, 4],
    (2, "random", "roi"): [3860, 1276, 4703, 467, 247, 1465.808, 227.682, 1667, 1223, 1528, 1457, 1698, 1453, 1226, 1690],
    (3, "mix", "roi"): [1704, 12221, 1484, 1175, 75, 413.086, 374.844, 189, 174, 125, 203, 83, 227, 723, 11],
}


def test_processes_write_and_prepare_the_same_cases(tmp_path):
    """``jobs`` (the bundled-model script's ``--jobs``): the same files, manifest and prepared arrays."""
    from voxmetric.data import DataRecipe, prepare_cases

    for jobs in (1, 2):
        synth.write_synth_cases(tmp_path / f"j{jobs}", 3, "mix", 11, "roi", clutter=True, jobs=jobs, **ROI3)
    names = sorted(p.name for p in (tmp_path / "j1").iterdir())
    assert names == sorted(p.name for p in (tmp_path / "j2").iterdir()) and len(names) == 7
    from voxmetric import io

    for name in names:  # a .seg.nrrd header holds the time it was written
        same = (np.array_equal(io.read_segmentation(tmp_path / "j1" / name).labelmap.array,
                               io.read_segmentation(tmp_path / "j2" / name).labelmap.array) if name.endswith(".seg.nrrd") else
                (tmp_path / "j1" / name).read_bytes() == (tmp_path / "j2" / name).read_bytes())
        assert same, name
    records = load_cases(tmp_path / "j1", "Prostate")
    recipe = DataRecipe(spacing_mm=4.0)
    done: list[int] = []
    one, two = (prepare_cases(records, recipe, tmp_path / f"cache{j}", lambda n, total, cid: done.append(n), jobs=j)
                for j in (1, 2))
    assert done == [1, 2, 3, 1, 2, 3] and len(list((tmp_path / "cache2").glob("*.npz"))) == 3
    for a, b in zip(one, two):
        assert np.array_equal(a.image.array, b.image.array) and np.array_equal(a.mask.array, b.mask.array)


@pytest.mark.parametrize("key", list(BEFORE_ABDOMEN))
def test_pelvis_and_roi_cases_are_unchanged_by_the_abdomen(key):
    seed, contrast, fov = key
    case = make_synth_case(seed, contrast, fov, **(WIDE if fov == "pelvis" else ROI3))
    lab, img = case.labels.array, case.image.array
    flat = img.ravel()
    got = [int((lab == v).sum()) for v in range(1, 6)] + [float(img.mean()), float(img.std())]
    got += [int(v) for v in flat[np.linspace(0, flat.size - 1, 8).astype(int)]]
    assert np.allclose(got, BEFORE_ABDOMEN[key], rtol=1e-4, atol=1.01), (got, BEFORE_ABDOMEN[key])


def test_abdomen_case_holds_the_abdomen_and_the_pelvic_labels():
    seen: set[str] = set()
    for seed in range(4):
        case = make_synth_case(seed, "mix", "abdomen", **ABD)
        lab = make_synth_labels(seed, "abdomen", **ABD)
        assert case.fov == "abdomen" and lab.labels.same_grid(case.labels)
        assert np.array_equal(lab.labels.array, case.labels.array)
        assert set(np.unique(case.labels.array)) == {0, *LABELS.values()}  # the five pelvic labels, nothing else
        names = {CLASS_NAMES[c] for c in np.unique(lab.tissue.array)}
        assert {"psoas", "intervertebral disc", "colon wall", "aorta"} <= names, (seed, names)
        assert not (lab.labels.array[lab.tissue.array >= synth.LIVER]).any()  # the new organs are label 0
        seen |= names
        # the scan reaches far above the prostate (≥ 300 mm from foot to head), the prostate low in it
        ext = np.array(case.image.shape[::-1]) * case.image.spacing
        corners = np.array([case.image.index_to_physical(np.array(c) * (np.array(case.image.shape[::-1]) - 1))
                            for c in np.ndindex(2, 2, 2)])
        z_lo, z_hi = corners[:, 2].min(), corners[:, 2].max()
        frac = (centroid_lps(case.labels, LABELS["Prostate"])[2] - z_lo) / (z_hi - z_lo)
        assert z_hi - z_lo > 290 and max(ext) <= 560 and -0.01 < frac < 0.35, (seed, z_hi - z_lo, frac)
    assert set(ABDOMINAL) <= seen, set(ABDOMINAL) - seen


def test_abdomen_is_deterministic_and_keeps_the_pelvis_of_its_seed():
    a, b = (make_synth_case(6, "mix", "abdomen", **ABD) for _ in range(2))
    assert np.array_equal(a.image.array, b.image.array) and np.array_equal(a.labels.array, b.labels.array)
    # the same prostate as in the other fields of view (its own stream), on another grid
    p_abd = ml(a.labels)
    p_roi = ml(make_synth_labels(6, "roi", spacing=(2.0, 2.0, 2.0)).labels)
    assert a.prostate_ml == make_synth_case(6, "ct", "roi", **ROI3).prostate_ml
    assert abs(p_abd / p_roi - 1) < 0.5  # 5 mm voxels: coarse


def test_abdomen_grid_ranges():
    planes, fracs = set(), []
    for seed in range(40):
        g = synth.sample_grid(seed, "abdomen")
        assert max(g.shape[1:]) <= 512 and np.prod(g.shape) * g.k <= synth.MAX_ABDOMEN_PAINT_VOXELS * 1.01
        assert np.allclose(g.acq, g.spacing) and 1.0 <= g.spacing[2] <= 6.0 and 0.6 <= g.spacing[0] == g.spacing[1] <= 3.0
        ext = np.array(g.shape[::-1]) * g.spacing
        si = int(np.argmax(np.abs(g.direction[2, :])))
        assert 290 <= ext[si] <= 560 and all(290 <= e <= 520 for i, e in enumerate(ext) if i != si and abs(g.direction[1, i]) < 0.7)
        planes.add(si)
    assert planes == {1, 2}  # axial and coronal acquisitions


def test_abdomen_intensities_ct_and_mr():
    for seed in (0, 2):
        lab = make_synth_labels(seed, "abdomen", **ABD).tissue.array
        ct = make_synth_case(seed, "ct", "abdomen", **ABD).image.array.astype(float)
        mr = make_synth_case(seed, "mr", "abdomen", **ABD).image.array.astype(float)
        core = np.asarray(ndimage.binary_erosion(lab == synth.LIVER), bool)  # away from partial volume
        assert core.sum() > 20
        assert 20 < np.median(ct[core]) < 140
        lung = np.asarray(ndimage.binary_erosion(lab == synth.LUNG), bool)
        assert lung.sum() < 20 or np.median(ct[lung]) < -500
        assert np.median(ct[lab == synth.CORTEX]) > 100
        spleen = np.asarray(ndimage.binary_erosion(lab == synth.SPLEEN), bool)
        if spleen.sum() > 10:  # T2: the liver darker than the spleen
            assert np.median(mr[core]) < np.median(mr[spleen])
    mean, _ = synth._intensities("random", np.random.default_rng(0), np.random.default_rng(1))
    assert mean.shape == (len(CLASS_NAMES),) and np.unique(np.round(mean[synth.LIVER:], 6)).size == len(CLASS_NAMES) - synth.LIVER


def test_cli_writes_abdomen_cases(tmp_path, monkeypatch):
    monkeypatch.setattr(synth, "MAX_ABDOMEN_PAINT_VOXELS", 600_000)  # coarse: fast
    out = tmp_path / "abd"
    assert cli_main(["phantom", "--generator", "synth", "--fov", "abdomen", "--contrast", "ct", "--out", str(out),
                     "--cases", "2", "--seed", "3"]) == 0
    manifest = json.loads((out / "manifest.json").read_text())
    assert [e["fov"] for e in manifest["cases"]] == ["abdomen", "abdomen"] and manifest["cases"][1]["seed"] == 4
    records = load_cases(out, "Prostate")
    validate_cases(records)
    from voxmetric import io

    again = make_synth_case(3, "ct", "abdomen")
    assert np.array_equal(io.read_volume(records[0].image).array, again.image.array)
