"""Unlabeled volumes for semi-supervised methods (e.g. CRII), from the scene or a folder.

Scene volumes are copied on the GUI thread (:func:`snapshot_unlabeled`, one per timer tick) and
written by the job's worker as ``uNNN.nrrd`` + a ``manifest.json`` of images only
(:func:`write_unlabeled`), which ``voxmetric train --unlabeled`` reads. A folder or manifest is
passed through as it is; the engine checks it (readable 3D images, the labelled cases'
modality) before training starts. Nothing here imports Slicer, VTK or Qt.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from voxmetric import mrml
from voxmetric.cases import CaseRecord, write_manifest
from voxmetric.errors import ConfigError, InputError
from voxmetric.io import write_volume
from voxmetric.volume import Volume

#: Where a run keeps its unlabeled scene volumes (inside its folder).
FOLDER = "unlabeled"


@dataclass
class UnlabeledSnapshot:
    """One scene volume read on the GUI thread: its voxels and its name (for messages)."""

    id: str
    image: Volume
    volume_name: str


def check_method(method: str, wanted: bool) -> None:
    """ConfigError when unlabeled volumes are given to a method that learns from labels only."""
    from voxmetric.methods import get_method

    m = get_method(method)
    if wanted and not m.uses_unlabeled:
        raise ConfigError(f"{m.name} learns from labelled cases only: set 'Unlabeled volumes from' to none, or pick a "
                          "semi-supervised method (e.g. CRII).")


def unlabeled_from_scene(scene: Any, labelled_volumes: Sequence[Any] = ()) -> list[Any]:
    """Every scalar volume node of the scene that is not a labelled case's volume (nor a label
    map), in scene order: the candidates for "Add all other volumes"."""
    used = {v.GetID() for v in labelled_volumes if v is not None}
    out = []
    for k in range(scene.GetNumberOfNodesByClass("vtkMRMLScalarVolumeNode")):
        node = scene.GetNthNodeByClass(k, "vtkMRMLScalarVolumeNode")
        if not (node.IsA("vtkMRMLLabelMapVolumeNode") or node.GetID() in used or node.GetImageData() is None):
            out.append(node)
    return out


def check_unlabeled(nodes: Sequence[Any], labelled_volumes: Sequence[Any] = ()) -> None:
    """InputError for an empty row, a volume listed twice or one that is also a labelled case."""
    seen: set[str] = set()
    labelled = {v.GetID() for v in labelled_volumes if v is not None}
    for i, node in enumerate(nodes):
        row = f"Unlabeled row {i + 1}"
        if node is None:
            raise InputError(f"{row}: pick a volume, or remove the row.")
        if node.GetID() in labelled:
            raise InputError(f"{row}: '{node.GetName()}' is also a labelled case; an image is either labelled or "
                             "not. Remove the row.")
        if node.GetID() in seen:
            raise InputError(f"{row} repeats '{node.GetName()}'; remove the duplicate row.")
        seen.add(node.GetID())


def snapshot_unlabeled(node: Any, index: int) -> UnlabeledSnapshot:
    """GUI-thread part: a numpy copy of the volume (world LPS geometry)."""
    return UnlabeledSnapshot(f"u{index:03d}", mrml.volume_from_node(node), node.GetName())


def write_unlabeled(snapshots: Sequence[UnlabeledSnapshot], folder: str | Path, modality: str = "auto",
                    progress: Callable[[int, int, str], None] | None = None) -> Path:
    """Worker part: ``<id>.nrrd`` per snapshot and a ``manifest.json`` of images only (modality
    as given, or guessed from the intensities for "auto"); returns the manifest."""
    from voxmetric.intensity import looks_like_ct

    folder = Path(folder)
    records = []
    for i, snap in enumerate(snapshots):
        path = write_volume(snap.image, folder / f"{snap.id}.nrrd")
        mod = ("ct" if looks_like_ct(snap.image.array) else "mr") if modality == "auto" else modality
        records.append(CaseRecord(snap.id, path, None, None, mod))
        if progress is not None:
            progress(i + 1, len(snapshots), f"exported unlabeled {snap.id} ({snap.volume_name})")
    return write_manifest(records, folder / "manifest.json")


def unlabeled_argument(source: str | Path | Sequence[Any] | None, run: Path) -> str | None:
    """What ``voxmetric train --unlabeled`` gets: a folder / manifest path as given (checked to
    exist), the run's own manifest for scene volumes, or None."""
    if source is None or (not isinstance(source, (str, Path)) and not list(source)):
        return None
    if isinstance(source, (str, Path)):
        path = Path(source).expanduser()
        if not str(source).strip() or not path.exists():
            raise InputError(f"The unlabeled folder or manifest '{source}' does not exist; pick a folder of images "
                             "(no labels needed) or a manifest.json.")
        return str(path.resolve())
    return str(run / FOLDER / "manifest.json")
