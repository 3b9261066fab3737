"""CRII-Net (METHODS.md §5): each loss on hand-made inputs (hardest pairs, margin, empty band,
ramp-up), the coarse-refined network, half-labelled batches, the uncertainty map, and a short
semi-supervised training whose loss falls."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from test_contract import two_class_case
from test_training import case_dir  # noqa: F401  (fixture)
from voxmetric.errors import ConfigError
from voxmetric.learning.crii import (RankedConfig, boundary_band, consistency_loss, inter_prl, intra_prl,
                                     rampup_weight, ranked_losses, sharpen, supervised_loss)
from voxmetric.methods import Runtime, get_method, normalised_entropy

torch.set_num_threads(1)
SMALL = {"base": 4, "embed_channels": 8, "head_channels": 4, "patch": 16, "per_case": 8, "k": 4}


# ---- losses ----------------------------------------------------------------------------------------
def test_rampup_schedule() -> None:
    total = 100  # t_r = 40
    assert rampup_weight(0, total) == pytest.approx(0.1 * math.exp(-5))
    assert rampup_weight(20, total) == pytest.approx(0.1 * math.exp(-5 * 0.25))
    assert rampup_weight(40, total) == rampup_weight(99, total) == 0.1
    values = [rampup_weight(t, total) for t in range(total)]
    assert all(a <= b for a, b in zip(values, values[1:]))  # never decreases
    assert rampup_weight(0, total, weight=0.3, fraction=0.0) == 0.3  # no ramp-up
    assert rampup_weight(5, total, weight=0.0) == 0.0


def test_sharpen_and_consistency() -> None:
    p = torch.tensor([[0.7, 0.3]]).reshape(1, 2, 1, 1)
    q = sharpen(p, 0.5)
    assert q.sum().item() == pytest.approx(1.0) and q[0, 0].item() == pytest.approx(0.49 / 0.58)
    assert sharpen(p, 1.0).allclose(p)
    with pytest.raises(ConfigError):
        sharpen(p, 0.0)
    one_hot = torch.zeros(2, 3, 4, 4)
    one_hot[:, 1] = 1.0
    assert consistency_loss(one_hot, one_hot).item() == pytest.approx(0.0, abs=1e-6)
    half = torch.full((2, 2, 4, 4), 0.5)
    assert consistency_loss(half, half).item() == pytest.approx(0.0, abs=1e-7)  # sharpen(½, ½) = ½
    p_c = torch.full((1, 2, 1, 1), 0.5, requires_grad=True)
    p_r = torch.tensor([0.9, 0.1]).reshape(1, 2, 1, 1)
    loss = consistency_loss(p_c, p_r)
    target = sharpen(torch.tensor([0.7, 0.3]).reshape(1, 2, 1, 1), 0.5)
    assert loss.item() == pytest.approx(((p_c - target) ** 2).mean().item() + ((p_r - target) ** 2).mean().item())
    loss.backward()  # the target is detached: d/dp_c = 2 (p_c − T) / N
    assert torch.allclose(p_c.grad, 2 * (p_c.detach() - target) / 2)


def test_boundary_band_and_its_edge_cases() -> None:
    g = torch.zeros(1, 20, 20, dtype=torch.bool)
    g[0, 6:14, 6:14] = True
    band = boundary_band(g, 3)
    assert band[0, 6, 6] and band[0, 3, 10] and band[0, 8, 8]  # on, outside and inside the edge
    assert not band[0, 10, 10] and not band[0, 2, 10] and not band[0, 0, 0]  # deep inside / far outside
    assert not boundary_band(torch.zeros(2, 9, 9, dtype=torch.bool)).any()  # no foreground
    assert not boundary_band(torch.ones(1, 9, 9, dtype=torch.bool)).any()  # no boundary in the patch
    assert boundary_band(torch.ones(1, 4, 6, 6, dtype=torch.bool).logical_and(torch.rand(1, 4, 6, 6) > 2)).sum() == 0
    g3 = torch.zeros(1, 9, 9, 9, dtype=torch.bool)
    g3[0, 4, 4, 4] = True
    assert boundary_band(g3, 1).sum() == 27  # a cube of side 3 in 3D


def _intra_patch() -> tuple[torch.Tensor, torch.Tensor]:
    """Square foreground; inside the band background p = 0 and foreground p = 1, except one hard
    false positive (0.9) and one hard false negative (0.2); a 0.95 background pixel far away."""
    g = torch.zeros(1, 24, 24, dtype=torch.bool)
    g[0, 8:16, 8:16] = True
    p = g.float().clone()
    p[0, 6, 10] = 0.9  # background, in the band
    p[0, 9, 9] = 0.2  # foreground, in the band
    p[0, 0, 23] = 0.95  # background, outside the band: never picked
    return p, g


def test_intra_prl_picks_the_hardest_pairs_with_the_margin() -> None:
    p, g = _intra_patch()
    assert intra_prl(p, g, RankedConfig(k=1, margin=0.3)).item() == pytest.approx(0.9 - 0.2 + 0.3)
    # K = 2: negatives {0.9, 0}, positives {0.2, 1}: hinges 1.0, 0.2, 0.1, 0 → mean 0.325
    assert intra_prl(p, g, RankedConfig(k=2, margin=0.3)).item() == pytest.approx(0.325)
    clean = g.float()
    assert intra_prl(clean, g, RankedConfig(k=30, margin=0.3)).item() == 0.0  # perfectly ranked
    assert intra_prl(clean, g, RankedConfig(k=30, margin=1.5)).item() == pytest.approx(0.5)  # margin > gap
    p.requires_grad_(True)
    intra_prl(p, g, RankedConfig(k=1)).backward()
    nz = p.grad.nonzero().tolist()
    assert sorted(nz) == [[0, 6, 10], [0, 9, 9]]  # only the chosen pair gets a gradient


def test_intra_prl_empty_band_contributes_zero_with_a_graph() -> None:
    p = torch.rand(2, 12, 12, requires_grad=True)
    for g in (torch.zeros(2, 12, 12, dtype=torch.bool), torch.ones(2, 12, 12, dtype=torch.bool)):
        loss = intra_prl(p, g)
        assert loss.item() == 0.0 and loss.requires_grad
        loss.backward()
    p2, g2 = _intra_patch()  # one patch with a band, one without: the mean is over patches that have one
    both = intra_prl(torch.cat([p2, torch.zeros(1, 24, 24)]), torch.cat([g2, torch.zeros(1, 24, 24, dtype=torch.bool)]),
                     RankedConfig(k=1))
    assert both.item() == pytest.approx(1.0)


def test_inter_prl_ranks_cells_across_the_batch() -> None:
    g = torch.zeros(2, 16, 16, dtype=torch.bool)
    g[:, :, :8] = True  # left half foreground: grid 4 → 8 positive and 8 negative cells per patch
    p = g.float().clone()
    p[1, 0:4, 12:16] = 0.6  # a low-contrast negative cell in patch 1 (mean 0.6)
    p[0, 4:8, 0:4] = 0.5  # a weak positive cell in patch 0
    cfg = RankedConfig(k=1, margin=0.3, grid=4)
    assert inter_prl(p, g, cfg).item() == pytest.approx(0.6 - 0.5 + 0.3)
    mixed = torch.zeros(1, 16, 16, dtype=torch.bool)
    mixed[:, :, :2] = True  # every cell in column 0 is mixed (fraction 0.5 → positive)
    assert inter_prl(mixed.float(), mixed, cfg).item() == 0.0
    none = inter_prl(torch.rand(1, 16, 16, requires_grad=True), torch.zeros(1, 16, 16, dtype=torch.bool), cfg)
    assert none.item() == 0.0 and none.requires_grad  # no positive cell: 0
    g3 = torch.zeros(1, 8, 16, 16, dtype=torch.bool)
    g3[..., :8] = True
    assert inter_prl(g3.float() * 0.9, g3, RankedConfig(k=3, grid=8)).item() == 0.0  # 3D cells


def test_ranked_losses_are_one_vs_rest_and_supervised_loss_prefers_the_truth() -> None:
    label = torch.zeros(1, 16, 16, dtype=torch.long)
    label[0, 4:10, 4:10] = 1
    label[0, 11:15, 2:14] = 2
    perfect = torch.nn.functional.one_hot(label, 3).permute(0, 3, 1, 2).float()
    intra, inter = ranked_losses(perfect, label, RankedConfig(k=5))
    assert intra.item() == 0.0 and inter.item() == 0.0
    swapped = perfect[:, [0, 2, 1]]
    intra, inter = ranked_losses(swapped, label, RankedConfig(k=5))
    assert intra.item() == pytest.approx(1.3) and inter.item() > 1.0
    good, parts = supervised_loss(perfect * 20, perfect * 20, label)
    bad, _ = supervised_loss(swapped * 20, swapped * 20, label)
    assert good.item() < 0.01 < bad.item() and set(parts) == {"sup_r", "sup_c"}
    half, _ = supervised_loss(perfect * 20, swapped * 20, label, coarse_weight=0.0)
    assert half.item() == pytest.approx(good.item(), abs=1e-4)  # the coarse output does not count


# ---- the method --------------------------------------------------------------------------------
def test_paired_items_are_pure_and_half_unlabeled() -> None:
    method = get_method("CRII-small")
    cfg = method.make_config(SMALL)
    cases, unlabeled = [two_class_case(0)], [two_class_case(5), two_class_case(6)]
    unlabeled = [type(c)(c.id, c.image, c.mask.with_array(np.zeros_like(c.mask.array)), "ct", c.classes, False)
                 for c in unlabeled]
    ds = method.dataset(cases, cfg, 3, unlabeled)
    item = ds[11]
    assert set(item) == {"image", "label", "u_image"} and item["u_image"].shape == item["image"].shape == (3, 16, 16)
    again = method.dataset(cases, cfg, 3, unlabeled)[11]
    assert all(torch.equal(item[k], again[k]) for k in item)
    assert not torch.equal(item["image"], item["u_image"])
    with pytest.raises(ConfigError, match="cons_weight"):
        method.dataset(cases, method.make_config({**SMALL, "cons_weight": 0}), 3, unlabeled)
    with pytest.raises(ConfigError, match="multiples of 16"):
        get_method("CRII-3D-small").make_config({"patch": 24})


@pytest.mark.parametrize("name,overrides", [("CRII-small", SMALL),
                                            ("CRII-3D-small", {"widths": "4,8,8,8", "patch": 16, "depth": 8,
                                                               "head_channels": 4, "per_case": 4, "k": 4})])
def test_network_heads_predict_and_uncertainty(name: str, overrides: dict) -> None:
    method = get_method(name)
    cfg = method.make_config(overrides)
    net = method.build(cfg, 3).eval()
    assert not any(hasattr(net.backbone, n) for n in ("sega", "segb", "head"))  # the backbone's own head is dropped
    assert not any(k.startswith(("backbone.sega", "backbone.segb", "backbone.head")) for k in net.state_dict())
    image = two_class_case(0).image.array[:12, :24, :28]
    rt = Runtime(torch.device("cpu"), batch_size=4)
    probs = method.predict(net, cfg, image, rt)
    assert probs.shape == (3, 12, 24, 28)
    unc = method.uncertainty(net, cfg, image, rt, probs)  # the P_c of that same pass
    fresh = method.uncertainty(net, cfg, image, rt, probs.copy())  # no kept P_c: a new pass
    assert unc.shape == image.shape and unc.dtype == np.float32 and 0 <= unc.min() and unc.max() <= 1
    np.testing.assert_allclose(unc, fresh, atol=1e-5)
    if not cfg.is_3d:  # |P_c − P_r| from the network's two outputs, by hand
        from voxmetric.sampling import whole_slices

        x = torch.from_numpy(np.array(whole_slices(image, 3)[:, :, :, :]))
        x = torch.nn.functional.pad(x, (0, 4, 0, 0))
        with torch.no_grad():
            r, c = net(x)
        manual = 0.5 * (torch.softmax(c, 1) - torch.softmax(r, 1)).abs().sum(1)[:, :24, :28].numpy()
        np.testing.assert_allclose(unc, manual, atol=1e-5)


def test_default_uncertainty_is_the_normalised_entropy() -> None:
    uniform = np.full((4, 2, 3, 3), 0.25, np.float32)
    assert np.allclose(normalised_entropy(uniform), 1.0)
    certain = np.zeros((3, 2, 2, 2), np.float32)
    certain[1] = 1
    assert np.allclose(normalised_entropy(certain), 0.0)
    two = np.stack([np.full((1, 1, 1), 0.9), np.full((1, 1, 1), 0.1)]).astype(np.float32)
    assert normalised_entropy(two)[0, 0, 0] == pytest.approx(-(0.9 * np.log(0.9) + 0.1 * np.log(0.1)) / np.log(2))
    unet = get_method("UNet")
    cfg = unet.make_config({"base": 4, "embed_channels": 8})
    net = unet.build(cfg).eval()
    image = two_class_case(0).image.array[:6, :16, :16]
    rt = Runtime(torch.device("cpu"))
    probs = unet.predict(net, cfg, image, rt)
    assert np.array_equal(unet.uncertainty(net, cfg, image, rt, probs), normalised_entropy(probs))


def test_semi_supervised_training_loss_falls_and_ramps_up(tmp_path) -> None:
    from voxmetric.training import TrainConfig, train

    method = get_method("CRII-small")
    cfg = method.make_config({**SMALL, "patch": 24, "per_case": 40})
    labelled = [two_class_case(0), two_class_case(1)]
    unlabeled = [type(c)(c.id, c.image, c.mask.with_array(np.zeros_like(c.mask.array)), "ct", c.classes, False)
                 for c in (two_class_case(7), two_class_case(8))]
    events: list[dict] = []
    tcfg = TrainConfig(iterations=40, batch_size=4, log_every=1, val_every=40, checkpoint_every=40, lr=0.05)
    res = train(method, cfg, tcfg, labelled, [two_class_case(2)], tmp_path, emit=events.append,
                unlabeled_cases=unlabeled)
    its = [e for e in events if e["event"] == "iteration"]
    losses = [e["loss"] for e in its]
    assert np.mean(losses[-8:]) < 0.8 * np.mean(losses[:8])
    w = [e["w_cons"] for e in its]
    assert w[0] == pytest.approx(0.1 * math.exp(-5)) and w[-1] == pytest.approx(0.1) and w[10] < w[15]
    assert {"sup_r", "sup_c", "intra", "inter", "cons"} <= set(its[0])
    assert res.card_fields["training"]["unlabeled_cases"] == 2 and res.card_fields["method"] == "CRII-small"


# ---- unlabeled data on the command line ----------------------------------------------------------
@pytest.fixture(scope="module")
def unlabeled_dir(tmp_path_factory: pytest.TempPathFactory):
    """Two small CT phantom images without labels + a manifest (a 40-voxel field of view has no air
    to tell CT by, so the manifest says so), and two MR ones."""
    import json

    from voxmetric import io
    from voxmetric.phantom import make_case

    out = tmp_path_factory.mktemp("unlabeled")
    for sub, modality in (("ct", "ct"), ("mr", "mr")):
        rows = []
        for i in range(2):
            c = make_case(20 + i, modality, shape=(24, 40, 40), spacing=(2.0, 2.0, 2.5))
            io.write_volume(c.image, out / sub / f"u{i}.nrrd")
            rows.append({"image": f"u{i}.nrrd", "modality": modality})
        (out / sub / "manifest.json").write_text(json.dumps({"format": "voxmetric-cases/1", "cases": rows}))
    return out


def test_cli_train_crii_with_unlabeled_images(case_dir, unlabeled_dir, tmp_path, capsys) -> None:
    import json

    from test_training import run_cli
    from voxmetric import models

    out = tmp_path / "crii"
    flags = ["--device", "cpu", "--iterations", "3", "--batch-size", "2", "--val-cases", "0", "--events-jsonl",
             "--base", "4", "--embed-channels", "8", "--head-channels", "4", "--patch", "16", "--per-case", "4",
             "--spacing-mm", "2"]
    rc, stdout, err = run_cli(["train", "--method", "CRII-small", "--cases", str(case_dir), "--segment", "Prostate",
                               "--unlabeled", str(unlabeled_dir / "ct"), "--out", str(out), *flags], capsys)
    assert rc == 0, err
    events = [json.loads(line) for line in stdout.splitlines()]
    assert any("+ 2 unlabeled" in e.get("message", "") for e in events if e["event"] == "log")
    card = models.load_package(out).card
    assert card["training"]["unlabeled_cases"] == 2 and card["data"]["unlabeled_region"] == "body"
    assert card["method"] == "CRII-small" and card["training"]["optimizer"] == "sgd"


def test_cli_unlabeled_checks_before_training(case_dir, unlabeled_dir, tmp_path, capsys) -> None:
    from test_training import run_cli

    base = ["train", "--cases", str(case_dir), "--segment", "Prostate", "--out", str(tmp_path / "m"),
            "--device", "cpu", "--iterations", "1", "--batch-size", "1", "--val-cases", "0", "--patch", "16",
            "--per-case", "2", "--spacing-mm", "2"]
    rc, _, err = run_cli([*base, "--method", "UNet", "--unlabeled", str(unlabeled_dir / "ct")], capsys)
    assert rc == 2 and "learns from labelled cases only" in err and "CRII" in err
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "broken.nrrd").write_text("not an image")
    rc, _, err = run_cli([*base, "--method", "CRII-small", "--unlabeled", str(bad)], capsys)
    assert rc == 2 and "unlabeled image(s) cannot be used" in err and "broken.nrrd" in err
    rc, _, err = run_cli([*base, "--method", "CRII-small", "--unlabeled", str(tmp_path / "nowhere")], capsys)
    assert rc == 2 and "does not exist" in err
    rc, _, err = run_cli([*base, "--method", "CRII-small", "--unlabeled", str(unlabeled_dir / "mr"),
                          "--out", str(tmp_path / "m2")], capsys)
    assert rc == 2 and "not of the labelled cases' modality (CT)" in err and "u-u0 (MR)" in err
    assert not (tmp_path / "m").exists() and not (tmp_path / "m2").exists()


def test_whole_body_crii_segments_without_a_localizer(tmp_path, monkeypatch, capsys) -> None:
    """A CRII model with region "body" needs no localizer: `segment --model PKG` on an MR with no
    MR model installed runs, writes |P_c − P_r| on the input's grid and ends with a verdict."""
    import json

    from test_training import run_cli
    from voxmetric import io, models
    from voxmetric.phantom import make_case

    monkeypatch.setenv("VOXMETRIC_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("VOXMETRIC_BUNDLED_MODELS", str(tmp_path / "none"))
    method = get_method("CRII-small")
    cfg = method.make_config({**SMALL, "region": "body", "spacing_mm": 4.0})
    torch.manual_seed(0)
    card = {"name": "tiny-crii-mr", "method": method.name, "role": "refiner", "modality": "mr",
            "config": method.config_to_dict(cfg), "data": method.card_data(cfg)}
    pkg = models.save_package(tmp_path / "tiny-crii-mr", card, method.build(cfg).state_dict())
    image = io.write_volume(make_case(3, "mr", shape=(16, 48, 48), spacing=(4.0, 4.0, 4.0)).image, tmp_path / "mr.nrrd")
    out, unc = tmp_path / "mr.seg.nrrd", tmp_path / "mr_unc.nrrd"
    rc, stdout, err = run_cli(["segment", str(image), "-o", str(out), "--model", str(pkg), "--modality", "mr",
                               "--device", "cpu", "--uncertainty-out", str(unc)], capsys)
    assert rc == 0, err
    assert stdout.strip().splitlines()[-1].startswith("result: ")
    summary = json.loads((tmp_path / "mr_timings.json").read_text())
    assert summary["uncertainty"]["kind"].startswith("coarse-refined disagreement")
    assert "localize" in summary["timings"] and summary["localized"] is True  # the body box, no localizer
    u = io.read_volume(unc)
    assert u.same_grid(io.read_volume(image)) and 0.0 <= u.array.min() and u.array.max() <= 1.0 and u.array.max() > 0
