"""Two-stage pipeline, the stage-1 localizer method and the `voxmetric segment` / `demo` CLI.

Fast tests use tiny randomly initialised networks whose output layer is forced to a constant
(everywhere prostate / nowhere prostate), so geometry can be checked exactly. Accuracy of the
bundled models is checked in slow tests (skipped when they are absent).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from voxmetric import io
from voxmetric.errors import ConfigError, InputError, ModelError
from voxmetric.markups import read_roi, write_roi
from voxmetric.methods import get_method
from voxmetric.pipeline import Pipeline, PipelineConfig, Stage, roi_from_mask
from voxmetric.volume import Box, Volume

torch.set_num_threads(1)


def _rot_z(deg: float) -> np.ndarray:
    t = np.radians(deg)
    return np.array([[np.cos(t), -np.sin(t), 0], [np.sin(t), np.cos(t), 0], [0, 0, 1.0]])


def _force(model: torch.nn.Module, foreground: bool) -> torch.nn.Module:
    """Make the network output a constant class: prostate everywhere or nowhere."""
    with torch.no_grad():
        model.segb.weight.zero_()
        model.segb.bias.copy_(torch.tensor([-10.0, 10.0] if foreground else [10.0, -10.0]))
    return model


def _stages(loc_fg: bool = True, ref_fg: bool = True, ref_spacing: float = 4.0) -> tuple[Stage, Stage]:
    L = get_method("Localizer")
    lc = L.make_config({"base": 4, "embed_channels": 4})
    R = get_method("MetricUNet-HCP")
    rc = R.make_config({"base": 4, "embed_channels": 4, "spacing_mm": ref_spacing})
    return (Stage(L, lc, _force(L.build(lc), loc_fg), "tiny-loc"),
            Stage(R, rc, _force(R.build(rc), ref_fg), "tiny-ref"))


def _ct(shape=(20, 48, 56), spacing=(3.0, 3.0, 4.0), direction=None) -> Volume:
    """Water cylinder-ish body (0 HU) in air (-1000 HU), an off-centre body."""
    z, y, x = np.indices(shape)
    body = ((y - shape[1] / 2) / (shape[1] * 0.4)) ** 2 + ((x - shape[2] / 2) / (shape[2] * 0.42)) ** 2 < 1
    a = np.where(body, 40, -1000).astype(np.int16)
    return Volume(a, spacing, (-80.0, 20.0, -300.0), np.eye(3) if direction is None else direction)


# ---- the localizer method -------------------------------------------------------------------------
def test_localizer_method_contract() -> None:
    m = get_method("localizer")
    cfg = m.default_config()
    assert m.role == "localizer" and m.name == "Localizer"
    r = m.data_recipe(cfg)
    assert (r.spacing_mm, cfg.slab, cfg.patch, r.region) == (4.0, 5, 64, "body")
    net = m.build(cfg)
    assert net.in_channels == 5 and net.embed_channels == 32
    assert net.conv4c[0].in_channels == 256 and net.conv6c[0].out_channels == 32  # symmetric decoder
    net = m.build(m.make_config({"base": 4, "embed_channels": 4}))
    net.eval()
    from voxmetric.methods import Runtime

    p = m.predict(net, cfg, np.random.rand(6, 30, 44).astype(np.float32) * 255, Runtime(torch.device("cpu")))
    assert p.shape == (2, 6, 30, 44) and float(p.min()) >= 0 and float(p.max()) <= 1
    net.train()
    batch = {"image": torch.rand(3, 5, 16, 16) * 255, "label": (torch.rand(3, 16, 16) > 0.5).long()}
    loss, logs = m.loss(net, batch, cfg, None)
    loss.backward()
    assert loss.ndim == 0 and "ce" in logs and net.conv1a[0].weight.grad is not None
    with pytest.raises(ConfigError, match="odd"):
        m.make_config({"slab": 4})


def test_localizer_loss_falls() -> None:
    torch.manual_seed(0)
    m = get_method("Localizer")
    cfg = m.make_config({"base": 4, "embed_channels": 4})
    net = m.build(cfg)
    opt = torch.optim.Adam(net.parameters(), 1e-2)
    x = torch.zeros(4, 5, 16, 16)
    x[:, :, 4:10, 4:10] = 200.0
    y = (x[:, 2] > 100).long()
    losses = []
    for i in range(15):
        loss, _ = m.loss(net, {"image": x, "label": y}, cfg, None)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.5 * losses[0]


# ---- ROI rules ------------------------------------------------------------------------------------------
def test_roi_extent_margin_and_clamps() -> None:
    a = np.zeros((30, 40, 40), np.uint8)
    a[10:20, 15:25, 12:18] = 1  # 40 x 40 x 24 mm at 4 mm (z, y, x index extents 10, 10, 6)
    mask = Volume(a, (4.0, 4.0, 4.0), (10.0, -5.0, 3.0), _rot_z(20))
    box, centroid = roi_from_mask(mask, PipelineConfig())
    # extent + 2 x 15 mm = x: 24+30=54 -> clamped to 60; y: 40+30=70; z: 40+30=70
    np.testing.assert_allclose(box.size, [60.0, 70.0, 70.0])
    np.testing.assert_allclose(box.axes, mask.direction)
    np.testing.assert_allclose(box.center, mask.index_to_physical([14.5, 19.5, 14.5]), atol=1e-6)
    np.testing.assert_allclose(centroid, box.center, atol=1e-6)
    big = np.zeros((60, 60, 60), np.uint8)
    big[5:55, 5:55, 5:55] = 1  # 200 mm -> clamped to 128
    box, _ = roi_from_mask(Volume(big, (4.0, 4.0, 4.0)), PipelineConfig())
    np.testing.assert_allclose(box.size, [128.0] * 3)
    box, c = roi_from_mask(mask, PipelineConfig(roi_rule="fixed"))
    np.testing.assert_allclose(box.size, [128.0] * 3)
    np.testing.assert_allclose(box.center, c)
    with pytest.raises(ConfigError, match="ROI rule"):
        PipelineConfig(roi_rule="union")
    with pytest.raises(InputError, match="empty"):
        roi_from_mask(Volume(np.zeros((4, 4, 4), np.uint8)))


def test_canonical_box_and_oriented_volume() -> None:
    from voxmetric.pipeline import canonical_box, oriented

    flip = np.diag([1.0, -1.0, -1.0])
    perm = np.array([[0, 0, 1], [1, 0, 0], [0, 1, 0.0]])  # index x -> LPS y, y -> z, z -> x
    box = Box((1.0, 2.0, 3.0), (10.0, 20.0, 30.0), perm @ flip)
    c = canonical_box(box)
    np.testing.assert_allclose(c.axes, np.eye(3), atol=1e-12)
    np.testing.assert_allclose(c.size, [30.0, 10.0, 20.0])
    np.testing.assert_allclose(np.sort(c.corners, axis=0), np.sort(box.corners, axis=0))
    tilted = Box((0, 0, 0), (10.0, 20.0, 30.0), _rot_z(30))
    np.testing.assert_allclose(canonical_box(tilted).axes, tilted.axes)
    vol = _ct(direction=flip)
    o = oriented(vol)
    np.testing.assert_allclose(o.direction, np.eye(3))
    assert o.array.dtype == vol.array.dtype
    p = np.array([[3.0, 4.0, 5.0]])
    i1 = np.round(vol.physical_to_index(vol.index_to_physical(p))).astype(int)[0]
    i2 = np.round(o.physical_to_index(vol.index_to_physical(p))).astype(int)[0]
    assert vol.array[i1[2], i1[1], i1[0]] == o.array[i2[2], i2[1], i2[0]]
    np.testing.assert_allclose(o.array, vol.array[::-1, ::-1, :])


# ---- localize / refine / segment ------------------------------------------------------------------------
def test_segment_end_to_end_geometry() -> None:
    loc, ref = _stages()
    vol = _ct()
    pipe = Pipeline(loc, ref, "ct", PipelineConfig(batch_size=8))
    calls = []
    res = pipe.segment(vol, progress=lambda d, t, m: calls.append((d, t, m)))
    assert res.found and res.confidence > 0.99
    assert res.mask.same_grid(vol) and res.mask.array.dtype == np.uint8
    # the coarse mask is the whole body: the extent rule clamps at 128 mm in-plane
    assert res.localization.coarse_mask.spacing.tolist() == [4.0, 4.0, 4.0]
    prob, kept = res.localization.probability, res.localization.coarse_mask.array > 0
    assert prob is not None and prob.same_grid(res.localization.coarse_mask) and prob.array.dtype == np.float32
    assert float(prob.array[kept].mean()) == pytest.approx(res.confidence)
    np.testing.assert_allclose(res.box.size[:2], [128.0, 128.0])
    np.testing.assert_allclose(res.box.axes, vol.direction)
    # nothing outside the box, and (the refiner says "prostate" everywhere) the box interior is filled
    z, y, x = np.indices(vol.shape)
    pts = vol.index_to_physical(np.stack([x, y, z], -1).astype(float))
    inside = res.box.contains(pts)
    assert res.mask.array[~inside].sum() == 0
    shrunk = Box(res.box.center, res.box.size - 2 * 4.0, res.box.axes)
    assert res.mask.array[shrunk.contains(pts)].all()
    assert set(res.timings) == {"localize", "refine", "total"} and res.timings["total"] > 0
    assert calls[-1][:2] == (100, 100) and all(0 <= d <= 100 for d, _, _ in calls)
    assert [d for d, _, _ in calls] == sorted(d for d, _, _ in calls)


def test_refine_rotated_box_and_input_grid() -> None:
    _, ref = _stages()
    direction = _rot_z(-8)  # an oblique scan
    vol = _ct(direction=direction)
    centre = vol.index_to_physical(np.array([28.0, 24.0, 10.0]))
    box = Box(centre, (50.0, 30.0, 40.0), _rot_z(35))
    mask = Pipeline(None, ref, "ct").refine(vol, box)
    assert mask.same_grid(vol)
    z, y, x = np.indices(vol.shape)
    pts = vol.index_to_physical(np.stack([x, y, z], -1).astype(float))
    assert mask.array.sum() > 0 and mask.array[~box.contains(pts)].sum() == 0
    core = Box(box.center, np.asarray(box.size) - 8.0, box.axes)
    assert mask.array[core.contains(pts)].all()
    # an axis-aligned box of the same size would include voxels the rotated one excludes
    aligned = Box(box.center, box.size, vol.direction)
    assert (aligned.contains(pts) & ~box.contains(pts)).any()


def test_not_found_gives_default_box_and_empty_mask() -> None:
    loc, ref = _stages(loc_fg=False)
    vol = _ct()
    res = Pipeline(loc, ref, "ct").segment(vol)
    assert not res.found and res.confidence == 0.0
    assert "No prostate was found" in res.message
    assert res.mask.array.sum() == 0 and res.mask.same_grid(vol)
    np.testing.assert_allclose(res.box.size, [128.0] * 3)
    # in-plane: body centre; z: in the lower half of the scan
    zs = Box.from_volume_extent(vol).corners[:, 2]
    assert zs.min() < res.box.center[2] <= (zs.min() + zs.max()) / 2 + 1e-6
    assert abs(res.box.center[0] - vol.index_to_physical([27.5, 23.5, 0])[0]) < 8


class _Bright:
    """A stand-in network for both stages: the brighter the normalised centre slice, the more
    prostate (logits ±(v − 160) / 30: soft tissue of 40 HU is background, 150 HU or more prostate)."""

    kind = "onnx"

    def __call__(self, x: np.ndarray) -> np.ndarray:
        d = (x[:, x.shape[1] // 2] - 160.0) / 30.0
        return np.stack([-d, d], 1).astype(np.float32)


def test_stage2_checks_stage1_and_refines_the_next_region() -> None:
    """Two bright regions: the most confident (250 HU, 4 mL) refines to an implausible prostate,
    so the second (150 HU, 29 mL) is refined and used; with ``candidates=1`` it is not."""
    L, R = get_method("Localizer"), get_method("MetricUNet-HCP")
    lc, rc = L.make_config({"base": 4, "embed_channels": 4}), R.make_config({"base": 4, "embed_channels": 4})
    loc, ref = Stage(L, lc, None, "bright-loc", network=_Bright()), Stage(R, rc, None, "bright-ref", network=_Bright())
    z, y, x = np.indices((60, 70, 70)) * 2.0
    a = np.where((y - 70) ** 2 + (x - 70) ** 2 < 60 ** 2, 40, -1000)
    small = (z - 24) ** 2 + (y - 70) ** 2 + (x - 70) ** 2 < 10 ** 2
    large = (z - 90) ** 2 + (y - 70) ** 2 + (x - 70) ** 2 < 19 ** 2
    vol = Volume(np.where(small, 250, np.where(large, 150, a)).astype(np.int16), (2.0, 2.0, 2.0))
    stage1 = Pipeline(loc, ref, "ct").localize(vol)
    assert stage1.found and len(stage1.alternatives) == 1
    assert stage1.confidence > stage1.alternatives[0].confidence >= 0.5
    assert stage1.box.contains(vol.index_to_physical([[35, 35, 12]]))[0]

    def ml(res) -> float:
        return float(res.mask.array.sum()) * 8 / 1000

    calls: list[tuple[int, int, str]] = []
    res = Pipeline(loc, ref, "ct").segment(vol, progress=lambda d, t, m: calls.append((d, t, m)))
    assert res.found and 20 < ml(res) < 40 and not (res.mask.array > 0)[small].any()
    assert res.confidence == pytest.approx(stage1.alternatives[0].confidence)
    assert res.box.contains(vol.index_to_physical([[35, 35, 45]]))[0]
    assert "implausible volume" in res.message and "region 2" in res.message
    assert res.localization is not None and res.localization.coarse_mask.array.sum() > 0
    assert any("refining region 2" in m for _, _, m in calls)
    assert [d for d, _, _ in calls] == sorted(d for d, _, _ in calls)
    first = Pipeline(loc, ref, "ct", PipelineConfig(candidates=1)).segment(vol)
    assert first.found and ml(first) < 10 and first.message == "" and not first.localization.alternatives
    with pytest.raises(ConfigError, match="candidates"):
        PipelineConfig(candidates=0)


def test_stage2_keeps_a_gland_it_split_when_stage1_found_it_whole() -> None:
    """A bright gland with one dark 2 mm slice through its middle: the refiner's 1.5 mm slices
    miss that slice, so its result has two pieces. Stage 1 (4 mm) found the gland whole, so both
    pieces are kept; refining the same box without stage 1 keeps the larger piece only."""
    L, R = get_method("Localizer"), get_method("MetricUNet-HCP")
    lc, rc = L.make_config({"base": 4, "embed_channels": 4}), R.make_config({"base": 4, "embed_channels": 4})
    loc, ref = Stage(L, lc, None, "bright-loc", network=_Bright()), Stage(R, rc, None, "bright-ref", network=_Bright())
    z, y, x = np.indices((60, 70, 70)) * 2.0
    gland = (z - 60) ** 2 + (y - 70) ** 2 + (x - 70) ** 2 < 20 ** 2
    img = np.where(gland, 200, np.where((y - 70) ** 2 + (x - 70) ** 2 < 60 ** 2, 40, -1000))
    img[30][gland[30]] = 40
    vol = Volume(img.astype(np.int16), (2.0, 2.0, 2.0))
    pipe = Pipeline(loc, ref, "ct")
    res = pipe.segment(vol)
    assert res.found and res.pieces == {"Prostate": 2}
    slices = np.flatnonzero((res.mask.array > 0).any((1, 2)))
    assert slices.min() <= 22 and slices.max() >= 38 and 30 not in slices  # both halves
    assert "2 separate pieces before clean-up (2 kept: the largest and those touching" in res.qc("ct").line()
    alone = np.flatnonzero((pipe.refine(vol, res.box).array > 0).any((1, 2)))
    assert alone.max() < 30 or alone.min() > 30  # one half


def test_small_region_is_not_found() -> None:
    loc, ref = _stages()
    pipe = Pipeline(loc, ref, "ct", PipelineConfig(min_volume_mm3=1e9))
    res = pipe.segment(_ct(), stage="localize")
    assert not res.found and res.mask is None and "small" in res.message


def test_stage_errors() -> None:
    loc, ref = _stages()
    with pytest.raises(InputError, match="ROI box"):
        Pipeline(loc, ref, "ct").segment(_ct(), stage="refine")
    with pytest.raises(ConfigError, match="no localizer"):
        Pipeline(None, ref, "ct").localize(_ct())
    with pytest.raises(ConfigError, match="modality"):
        Pipeline(loc, ref, "pet")
    with pytest.raises(InputError, match="3D"):
        Volume(np.zeros((10, 10)))


# ---- CLI -----------------------------------------------------------------------------------------
@pytest.fixture()
def tiny_models(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Tiny CT packages in an empty bundled-models folder (+ an empty user home)."""
    return _tiny_bundle(tmp_path, monkeypatch, "ct")


def _tiny_bundle(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, modality: str) -> Path:
    from voxmetric import models

    bundled = tmp_path / "bundled"
    monkeypatch.setenv("VOXMETRIC_BUNDLED_MODELS", str(bundled))
    monkeypatch.setenv("VOXMETRIC_HOME", str(tmp_path / "home"))
    for stage in _stages():
        m, cfg = stage.method, stage.cfg
        card = {"name": stage.name, "method": m.name, "role": m.role, "modality": modality,
                "config": m.config_to_dict(cfg), "data": m.card_data(cfg)}
        models.save_package(bundled / stage.name, card, stage.model.state_dict())
    return bundled


class _Run:
    def __init__(self, returncode: int, stdout: str, stderr: str) -> None:
        self.returncode, self.stdout, self.stderr = returncode, stdout, stderr


@pytest.fixture()
def cli(capsys: pytest.CaptureFixture):
    """Run ``voxmetric ARGS`` in this process (cli.main); returns exit code and captured output."""
    from voxmetric.cli import main

    def run(*args: str) -> _Run:
        capsys.readouterr()
        try:
            rc = main(list(args))
        finally:
            torch.set_num_threads(1)
        out = capsys.readouterr()
        return _Run(rc, out.out, out.err)

    return run


def test_cli_segment_then_localize_refine(tiny_models: Path, tmp_path: Path, cli) -> None:
    img = io.write_volume(_ct(), tmp_path / "scan.nrrd")
    out = tmp_path / "out" / "scan.seg.nrrd"
    r = cli("segment", str(img), "-o", str(out), "--events-jsonl", "--device", "cpu")
    assert r.returncode == 0, r.stderr
    events = [json.loads(line) for line in r.stdout.splitlines() if line.startswith("{")]
    done = events[-1]
    assert done["event"] == "done" and done["localized"] is True
    # the forced model fills the whole box: QC says so and "found" stays False (never a success line)
    assert done["found"] is False and done["qc"]["verdict"] == "CHECK" and "roi_border" in done["qc"]["codes"]
    assert done["verdict"].startswith("result: CHECK") and done["uncertainty"]["kind"].startswith("normalised entropy")
    assert {"localize", "refine", "total"} <= set(events[-1]["timings"])
    assert any(e["event"] == "progress" for e in events)
    mask = io.read_segment_mask(out, "Prostate", reference=io.read_volume(img))
    assert mask.array.sum() > 0
    box = read_roi(tmp_path / "out" / "scan_roi.mrk.json")
    timings = json.loads((tmp_path / "out" / "scan_timings.json").read_text(encoding="utf-8"))
    assert timings["localized"] is True and timings["qc"] == done["qc"] and timings["timings"]["total"] > 0

    # --stage localize writes only the ROI; --stage refine reads it back (moved by the "user")
    roi = tmp_path / "roi.mrk.json"
    r = cli("segment", str(img), "-o", str(tmp_path / "loc.seg.nrrd"), "--stage", "localize", "--roi-out", str(roi),
             "--events-jsonl")
    assert r.returncode == 0, r.stderr
    assert not (tmp_path / "loc.seg.nrrd").exists()
    np.testing.assert_allclose(read_roi(roi).center, box.center, atol=1e-4)
    moved = Box(box.center + np.array([5.0, 0, 0]), (40.0, 40.0, 40.0), _rot_z(30))
    write_roi(moved, roi)
    r = cli("segment", str(img), "-o", str(tmp_path / "ref.seg.nrrd"), "--stage", "refine", "--roi-file", str(roi))
    assert r.returncode == 0, r.stderr
    ref_mask = io.read_segment_mask(tmp_path / "ref.seg.nrrd", "Prostate", reference=io.read_volume(img))
    vol = io.read_volume(img)
    z, y, x = np.indices(vol.shape)
    pts = vol.index_to_physical(np.stack([x, y, z], -1).astype(float))
    assert ref_mask.array.sum() > 0 and ref_mask.array[~moved.contains(pts)].sum() == 0


def test_cli_errors(tiny_models: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, cli) -> None:
    flat = tmp_path / "flat.nrrd"
    import SimpleITK as sitk

    sitk.WriteImage(sitk.GetImageFromArray(np.zeros((16, 16), np.int16)), str(flat))
    r = cli("segment", str(flat), "-o", str(tmp_path / "x.seg.nrrd"), "--events-jsonl")
    assert r.returncode == 2 and "2D" in r.stderr
    assert json.loads(r.stdout.splitlines()[-1])["event"] == "error"
    img = io.write_volume(_ct(), tmp_path / "scan.nrrd")
    r = cli("segment", str(img), "-o", str(tmp_path / "x.seg.nrrd"), "--model", "no-such-model")
    assert r.returncode == 2 and "no-such-model" in r.stderr
    r = cli("segment", str(img), "-o", str(tmp_path / "x.seg.nrrd"), "--stage", "refine")
    assert r.returncode == 2 and "--roi-file" in r.stderr
    r = cli("segment", str(img), "-o", str(tmp_path / "x.seg.nrrd"), "--candidates", "0")
    assert r.returncode == 2 and "candidates (stage-1 regions stage 2 may try) must be at least 1, got 0" in r.stderr
    monkeypatch.setenv("VOXMETRIC_BUNDLED_MODELS", str(tmp_path / "none"))
    r = cli("segment", str(img), "-o", str(tmp_path / "x.seg.nrrd"))
    assert r.returncode == 2 and "no refiner model for CT images" in r.stderr
    r = cli("demo", "--out", str(tmp_path / "demo"))
    assert r.returncode == 2 and "train_bundled_models.py" in r.stderr


def test_cli_batch_folder(tiny_models: Path, tmp_path: Path, cli) -> None:
    src = tmp_path / "in"
    io.write_volume(_ct(), src / "a.nrrd")
    io.write_volume(_ct(shape=(16, 40, 40)), src / "b.nii.gz")
    r = cli("segment", str(src), "-o", str(tmp_path / "out"), "--events-jsonl")
    assert r.returncode == 0, r.stderr
    for stem in ("a", "b"):
        assert (tmp_path / "out" / f"{stem}.seg.nrrd").exists()
        assert (tmp_path / "out" / f"{stem}_roi.mrk.json").exists()
    assert json.loads(r.stdout.splitlines()[-1])["cases"] == 2


def test_cli_demo_shows_ct_and_mr(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, cli) -> None:
    """``voxmetric demo``: a CT and an MR phantom through the default pipeline of each modality
    (tiny 'any' models that mark everything, small phantoms: the files and numbers are checked)."""
    from voxmetric import phantom

    _tiny_bundle(tmp_path, monkeypatch, "any")
    make_case = phantom.make_case
    monkeypatch.setattr(phantom, "make_case", lambda seed, modality: make_case(seed, modality, (30, 72, 72),
                                                                               (3.0, 3.0, 4.0)))
    out = tmp_path / "demo"
    r = cli("demo", "--out", str(out), "--seed", "3")
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    assert [x.split(":")[0] for x in lines if "DSC" in x] == ["CT", "MR"], r.stdout
    report = json.loads((out / "metrics.json").read_text())
    assert [c["modality"] for c in report["cases"]] == ["ct", "mr"] and report["seed"] == 3
    for case in report["cases"]:
        assert case["models"] == ["tiny-loc", "tiny-ref"] and case["found"] is True
        assert 0 < case["metrics"]["dsc"] < 1 and case["metrics"]["vol_ref_ml"] > 0
        m = case["modality"]
        image = io.read_volume(out / f"{m}_phantom.nrrd")
        truth = io.read_segment_mask(out / f"{m}_truth.seg.nrrd", "Prostate", reference=image).array > 0
        pred = io.read_segment_mask(out / f"{m}_prediction.seg.nrrd", "Prostate", reference=image).array > 0
        from voxmetric.metrics import evaluate_masks

        assert evaluate_masks(pred, truth, image.spacing_zyx)["dsc"] == pytest.approx(case["metrics"]["dsc"], abs=1e-4)
        assert (out / f"{m}_prediction_roi.mrk.json").is_file()
    ct, mr = (io.read_volume(out / f"{m}_phantom.nrrd") for m in ("ct", "mr"))
    assert ct.array.min() < -500 < mr.array.min()  # a CT in HU and an MR
    pytest.importorskip("matplotlib")
    assert (out / "overview.png").stat().st_size > 10_000
    r = cli("demo", "--out", str(out), "--modality", "mr")
    assert r.returncode == 2 and "mr_phantom.nrrd already exists" in r.stderr


# ---- real data and bundled models ----------------------------------------------------------------
def _bundled_pipeline(modality: str = "ct") -> Pipeline:
    from voxmetric import models

    try:
        return models.load_pipeline(None, modality, "cpu")
    except ModelError as e:
        pytest.skip(f"no bundled models: {e}")


@pytest.mark.slow
def test_real_ct_box_in_low_pelvis(shared_data: Path) -> None:
    # measured with the synth models: stage 1's most confident region is the gland, 18.9 mL at slices 1-7 (the
    # prostate is at slices 2-6); before the localizer's self-training it was the rectum above (6.3 mL at slices
    # 20-22) and stage 2's check used the second region (18.0 mL); the former demo-ct pipeline: an empty mask
    vol = io.read_volume(shared_data / "pelvis_ct" / "example_ct.nii.gz")
    res = _bundled_pipeline().segment(vol)
    assert res.mask.same_grid(vol)
    x, y, z = vol.physical_to_index(res.box.center)
    assert 0 <= x < vol.shape[2] and 0 <= y < vol.shape[1]
    body = vol.array > -500
    assert body[int(np.clip(round(z), 0, vol.shape[0] - 1)), int(round(y)), int(round(x))], "box centre not in the body"
    assert z < vol.shape[0] / 3, f"box centre at slice {z:.1f}, not in the lowest third"
    kept = np.nonzero(res.mask.array)[0]
    assert res.found and 10 <= res.mask.array.sum() * 27 / 1000 <= 60 and kept.max() <= 12, (kept.min(), kept.max())


# measured with the bundled synth pipeline on phantom seed 777 (Testing/Benchmarks/eval_bundled_models.py has
# the distribution over held-out phantoms): CT DSC 0.489, MR DSC 0.694 (0.731 before the localizer's
# self-training) — the thresholds sit a little below
@pytest.mark.slow
@pytest.mark.parametrize("modality, min_dsc", [("ct", 0.45), ("mr", 0.66)])
def test_bundled_models_phantom_dice(modality: str, min_dsc: float) -> None:
    from voxmetric.metrics import evaluate_masks
    from voxmetric.phantom import LABELS, make_case

    pipe = _bundled_pipeline(modality)
    case = make_case(777, modality)
    res = pipe.segment(case.image)
    truth = case.labels.array == LABELS["Prostate"]
    m = evaluate_masks(res.mask.array, truth, case.image.spacing_zyx)
    assert res.found and m["dsc"] >= min_dsc, m


@pytest.mark.slow
def test_real_promise12_small_stage1_core_is_reported_and_flagged(shared_data: Path) -> None:
    # measured with the synth models: on PROMISE12 case 1 (files that say 1 mm: a 15 mL gland) stage 1's core above
    # 0.5 is 1.8 mL on the gland, under the former 2 mL minimum; at 1 mL it is reported and refined to 8.0 mL,
    # DSC 0.654 (5.9 mL, 0.521 when stage 2 kept only its largest piece: it splits this gland at slice 17), which
    # the QC flags as implausible (CHECK, not "found"); case 0's 0.3 mL core stays unreported
    from voxmetric.metrics import evaluate_masks
    from voxmetric.pipeline import _found

    pipe = _bundled_pipeline("mr")
    results = {}
    for case in (0, 1):
        folder = shared_data / "promise12_demo"
        vol = io.read_volume(folder / f"case{case}_t2w_UNKNOWN_SPACING.nii.gz")
        truth = io.read_volume(folder / f"case{case}_prostate_label_UNKNOWN_SPACING.nii.gz").array > 0
        res = pipe.segment(vol)
        report = res.qc("mr")
        results[case] = (res.found, _found(res, report), report.codes)
        if case == 1:
            dsc = evaluate_masks(res.mask.array > 0, truth, vol.spacing_zyx)["dsc"]
            assert dsc > 0.6, dsc
    assert not results[0][0]
    assert results[1][0] and not results[1][1] and "volume" in results[1][2], results
