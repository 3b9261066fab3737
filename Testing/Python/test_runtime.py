"""The inference runtimes (issue 14): verified ONNX graphs in model packages, ONNX Runtime
against torch, ``voxmetric segment`` without torch, the same masks, and the pieces of the fast
path (reorientation views, strided modality guess, cropped .seg.nrrd)."""

from __future__ import annotations

import itertools
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
import torch

from voxmetric import io, models
from voxmetric.errors import ConfigError, ModelError
from voxmetric.methods import Runtime, get_method, method_classes
from voxmetric.pipeline import Pipeline, guess_modality, oriented
from voxmetric.runtime import CpuDevice, OnnxNetwork, TorchNetwork, cuda_possible, export_onnx, verify_onnx
from voxmetric.volume import Volume

ROOT = Path(__file__).resolve().parents[2]
torch.set_num_threads(1)


def _card(method, cfg, name: str, modality: str = "ct") -> dict:
    return {"name": name, "method": method.name, "role": method.role, "modality": modality,
            "config": method.config_to_dict(cfg), "data": method.card_data(cfg)}


def _tiny(name: str, **over):
    m = get_method(name)
    cfg = m.make_config({"base": 4, "embed_channels": 8, **over})
    torch.manual_seed(0)
    net = m.build(cfg).eval()
    with torch.no_grad():  # non-trivial BatchNorm statistics, so folding them is tested
        for mod in net.modules():
            if isinstance(mod, torch.nn.BatchNorm2d):
                mod.running_mean.uniform_(-1, 1)
                mod.running_var.uniform_(0.5, 2)
    return m, cfg, net


# ---- packages ------------------------------------------------------------------------------------
def test_package_stores_a_verified_graph_and_refuses_a_tampered_one(tmp_path: Path) -> None:
    m, cfg, net = _tiny("MetricUNet-HCP", spacing_mm=2.0)
    path = models.save_package(tmp_path / "ref", _card(m, cfg, "tiny"), net.state_dict())
    card = models.read_card(path)
    block = card["onnx"]
    assert (path / block["file"]).stat().st_size == block["bytes"] and block["opset"] >= 13
    assert block["max_rel_diff"] <= 1e-3 and len(block["verified_shapes"]) == 4  # example + each dynamic axis
    assert models.read_onnx(path) == (path / "model.onnx").read_bytes()
    # a modified graph is refused before ONNX Runtime sees it
    data = bytearray((path / "model.onnx").read_bytes())
    data[-10] ^= 0xFF
    (path / "model.onnx").write_bytes(bytes(data))
    with pytest.raises(ModelError, match="SHA-256"):
        models.read_onnx(path)
    with pytest.raises(ModelError, match="SHA-256"):
        models.load_pipeline(str(path), "ct", "cpu", stages=("refiner",))
    # torch only: no graph, and the torch runtime still loads
    plain = models.save_package(tmp_path / "plain", _card(m, cfg, "plain"), net.state_dict(), onnx=False)
    assert "onnx" not in models.read_card(plain) and not (plain / "model.onnx").exists()
    with pytest.raises(ModelError, match="export-onnx"):
        models.load_pipeline(str(plain), "ct", "cpu", stages=("refiner",), runtime="onnx")
    assert models.load_pipeline(str(plain), "ct", "cpu", stages=("refiner",)).refiner.network is None
    # add_onnx gives it one, identical in behaviour; install carries it along
    models.add_onnx(plain)
    assert "onnx" in models.read_card(plain) and models.read_onnx(plain) is not None
    zipped = models.save_package(tmp_path / "z.zip", _card(m, cfg, "zipped"), net.state_dict())
    assert models.read_onnx(zipped) is not None


def test_install_and_cli_export(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys) -> None:
    from voxmetric.cli import main

    monkeypatch.setenv("VOXMETRIC_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("VOXMETRIC_BUNDLED_MODELS", str(tmp_path / "none"))
    m, cfg, net = _tiny("Localizer")
    src = models.save_package(tmp_path / "loc", _card(m, cfg, "tiny-loc"), net.state_dict(), onnx=False)
    info = models.install(src)
    assert main(["models", "export-onnx", "tiny-loc"]) == 0
    assert "verified against torch" in capsys.readouterr().out
    assert models.read_onnx(info.path) is not None
    again = models.install(info.path, name="copy")
    assert (again.path / "model.onnx").read_bytes() == (info.path / "model.onnx").read_bytes()


def test_methods_that_need_torch_store_no_graph(tmp_path: Path) -> None:
    exportable = {cls.__name__ for cls in method_classes() if
                  get_method(next(iter(cls.presets))).onnx_example(get_method(next(iter(cls.presets))).default_config())}
    assert {"Localizer", "MetricUNet"} <= exportable
    m = get_method("VoxelSimSiam") if "VoxelSimSiam" in {c.__name__ for c in method_classes()} else None
    if m is None:
        pytest.skip("no torch-only method registered")
    cfg = m.default_config()
    assert m.onnx_example(cfg) is None
    with pytest.raises(ModelError, match="needs torch"):
        models.export_onnx(_card(m, cfg, "ss"), b"", required=True)


# ---- numerics ------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", ["Localizer", "MetricUNet-HCP"])
def test_onnx_runtime_matches_torch(name: str) -> None:
    m, cfg, net = _tiny(name)
    shape, axes = m.onnx_example(cfg)
    graph = export_onnx(net, m.forward, shape, axes)
    assert verify_onnx(graph, net, m.forward, [shape]) < 1e-4
    ort = OnnxNetwork(graph, threads=1)
    rng = np.random.default_rng(1)
    image = (rng.random((7, 37, 45)) * 255).astype(np.float32)  # sizes that need padding
    fast = m.predict(None, cfg, image, Runtime(CpuDevice(), batch_size=3, network=ort))  # pyright: ignore[reportArgumentType]
    ref = m.predict(net, cfg, image, Runtime(torch.device("cpu"), batch_size=4))
    assert fast.shape == ref.shape == (2, 7, 37, 45)
    assert np.abs(fast - ref).max() < 1e-4
    # and the torch path is the pre-runtime predictor: torch softmax of the padded slab logits
    from voxmetric.sampling import whole_slices

    slabs = torch.from_numpy(np.array(whole_slices(image, cfg.slab)))
    with torch.inference_mode():
        direct = torch.softmax(m.logits(net, slabs), 1).numpy().transpose(1, 0, 2, 3)
    assert np.abs(direct - ref).max() < 1e-5


def test_verify_rejects_a_wrong_graph() -> None:
    m, cfg, net = _tiny("Localizer")
    shape, axes = m.onnx_example(cfg)
    graph = export_onnx(net, m.forward, shape, axes)
    with torch.no_grad():
        net.segb.bias.add_(5.0)
    with pytest.raises(ModelError, match="differs"):
        verify_onnx(graph, net, m.forward, [shape])


def test_torch_network_is_the_method_forward() -> None:
    m, cfg, net = _tiny("Localizer")
    x = np.random.default_rng(0).random((2, cfg.slab, 16, 24)).astype(np.float32)
    got = TorchNetwork(lambda t: m.forward(net, t), torch.device("cpu"))(x)
    with torch.inference_mode():
        assert np.allclose(got, net(torch.from_numpy(x))[0].numpy(), atol=1e-6)
    with pytest.raises(ConfigError, match="neither"):
        Runtime(torch.device("cpu")).network_of(m, None)


# ---- the whole command ---------------------------------------------------------------------------
def _phantom_file(tmp_path: Path) -> Path:
    from voxmetric.phantom import make_case

    case = make_case(11, "ct", shape=(24, 96, 96), spacing=(3.0, 3.0, 6.0))
    return io.write_volume(case.image, tmp_path / "ct.nrrd")


def _tiny_bundle(folder: Path) -> None:
    for name, role_name in (("Localizer", "tiny-loc"), ("MetricUNet-HCP", "tiny-ref")):
        m, cfg, net = _tiny(name, **({"spacing_mm": 3.0} if name != "Localizer" else {}))
        models.save_package(folder / role_name, _card(m, cfg, role_name, "any"), net.state_dict())


def test_segment_process_does_not_import_torch(tmp_path: Path) -> None:
    _tiny_bundle(tmp_path / "bundled")
    img = _phantom_file(tmp_path)
    code = ("import sys; from voxmetric.cli import main; "
            f"rc = main(['segment', {str(img)!r}, '-o', {str(tmp_path / 'o.seg.nrrd')!r}, '--device', 'cpu']); "
            "print('MODULES', 'torch' in sys.modules, 'scipy.ndimage' in sys.modules, rc)")
    env = dict(os.environ, VOXMETRIC_BUNDLED_MODELS=str(tmp_path / "bundled"), VOXMETRIC_HOME=str(tmp_path / "home"))
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, encoding="utf-8", errors="replace", env=env, cwd=ROOT, timeout=300)
    assert "MODULES False False 0" in out.stdout, out.stderr[-2000:]
    summary = json.loads((tmp_path / "o_timings.json").read_text())
    assert {"read", "load", "localize_network", "localize_preprocess", "write"} <= set(summary["stage_timings"])
    # --runtime torch gives the same file content through torch
    code_t = code.replace("'--device', 'cpu'", "'--device', 'cpu', '--runtime', 'torch'").replace("o.seg", "t.seg")
    out = subprocess.run([sys.executable, "-c", code_t], capture_output=True, encoding="utf-8", errors="replace", env=env, cwd=ROOT, timeout=300)
    assert "MODULES True" in out.stdout, out.stderr[-2000:]
    ref = io.read_volume(img)
    a = io.read_segment_mask(tmp_path / "o.seg.nrrd", reference=ref).array
    b = io.read_segment_mask(tmp_path / "t.seg.nrrd", reference=ref).array
    assert np.array_equal(a, b)


def test_onnx_path_refuses_weights_that_are_not_safetensors(tmp_path: Path) -> None:
    """A package with a valid graph but pickled weights (their SHA-256 put in the card) is refused
    on the ONNX path too, before anything runs, as load_package refuses it on the torch path."""
    import hashlib
    import pickle

    m, cfg, net = _tiny("MetricUNet-HCP", spacing_mm=3.0)
    pkg = models.save_package(tmp_path / "pickled", _card(m, cfg, "pickled", "any"), net.state_dict(), onnx=True)
    data = pickle.dumps({"w": [1.0, 2.0]})
    (pkg / "weights.safetensors").write_bytes(data)
    card = json.loads((pkg / "model.json").read_text())
    card.update(weights_sha256=hashlib.sha256(data).hexdigest(), weights_bytes=len(data))
    (pkg / "model.json").write_text(json.dumps(card))
    for runtime in ("auto", "onnx", "torch"):
        with pytest.raises(ModelError, match="not a valid safetensors file"):
            models.load_pipeline(str(pkg), "ct", "cpu", stages=("refiner",), runtime=runtime)


def test_cuda_auto_probe_without_torch() -> None:
    # never says "no GPU" where torch would use one; on a CPU-only torch it says no without importing it
    assert cuda_possible() or not torch.cuda.is_available()
    if torch.version.cuda is None and getattr(torch.version, "hip", None) is None:
        assert not cuda_possible()


@pytest.mark.slow
def test_bundled_pipeline_masks_equal_on_small_phantoms(tmp_path: Path) -> None:
    """The fast path (ONNX Runtime) against the reference fp32 torch path with the bundled
    models on small CT phantoms: Dice ≥ 0.995 (the full check on 10 phantoms and the real CT is
    Testing/Benchmarks/check_masks.py)."""
    sys.path.insert(0, str(ROOT / "Testing" / "Benchmarks"))
    from check_masks import dice, with_graphs

    from voxmetric.phantom import make_case

    bundled = models.bundled_models_dir()
    try:
        models.resolve_pipeline(None, "ct")
    except ModelError as e:
        pytest.skip(f"no bundled models: {e}")
    fast_dir = with_graphs(bundled, tmp_path / "models")
    os.environ["VOXMETRIC_BUNDLED_MODELS"] = str(fast_dir)
    try:
        fast = models.load_pipeline(None, "ct", "cpu", runtime="onnx")
        ref = models.load_pipeline(None, "ct", "cpu", runtime="torch")
    finally:
        os.environ.pop("VOXMETRIC_BUNDLED_MODELS")
    assert isinstance(fast.device, CpuDevice) and fast.refiner is not None and fast.refiner.network is not None
    for seed in (5000, 5001):
        vol = make_case(seed, "ct", shape=(48, 192, 192), spacing=(1.6, 1.6, 3.0)).image
        a, b = fast.segment(vol), ref.segment(vol)
        assert a.found == b.found
        if a.found:
            assert dice(a.mask.array, b.mask.array) >= 0.995  # pyright: ignore[reportOptionalMemberAccess]
            np.testing.assert_allclose(a.box.center, b.box.center, atol=1e-3)


# ---- fast-path pieces ----------------------------------------------------------------------------
def test_oriented_view_is_dicom_orient() -> None:
    rng = np.random.default_rng(0)
    a = rng.integers(-1000, 1000, size=(5, 6, 7)).astype(np.int16)
    for perm in itertools.permutations(range(3)):
        for signs in itertools.product((1.0, -1.0), repeat=3):
            d = np.eye(3)[:, list(perm)] * np.array(signs)
            vol = Volume(a, (0.7, 0.9, 2.5), (10.0, -20.0, 30.0), d)
            got = oriented(vol)
            ref = Volume.from_sitk(sitk.DICOMOrient(vol.to_sitk(), "LPS"))
            assert np.array_equal(got.array, ref.array) and got.same_grid(ref)
            assert np.shares_memory(got.array, a)  # a view, no copy


def test_guess_modality_on_a_strided_view() -> None:
    from voxmetric.phantom import make_case

    for modality in ("ct", "mr"):
        vol = make_case(3, modality).image
        assert guess_modality(vol.array) == modality == guess_modality(vol.array, voxels=1 << 30)


def test_cropped_segmentation_round_trip(tmp_path: Path) -> None:
    ref = Volume(np.zeros((30, 40, 50), np.uint8), (0.8, 0.9, 2.5), (5.0, -3.0, 100.0), np.diag([1.0, -1.0, -1.0]))
    a = ref.array.copy()
    a[10:14, 5:20, 30:33] = 1
    a[12, 7, 31] = 2
    mask = ref.with_array(a)
    segs = [io.segment_info("Prostate", 1), io.segment_info("Bladder", 2)]
    path = io.write_segmentation(tmp_path / "c.seg.nrrd", mask, segs, crop=True)
    import nrrd

    header = nrrd.read_header(str(path))
    assert list(header["sizes"]) == [3, 15, 4] and header["Segmentation_ReferenceImageExtentOffset"] == "30 5 10"
    seg = io.read_segmentation(path)
    assert seg.labelmap.same_grid(ref) and np.array_equal(seg.labelmap.array, a)
    assert seg.names == ["Prostate", "Bladder"]
    empty = io.write_segmentation(tmp_path / "e.seg.nrrd", ref, segs[:1], crop=True)
    back = io.read_segmentation(empty).labelmap
    assert back.same_grid(ref) and not back.array.any()


@pytest.mark.mrml
def test_cropped_segmentation_in_slicer(tmp_path: Path, mrml_scene) -> None:
    """Slicer itself reads the cropped file and puts it on the reference grid (real MRML)."""
    import slicer
    import vtk
    from test_io import _slicer_labelmap_node

    ref = Volume(np.zeros((20, 24, 28), np.uint8), (1.0, 1.2, 2.0), (-10.0, 4.0, 50.0), np.diag([1.0, -1.0, -1.0]))
    a = np.zeros(ref.shape, np.uint8)
    a[5:9, 3:10, 12:20] = 1
    path = io.write_segmentation(tmp_path / "c.seg.nrrd", ref.with_array(a), [io.PROSTATE], crop=True)
    seg_node = mrml_scene.AddNewNodeByClass("vtkMRMLSegmentationNode")
    storage = mrml_scene.AddNewNodeByClass("vtkMRMLSegmentationStorageNode")
    storage.SetFileName(str(path))
    assert storage.ReadData(seg_node)
    reference = _slicer_labelmap_node(mrml_scene, ref)
    out = mrml_scene.AddNewNodeByClass("vtkMRMLLabelMapVolumeNode")
    ids = vtk.vtkStringArray()
    seg_node.GetSegmentation().GetSegmentIDs(ids)
    assert mrml_scene._voxmetric_logics["Segmentations"].ExportSegmentsToLabelmapNode(seg_node, ids, out, reference)
    np.testing.assert_array_equal(slicer.util.arrayFromVolume(out), a)


# ---- GPU (skipped without CUDA; not run in this task) --------------------------------------------
@pytest.mark.gpu
def test_cuda_torch_network_matches_cpu() -> None:
    if not torch.cuda.is_available():
        pytest.skip("needs CUDA")
    m, cfg, net = _tiny("MetricUNet-HCP")
    image = (np.random.default_rng(0).random((5, 40, 40)) * 255).astype(np.float32)
    cpu = m.predict(net, cfg, image, Runtime(torch.device("cpu")))
    gpu = m.predict(net.cuda(), cfg, image, Runtime(torch.device("cuda")))  # AMP on CUDA
    assert np.abs(cpu - gpu).max() < 2e-2 and ((cpu[1] > 0.5) == (gpu[1] > 0.5)).mean() > 0.99


@pytest.mark.gpu
def test_cuda_pipeline_uses_torch_even_with_a_graph(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    if not torch.cuda.is_available():
        pytest.skip("needs CUDA")
    _tiny_bundle(tmp_path / "bundled")
    monkeypatch.setenv("VOXMETRIC_BUNDLED_MODELS", str(tmp_path / "bundled"))
    pipe = models.load_pipeline(None, "ct", torch.device("cuda"))
    assert isinstance(pipe, Pipeline) and pipe.device.type == "cuda"
    assert pipe.refiner is not None and pipe.refiner.model is not None and pipe.refiner.network is None
    with pytest.raises(ConfigError, match="CPU only"):
        models.load_pipeline(None, "ct", torch.device("cuda"), runtime="onnx")
