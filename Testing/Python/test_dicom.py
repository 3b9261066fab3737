"""DICOM input: listing the series of a study folder, the documented choice rules, explicit
choices, and clear errors for broken series (voxmetric.dicom, io.read_volume, `voxmetric series`).

The multi-series MR study is built at test time around the real T2 series in shared/data
(skipped when absent) with small synthetic series (dicom_helpers)."""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("pydicom", reason="the DICOM tests write series with pydicom (pip install -e '.[dicom]')")

from dicom_helpers import build_ct_study, build_mr_study, link_series, real_series, write_series  # noqa: E402

from voxmetric import dicom, io  # noqa: E402
from voxmetric.cli import main  # noqa: E402
from voxmetric.errors import InputError  # noqa: E402
from voxmetric.volume import Volume  # noqa: E402


@pytest.fixture(scope="module")
def mr_study(tmp_path_factory: pytest.TempPathFactory, shared_data: Path) -> Path:
    return build_mr_study(tmp_path_factory.mktemp("mr_study"), shared_data)


def test_mr_study_listing_and_rule_based_choice(mr_study: Path, shared_data: Path) -> None:
    series = dicom.list_series(mr_study)
    by_desc = {s.description: s for s in series}
    assert [s.index for s in series] == [1, 2, 3, 4, 5]
    assert [s.description for s in series] == ["localizer", "t2_tse_sag", "t2_tse_tra", "ep2d_diff_tra",
                                               "ep2d_diff_tra_ADC"]  # ordered by series number
    t2 = by_desc["t2_tse_tra"]
    assert (t2.modality, t2.size, t2.orientation, t2.usable) == ("MR", (384, 384, 19), "axial", True)
    np.testing.assert_allclose(t2.spacing, (0.5, 0.5, 3.0), atol=1e-5)
    assert by_desc["localizer"].localizer and by_desc["localizer"].orientation == "mixed"
    assert "3 different orientations" in by_desc["localizer"].problem
    assert by_desc["ep2d_diff_tra_ADC"].derived and by_desc["ep2d_diff_tra_ADC"].usable
    assert "38 images at 19 slice positions" in by_desc["ep2d_diff_tra"].problem
    assert by_desc["t2_tse_sag"].orientation == "sagittal" and by_desc["t2_tse_sag"].size[2] == 24
    assert not any(s.localizer or s.derived for s in (t2, by_desc["t2_tse_sag"]))

    # The rules pick the axial T2 over the sagittal T2 that has more slices, the ADC and the localizer.
    choice = dicom.select_series(mr_study)
    assert choice.series.uid == t2.uid and choice.automatic and "rules" in choice.reason
    # io.read_volume reads that series and says so; the voxels equal the real series read alone.
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        vol = io.read_volume(mr_study)
    said = [str(w.message) for w in caught if issubclass(w.category, dicom.SeriesChoiceWarning)]
    assert len(said) == 1 and t2.uid in said[0] and "t2_tse_tra" in said[0]
    alone = io.read_volume(real_series(shared_data))
    assert vol.same_grid(alone, tol=1e-6) and np.array_equal(vol.array, alone.array)
    assert vol.same_grid(t2.grid(), tol=1e-6)
    # An explicit choice by index or UID is honoured, and says nothing.
    with warnings.catch_warnings():
        warnings.simplefilter("error", dicom.SeriesChoiceWarning)
        sag = io.read_volume(mr_study, series=2)
        adc = io.read_volume(mr_study, series=by_desc["ep2d_diff_tra_ADC"].uid)
    assert sag.shape == (24, 40, 40) and adc.shape == (19, 48, 48)
    np.testing.assert_allclose(sag.direction[:, 2], [-1, 0, 0], atol=1e-6)


def test_listing_table_and_cli(mr_study: Path, capsys: pytest.CaptureFixture) -> None:
    assert main(["series", str(mr_study)]) == 0
    out = capsys.readouterr().out
    lines = out.splitlines()
    assert lines[0].split()[:4] == ["#", "MOD", "DESCRIPTION", "SLICES"]
    chosen = [line for line in lines if line.startswith("*")]
    assert len(chosen) == 1 and "t2_tse_tra" in chosen[0] and "384×384×19" in chosen[0] and "axial" in chosen[0]
    assert "segment reads #3" in out
    assert main(["series", str(mr_study), "--json"]) == 0
    import json

    rows = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [r["chosen"] for r in rows] == [False, False, True, False, False]
    assert rows[4]["derived"] and rows[0]["localizer"] and rows[3]["problem"]


def test_two_equally_good_series_ask_for_a_choice(tmp_path: Path, shared_data: Path,
                                                  capsys: pytest.CaptureFixture) -> None:
    study = build_mr_study(tmp_path / "study", shared_data, twin=True)
    with pytest.raises(dicom.SeriesChoiceError, match=r"2 DICOM series .* are equally good") as e:
        io.read_volume(study)
    text = str(e.value)
    assert "--series UID|INDEX" in text and "t2_tse_tra_repeat" in text and "t2_tse_tra " in text
    assert text.count("\n") >= 7  # the listing (header + 6 series) is in the message
    assert io.read_volume(study, series=6).shape == (19, 48, 48)
    assert main(["series", str(study)]) == 0
    out = capsys.readouterr().out
    assert "no automatic choice" in out and not any(line.startswith("*") for line in out.splitlines())


def test_ct_study_skips_scout_and_reformat(tmp_path: Path) -> None:
    study, ct = build_ct_study(tmp_path / "ct")
    series = dicom.list_series(study)
    assert [(s.description, s.localizer, s.derived) for s in series] == [
        ("Topogram 0.6 T20f", True, False), ("Pelvis 2.5 mm", False, False), ("Pelvis cor MPR", False, True)]
    assert series[0].problem == "a single slice, not a volume"
    with pytest.warns(dicom.SeriesChoiceWarning, match="Pelvis 2.5 mm"):
        vol = io.read_volume(study)
    assert vol.same_grid(ct, tol=1e-5) and np.array_equal(vol.array, ct.array)
    # The reformat is readable when asked for; the scout is not a volume.
    assert io.read_volume(study, series=3).shape == (16, 12, 24)
    with pytest.raises(InputError, match=r"series #1 .*Topogram.* cannot be read as one volume: a single slice"):
        io.read_volume(study, series="1")


def test_real_series_missing_a_slice_is_a_clear_error(tmp_path: Path, shared_data: Path) -> None:
    gap = link_series(real_series(shared_data), tmp_path / "gap", skip=(9,))
    with pytest.raises(InputError, match=r"missing slices: a gap of 6\.00 mm .* spacing is 3\.00 mm "
                                         r"\(about 1 of 19 slices absent\)\. Re-export the complete series\.$"):
        io.read_volume(gap)
    with pytest.raises(InputError, match="missing slices"):
        dicom.select_series(gap, 1)


def test_bad_geometry_is_a_clear_error(tmp_path: Path) -> None:
    vol = Volume(np.arange(6 * 8 * 8, dtype=np.int16).reshape(6, 8, 8), (1.0, 1.0, 2.0), (0.0, 0.0, 0.0))
    uneven = [(0.0, 0.0, z) for z in (0.0, 2.0, 4.0, 6.5, 8.5, 10.5)]
    write_series(vol, tmp_path / "uneven", positions=uneven)
    with pytest.raises(InputError, match=r"non-uniform slice spacing \(2\.000 to 2\.500 mm\)"):
        io.read_volume(tmp_path / "uneven")
    tilted = [(0.0, 0.4 * k, 2.0 * k) for k in range(6)]
    write_series(vol, tmp_path / "tilt", positions=tilted)
    with pytest.raises(InputError, match="gantry tilt"):
        io.read_volume(tmp_path / "tilt")
    # A complete synthetic series reads back exactly (file order differs from slice order).
    write_series(vol, tmp_path / "ok")
    back = io.read_volume(tmp_path / "ok")
    assert back.same_grid(vol, tol=1e-5) and np.array_equal(back.array, vol.array)


def test_unknown_choice_and_nothing_qualifies(mr_study: Path, tmp_path: Path) -> None:
    with pytest.raises(dicom.SeriesChoiceError, match=r"No series '9' .* index 1\.\.5 .*\n.*DESCRIPTION"):
        io.read_volume(mr_study, series=9)
    with pytest.raises(dicom.SeriesChoiceError, match=r"No series '1\.2\.3'"):
        dicom.select_series(mr_study, "1.2.3")
    # Only a localizer and an ADC: nothing qualifies, so the message asks for a choice.
    only = tmp_path / "only"
    for name in ("loc", "adc"):
        link_series(mr_study / name, only / name)
    with pytest.raises(dicom.SeriesChoiceError, match=r"None of the 2 DICOM series .* qualifies"):
        dicom.select_series(only)


def test_not_dicom(tmp_path: Path) -> None:
    img = io.write_volume(Volume(np.arange(24, dtype=np.int16).reshape(2, 3, 4)), tmp_path / "x.nrrd")
    with pytest.raises(InputError, match="applies to a DICOM folder"):
        io.read_volume(img, series=1)
    with pytest.raises(InputError, match="is not a folder"):
        dicom.list_series(img)
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "README.txt").write_text("no images here")
    with pytest.raises(InputError, match="No DICOM series found"):
        dicom.list_series(empty)


def test_missing_dicom_extra_is_named(monkeypatch: pytest.MonkeyPatch) -> None:
    import sys

    from voxmetric.errors import VoxMetricError

    monkeypatch.setitem(sys.modules, "highdicom", None)  # as if not installed
    with pytest.raises(VoxMetricError, match=r'highdicom is missing.*pip install "voxmetric\[dicom\]"'):
        dicom.need_dicom_extra()
