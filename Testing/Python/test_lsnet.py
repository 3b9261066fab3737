"""L-SNet (METHODS.md §4, §6.2 option B): the RoI recalibration and its inverse, heatmap targets,
keypoints, γ gradient decay, both L-SNet methods training through the generic trainer, LNet
localising a CT phantom's prostate, and both being selectable where users pick models."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import ROOT
from voxmetric.data import PreparedCase
from voxmetric.intensity import normalize_ct
from voxmetric.learning.lsnet import (diou_loss, heatmap_targets, inference_keypoints, lnet_loss, object_boxes,
                                      one_vs_rest_logits, training_keypoints, warp_labels)
from voxmetric.methods import get_method
from voxmetric.nets.lsnet import (LNet, LSNet, cell_to_pixel, inverse_theta, merge_rois, paste_back, recalibrate,
                                  roi_theta, scale_gradient)
from voxmetric.phantom import LABELS, make_case
from voxmetric.pipeline import Pipeline, Stage, oriented
from voxmetric.training import TrainConfig, train

torch.set_num_threads(1)
TINY_LNET = {"canvas": 64, "per_case": 8, "lnet_base": 4, "head_channels": 8, "spacing_mm": 1.0}
TINY_LSNET = {**TINY_LNET, "roi_size": 32, "snet_base": 4, "snet_embed": 8}


def dice(a: np.ndarray, b: np.ndarray) -> float:
    return 2.0 * float(np.logical_and(a, b).sum()) / max(float(a.sum() + b.sum()), 1.0)


def blob(h: int = 16, w: int = 20) -> torch.Tensor:
    """A smooth float64 image (1, 1, h, w): a Gaussian plus a ramp (no flat regions)."""
    y, x = torch.meshgrid(torch.arange(h, dtype=torch.float64), torch.arange(w, dtype=torch.float64), indexing="ij")
    return (torch.exp(-((x - 9.3) ** 2 + (y - 7.1) ** 2) / 18.0) + 0.03 * x - 0.02 * y)[None, None]


# ---- the RoI recalibration and its inverse ----------------------------------------------------------------
def test_recalibration_gradcheck_wrt_box_distances() -> None:
    img = blob()
    kp = torch.tensor([[9.37, 7.63]], dtype=torch.float64)
    d = torch.tensor([[3.31, 4.13, 2.71, 3.58]], dtype=torch.float64, requires_grad=True)

    def warp(dist: torch.Tensor) -> torch.Tensor:
        return recalibrate(img, roi_theta(kp, dist, img.shape[-2:], margin=1.45), (9, 11))

    # bilinear sampling has kinks at integer pixel positions: keep every sample point off them
    grid = torch.nn.functional.affine_grid(roi_theta(kp, d.detach(), (16, 20), 1.45), [1, 1, 9, 11], align_corners=True)
    pixels = (grid + 1) / 2 * torch.tensor([19.0, 15.0], dtype=torch.float64)
    assert ((pixels - pixels.round()).abs() > 1e-3).all()

    assert torch.autograd.gradcheck(warp, (d,), eps=1e-6, atol=1e-6, rtol=1e-4)
    warp(d).square().sum().backward()
    assert d.grad is not None and (d.grad.abs() > 1e-4).all()  # every distance moves the RoI


def test_theta_places_the_roi_on_the_box_plus_margin() -> None:
    kp, d = torch.tensor([[20.0, 10.0]]), torch.tensor([[4.0, 6.0, 2.0, 8.0]])
    theta = roi_theta(kp, d, (32, 48), margin=3.0)
    corners = torch.tensor([[-1.0, -1.0, 1.0], [1.0, 1.0, 1.0]]) @ theta[0].T  # normalised (x, y)
    pixels = (corners + 1) / 2 * torch.tensor([47.0, 31.0])
    assert torch.allclose(pixels, torch.tensor([[20 - 4 - 3.0, 10 - 2 - 3.0], [20 + 6 + 3.0, 10 + 8 + 3.0]]), atol=1e-5)
    again = inverse_theta(inverse_theta(theta, eps=0.0), eps=0.0)
    assert torch.allclose(again, theta, atol=1e-6)


def test_forward_then_inverse_mapping_restores_a_mask_inside_the_roi() -> None:
    h, w = 96, 128
    y, x = np.mgrid[0:h, 0:w]
    mask = (((x - 70.3) / 14.0) ** 2 + ((y - 41.7) / 9.0) ** 2 <= 1.0)
    x0, y0, x1, y1 = object_boxes(mask.astype(np.uint8))[0]
    kp = torch.tensor([[70.0, 42.0]])
    d = torch.tensor([[70.0 - x0, x1 - 70.0, 42.0 - y0, y1 - 42.0]])
    theta = roi_theta(kp, d, (h, w), margin=15.0)
    m = torch.from_numpy(mask.astype(np.float32))[None, None]
    roi = recalibrate(m, theta, (64, 64))
    expected = mask.sum() / ((x1 - x0 + 30) * (y1 - y0 + 30))  # the object's share of box + 15 px margins
    assert abs(float((roi > 0.5).float().mean()) - expected) < 0.01
    back = paste_back(roi, theta, (h, w))[0, 0].numpy() > 0.5
    inside = np.zeros_like(mask)
    inside[int(y0 - 15):int(y1 + 15) + 1, int(x0 - 15):int(x1 + 15) + 1] = True
    assert dice(back & inside, mask & inside) >= 0.98
    assert not back[~inside].any()  # zeros outside the RoI
    # labels warp the same way (bilinear, > 0.5)
    lab = warp_labels(torch.from_numpy(mask.astype(np.int64))[None], theta, 64, 2)
    assert torch.equal(lab[0] > 0, roi[0, 0] > 0.5)


def test_several_rois_merge_by_max() -> None:
    pasted = torch.tensor([[[[0.2, 0.9]]], [[[0.7, 0.1]]], [[[0.4, 0.4]]]])  # 3 RoIs, (1, 1, 2)
    merged = merge_rois(pasted, torch.tensor([0, 0, 1]), 2)
    assert torch.allclose(merged, torch.tensor([[[[0.7, 0.9]]], [[[0.4, 0.4]]]]))


# ---- γ ---------------------------------------------------------------------------------------------------------
def test_gamma_scales_gradients_only_backwards() -> None:
    x = torch.randn(5, requires_grad=True)
    y = scale_gradient(x, 0.1)
    assert torch.equal(y, x)
    (y * torch.arange(5.0)).sum().backward()
    assert x.grad is not None and torch.allclose(x.grad, 0.1 * torch.arange(5.0))


def test_snet_loss_reaches_lnet_scaled_by_gamma() -> None:
    """The S-Net loss's gradient on L-Net's box head is γ times the undamped one; S-Net's is whole."""
    torch.manual_seed(0)
    net = LSNet(in_channels=1, lnet_base=2, head_channels=4, snet_base=2, snet_embed=4, roi_size=16, margin=2.0)
    x = torch.rand(2, 1, 32, 32) * 255
    grads = {}
    for gamma in (1.0, 0.1, 0.0):
        net.zero_grad()
        _, _, theta, seg = net(x, mode="joint", select=lambda heat: torch.tensor([[3, 4], [5, 2]]), gamma=gamma)
        seg.square().mean().backward()
        grads[gamma] = ([p.grad.clone() for p in net.lnet.bbr.parameters()],  # type: ignore[union-attr]
                        [p.grad.clone() for p in net.snet.parameters()])  # type: ignore[union-attr]
    for full, decayed in zip(grads[1.0][0], grads[0.1][0]):
        assert torch.allclose(decayed, 0.1 * full, rtol=1e-4, atol=1e-9)
    assert any(g.abs().sum() > 0 for g in grads[1.0][0])
    assert all(torch.equal(g, torch.zeros_like(g)) for g in grads[0.0][0])
    assert all(torch.allclose(a, b) for a, b in zip(grads[1.0][1], grads[0.0][1]))


# ---- targets, keypoints, losses --------------------------------------------------------------------------------
def test_heatmap_targets_peak_at_object_centres() -> None:
    lab = np.zeros((64, 96), np.uint8)
    lab[10:22, 12:30] = 1  # centre (x, y) = (20.5, 15.5) pixels
    lab[40:58, 60:90] = 2  # centre (74.5, 48.5)
    heat, boxes, n = heatmap_targets(lab, stride=4, sigma=2.0)
    assert n == 2 and heat.shape == (16, 24) and boxes.shape == (4, 16, 24)
    for (cx, cy), box in (((20.5, 15.5), (11.5, 9.5, 29.5, 21.5)), ((74.5, 48.5), (59.5, 39.5, 89.5, 57.5))):
        cell = (round((cy - 1.5) / 4), round((cx - 1.5) / 4))
        window = heat[cell[0] - 2:cell[0] + 3, cell[1] - 2:cell[1] + 3]
        assert heat[cell] == window.max() and heat[cell] > 0.95
        assert np.allclose(boxes[:, cell[0], cell[1]], box)
    pixel = cell_to_pixel(torch.tensor([[3.0, 4.0]]))
    assert torch.equal(pixel, torch.tensor([[13.5, 17.5]]))  # I-40: s·i + (s − 1)/2
    assert heatmap_targets(np.zeros((32, 32), np.uint8))[2] == 0


def test_keypoints_for_training_and_inference() -> None:
    heat = torch.full((1, 1, 12, 12), -5.0)
    for (r, c), v in (((2, 3), 4.0), ((8, 8), 3.0), ((5, 10), 2.0), ((10, 1), 1.0)):
        heat[0, 0, r, c] = v
    heat[0, 0, 2, 4] = 3.9  # a shoulder of the first peak: suppressed by the 3×3 max-pool
    torch.manual_seed(0)
    picks = {tuple(training_keypoints(heat)[0].tolist()) for _ in range(60)}
    assert picks == {(2, 3), (8, 8), (5, 10)}  # the top-3 peaks, each picked
    prob = np.zeros((12, 12), np.float32)
    prob[1:4, 2:5] = 0.9
    prob[8, 8] = 0.7
    kps = inference_keypoints(prob, 0.5)
    assert [(round(r, 3), round(c, 3)) for r, c, _ in kps] == [(2.0, 3.0), (8.0, 8.0)]
    assert [p for *_, p in kps] == pytest.approx([0.9, 0.7])


def test_diou_and_lnet_loss() -> None:
    a = torch.tensor([[0.0, 0.0, 4.0, 4.0], [0.0, 0.0, 2.0, 2.0]])
    b = torch.tensor([[0.0, 0.0, 4.0, 4.0], [6.0, 6.0, 8.0, 8.0]])
    loss = diou_loss(a, b)
    assert loss[0].abs() < 1e-6 and loss[1] > 1.0  # identical: 0; disjoint: 1 + ρ²/c²
    lab = np.zeros((32, 32), np.uint8)
    lab[8:20, 10:18] = 1
    heat, boxes, n = heatmap_targets(lab)
    t = (torch.from_numpy(heat)[None, None], torch.from_numpy(boxes)[None], torch.tensor([float(n)]))
    perfect_logits = torch.logit(torch.from_numpy(heat).clamp(1e-4, 1 - 1e-4))[None, None]
    ys, xs = torch.meshgrid(torch.arange(8) * 4 + 1.5, torch.arange(8) * 4 + 1.5, indexing="ij")
    bx = torch.from_numpy(boxes)
    exact = torch.stack([xs - bx[0], bx[2] - xs, ys - bx[1], bx[3] - ys])[None].clamp(min=0)
    good, parts = lnet_loss(perfect_logits, exact, *t)
    bad, _ = lnet_loss(torch.zeros_like(perfect_logits), torch.ones_like(exact), *t)
    assert parts["box"] < 1e-4 and good < 0.1 * bad
    z = torch.randn(2, 3, 4, 5)
    assert torch.allclose(torch.sigmoid(one_vs_rest_logits(z)), torch.softmax(z, 1), atol=1e-6)


# ---- training through the generic trainer -------------------------------------------------------------------------
def ct_case(seed: int, shape=(40, 80, 80), spacing=(4.0, 4.0, 4.0)) -> tuple[PreparedCase, object]:
    """A CT phantom on LPS-ordered axes, prepared as the trainer would at its own 4 mm grid
    (HU window → [0, 255]; prostate = 1), and the phantom itself."""
    c = make_case(seed, "ct", shape=shape, spacing=spacing)
    img, lab = oriented(c.image), oriented(c.labels)
    prepared = PreparedCase(f"ph{seed}", img.with_array(normalize_ct(img.array)),
                            lab.with_array((lab.array == LABELS["Prostate"]).astype(np.uint8)), "ct")
    return prepared, c


def first_last(values: list[float], k: int = 5) -> tuple[float, float]:
    return float(np.mean(values[:k])), float(np.mean(values[-k:]))


def test_lsnet_trains_jointly_and_both_losses_fall(tmp_path: Path) -> None:
    cases = [ct_case(s, (24, 64, 64))[0] for s in (40, 41)]
    method = get_method("LSNet")
    cfg = method.make_config({**TINY_LSNET, "spacing_mm": 4.0, "roi_margin": 4.0})
    events: list[dict] = []
    res = train(method, cfg, TrainConfig(iterations=40, batch_size=4, optimizer="adam", lr=3e-3, weight_decay=0.0,
                                         log_every=1, val_every=40, checkpoint_every=40), cases, cases[:1],
                tmp_path, emit=events.append)
    its = [e for e in events if e["event"] == "iteration"]
    for key in ("lnet", "snet"):
        first, last = first_last([e[key] for e in its], 8)
        assert last < 0.8 * first, (key, first, last)
    assert res.card_fields["role"] == "joint" and res.card_fields["data"]["roi_size"] == 32
    assert {k.split(".")[0] for k in res.state_dict} == {"lnet", "snet"}


@pytest.fixture(scope="module")
def trained_lnet(tmp_path_factory: pytest.TempPathFactory):
    """LNet trained briefly on four small CT phantoms (4 mm, the localizer's grid)."""
    method = get_method("LNet")
    cfg = method.make_config({"canvas": 96, "lnet_base": 8, "head_channels": 16, "per_case": 50})
    cases = [ct_case(s)[0] for s in range(300, 304)]
    res = train(method, cfg, TrainConfig(iterations=100, batch_size=8, optimizer="adam", lr=3e-3, weight_decay=0.0,
                                         log_every=10, val_every=10**6, checkpoint_every=10**6),
                cases, [], tmp_path_factory.mktemp("lnet"), emit=lambda e: None)
    net = method.build(cfg)
    net.load_state_dict(res.state_dict)
    return method, cfg, net.eval(), res


@pytest.mark.slow
def test_lnet_box_contains_the_prostate_of_held_out_phantoms(trained_lnet) -> None:
    method, cfg, net, res = trained_lnet
    assert res.losses[-1] < 0.5 * res.losses[0]
    pipe = Pipeline(Stage(method, cfg, net), None, "ct")
    for seed in (310, 311):
        case = make_case(seed, "ct", shape=(40, 80, 80), spacing=(4.0, 4.0, 4.0))
        loc = pipe.localize(case.image)
        truth = np.argwhere(case.labels.array == LABELS["Prostate"])[:, ::-1].astype(float)
        assert loc.found and loc.confidence > 0.5
        assert loc.box.contains(case.image.index_to_physical(truth)).all()
        assert np.all(loc.box.size <= 128.0)  # a box, not the body


def test_lnet_predictor_fills_the_union_of_slice_boxes() -> None:
    """Two slices with a strong keypoint each → their boxes filled with the slice peak; none elsewhere."""
    net = LNet(in_channels=1, base=2, head_channels=4, num_classes=2).eval()
    heat_logits = torch.full((3, 1, 8, 8), -9.0)
    heat_logits[1, 0, 3, 4] = 2.0
    heat_logits[2, 0, 1:3, 1:3] = 1.0
    dist = torch.zeros(3, 4, 8, 8)
    dist[1, :, 3, 4] = torch.tensor([5.0, 2.0, 3.0, 6.0])
    dist[2] = 4.0
    net.forward = lambda x: (heat_logits[: len(x)], dist[: len(x)])  # type: ignore[method-assign]
    method = get_method("LNet")
    cfg = method.make_config({"slab": 1})
    from voxmetric.methods import Runtime

    probs = method.predict(net, cfg, np.zeros((3, 32, 32), np.float32), Runtime(torch.device("cpu"), batch_size=3))
    assert probs.shape == (2, 3, 32, 32) and np.allclose(probs.sum(0), 1.0)
    assert not (probs[1, 0] > 0.5).any()
    cy, cx = 13.5, 17.5  # keypoint cell (3, 4) → pixel (x 17.5, y 13.5); box l 5, r 2, t 3, b 6
    expect = np.zeros((32, 32), bool)
    expect[int(np.ceil(cy - 3)):int(np.floor(cy + 6)) + 1, int(np.ceil(cx - 5)):int(np.floor(cx + 2)) + 1] = True
    assert np.array_equal(probs[1, 1] > 0.5, expect)
    assert probs[1, 1][expect] == pytest.approx(float(torch.sigmoid(torch.tensor(2.0))))
    ring = probs[1, 2] > 0.5  # centroid (1.5, 1.5) cells = pixel (7.5, 7.5), ±4 px
    assert ring.sum() == 64 and ring[4:12, 4:12].all()


# ---- users can pick them -----------------------------------------------------------------------------------------
def _package(tmp_path: Path, name: str, method_name: str, overrides: dict) -> Path:
    from voxmetric import models

    method = get_method(method_name)
    cfg = method.make_config(overrides)
    cases = [ct_case(s, (24, 64, 64))[0] for s in (50, 51)]
    res = train(method, cfg, TrainConfig(iterations=1, batch_size=2, val_every=10, checkpoint_every=10), cases, [],
                tmp_path / f"{name}.work", emit=lambda e: None)
    models.save_package(tmp_path / name, {"name": name, **res.card_fields}, res.state_dict)
    return models.install(tmp_path / name).path


def test_lnet_and_lsnet_are_selectable_without_module_changes(tmp_path: Path, monkeypatch) -> None:
    from voxmetric import models

    monkeypatch.setenv("VOXMETRIC_HOME", str(tmp_path / "home"))  # the bundled models stay visible
    _package(tmp_path, "my-lnet", "LNet", {**TINY_LNET, "spacing_mm": 4.0})
    _package(tmp_path, "my-lsnet", "LSNet", {**TINY_LSNET, "spacing_mm": 4.0})
    (models.models_dir() / "lnet-demo.pipeline.json").write_text(json.dumps(
        {"name": "lnet-demo", "localizer": "my-lnet", "refiner": "synth-metricunet-hcp"}))
    pipe = models.load_pipeline("lnet-demo", "ct")
    torch.set_num_threads(1)  # the pipeline takes every core; the test machine is shared
    assert pipe.localizer is not None and pipe.refiner is not None
    assert (pipe.localizer.method.name, pipe.refiner.name) == ("LNet", "synth-metricunet-hcp")
    case = make_case(60, "ct", shape=(24, 64, 64), spacing=(4.0, 4.0, 4.0))
    result = pipe.segment(case.image)  # an untrained L-Net finds nothing: the pipeline says so
    assert result.mask is not None and result.localization is not None
    joint = models.load_pipeline("my-lsnet", "ct")
    torch.set_num_threads(1)
    assert joint.localizer is not None and joint.refiner is not None
    assert joint.localizer.method.name == joint.refiner.method.name == "LSNet"
    assert joint.segment(case.image).mask is not None

    sys.path[:0] = [str(ROOT / "VoxMetricSeg"), str(ROOT / "VoxMetricTrain")]
    from VoxMetricSegLib import panel
    from VoxMetricTrainLib import form

    choices = [c.value for c in panel.model_choices(panel.read_registry())]
    assert "my-lsnet" in choices and "lnet-demo" in choices and "my-lnet" not in choices  # localizers come via pipelines
    rows = {f.name: f for f in form.method_form("LSNet")}
    assert rows["grad_decay"].default == 0.1 and rows["roi_margin"].default == 15.0 and rows["canvas"].kind == "int"
    assert form.method_flags("LNet", {"method_heatmap_sigma": 3.0}) == ["--heatmap-sigma", "3.0"]


@pytest.mark.parametrize("method, extra", [
    ("LNet", ["--canvas", "64", "--lnet-base", "4", "--head-channels", "8", "--per-case", "4"]),
    ("LSNet", ["--canvas", "64", "--lnet-base", "4", "--head-channels", "8", "--per-case", "4", "--roi-size", "16",
               "--snet-base", "4", "--snet-embed", "4", "--grad-decay", "0.05", "--spacing-mm", "4"]),
])
def test_cli_trains_both_methods(tmp_path: Path, capsys, method: str, extra: list[str]) -> None:
    from voxmetric import io
    from voxmetric.cli import main

    folder = tmp_path / "cases"
    rows = []
    for i in range(2):
        c = make_case(70 + i, "ct", shape=(24, 64, 64), spacing=(4.0, 4.0, 4.0))
        io.write_volume(c.image, folder / f"c{i}.nrrd")
        io.write_volume(c.labels.with_array((c.labels.array == LABELS["Prostate"]).astype(np.uint8)),
                        folder / f"c{i}-label.nrrd")
        rows.append({"id": f"c{i}", "image": f"c{i}.nrrd", "label": f"c{i}-label.nrrd", "modality": "ct"})
    (folder / "manifest.json").write_text(json.dumps({"format": "voxmetric-cases/1", "cases": rows}))
    out = tmp_path / "pkg"
    try:
        rc = main(["train", "--method", method, "--cases", str(folder), "--out", str(out), "--iterations", "2",
                   "--batch-size", "2", "--val-cases", "1", "--val-every", "2", "--device", "cpu", "--events-jsonl",
                   *extra])
    finally:
        torch.set_num_threads(1)
    assert rc == 0, capsys.readouterr().err
    card = json.loads((out / "model.json").read_text(encoding="utf-8"))
    assert card["method"] == method and card["role"] == ("localizer" if method == "LNet" else "joint")
    assert card["config"]["canvas"] == 64 and card["data"]["sampling"] == "whole slices on a canvas"
    events = [json.loads(line) for line in capsys.readouterr().out.splitlines() if line.startswith("{")]
    assert any(e["event"] == "validation" for e in events)


DDP_SCRIPT = """
import os, sys, torch
torch.set_num_threads(1)
sys.path.insert(0, {tests!r})
from safetensors.torch import save_file
from test_lsnet import TINY_LSNET, ct_case
from voxmetric.methods import get_method
from voxmetric.training import TrainConfig, train
method = get_method("LSNet")
cfg = method.make_config(dict(TINY_LSNET, spacing_mm=4.0, roi_margin=4.0))
res = train(method, cfg, TrainConfig(iterations=4, batch_size=2, optimizer="adam", checkpoint_every=2, log_every=2),
            [ct_case(40, (24, 64, 64))[0], ct_case(41, (24, 64, 64))[0]], [], {out!r}, emit=lambda e: print(e, flush=True))
save_file(res.state_dict, os.path.join({out!r}, "rank%s.safetensors" % os.environ["RANK"]))
"""


@pytest.mark.slow
def test_lsnet_alternating_updates_under_ddp(tmp_path: Path) -> None:
    """Two CPU processes (gloo): both phases go through the wrapped model, no rank hangs on an
    unused keypoint head, and both ranks end with the same weights."""
    import os
    import subprocess

    from safetensors.torch import load_file

    script = tmp_path / "ddp_lsnet.py"
    script.write_text(DDP_SCRIPT.format(tests=str(Path(__file__).parent), out=str(tmp_path)))
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                           str(script)], env=env, capture_output=True, encoding="utf-8", errors="replace", timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    r0, r1 = load_file(tmp_path / "rank0.safetensors"), load_file(tmp_path / "rank1.safetensors")
    assert r0.keys() == r1.keys() and all(torch.equal(r0[k], r1[k]) for k in r0)
