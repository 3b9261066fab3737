"""Training items drawn from prepared cases (:mod:`voxmetric.data`), seeded so runs resume exactly.

Every dataset here is a :class:`SeededDataset`: ``len`` is the number of items per epoch and
item ``g`` (any ``g`` ≥ 0, ``g = epoch · len + i``) is a pure function of ``(seed, g)``.
:func:`make_loader` feeds global item indices, so a run resumed at item ``n`` draws exactly the
items an uninterrupted run would.

* :class:`PatchDataset`: 2.5D slabs (``depth`` slices in, the centre slice's labels out;
  MetricUNet, the localizer) or 3D patches (every slice labelled), from the label box + margin
  (stage 2) or the whole body (stage 1);
* :class:`GridDataset`: whole cases resampled to a fixed grid ([VS] §3.1);
* :class:`PairedDataset`: a labelled and an unlabeled item per index (semi-supervised methods).

Arrays are (z, y, x); labels are class indices (0 = background).
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from .data import DataRecipe, PreparedCase, _label_bounds
from .errors import ConfigError, InputError


class SeededDataset(Dataset):
    """A dataset whose item ``g`` is a pure function of ``(self.seed, g)`` for every ``g`` ≥ 0;
    ``len`` = items per epoch (epochs visit the cases in a seeded order)."""

    seed: int = 0

    def __len__(self) -> int:  # pragma: no cover - abstract
        raise NotImplementedError


# ---- patches (2.5D slabs and 3D) ----------------------------------------------------------------
@dataclass(frozen=True)
class PatchSampling:
    """``depth`` slices × ``size``² pixels per item; ``centre_label``: 2.5D (label the centre
    slice, edge slices replicated) or 3D (label every slice, zero outside the volume);
    ``per_case`` items per case per epoch; ``fg_fraction`` of them centred on a labelled voxel;
    ``augment``: in-plane rotation ±10°, flips along y and x, intensity ``v·s + t``;
    ``fov_cut``: probability that an item's field of view is cut (:func:`_cut_fov`); ``gamma``:
    half-width of ln γ for a per-item gamma curve (0: off)."""

    depth: int = 3
    size: int = 64
    per_case: int = 500
    fg_fraction: float = 0.5
    augment: bool = True
    centre_label: bool = True
    fov_cut: float = 0.0
    gamma: float = 0.0

    def check(self) -> "PatchSampling":
        if self.depth < 1 or self.size < 1 or self.per_case < 1:
            raise ConfigError(f"depth, size and per_case must be ≥ 1, got {self.depth}, {self.size}, {self.per_case}.")
        if self.centre_label and self.depth % 2 == 0:
            raise ConfigError(f"a 2.5D slab needs an odd number of slices, got {self.depth}.")
        if not 0 <= self.fg_fraction <= 1:
            raise ConfigError(f"fg_fraction must lie in [0, 1], got {self.fg_fraction}.")
        if not 0 <= self.fov_cut <= 1:
            raise ConfigError(f"fov_cut must lie in [0, 1], got {self.fov_cut}.")
        if not 0 <= self.gamma <= 2:
            raise ConfigError(f"gamma must lie in [0, 2] (ln γ half-width), got {self.gamma}.")
        return self


def _label_region(lo: np.ndarray, hi: np.ndarray, spacing_zyx: np.ndarray, margin_mm: tuple[float, float],
                  rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Continuous index bounds (z, y, x; voxel edges) of the label box grown on each of its six
    sides by an independent margin drawn uniformly from ``margin_mm``."""
    m = rng.uniform(margin_mm[0], margin_mm[1], size=(2, 3)) / spacing_zyx
    return lo - 0.5 - m[0], hi + 0.5 + m[1]


def _cut_fov(bounds: tuple[np.ndarray, np.ndarray], shape: np.ndarray, spacing_zyx: np.ndarray,
             rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """A smaller field of view (inclusive index bounds z, y, x), as in tight prostate MR slabs,
    cropped scans and scans that end at the gland: each face of the case moves, with probability
    0.6 (z) or 0.25 (y, x), to a plane drawn uniformly between 25 mm outside the label box and
    the label box's centre, so it may cut the labelled structure up to its middle."""
    blo, bhi = bounds[0].astype(float), bounds[1].astype(float)
    mid, reach, p = (blo + bhi) / 2, 25.0 / spacing_zyx, np.array([0.6, 0.25, 0.25])
    lo = np.where(rng.random(3) < p, np.maximum(np.floor(rng.uniform(blo - reach, mid)), 0), 0)
    hi = np.where(rng.random(3) < p, np.minimum(np.ceil(rng.uniform(mid, bhi + reach)), shape - 1), shape - 1)
    return lo.astype(int), hi.astype(int)


@dataclass
class _Entry:
    image: np.ndarray  # float32 (z, y, x) crop holding every voxel a patch can reach
    mask: np.ndarray  # uint8 class indices, same crop
    offset: np.ndarray  # (z, y, x) of the crop's first voxel in the case grid
    shape: np.ndarray  # full case shape (z, y, x)
    spacing: np.ndarray  # (z, y, x) mm
    bounds: tuple[np.ndarray, np.ndarray] | None  # label bbox (z, y, x), inclusive
    fg: np.ndarray  # (N, 3) labelled voxel indices (z, y, x), int32


def _epoch_order(seed: int, epoch: int, n_items: int, per_case: int) -> np.ndarray:
    """Case index of each item of ``epoch``: every case ``per_case`` times, seeded order."""
    return np.random.default_rng([seed, epoch, 1]).permutation(n_items) // per_case


class PatchDataset(SeededDataset):
    """Patches ``{"image": float32 (depth, P, P), "label": int64 (P, P)}`` (2.5D) or
    ``{"image": float32 (1, depth, P, P), "label": int64 (depth, P, P)}`` (3D).

    Each epoch visits every case ``per_case`` times in a seeded random order. For each item:

    * region: the label box plus a margin per side drawn from ``recipe.margin_mm`` (stage 2,
      mimicking an inferred ROI) or the whole case (``recipe.region == "body"``, stage 1);
    * centre: with probability ``fg_fraction`` a random labelled voxel, else a random voxel of
      the region (inside the volume);
    * slices: ``depth`` axial slices centred on it; in-plane P×P, zero outside the volume;
    * augmentation (``sampling.augment``): in-plane rotation uniform in ±10° (linear for the image,
      nearest for the labels), independent flips along y and x, intensity ``v · s + t`` with s
      uniform in [0.9, 1.1] and t uniform in ±10 % of 255;
    * field-of-view cut (probability ``sampling.fov_cut``, labelled cases): the case is treated as
      ending at the faces of :func:`_cut_fov` (the centre moves inside): image and labels are zero
      beyond them in-plane, and along z too for stage 2 (the pipeline fills a box that leaves the
      image with the background) while stage 1 replicates the edge slice as at inference;
    * gamma (``sampling.gamma`` > 0): before the jitter, ``255 · (v / 255)^γ`` with ln γ uniform in
      ±``gamma`` (the tissue contrasts of one scanner, protocol or normalisation vary that way).

    With ``region="label_box"`` only the part of each case a patch can reach is kept (copied), so
    the PreparedCase objects can be released after construction.
    """

    def __init__(self, cases: Sequence[PreparedCase], recipe: DataRecipe, sampling: PatchSampling,
                 seed: int = 0) -> None:
        self.recipe, self.sampling = recipe.check(), sampling.check()
        if not cases:
            raise InputError("No prepared cases to sample training patches from.")
        if seed < 0:
            raise ConfigError(f"seed must be ≥ 0, got {seed}.")
        self.seed = int(seed)
        self.ids = [c.id for c in cases]
        self._entries = [self._entry(c) for c in cases]
        self._order_cache: tuple[int, np.ndarray] | None = None

    def _entry(self, case: PreparedCase) -> _Entry:
        r, s = self.recipe, self.sampling
        shape = np.array(case.image.shape)
        spacing = case.image.spacing_zyx
        mask = case.mask.array
        bounds = _label_bounds(mask)
        if bounds is None and r.region == "label_box":
            raise InputError(f"Case '{case.id}' has an empty label; a 'label_box' region needs a labelled structure.")
        lo, hi = np.zeros(3, int), shape - 1
        if r.region == "label_box" and bounds is not None:  # keep only what a patch can reach: saves memory
            reach = np.ceil(r.margin_mm[1] / spacing) + 1
            half = s.size / 2 * (math.sqrt(2) if s.augment else 1.0) + 2
            reach += np.array([s.depth // 2 + 1, half, half])
            lo = np.maximum(bounds[0] - reach, 0).astype(int)
            hi = np.minimum(bounds[1] + reach, shape - 1).astype(int)
        sl = tuple(slice(a, b + 1) for a, b in zip(lo, hi))
        return _Entry(np.ascontiguousarray(case.image.array[sl], dtype=np.float32),
                      np.ascontiguousarray(mask[sl], dtype=np.uint8), lo, shape, spacing, bounds,
                      np.argwhere(mask > 0).astype(np.int32))

    def __len__(self) -> int:
        """Items per epoch: ``per_case`` × number of cases."""
        return self.sampling.per_case * len(self._entries)

    def case_of(self, index: int) -> int:
        """Which case (position in ``cases``) item ``index`` is drawn from."""
        epoch, i = divmod(int(index), len(self))
        if self._order_cache is None or self._order_cache[0] != epoch:
            self._order_cache = (epoch, _epoch_order(self.seed, epoch, len(self), self.sampling.per_case))
        return int(self._order_cache[1][i])

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        index = int(index)
        if index < 0:
            raise IndexError(f"index must be ≥ 0, got {index}")
        e = self._entries[self.case_of(index)]
        r, s = self.recipe, self.sampling
        rng = np.random.default_rng([self.seed, index, 0])
        if r.region == "label_box" and e.bounds is not None:
            rlo, rhi = _label_region(*e.bounds, e.spacing, r.margin_mm, rng)
            a = np.clip(np.ceil(rlo), 0, e.shape - 1).astype(int)
            b = np.clip(np.floor(rhi), 0, e.shape - 1).astype(int)
        else:
            a, b = np.zeros(3, int), e.shape - 1
        if len(e.fg) and rng.random() < s.fg_fraction:
            centre = e.fg[rng.integers(len(e.fg))].astype(int)
        else:
            centre = rng.integers(a, np.maximum(b, a) + 1)
        fov = None
        if s.fov_cut and e.bounds is not None and rng.random() < s.fov_cut:
            fov = _cut_fov(e.bounds, e.shape, e.spacing, rng)
            centre = np.clip(centre, *fov)
        image, label = self._sample(e, centre, rng, fov)
        if s.centre_label:
            return {"image": torch.from_numpy(image), "label": torch.from_numpy(label[s.depth // 2].astype(np.int64))}
        return {"image": torch.from_numpy(image[None]), "label": torch.from_numpy(label.astype(np.int64))}

    def _sample(self, e: _Entry, centre: np.ndarray, rng: np.random.Generator,
                fov: tuple[np.ndarray, np.ndarray] | None = None) -> tuple[np.ndarray, np.ndarray]:
        s = self.sampling
        lo, hi = fov if fov is not None else (np.zeros(3, int), e.shape - 1)
        off = np.arange(s.size, dtype=float) - s.size // 2
        dy, dx = np.meshgrid(off, off, indexing="ij")
        flip_y = flip_x = False
        scale, shift = 1.0, 0.0
        if s.augment:
            t = math.radians(rng.uniform(-10.0, 10.0))
            flip_y, flip_x = rng.random(2) < 0.5
            scale, shift = rng.uniform(0.9, 1.1), rng.uniform(-0.1, 0.1) * 255.0
            dy, dx = math.cos(t) * dy - math.sin(t) * dx, math.sin(t) * dy + math.cos(t) * dx
        y, x = dy + (centre[1] - e.offset[1]), dx + (centre[2] - e.offset[2])
        zs = centre[0] + np.arange(s.depth) - s.depth // 2
        outside = (zs < lo[0]) | (zs > hi[0])
        zs = np.clip(zs, lo[0], hi[0]) - e.offset[0]  # 2.5D: edge slices replicated (I-15)
        zs = np.clip(zs, 0, len(e.image) - 1)
        image = _bilinear(e.image, zs, y, x)
        label = _nearest(e.mask, zs, y, x)
        if outside.any() and (not s.centre_label or (fov is not None and self.recipe.region == "label_box")):
            image[outside], label[outside] = 0.0, 0  # 3D, or a stage-2 box past the cut: background
        if fov is not None:  # nothing beyond the cut in-plane
            yy, xx = y + e.offset[1], x + e.offset[2]
            out = (yy < lo[1] - 0.5) | (yy > hi[1] + 0.5) | (xx < lo[2] - 0.5) | (xx > hi[2] + 0.5)
            image[:, out], label[:, out] = 0.0, 0
        if s.augment:
            if flip_y:
                image, label = image[:, ::-1], label[:, ::-1]
            if flip_x:
                image, label = image[:, :, ::-1], label[:, :, ::-1]
        if s.gamma:  # drawn last: the stream of every other choice is unchanged
            g = np.float32(math.exp(rng.uniform(-s.gamma, s.gamma)))
            image = np.float32(255.0) * (np.maximum(image, 0) / np.float32(255.0)) ** g
        if s.augment:
            image = image * np.float32(scale) + np.float32(shift)
        return np.ascontiguousarray(image, dtype=np.float32), np.ascontiguousarray(label)


def _window(a: np.ndarray, zs: np.ndarray, ylo: int, yhi: int, xlo: int, xhi: int) -> np.ndarray:
    """``a[zs, ylo:yhi+1, xlo:xhi+1]`` with zeros where the window leaves the array."""
    out = np.zeros((len(zs), yhi - ylo + 1, xhi - xlo + 1), a.dtype)
    y0, y1, x0, x1 = max(ylo, 0), min(yhi, a.shape[1] - 1), max(xlo, 0), min(xhi, a.shape[2] - 1)
    if y0 <= y1 and x0 <= x1:
        out[:, y0 - ylo: y1 - ylo + 1, x0 - xlo: x1 - xlo + 1] = a[zs, y0: y1 + 1, x0: x1 + 1]
    return out


def _bilinear(a: np.ndarray, zs: np.ndarray, y: np.ndarray, x: np.ndarray) -> np.ndarray:
    """Bilinear samples of slices ``a[zs]`` at in-plane points (y, x) (each (P, P)), zero
    outside the array (as ``map_coordinates(order=1, mode="grid-constant")``, much faster for
    small patches): float32 (len(zs), P, P); integer points are copied exactly."""
    y0, x0 = np.floor(y), np.floor(x)
    wy, wx = (y - y0).astype(np.float32), (x - x0).astype(np.float32)
    y0, x0 = y0.astype(np.intp), x0.astype(np.intp)
    ylo, xlo = int(y0.min()), int(x0.min())
    win = _window(a, np.asarray(zs), ylo, int(y0.max()) + 1, xlo, int(x0.max()) + 1).astype(np.float32, copy=False)
    w = win.shape[2]
    flat, idx = win.reshape(len(win), -1), (y0 - ylo) * w + (x0 - xlo)
    if not (wx.any() or wy.any()):  # integer points (no rotation): a plain copy
        return np.take(flat, idx, axis=1)
    top = np.take(flat, idx, axis=1) * (1 - wx) + np.take(flat, idx + 1, axis=1) * wx
    bottom = np.take(flat, idx + w, axis=1) * (1 - wx) + np.take(flat, idx + w + 1, axis=1) * wx
    return top * (1 - wy) + bottom * wy


def _nearest(a: np.ndarray, zs: np.ndarray, y: np.ndarray, x: np.ndarray) -> np.ndarray:
    """Nearest-neighbour samples of slices ``a[zs]`` at (y, x), zero outside: (len(zs), P, P)."""
    yi, xi = np.rint(y).astype(np.intp), np.rint(x).astype(np.intp)
    ylo, xlo = int(yi.min()), int(xi.min())
    win = _window(a, np.asarray(zs), ylo, int(yi.max()), xlo, int(xi.max()))
    return np.take(win.reshape(len(win), -1), (yi - ylo) * win.shape[2] + (xi - xlo), axis=1)


# ---- whole cases on a fixed grid ---------------------------------------------------------------------
def to_grid(array: np.ndarray, grid: Sequence[int], is_label: bool = False) -> np.ndarray:
    """(Z, Y, X) or (C, Z, Y, X) array resampled to ``grid`` (z, y, x): trilinear, or nearest for
    labels (align_corners=False, so the array's extent maps onto the grid's)."""
    import torch.nn.functional as F

    t = torch.from_numpy(np.ascontiguousarray(array, dtype=np.float32))
    t = t[None, None] if t.ndim == 3 else t[None]
    out = F.interpolate(t, size=tuple(int(g) for g in grid), mode="nearest" if is_label else "trilinear",
                        align_corners=None if is_label else False)
    out = out[0, 0] if array.ndim == 3 else out[0]
    return out.numpy().astype(array.dtype if is_label else np.float32)


class GridDataset(SeededDataset):
    """Whole cases resampled to a fixed ``grid`` (z, y, x) ([VS] §3.1: 64 × 128 × 128):
    ``{"image": float32 (1, Z, Y, X), "label": int64 (Z, Y, X)}``; one item per case per epoch
    in a seeded order; ``augment``: flips along y and x and intensity ``v · s + t``."""

    def __init__(self, cases: Sequence[PreparedCase], grid: Sequence[int], augment: bool = True,
                 seed: int = 0) -> None:
        if not cases:
            raise InputError("No prepared cases to train on.")
        if len(grid) != 3 or min(grid) < 1:
            raise ConfigError(f"grid must be three sizes (z, y, x) ≥ 1, got {tuple(grid)}.")
        self.seed, self.augment, self.ids = int(seed), augment, [c.id for c in cases]
        self._images = [to_grid(c.image.array, grid) for c in cases]
        self._labels = [to_grid(c.mask.array, grid, is_label=True) for c in cases]

    def __len__(self) -> int:
        return len(self._images)

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        epoch, i = divmod(int(index), len(self))
        k = int(_epoch_order(self.seed, epoch, len(self), 1)[i])
        image, label = self._images[k], self._labels[k]
        if self.augment:
            rng = np.random.default_rng([self.seed, int(index), 0])
            if rng.random() < 0.5:
                image, label = image[:, ::-1], label[:, ::-1]
            if rng.random() < 0.5:
                image, label = image[:, :, ::-1], label[:, :, ::-1]
            image = image * np.float32(rng.uniform(0.9, 1.1)) + np.float32(rng.uniform(-0.1, 0.1) * 255.0)
        return {"image": torch.from_numpy(np.ascontiguousarray(image, np.float32)[None]),
                "label": torch.from_numpy(np.ascontiguousarray(label).astype(np.int64))}


class PairedDataset(SeededDataset):
    """Item ``g`` = item ``g`` of ``labelled`` plus item ``g`` of ``unlabeled`` with its keys
    prefixed ``"u_"`` (e.g. ``"u_image"``): half-labelled, half-unlabeled batches (CRII D-8)."""

    def __init__(self, labelled: SeededDataset, unlabeled: SeededDataset) -> None:
        self.labelled, self.unlabeled, self.seed = labelled, unlabeled, labelled.seed

    def __len__(self) -> int:
        return len(self.labelled)

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        u = self.unlabeled[index]
        return {**self.labelled[index], **{f"u_{k}": v for k, v in u.items() if k != "label"}}


# ---- loaders and whole-slice inference -------------------------------------------------------
class IndexStream(Sampler[int]):
    """Global item indices ``start + k * world_size + rank`` for k = 0, 1, … (``count`` items,
    or without end when None). With a :class:`SeededDataset` the index encodes the epoch, so
    resuming at item ``start`` reproduces the original stream exactly."""

    def __init__(self, start: int = 0, count: int | None = None, rank: int = 0, world_size: int = 1,
                 modulo: int | None = None) -> None:
        if start < 0 or not 0 <= rank < world_size:
            raise ConfigError(f"bad sampler settings: start={start}, rank={rank}, world_size={world_size}.")
        self.start, self.count, self.rank, self.world_size, self.modulo = start, count, rank, world_size, modulo

    def __iter__(self) -> Iterator[int]:
        k = 0
        while self.count is None or k < self.count:
            g = self.start + k * self.world_size + self.rank
            yield g % self.modulo if self.modulo else g
            k += 1

    def __len__(self) -> int:
        if self.count is None:
            raise TypeError("an endless IndexStream has no length")
        return self.count


def _seed_worker(worker_id: int) -> None:
    """Seed numpy / random in each worker from torch's per-worker seed (items of a
    SeededDataset do not depend on it; other datasets may)."""
    import random

    s = torch.initial_seed() % 2**32
    np.random.seed(s)
    random.seed(s)


def make_loader(dataset: Dataset, batch_size: int, device: torch.device | str = "cpu", workers: int = 0, *,
                start_item: int = 0, num_items: int | None = None, seed: int = 0, rank: int = 0,
                world_size: int = 1) -> DataLoader:
    """A DataLoader over ``dataset`` items ``start_item, start_item + 1, …`` (``num_items`` of
    them, endless when None; with DDP rank r takes every ``world_size``-th item).

    Resume exactly after ``n`` batches with ``start_item = n * batch_size * world_size``.
    ``workers`` > 0 uses persistent worker processes; memory is pinned when ``device`` is CUDA.
    Datasets other than :class:`SeededDataset` get indices modulo their length.
    """
    if batch_size < 1 or workers < 0:
        raise ConfigError(f"batch_size must be ≥ 1 and workers ≥ 0, got {batch_size} and {workers}.")
    modulo = None if isinstance(dataset, SeededDataset) else len(dataset)  # type: ignore[arg-type]
    count = None if num_items is None else int(math.ceil(num_items / world_size))
    sampler = IndexStream(start_item, count, rank, world_size, modulo)
    kwargs: dict = {}
    if workers > 0:
        kwargs = dict(persistent_workers=True, worker_init_fn=_seed_worker, prefetch_factor=4)
    return DataLoader(dataset, batch_size=batch_size, sampler=sampler, num_workers=workers,
                      pin_memory=torch.device(device).type == "cuda", generator=torch.Generator().manual_seed(seed),
                      **kwargs)


def whole_slices(volume: np.ndarray | torch.Tensor, slab: int) -> np.ndarray | torch.Tensor:
    """Slabs for whole-slice inference: (Z, Y, X) → (Z, slab, Y, X), slab ``k`` holding slices
    ``k - slab//2 … k + slab//2`` with the end slices replicated beyond the volume (I-15).

    NumPy input gives a read-only strided view (no copy; ``np.ascontiguousarray`` a batch of it
    before ``torch.from_numpy``); a tensor input gives a new tensor on the same device.
    """
    if slab < 1 or slab % 2 == 0:
        raise ConfigError(f"slab must be an odd number of slices ≥ 1, got {slab}.")
    if volume.ndim != 3:
        raise InputError(f"whole_slices expects a (Z, Y, X) volume, got shape {tuple(volume.shape)}.")
    h = slab // 2
    if isinstance(volume, torch.Tensor):
        z = volume.shape[0]
        idx = (torch.arange(z, device=volume.device)[:, None] + torch.arange(-h, h + 1, device=volume.device)).clamp(0, z - 1)
        return volume[idx]
    padded = np.pad(np.asarray(volume), ((h, h), (0, 0), (0, 0)), mode="edge")
    view = np.lib.stride_tricks.sliding_window_view(padded, slab, axis=0)  # (Z, Y, X, slab)
    return np.moveaxis(view, -1, 1)
