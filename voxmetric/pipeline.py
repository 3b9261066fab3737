"""Two-stage inference (METHODS.md §2.3, §2.4, §6.1): localise → ROI :class:`Box` → refine → mask.

Stage 1 (:meth:`Pipeline.localize`): the training preprocessing of the localizer (1 mm, body
crop, intensity normalisation, then the localizer's spacing, 4 mm) on the same 4 mm grid but
straight from the native scan (``data.preprocess_image_fast``: no whole-scan 1 mm copy), every axial slice as a 5-slice slab (edge slices replicated, I-15) in batches,
coarse mask = probability > 0.5, its most confident 3D component (the highest mean probability
among those of at least ``min_volume_mm3``; the paper's I-12 keeps the largest, which on a real
abdomen–pelvis CT was a larger, less certain response in the upper abdomen) gives the centroid
(LPS mm) and the extent. The next ``candidates`` − 1 components that also pass are kept as
alternatives: in :meth:`Pipeline.segment`, stage 2 checks stage 1 — when the prostate refined in
the first box is empty or of implausible volume (:mod:`voxmetric.qc`), the alternatives are refined
in turn and the first plausible one is used (the result's message says so). On the real pelvic CT
of ``../shared/data`` the localizer before its self-training put its most confident region on the
rectum above the gland (6.3 mL refined) and the second on the gland. ROI rules: ``"extent"``
(default) = the component's extent + ``margin_mm`` per side, each side clamped to
[``min_size_mm``, ``max_size_mm``]; ``"fixed"`` = a ``fixed_size_mm`` cube on the centroid (the paper's 128 mm). The box axes are the scan's axes,
reordered and sign-flipped to point along +LPS (:func:`oriented`), so the box is aligned with
the scan grid and its slabs are axial whatever the scan's axis order or flips.

Femoral-head averaging of the centre (I-12/I-13) is **not** used: the localizer has no
femoral-head class, and a threshold-based femoral-head finder is not robust to the metal hip
prosthesis of real CT (see ``../shared/data/pelvis_ct``); the centre is the coarse mask's.

When no prostate is found (no component, a component smaller than ``min_volume_mm3``, or a mean
probability below ``min_confidence``; the confidence is the mean probability over the kept
component, so with the default threshold and ``min_confidence`` 0.5 only the volume decides; 1 mL,
a small core, as the refined result's plausible volume is judged by stage 2's check and the QC) the
result says so (``found=False``, no exception) and
holds a default ``fixed_size_mm`` box at the body centre in-plane, low in the pelvis (z), for
the user to move.

Stage 2 (:meth:`Pipeline.refine`): the volume is resampled onto the box grid at 1 mm (rotated
boxes honoured) widened to at least the refiner's context (``method.context_mm``: a 2.5D net
needs the in-plane context of one training patch), normalised, resampled to the refiner's
spacing when it is not 1 mm (the order of the training preprocessing), and given to the
refiner's predictor (``method.predict`` → class probabilities); the foreground classes'
probabilities are pasted back onto the input's grid (linear), turned into labels and cleaned by
:mod:`voxmetric.postprocess` (the rule validation uses too) and kept only inside the box:
largest 3D component per class, with every other one that touches stage 1's region (when stage 1
ran), and hole filling (both configurable). The result is a label map
whose value k is the refiner's class ``k`` (``Stage.classes[k - 1]``; "Prostate" alone for a
prostate model).

CPU: a stage whose package holds a verified ONNX graph runs on ONNX Runtime
(:mod:`voxmetric.runtime`; torch is then not imported at all), otherwise torch with
``inference_mode``, ``channels_last``, batched slices, all cores. bf16 autocast is off by default
(``bf16=True`` enables it; see the benchmark for whether it pays off). ``SegmentResult.timings``
splits each stage into its preprocessing (``*_preprocess``: body box, resampling,
normalisation), its network (``*_network``) and the paste back onto the input grid (``paste``)
in ``SegmentResult.stage_timings``.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from . import intensity
from .errors import ConfigError, InputError
from .postprocess import clean, labels_from_foreground, ranked_components
from .volume import Box, Volume, crop, resample, resample_to

if TYPE_CHECKING:  # pragma: no cover
    from torch import nn

    from .methods import Method
    from .qc import QCReport
    from .runtime import Network

Progress = Callable[[int, int, str], None]
ROI_RULES = ("extent", "fixed")


@dataclass(frozen=True)
class PipelineConfig:
    """Settings of :class:`Pipeline` (sizes in mm)."""

    roi_rule: str = "extent"
    margin_mm: float = 15.0
    min_size_mm: float = 60.0
    max_size_mm: float = 128.0
    fixed_size_mm: float = 128.0
    threshold: float = 0.5
    min_volume_mm3: float = 1000.0  # a core of the gland (see the module docstring)
    min_confidence: float = 0.5
    candidates: int = 3
    largest_component: bool = True
    fill_holes: bool = True
    batch_size: int = 16
    bf16: bool = False
    uncertainty: bool = True  # compute the refiner's uncertainty map (QC, --uncertainty-out)

    def __post_init__(self) -> None:
        if self.roi_rule not in ROI_RULES:
            raise ConfigError(f"Unknown ROI rule {self.roi_rule!r}; use one of {', '.join(ROI_RULES)}.")
        if self.margin_mm < 0 or not 0 < self.min_size_mm <= self.max_size_mm or self.fixed_size_mm <= 0:
            raise ConfigError("ROI sizes must satisfy margin ≥ 0 and 0 < min size ≤ max size, fixed size > 0; got "
                              f"margin {self.margin_mm}, min {self.min_size_mm}, max {self.max_size_mm}, "
                              f"fixed {self.fixed_size_mm} mm.")
        if not 0 < self.threshold < 1 or self.batch_size < 1:
            raise ConfigError("threshold must lie in (0, 1) and batch_size be at least 1.")
        if self.candidates < 1:
            raise ConfigError("candidates (stage-1 regions stage 2 may try) must be at least 1, "
                              f"got {self.candidates}.")


@dataclass
class Stage:
    """A loaded network: its :class:`voxmetric.methods.Method`, config and ``nn.Module``
    (eval mode); ``name`` is the model package's name, ``classes`` the names of its label
    values 1, 2, … (background excluded). ``network``: a compiled forward pass of the model
    (:mod:`voxmetric.runtime`, e.g. the package's verified ONNX graph) used on the CPU instead of
    the module, which may then be None."""

    method: "Method[Any]"
    cfg: Any
    model: "nn.Module | None"
    name: str = ""
    classes: tuple[str, ...] = ("Prostate",)
    network: "Network | None" = None

    @property
    def spacing_mm(self) -> float:
        return float(self.method.data_recipe(self.cfg).spacing_mm)


@dataclass
class LocalizeResult:
    """Stage-1 result: ``box`` (LPS), ``confidence`` (mean probability of the kept component,
    0 when none), ``found``, ``coarse_mask`` (uint8 Volume on the 4 mm preprocessed grid: the
    kept component), ``centroid`` (LPS mm, None when nothing was found) and ``probability``
    (float32, any foreground class, on the grid of ``coarse_mask``); ``alternatives``: the next
    regions that also pass as found, most confident first (at most ``candidates`` − 1), each a
    LocalizeResult of its own."""

    box: Box
    confidence: float
    found: bool
    coarse_mask: Volume
    centroid: np.ndarray | None = None
    message: str = ""
    probability: Volume | None = None
    alternatives: list[LocalizeResult] = field(default_factory=list)


@dataclass
class SegmentResult:
    """``mask``: uint8 label map Volume on the input's grid (value k = ``classes[k - 1]``);
    ``timings``: seconds per stage; ``stage_timings``: the stages split into preprocessing,
    network and paste (see the module docstring)."""

    mask: Volume | None
    box: Box
    found: bool
    confidence: float
    timings: dict[str, float] = field(default_factory=dict)
    localization: LocalizeResult | None = None
    message: str = ""
    classes: tuple[str, ...] = ("Prostate",)
    uncertainty: Volume | None = None  # float32 map on the input's voxels inside the box (a sub-grid), 0 outside
    pieces: dict[str, int] = field(default_factory=dict)  # components per class before post-processing
    uncertainty_kind: str | None = None
    uncertainty_limit: float | None = None
    stage_timings: dict[str, float] = field(default_factory=dict)

    def qc(self, modality: str) -> QCReport:
        """The :func:`voxmetric.qc.judge` report of this result (the box counts as the ROI only for
        a refined result)."""
        from .qc import judge

        return judge(self.mask, self.classes, modality, found=self.found, box=self.box if self.mask is not None else None,
                     pieces=self.pieces or None, uncertainty=self.uncertainty, uncertainty_kind=self.uncertainty_kind,
                     uncertainty_limit=self.uncertainty_limit)


@dataclass
class RefineOutput:
    """Stage 2's label map (input grid), its uncertainty on the box's sub-grid of the input's
    voxels (None when off) and each class's components before post-processing."""

    mask: Volume
    uncertainty: Volume | None = None
    pieces: dict[str, int] = field(default_factory=dict)


def _report(progress: Progress | None, lo: int, hi: int) -> Callable[[float, str], None]:
    """Map a stage's fraction [0, 1] onto the overall percentage range [lo, hi]."""

    def say(fraction: float, message: str) -> None:
        if progress is not None:
            progress(int(round(lo + (hi - lo) * min(max(fraction, 0.0), 1.0))), 100, message)

    return say


def roi_from_mask(mask: Volume, config: PipelineConfig | None = None) -> tuple[Box, np.ndarray]:
    """(ROI box, centroid LPS mm) of a non-empty coarse mask (uint8 Volume) by the config's rule:
    "extent" = the mask's extent (voxel edges) + ``margin_mm`` per side, each side clamped to
    [``min_size_mm``, ``max_size_mm``], centred on the extent; "fixed" = a ``fixed_size_mm``
    cube on the centroid. Box axes = the mask grid's direction."""
    cfg = config or PipelineConfig()
    idx = np.argwhere(np.asarray(mask.array) > 0)  # (n, 3) z, y, x
    if idx.size == 0:
        raise InputError("The coarse mask is empty; there is no region to put a box around.")
    centroid = mask.index_to_physical(idx.mean(0)[::-1])
    if cfg.roi_rule == "fixed":
        return Box(centroid, np.full(3, cfg.fixed_size_mm), mask.direction), centroid
    lo, hi = idx.min(0)[::-1] - 0.5, idx.max(0)[::-1] + 0.5  # voxel edges (x, y, z)
    size = np.clip((hi - lo) * mask.spacing + 2 * cfg.margin_mm, cfg.min_size_mm, cfg.max_size_mm)
    return Box(mask.index_to_physical((lo + hi) / 2), size, mask.direction), centroid


def canonical_box(box: Box) -> Box:
    """The same region with its axes reordered and sign-flipped so that axis i points along +LPS
    axis i as far as possible (x → left, y → posterior, z → superior): slabs are then axial and
    anatomy has one orientation, whatever the scan's axis order and flips. Boxes tilted by about
    45° (no unique matching) are returned unchanged."""
    a = box.axes
    order = [int(np.argmax(np.abs(a[i]))) for i in range(3)]
    if sorted(order) != [0, 1, 2]:
        return box
    cols = a[:, order]
    signs = np.where(np.diag(cols) < 0, -1.0, 1.0)
    return Box(box.center, box.size[order], cols * signs)


def oriented(volume: Volume) -> Volume:
    """``volume`` with its array permuted / flipped so that its axes point along +LPS (lossless;
    SimpleITK DICOMOrient "LPS"); the physical image is unchanged. A permutation of the axes is
    done as a numpy view (no copy); tilts of about 45° go through DICOMOrient."""
    import SimpleITK as sitk

    if np.allclose(volume.direction, np.eye(3), atol=1e-6):
        return volume
    d = volume.direction
    order = [int(np.argmax(np.abs(d[:, i]))) for i in range(3)]  # LPS axis of index axis i (x, y, z)
    if sorted(order) == [0, 1, 2]:
        perm = [order.index(j) for j in range(3)]  # old index axis of new axis j
        signs = np.array([np.sign(d[order[i], i]) for i in range(3)])
        a = np.asarray(volume.array).transpose([2 - perm[2], 2 - perm[1], 2 - perm[0]])
        flips = tuple(k for k, j in enumerate((2, 1, 0)) if signs[perm[j]] < 0)
        a = np.flip(a, flips) if flips else a
        first = np.array([0.0 if signs[i] > 0 else volume.size_xyz[i] - 1.0 for i in range(3)])
        return Volume(a, volume.spacing[perm], volume.index_to_physical(first), d[:, perm] * signs[perm])
    img = volume.to_sitk()
    out = Volume.from_sitk(sitk.DICOMOrient(img, "LPS"))
    return out if out.array.dtype == volume.array.dtype else out.with_array(out.array.astype(volume.array.dtype))


def guess_modality(array: np.ndarray, voxels: int = 1 << 21) -> str:
    """"ct" when the intensities look like Hounsfield units (:func:`intensity.looks_like_ct`),
    else "mr", judged on an evenly strided view of about ``voxels`` voxels (no copy of the scan)."""
    a = np.asarray(array)
    step = max(1, int(np.ceil((a.size / max(voxels, 1)) ** (1.0 / 3.0))))
    return "ct" if intensity.looks_like_ct(a[::step, ::step, ::step]) else "mr"


def _index_bounds(vol: Volume, box: Box) -> tuple[np.ndarray, np.ndarray] | None:
    """Inclusive (z, y, x) index range of ``vol`` voxels that can lie inside ``box``; None if none."""
    idx = vol.physical_to_index(box.corners)[:, ::-1]
    lo = np.maximum(np.floor(idx.min(0)), 0).astype(int)
    hi = np.minimum(np.ceil(idx.max(0)), np.array(vol.shape) - 1).astype(int)
    return None if np.any(hi < lo) else (lo, hi)


def _around(vol: Volume, box: Box) -> Volume:
    """The part of ``vol`` (a view, origin moved) that resampling inside ``box`` can read: the
    voxels that can lie in it plus one for interpolation; ``vol`` itself when none does."""
    b = _index_bounds(vol, box)
    if b is None:
        return vol
    lo, hi = np.maximum(b[0] - 1, 0), np.minimum(b[1] + 1, np.array(vol.shape) - 1)
    return Volume(vol.array[lo[0]:hi[0] + 1, lo[1]:hi[1] + 1, lo[2]:hi[2] + 1], vol.spacing,
                  vol.index_to_physical(lo[::-1].astype(float)), vol.direction)


def check_roi(volume: Volume, box: Box, what: str = "The ROI box") -> None:
    """InputError when ``box`` does not overlap ``volume``'s extent (refining there would give an
    empty segmentation without a word)."""
    try:
        overlaps = Box.from_volume_extent(volume).overlaps(box)
    except InputError:  # a volume whose axes are not orthonormal: the index bounds decide
        overlaps = _index_bounds(volume, box) is not None
    if not overlaps:
        corners = volume.index_to_physical(np.array([[i, j, k] for i in (0, 1) for j in (0, 1) for k in (0, 1)],
                                                    float) * (volume.size_xyz - 1.0))
        lo, hi = corners.min(0), corners.max(0)
        fmt = lambda v: "(" + ", ".join(f"{x:.0f}" for x in v) + ")"  # noqa: E731
        raise InputError(f"{what} (centre {fmt(box.center)} mm, size {fmt(box.size)} mm, LPS) does not overlap "
                         f"the image (from {fmt(lo)} to {fmt(hi)} mm): it was drawn on another scan or in other "
                         "coordinates. Move the ROI over the prostate of this image, or run the localize stage to "
                         "place one.")


def _subgrid(vol: Volume, lo: np.ndarray, hi: np.ndarray) -> Volume:
    """An empty uint8 grid = voxels lo..hi (inclusive, z, y, x) of ``vol``."""
    shape = tuple(int(v) for v in hi - lo + 1)
    return Volume(np.zeros(shape, np.uint8), vol.spacing, vol.index_to_physical(lo[::-1].astype(float)),
                  vol.direction)


def _inside_box(grid: Volume, box: Box) -> np.ndarray:
    """Boolean (z, y, x): voxel centres of ``grid`` inside ``box``."""
    z, y, x = np.meshgrid(*(np.arange(n) for n in grid.shape), indexing="ij")
    pts = grid.index_to_physical(np.stack([x, y, z], -1).astype(np.float64))
    return box.contains(pts)


class Pipeline:
    """Localizer + refiner with :class:`PipelineConfig`; ``modality`` "ct", "mr" or None
    (guessed per image); ``device`` a ``torch.device`` or name."""

    def __init__(self, localizer: Stage | None, refiner: Stage | None, modality: str | None = None,
                 config: PipelineConfig | None = None, device: Any = "cpu") -> None:
        self.localizer, self.refiner = localizer, refiner
        self.modality = None if modality in (None, "auto") else str(modality).lower()
        if self.modality not in (None, "ct", "mr"):
            raise ConfigError(f"Unknown modality {modality!r}; use auto, ct or mr.")
        self.config = config or PipelineConfig()
        self._detail: dict[str, float] = {}
        cpu = getattr(device, "type", str(device)) == "cpu"
        torch_stages = [s for s in (localizer, refiner) if s is not None and not (cpu and s.network is not None)]
        if not torch_stages and cpu:  # every stage runs a compiled network: torch is not needed
            from .runtime import CpuDevice

            self.device: Any = CpuDevice()
            return
        import torch

        self.device = torch.device(str(device))
        if self.device.type == "cpu":
            torch.set_num_threads(os.cpu_count() or 1)
        for stage in torch_stages:
            if stage.model is None:
                raise ConfigError(f"Stage {stage.name!r} has no torch model to run on {self.device}; load its "
                                  "package with the torch runtime.")
        for stage in torch_stages:
            if stage.model is not None:
                stage.model.eval().to(self.device)
                if self.device.type == "cpu":
                    volumetric = any(p.ndim == 5 for p in stage.model.parameters())  # 3D convolutions
                    layout = torch.channels_last_3d if volumetric else torch.channels_last
                    stage.model.to(memory_format=layout)  # pyright: ignore[reportCallIssue, reportArgumentType]

    # -- helpers -----------------------------------------------------------------------------------
    def image_modality(self, volume: Volume) -> str:
        """The pipeline's modality, or a guess from the intensities ("ct" when they look like HU)."""
        if self.modality is not None:
            return self.modality
        return guess_modality(volume.array)

    def _predict(self, stage: Stage, image: np.ndarray, say: Callable[[float, str], None], what: str) -> np.ndarray:
        """Class probabilities (C, Z, Y, X) of a normalised image (Z, Y, X): the stage's predictor
        (its compiled network on the CPU when it has one)."""
        from .methods import Runtime

        t = time.perf_counter()
        network = stage.network if self.device.type == "cpu" else None
        rt = Runtime(self.device, self.config.batch_size, self.config.bf16, lambda f, m: say(f, f"{what}: {m}"),
                     network=network)
        out = stage.method.predict(stage.model, stage.cfg, image, rt)  # pyright: ignore[reportArgumentType]
        self._detail[f"{what}_network"] = self._detail.get(f"{what}_network", 0.0) + time.perf_counter() - t
        return out

    # -- stage 1 -------------------------------------------------------------------------------------
    def localize(self, volume: Volume, progress: Progress | None = None) -> LocalizeResult:
        """Stage 1 on ``volume`` (see the module docstring); never raises for "not found"."""
        return self._localize(volume, _report(progress, 0, 100))

    def _need(self, role: str) -> Stage:
        """The localizer or refiner Stage; ConfigError saying what to do when the pipeline lacks it."""
        stage = self.localizer if role == "localizer" else self.refiner
        if stage is None:
            raise ConfigError("This pipeline has no localizer model; give an ROI (--roi-file) or a pipeline with one."
                              if role == "localizer" else
                              "This pipeline has no refiner model; pick a pipeline with a refiner (--model).")
        return stage

    def _localize(self, volume: Volume, say: Callable[[float, str], None]) -> LocalizeResult:
        from .data import preprocess_image_fast

        loc = self._need("localizer")
        cfg = self.config
        say(0.0, "localize: preprocessing")
        prep, _ = preprocess_image_fast(oriented(volume), self.image_modality(volume), loc.spacing_mm)
        say(0.1, "localize: coarse segmentation")
        probs = self._predict(loc, prep.array, lambda f, m: say(0.1 + 0.85 * f, m), "localize")
        prob = probs[1:].sum(0)  # any foreground class
        voxel_mm3 = float(np.prod(prep.spacing))
        probability = prep.with_array(prob.astype(np.float32, copy=False))
        comps = ranked_components(prob, cfg.threshold, int(np.ceil(cfg.min_volume_mm3 / voxel_mm3)), cfg.candidates)

        def region(comp: np.ndarray) -> LocalizeResult:
            coarse = prep.with_array(comp.astype(np.uint8))
            box, centroid = roi_from_mask(coarse, cfg)
            return LocalizeResult(box, float(prob[comp].mean()), True, coarse, centroid, "", probability)

        ranked = [region(c) for c in comps]
        regions = [r for r in ranked
                   if r.coarse_mask.array.sum() * voxel_mm3 >= cfg.min_volume_mm3 and r.confidence >= cfg.min_confidence]
        if not regions:
            n = int(ranked[0].coarse_mask.array.sum()) if ranked else 0
            confidence = ranked[0].confidence if ranked else 0.0
            why = ("no prostate-like region" if n == 0 else
                   f"only a small ({n * voxel_mm3 / 1000:.1f} ml) or uncertain (confidence {confidence:.2f}) region")
            say(1.0, "localize: not found")
            coarse = ranked[0].coarse_mask if ranked else prep.with_array(np.zeros(prob.shape, np.uint8))
            return LocalizeResult(self.default_box(prep), confidence, False, coarse, None,
                                  f"No prostate was found ({why}); the ROI box was placed in the low pelvis. "
                                  "Move it over the prostate and run Refine.", probability)
        say(1.0, "localize: done")
        regions[0].alternatives = regions[1:]
        return regions[0]

    @property
    def whole_body_refiner(self) -> bool:
        """True when the refiner was trained on whole bodies (``region`` "body"): its ROI is the
        body, not a localizer's box."""
        return self.refiner is not None and self.refiner.method.data_recipe(self.refiner.cfg).region == "body"

    def body_box(self, volume: Volume, coarse_mm: float = 4.0) -> Box:
        """The body's bounding box (+5 mm), found on a strided ``coarse_mm`` view of the scan."""
        step = np.maximum(1, np.floor(coarse_mm / volume.spacing)).astype(int)  # x, y, z
        coarse = Volume(volume.array[::step[2], ::step[1], ::step[0]], volume.spacing * step, volume.origin,
                        volume.direction)
        return intensity.body_box(coarse, self.image_modality(volume))

    def default_box(self, body: Volume) -> Box:
        """The "not found" box: ``fixed_size_mm`` cube at the body's in-plane centre and low in
        the body along the patient's z (LPS superior), 1/6 of the body length (≥ 40 mm, at most
        half) above its inferior end. ``body`` is a body-cropped volume."""
        full = Box.from_volume_extent(body)
        corners = full.corners
        zmin, zmax = corners[:, 2].min(), corners[:, 2].max()
        length = zmax - zmin
        centre = full.center.copy()
        centre[2] = zmin + min(max(length / 6.0, 40.0), length / 2.0)
        return Box(centre, np.full(3, self.config.fixed_size_mm), body.direction)

    # -- stage 2 -------------------------------------------------------------------------------------
    def refine(self, volume: Volume, box: Box, progress: Progress | None = None) -> Volume:
        """Stage 2: uint8 label map on ``volume``'s grid (value k = ``refiner.classes[k - 1]``),
        non-zero only inside ``box`` (InputError when it does not overlap the image)."""
        check_roi(volume, box)
        return self._refine(volume, box, _report(progress, 0, 100))

    def _normaliser(self, volume: Volume, modality: str) -> tuple[float, Callable[[np.ndarray], np.ndarray]]:
        """(fill value that maps to 0, function raw array → float32 [0, 255]) for ``volume``.
        MR: the 0.5/99.5 percentiles over the body's bounding box, as in training."""
        if modality == "ct":
            return -1024.0, intensity.normalize_ct
        a = np.asarray(volume.array)
        bb = _index_bounds(volume, intensity.body_box(volume, "mr", margin_mm=0.0))
        region = a if bb is None else a[tuple(slice(l, h + 1) for l, h in zip(*bb))]
        lo, hi = (float(v) for v in np.percentile(region[::2, ::2, ::2], (0.5, 99.5)))
        if not hi > lo:
            hi = lo + 1.0
        return lo, lambda x: ((np.clip(np.asarray(x, np.float32), lo, hi) - lo) * (255.0 / (hi - lo))).astype(np.float32)

    def _refine(self, volume: Volume, box: Box, say: Callable[[float, str], None]) -> Volume:
        return self._refine_full(volume, box, say).mask

    def _refine_full(self, volume: Volume, box: Box, say: Callable[[float, str], None],
                     seen: Volume | None = None) -> RefineOutput:
        from .qc import count_pieces

        cfg = self.config
        say(0.0, "refine: resampling the ROI")
        fill, norm = self._normaliser(volume, self.image_modality(volume))
        ref = self._need("refiner")
        sp = ref.spacing_mm
        # as in training (data.preprocess_image): 1 mm, normalise, then the refiner's spacing,
        # with at least the context the refiner's network was trained with
        cbox = canonical_box(box)
        wide = Box(cbox.center, np.maximum(cbox.size, ref.method.context_mm(ref.cfg)), cbox.axes)
        roi = crop(_around(volume, wide), wide, (1.0, 1.0, 1.0), is_label=False, fill=fill)  # only the box's voxels
        roi = roi.with_array(norm(roi.array))
        if not np.isclose(sp, 1.0):
            roi = resample(roi, (sp, sp, sp), is_label=False)
        probs = self._predict(ref, roi.array, lambda f, m: say(0.05 + 0.85 * f, m), "refine")
        unc = None
        if cfg.uncertainty:
            from .methods import Runtime

            rt = Runtime(self.device, cfg.batch_size, cfg.bf16, lambda f, m: say(0.9, f"uncertainty: {m}"))
            unc = ref.method.uncertainty(ref.model, ref.cfg, roi.array, rt, probs)
        say(0.92, "refine: pasting back")
        t_paste = time.perf_counter()
        out = np.zeros(volume.shape, np.uint8)
        result = RefineOutput(volume.with_array(out))
        bounds = _index_bounds(volume, box)
        if bounds is not None:
            sub = _subgrid(volume, *bounds)
            inside = _inside_box(sub, box)
            fg = np.stack([resample_to(roi.with_array(p), sub, is_label=False, fill=0.0).array for p in probs[1:]])
            labels = labels_from_foreground(fg, cfg.threshold)
            labels[~inside] = 0
            result.pieces = {name: count_pieces(labels == k) for k, name in enumerate(ref.classes, 1)}
            keep = None if seen is None else resample_to(seen, sub, is_label=True).array > 0
            labels = clean(labels, cfg.largest_component, cfg.fill_holes, inside, keep)
            out[tuple(slice(l, h + 1) for l, h in zip(*bounds))] = labels
            if unc is not None:
                u = resample_to(roi.with_array(np.asarray(unc, np.float32)), sub, is_label=False, fill=0.0).array
                result.uncertainty = sub.with_array(np.where(inside, u, 0.0).astype(np.float32))
        self._detail["paste"] = self._detail.get("paste", 0.0) + time.perf_counter() - t_paste
        say(1.0, "refine: done")
        return result

    # -- both ------------------------------------------------------------------------------------------
    def segment(self, volume: Volume, box: Box | None = None, progress: Progress | None = None,
                stage: str = "all") -> SegmentResult:
        """``stage`` "all": localise (unless ``box`` is given) then refine; "localize": stage 1
        only (mask None); "refine": stage 2 in ``box`` (required). When stage 1 finds nothing
        the mask is empty and ``found`` is False. Timings in seconds per stage and "total"."""
        if stage not in ("all", "localize", "refine"):
            raise ConfigError(f"Unknown stage {stage!r}; use all, localize or refine.")
        if stage == "refine" and box is None:
            raise InputError("Refine needs an ROI box: run the localize stage first or give an ROI file (--roi-file).")
        if box is not None and stage != "localize":
            check_roi(volume, box)
        t0 = time.perf_counter()
        timings: dict[str, float] = {}
        self._detail = {}
        loc = None
        found, confidence, message = True, 1.0, ""
        if box is None and stage == "all" and self.whole_body_refiner:
            box = self.body_box(volume)  # a whole-body model needs no localisation
            timings["localize"] = time.perf_counter() - t0
        if box is None:
            split = 100 if stage == "localize" else 30
            loc = self._localize(volume, _report(progress, 0, split))
            timings["localize"] = time.perf_counter() - t0
            box, found, confidence, message = loc.box, loc.found, loc.confidence, loc.message
        mask, refined = None, None
        if stage != "localize":
            t1 = time.perf_counter()
            if found:
                refined = self._refine_full(volume, box, _report(progress, 30 if loc else 0, 100),
                                            loc.coarse_mask if loc is not None else None)
                if loc is not None and loc.alternatives:
                    loc, refined = self._checked(volume, loc, refined, _report(progress, 100, 100))
                    box, confidence, message = loc.box, loc.confidence, loc.message
                mask = refined.mask
            else:
                mask = volume.with_array(np.zeros(volume.shape, np.uint8))
                if progress is not None:
                    progress(100, 100, "not found: refinement skipped")
            timings["refine"] = time.perf_counter() - t1
        timings["total"] = time.perf_counter() - t0
        classes = self.refiner.classes if self.refiner is not None else ("Prostate",)
        res = SegmentResult(mask, box, found, confidence, timings, loc, message, classes,
                            stage_timings=self._stage_details(timings))
        if refined is not None and self.refiner is not None:
            res.uncertainty, res.pieces = refined.uncertainty, refined.pieces
            if refined.uncertainty is not None:
                res.uncertainty_kind = self.refiner.method.uncertainty_kind
                res.uncertainty_limit = float(self.refiner.method.uncertainty_limit)
        return res

    def _checked(self, volume: Volume, loc: LocalizeResult, refined: RefineOutput,
                 say: Callable[[float, str], None]) -> tuple[LocalizeResult, RefineOutput]:
        """Stage 2 checks stage 1: when the prostate refined in ``loc``'s box is empty or of an
        implausible volume (:func:`voxmetric.qc.judge`), the next stage-1 regions
        (``loc.alternatives``) are refined in turn and the first plausible one is kept (its
        ``message`` says so); ``(loc, refined)`` when none is."""
        from .qc import IMPLAUSIBLE, judge

        modality, classes = self.image_modality(volume), self._need("refiner").classes

        def problem(out: RefineOutput) -> str:
            report = judge(out.mask, classes, modality)
            return "; ".join(r for r, c in zip(report.reasons, report.codes) if c in IMPLAUSIBLE)

        first = problem(refined)
        if not first:
            return loc, refined
        for k, alt in enumerate(loc.alternatives, 2):
            say(1.0, f"refine: region 1 is not plausible ({first}); "
                     f"refining region {k} (confidence {alt.confidence:.2f})")
            out = self._refine_full(volume, alt.box, say, alt.coarse_mask)
            if not problem(out):
                alt.message = (f"Stage 1's most confident region (confidence {loc.confidence:.2f}) did not refine to a "
                               f"plausible prostate ({first}); its region {k} (confidence {alt.confidence:.2f}) "
                               "was used instead.")
                return alt, out
        return loc, refined

    def _stage_details(self, timings: dict[str, float]) -> dict[str, float]:
        """Seconds of each stage's network, its preprocessing (the rest of the stage but the
        paste) and the paste, from this call's clock readings."""
        d = dict(self._detail)
        for what in ("localize", "refine"):
            if what in timings and f"{what}_network" in d:
                rest = timings[what] - d[f"{what}_network"] - (d.get("paste", 0.0) if what == "refine" else 0.0)
                d[f"{what}_preprocess"] = max(rest, 0.0)
        return d

    def with_config(self, **changes: Any) -> "Pipeline":
        """The same networks with some :class:`PipelineConfig` fields changed."""
        p = object.__new__(Pipeline)
        p.__dict__.update(self.__dict__)
        p.config = replace(self.config, **changes)
        return p


# ---- files -----------------------------------------------------------------------------------------
IMAGE_SUFFIXES = (".nrrd", ".nhdr", ".nii", ".nii.gz", ".mha", ".mhd")


def output_paths(output: str | Path, stage: str = "all") -> dict[str, Path]:
    """Default companions of ``X.seg.nrrd``: ROI ``X_roi.mrk.json`` and timings ``X_timings.json``
    (``X_localize_timings.json`` for ``stage="localize"``, so that localize then refine with the
    same ``-o`` keep both)."""
    out = Path(output)
    name = out.name
    stem = name[: -len(".seg.nrrd")] if name.lower().endswith(".seg.nrrd") else name.split(".")[0]
    timings = f"{stem}_localize_timings.json" if stage == "localize" else f"{stem}_timings.json"
    return {"segmentation": out, "roi": out.with_name(f"{stem}_roi.mrk.json"), "timings": out.with_name(timings)}


def image_files(folder: str | Path) -> list[Path]:
    """Image files of a folder (sorted), without segmentations (.seg.nrrd) and DICOM."""
    folder = Path(folder)
    files = [f for f in sorted(folder.iterdir()) if f.is_file() and not f.name.lower().endswith(".seg.nrrd")
             and f.name.lower().endswith(IMAGE_SUFFIXES)]
    if not files:
        raise InputError(f"No images ({', '.join(IMAGE_SUFFIXES)}) in {folder}. Give an image file or a folder of them.")
    return files


def _write_json(path: Path, data: dict, overwrite: bool = True) -> Path:
    from .files import write_json

    return write_json(path, data, overwrite=overwrite)


def segment_file(pipeline_for: "Pipeline | Callable[[str], Pipeline]", image: str | Path, output: str | Path, *,
                 stage: str = "all", modality: str = "auto", roi_file: str | Path | None = None,
                 roi_out: str | Path | None = None, timings_out: str | Path | None = None,
                 progress: Progress | None = None, series: str | int | None = None,
                 overwrite: bool = False, uncertainty_out: str | Path | None = None) -> dict[str, Any]:
    """Segment one image file: read it, run ``stage`` (ROI from ``roi_file`` when given), write
    the segmentation (``output``, a .seg.nrrd with segment "Prostate" on the input's grid; not
    for ``stage="localize"``), the ROI ``.mrk.json`` and the timings JSON (defaults: beside
    ``output``, see :func:`output_paths`; an ROI output that is the ``roi_file`` itself is read,
    not rewritten). ``pipeline_for``: a Pipeline or a function modality → Pipeline. ``series``:
    which series of a DICOM folder (UID or index, see :func:`voxmetric.dicom.select_series`).
    ``uncertainty_out``: write the refiner's uncertainty map (float32 on the input's grid, 0
    outside the ROI box; an image file such as .nrrd) there. Existing outputs are an OutputError
    (before any work) unless ``overwrite``; an ROI that does not overlap the image is an
    InputError. Returns a summary dict (found, confidence, timings, paths, box, ``qc``: the
    :func:`voxmetric.qc.judge` report of the result, ``uncertainty``: its kind and mean inside each
    segment). ``found`` is True only when stage 1 found the organ and the QC saw no empty or
    implausibly sized segment; ``localized`` is stage 1's own verdict."""
    from . import io
    from .markups import read_roi, write_roi

    t0 = time.perf_counter()
    paths, targets = segment_outputs(output, stage, roi_file, roi_out, timings_out, overwrite, uncertainty_out)
    roi_path, timings_path = paths["roi"], paths["timings"]
    volume = io.read_volume(image, series=series)
    box = read_roi(roi_file) if roi_file else None
    if box is not None and stage != "localize":
        check_roi(volume, box, f"The ROI in {roi_file}")
    mod = modality if modality in ("ct", "mr") else guess_modality(volume.array)
    t_read = time.perf_counter() - t0
    pipe = pipeline_for if isinstance(pipeline_for, Pipeline) else pipeline_for(mod)
    if uncertainty_out is not None and stage == "localize":
        raise InputError("--uncertainty-out needs a refined result; run --stage all or refine.")
    if uncertainty_out is not None and not pipe.config.uncertainty:
        pipe = pipe.with_config(uncertainty=True)
    t_load = time.perf_counter() - t0 - t_read
    res = pipe.segment(volume, box=box, progress=progress, stage=stage)
    t1 = time.perf_counter()
    fresh = [t for t in targets if not t.exists()]
    try:  # the new outputs all, or none: a rerun after a failed write (a full disk) is not refused
        written = {"roi": str(roi_path)}
        if res.mask is not None:  # the largest first
            io.write_segmentation(paths["segmentation"], res.mask,  # cropped to the segments, as Slicer saves
                                  [io.segment_info(name, k) for k, name in enumerate(res.classes, 1)],
                                  crop=True, overwrite=overwrite)
            written["segmentation"] = str(paths["segmentation"])
        if uncertainty_out is not None:
            from .qc import paste_on_grid

            unc = paste_on_grid(res.uncertainty, volume) if res.uncertainty is not None else \
                volume.with_array(np.zeros(volume.shape, np.float32))
            written["uncertainty_file"] = str(io.write_volume(unc, uncertainty_out, overwrite=overwrite))
        if roi_path in targets:
            write_roi(res.box, roi_path, overwrite=overwrite)
        timings = {"read": t_read, **{k: v for k, v in res.timings.items() if k != "total"},
                   "write": time.perf_counter() - t1, "total": time.perf_counter() - t0}
        stages = {"read": t_read, "load": t_load, **res.stage_timings, "write": timings["write"]}
        summary = _summary(image, mod, stage, res, timings, written, stages)
        _write_json(timings_path, summary, overwrite=overwrite)
    except BaseException:
        for t in fresh:
            if t.exists():
                t.unlink()
        raise
    summary["timings_file"] = str(timings_path)
    return summary


def _summary(image: str | Path, mod: str, stage: str, res: SegmentResult, timings: dict[str, float],
             written: dict[str, str], stages: dict[str, float]) -> dict[str, Any]:
    """The summary :func:`segment_file` returns and writes as its timings JSON."""
    report = res.qc(mod)
    summary = {"image": str(image), "modality": mod, "stage": stage, "found": _found(res, report),
               "localized": res.found, "localizer_ran": res.localization is not None, "qc": report.to_dict(),
               "verdict": report.line(),
               "uncertainty": {"kind": res.uncertainty_kind,
                               "mean_in_segment": {c.name: None if c.mean_uncertainty is None else
                                                   round(c.mean_uncertainty, 4) for c in report.classes}},
               "confidence": round(float(res.confidence), 4), "message": res.message,
               "timings": {k: round(v, 3) for k, v in timings.items()},
               "box": {"center": res.box.center.tolist(), "size": res.box.size.tolist(),
                       "axes": res.box.axes.ravel().tolist()},
               "classes": list(res.classes), "stage_timings": {k: round(v, 3) for k, v in stages.items()},
               "voxels": None if res.mask is None else {name: int(np.count_nonzero(res.mask.array == k))
                                                        for k, name in enumerate(res.classes, 1)}, **written}
    return summary


def _same_file(a: str | Path, b: str | Path) -> bool:
    pa, pb = Path(a).expanduser(), Path(b).expanduser()
    try:
        return pa.exists() and pb.exists() and os.path.samefile(pa, pb)
    except OSError:
        return pa.resolve() == pb.resolve()


def segment_outputs(output: str | Path, stage: str = "all", roi_file: str | Path | None = None,
                    roi_out: str | Path | None = None, timings_out: str | Path | None = None,
                    overwrite: bool = False, uncertainty_out: str | Path | None = None
                    ) -> tuple[dict[str, Path], list[Path]]:
    """``(paths, targets)`` of :func:`segment_file`: every output path by role ("segmentation",
    "roi", "timings", "uncertainty") and those it will write, checked (OutputError for an existing one unless
    ``overwrite``; InputError for a segmentation name not ending in .seg.nrrd) before any work."""
    from .files import check_free

    paths = output_paths(output, stage)
    if stage != "localize" and not paths["segmentation"].name.lower().endswith(".seg.nrrd"):
        raise InputError(f"The output must be a .seg.nrrd file, got {paths['segmentation'].name}.")
    if roi_out:
        paths["roi"] = Path(roi_out)
    if timings_out:
        paths["timings"] = Path(timings_out)
    targets = [paths["segmentation"]] if stage != "localize" else []
    if roi_file is None or not _same_file(paths["roi"], roi_file):  # the ROI given is read, not rewritten
        targets.append(paths["roi"])
    targets.append(paths["timings"])
    if uncertainty_out is not None:
        paths["uncertainty"] = Path(uncertainty_out)
        targets.append(paths["uncertainty"])
    for t in targets:
        check_free(t, overwrite)
    return paths, targets


def _found(res: SegmentResult, report: QCReport) -> bool:
    """Stage 1 found the organ and no segment is empty or of an implausible volume."""
    from .qc import IMPLAUSIBLE

    return bool(res.found) and not report.has(*IMPLAUSIBLE)


__all__ = ["IMAGE_SUFFIXES", "LocalizeResult", "Pipeline", "PipelineConfig", "ROI_RULES", "SegmentResult", "Stage",
           "canonical_box", "image_files", "oriented", "output_paths", "roi_from_mask", "segment_file"]
