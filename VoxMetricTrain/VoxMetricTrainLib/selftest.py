"""The VoxMetricTrain self-test body. Slicer's ScriptedLoadableModuleTest calls it on
``slicer.mrmlScene``; pytest calls it on a slicer-core scene (Testing/Python/test_train_module.py)."""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np

from voxmetric import models, mrml
from voxmetric.cases import load_cases
from voxmetric.errors import ConfigError
from voxmetric.io import read_segment_mask, read_volume
from voxmetric.phantom import LABELS, make_case

from .logic import CasePair, TrainLogic, pairs_from_scene

#: A tiny UNet on 2 mm slabs, 32² patches: seconds per run on a CPU (the method's own
#: settings are passed as `voxmetric train` flags).
TINY_UNET = ("--base", "8", "--embed-channels", "16", "--patch", "32", "--per-case", "20",
             "--spacing-mm", "2", "--val-every", "10")


@contextmanager
def models_home(path: str | Path) -> Iterator[Path]:
    """Use ``path`` as ``VOXMETRIC_HOME`` (installed models, training runs) inside the block."""
    before = os.environ.get("VOXMETRIC_HOME")
    os.environ["VOXMETRIC_HOME"] = str(path)
    try:
        yield Path(path)
    finally:
        if before is None:
            os.environ.pop("VOXMETRIC_HOME", None)
        else:
            os.environ["VOXMETRIC_HOME"] = before


def save_tiny_model(folder: str | Path, name: str, modality: str = "ct", seed: int = 0) -> models.ModelInfo:
    """Save an untrained UNet package with the :data:`TINY_UNET` settings (one class, Prostate)
    in ``folder`` and install it as ``name``: a model to fine-tune from in seconds."""
    import torch

    from voxmetric.methods import get_method

    method = get_method("UNet")
    flags = dict(zip(TINY_UNET[::2], TINY_UNET[1::2]))
    cfg = method.make_config({k[2:]: v for k, v in flags.items() if k != "--val-every"})
    torch.manual_seed(seed)
    net = method.build(cfg, 2)
    card = {"name": name, "method": method.name, "role": method.role, "modality": modality,
            "config": method.config_to_dict(cfg), "data": method.card_data(cfg),
            "description": "tiny untrained UNet (VoxMetricTrain tests)"}
    path = models.save_package(Path(folder) / name, card, net.state_dict(), onnx=False)
    return models.install(path)


def add_phantom_cases(scene, n: int = 3, shape: tuple[int, int, int] = (40, 96, 96), seed: int = 0) -> list[CasePair]:
    """``n`` small CT phantoms as volume nodes, each with a segmentation node holding its
    "Prostate" segment (as a user would have them after segmenting)."""
    pairs = []
    for i in range(n):
        case = make_case(seed + i, "ct", shape=shape, spacing=(1.5, 1.5, 2.5))
        volume = mrml.node_from_volume(scene, case.image, f"VoxMetric phantom {seed + i}")
        mask = case.labels.with_array((case.labels.array == LABELS["Prostate"]).astype(np.uint8))
        seg_node, _ = mrml.write_mask_segment(None, mask, volume, "Prostate", scene=scene)
        pairs.append(CasePair(volume, seg_node, "Prostate"))
    return pairs


def _raises(fn: Callable[[], object], text: str) -> None:
    try:
        fn()
    except ConfigError as e:
        assert text in str(e), f"expected {text!r} in: {e}"
    else:
        raise AssertionError(f"no ConfigError ({text!r})")


def run_train_from_scene(scene, logic: TrainLogic, home: str | Path, name: str = "VoxMetricSelfTest",
                         n_cases: int = 3, iterations: int = 20, batch_size: int = 2) -> dict:
    """Phantom cases in the scene → export through the logic → a short UNet training in a
    child process → events arrive, the loss table fills, the package is installed into
    ``home``/models and listed by :func:`voxmetric.models.list_models`.

    Returns the measured numbers; raises AssertionError on failure."""
    with models_home(home) as home:
        made = add_phantom_cases(scene, n_cases)
        pairs = pairs_from_scene(scene, "prostate")  # case-insensitive, paired with the reference volume
        assert [(p.volume_node, p.segmentation_node) for p in pairs] == \
            [(p.volume_node, p.segmentation_node) for p in made], "pairs_from_scene missed a case"

        info, events = logic.run(scene, "UNet", pairs, "Prostate", name, iterations, batch_size, device="cpu",
                                 modality="ct", extra_args=TINY_UNET, timeout=600)
        kinds = [e.get("event") for e in events]
        exit_event = events[-1]
        assert exit_event["event"] == "exit" and exit_event["returncode"] == 0, exit_event.get("stderr")
        missing = {"progress", "iteration", "validation", "checkpoint", "done"} - {str(k) for k in kinds}
        assert not missing, f"no {sorted(missing)} events; got {sorted({str(k) for k in kinds})}"

        # the loss curve: one row per logged iteration, validation DSC merged into its row
        table = logic.table_node.GetTable()
        column = lambda c: [table.GetColumnByName(c).GetValue(i) for i in range(table.GetNumberOfRows())]  # noqa: E731
        logged = [e["iteration"] for e in events if e.get("event") == "iteration"]
        assert column("iteration") == logged and logged[-1] == iterations, (column("iteration"), logged)
        assert all(math.isfinite(v) and v > 0 for v in column("loss")), column("loss")
        dsc = [v for v in column("dsc") if math.isfinite(v)]
        assert dsc and all(0.0 <= v <= 1.0 for v in dsc), column("dsc")
        assert logic.chart_node.GetNumberOfPlotSeriesNodes() == 2

        # the exported cases: the scene's voxels and segments, listed in a manifest
        assert logic.run_dir is not None
        records = load_cases(logic.run_dir / "cases" / "manifest.json")
        assert [r.id for r in records] == [f"case{i:03d}" for i in range(n_cases)]
        assert all(r.modality == "ct" and r.segment == "Prostate" for r in records), records
        first = read_volume(records[0].image)
        np.testing.assert_array_equal(first.array, mrml.volume_from_node(pairs[0].volume_node).array)
        assert records[0].label is not None
        label = read_segment_mask(records[0].label, "Prostate", reference=first)
        np.testing.assert_array_equal(label.array, mrml.mask_from_segment(pairs[0].segmentation_node, "Prostate",
                                                                          pairs[0].volume_node).array)

        # the installed package, as VoxMetricSeg's model list sees it
        assert info is not None and info.name == name and not info.bundled, info
        assert info.path == home / "models" / name, info.path
        assert name in [m.name for m in models.list_models()]
        card, _ = models.read_verified(info.path)
        assert card["method"] == "UNet" and card["role"] == "refiner" and card["modality"] == "ct", card
        assert card["training"]["iterations"] == iterations and card["training"]["cases"] == n_cases - 1
        _raises(lambda: logic.start(scene, "UNet", pairs, "Prostate", name, 1, 1), "already installed")
        _raises(lambda: logic.resume(scene, name), "finished already")
        done = next(e for e in events if e.get("event") == "done")
        return {"seconds": done["seconds"], "rows": table.GetNumberOfRows(), "final_loss": column("loss")[-1],
                "validation_dsc": dsc[-1], "model": str(info.path)}
