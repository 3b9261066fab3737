"""The second, evaluation-only phantom family (Testing/Benchmarks/phantoms_b.py): determinism,
labels, grids, intensity conventions, manifests the engine reads, and varied directions."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import numpy as np
import pytest
from scipy import ndimage as ndi

from voxmetric import io as vio
from voxmetric.cases import load_cases, validate_cases
from voxmetric.phantom import LABELS

_PATH = Path(__file__).resolve().parents[1] / "Benchmarks" / "phantoms_b.py"
_spec = importlib.util.spec_from_file_location("phantoms_b", _PATH)
assert _spec is not None and _spec.loader is not None
pb = importlib.util.module_from_spec(_spec)
sys.modules["phantoms_b"] = pb
_spec.loader.exec_module(pb)

SMALL = 200_000  # voxels: same field of view, coarser grid, about a second per case


@pytest.fixture(scope="module")
def small_cases() -> dict[tuple[str, int], "pb.CaseB"]:
    return {(m, s): pb.make_case_b(s, m, SMALL) for m in ("ct", "mr") for s in range(3)}


def test_same_seed_same_case_other_seed_other_case():
    a, b = pb.make_case_b(3, "ct", 50_000), pb.make_case_b(3, "ct", 50_000)
    assert np.array_equal(a.image.array, b.image.array) and np.array_equal(a.labels.array, b.labels.array)
    assert a.image.same_grid(b.image)
    c = pb.make_case_b(4, "ct", 50_000)
    assert not (c.image.same_grid(a.image) and np.array_equal(c.labels.array, a.labels.array))
    mr = pb.make_case_b(3, "mr", 50_000)  # the modality is part of the seed
    assert not mr.image.same_grid(a.image)


def test_every_label_present_and_plausible_sizes(small_cases):
    for (m, s), case in small_cases.items():
        lab = case.labels.array
        present = set(np.unique(lab).tolist())
        assert present == {0, *LABELS.values()}, (m, s, present)
        ml = float((lab == LABELS["Prostate"]).sum()) * float(np.prod(case.labels.spacing)) / 1000
        assert 8 < ml < 170, (m, s, ml)
        assert case.info["prostate_ml"] == pytest.approx(ml, abs=0.1)
        # the prostate lies between the femoral heads, below the bladder and in front of the rectum
        pts = {v: case.labels.index_to_physical(np.argwhere(lab == v)[:, ::-1].astype(float)).mean(0) for v in LABELS.values()}
        x_left, x_right = pts[LABELS["Femoral head left"]][0], pts[LABELS["Femoral head right"]][0]
        assert x_right < pts[LABELS["Prostate"]][0] < x_left


def test_full_size_prostate_volumes_are_adult_sizes():
    vols = [pb.plan_case(s, m)[1].prostate_ml for m in ("ct", "mr") for s in range(40)]
    assert 15 <= min(vols) and max(vols) <= 140
    assert 25 < float(np.median(vols)) < 55


def test_image_and_labels_share_the_grid_in_files(tmp_path, small_cases):
    case = small_cases[("mr", 1)]
    img_p = vio.write_volume(case.image, tmp_path / "c.nrrd")
    seg_p = vio.write_segmentation(tmp_path / "c.seg.nrrd", case.labels, pb.segments())
    img, seg = vio.read_volume(img_p), vio.read_segmentation(seg_p)
    assert img.same_grid(seg.labelmap)
    assert np.allclose(img.direction, case.image.direction, atol=1e-6)
    assert seg.names == list(LABELS)
    assert np.array_equal(seg.mask("Prostate").array, (case.labels.array == LABELS["Prostate"]).astype(np.uint8))


def test_ct_values_are_plausible_hounsfield_units(small_cases):
    for s in range(3):
        case = small_cases[("ct", s)]
        a, lab = case.image.array.astype(np.float32), case.labels.array
        assert a.min() >= -3024 and a.max() <= 3071
        assert np.percentile(a, 1) <= -900  # air (or the padding outside the reconstruction circle)
        core = ndi.binary_erosion(lab == LABELS["Prostate"], np.ones((1, 3, 3), bool))  # away from partial volume
        if case.info["prosthesis"] is None:  # metal streaks darken the gland between the hips
            assert 0 < np.median(a[core]) < 130
        assert np.median(a[lab == LABELS["Femoral head left"]]) > 150  # bone (or a metal hip)
        assert -40 < np.median(a[lab == LABELS["Bladder"]]) < 1100  # urine, or excreted contrast
        body = a[(a > -400) & (a < 400)]
        assert (np.abs(body + 100) < 40).mean() > 0.05  # fat around -100 HU
        assert (np.abs(body - 50) < 30).mean() > 0.05  # muscle / organs


def test_mr_intensity_conventions_vary():
    ranges = {pb.plan_case(s, "mr")[0]["range"] for s in range(30)}
    assert {"float1000", "uint4095", "int16"} <= ranges
    contrasts = {pb.plan_case(s, "mr")[0]["contrast"] for s in range(30)}
    assert contrasts == {"t2", "t2fs", "t1"}
    case = next(pb.make_case_b(s, "mr", SMALL) for s in range(30) if pb.plan_case(s, "mr")[0]["range"] == "uint4095")
    assert case.image.array.dtype == np.uint16 and 1000 < case.image.array.max() < 6000


def test_grids_vary_and_directions_include_oblique_and_flipped():
    kinds: dict[str, set[str]] = {"ct": set(), "mr": set()}
    for m in ("ct", "mr"):
        spacings, thick = [], []
        for s in range(40):
            style, _, grid, info, _ = pb.plan_case(s, m)
            d = grid.direction
            if np.abs(d - np.diag(np.diag(d))).max() > 0.05:
                kinds[m].add("oblique")
            elif np.any(np.diag(d) < 0):
                kinds[m].add("flipped")
            else:
                kinds[m].add("identity")
            assert np.allclose(d.T @ d, np.eye(3), atol=1e-6)
            spacings.append(grid.spacing[0])
            thick.append(grid.spacing[2])
            assert np.prod(grid.shape) <= 512 * 512 * 150 and grid.shape[0] <= 150
        assert 0.39 <= min(spacings) and max(spacings) <= 1.21 and max(spacings) - min(spacings) > 0.3
        assert max(thick) >= 2.5
        assert kinds[m] == {"oblique", "flipped", "identity"}, (m, kinds[m])
    oblique = next(s for s in range(40) if pb.plan_case(s, "mr")[3]["direction_kind"] == "oblique")
    case = pb.make_case_b(oblique, "mr", SMALL)
    d = case.image.direction
    assert np.abs(d - np.diag(np.diag(d))).max() > 0.05  # written with that direction, labels on it
    assert set(np.unique(case.labels.array).tolist()) == {0, *LABELS.values()}


def test_manifest_is_read_and_validated_by_the_engine(tmp_path, capsys):
    out = tmp_path / "b"
    assert pb.main(["--out", str(out), "--cases", "2", "--modality", "ct", "--seed", "5", "--max-voxels", str(SMALL)]) == 0
    pb.write_cases(out, 1, "mr", seed=7, max_voxels=SMALL)  # a second run adds to the same manifest
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [d["event"] for d in lines] == ["case", "case", "done"]
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["format"] == "voxmetric-cases/1"
    records = load_cases(out, "Prostate")
    assert [r.id for r in records] == ["caseb_ct_0005", "caseb_ct_0006", "caseb_mr_0007"]
    assert [r.modality for r in records] == ["ct", "ct", "mr"]
    assert all(r.segment == "Prostate" for r in records)
    validate_cases(records)
    mask = vio.read_segment_mask(records[2].label, "Prostate", reference=vio.read_volume(records[2].image))
    assert mask.array.sum() > 0


def test_family_lives_outside_the_engine_package():
    import voxmetric

    pkg = Path(voxmetric.__file__).parent
    assert not any("phantoms_b" in p.name for p in pkg.rglob("*.py"))
    assert all("phantoms_b" not in p.read_text(encoding="utf-8") for p in pkg.rglob("*.py"))
