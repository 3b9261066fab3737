"""The only bridge between the engine and Slicer's MRML scene.

Converts volume nodes ↔ :class:`~voxmetric.volume.Volume`, markups ROI nodes ↔
:class:`~voxmetric.volume.Box`, and binary masks ↔ segments of a segmentation node.
Slicer works in RAS, the engine in LPS (DESIGN.md, Conventions); the flip happens here and
nowhere else. Parent (linear) transforms are honoured: what the engine sees is the node's
geometry in world coordinates. Works in Slicer and with the ``slicer-core`` wheel.
"""

from __future__ import annotations

import numpy as np
import slicer
import vtk
from vtk.util import numpy_support

from .errors import GeometryError, InputError, SegmentNotFoundError
from .io import PROSTATE, segment_info
from .volume import Box, Volume

#: RAS ↔ LPS (its own inverse), homogeneous 4×4 and 3×3.
_FLIP4 = np.diag([-1.0, -1.0, 1.0, 1.0])
_FLIP3 = _FLIP4[:3, :3]

#: The output segment's description (SNOMED CT 41216001 terminology, colour): one source,
#: voxmetric.io, shared with the .seg.nrrd writer.
PROSTATE_TERMINOLOGY: str = PROSTATE.terminology or ""
PROSTATE_COLOR: tuple[float, float, float] = PROSTATE.color


# -- matrices ---------------------------------------------------------------------------------
def _to_np(m: vtk.vtkMatrix4x4) -> np.ndarray:
    return np.array([[m.GetElement(i, j) for j in range(4)] for i in range(4)])


def _to_vtk(a: np.ndarray) -> vtk.vtkMatrix4x4:
    m = vtk.vtkMatrix4x4()
    for i in range(4):
        for j in range(4):
            m.SetElement(i, j, float(a[i, j]))
    return m


def _node_to_world(node) -> np.ndarray:
    """4×4 RAS matrix of the node's parent transform chain (identity when untransformed).

    Raises InputError for a non-linear transform (grid, B-spline, thin-plate)."""
    parent = node.GetParentTransformNode()
    if parent is None:
        return np.eye(4)
    if not parent.IsTransformToWorldLinear():
        raise InputError(
            f"'{node.GetName()}' is under the non-linear transform '{parent.GetName()}'. "
            "Harden the transform on the node (Data module → right-click → Harden transform) "
            "or remove it, then try again."
        )
    m = vtk.vtkMatrix4x4()
    parent.GetMatrixTransformToWorld(m)
    return _to_np(m)


def _split_columns(lin: np.ndarray, what: str) -> tuple[np.ndarray, np.ndarray]:
    """3×3 matrix → (column norms, orthonormal columns); GeometryError on shear."""
    norms = np.linalg.norm(lin, axis=0)
    if np.any(norms <= 0):
        raise GeometryError(f"{what} has a degenerate (zero-length) axis.")
    axes = lin / norms
    if not np.allclose(axes.T @ axes, np.eye(3), atol=1e-4):
        raise GeometryError(
            f"{what} is sheared by its parent transform, so it has no orthogonal voxel grid. "
            "Remove the shear from the transform (or harden and resample the volume) first."
        )
    return norms, axes


# -- volumes ----------------------------------------------------------------------------------
def _ijk_to_world_lps(node) -> np.ndarray:
    m = vtk.vtkMatrix4x4()
    node.GetIJKToRASMatrix(m)
    return _FLIP4 @ _node_to_world(node) @ _to_np(m)


def volume_from_node(node) -> Volume:
    """Voxels and world geometry (LPS) of a scalar or labelmap volume node.

    The array is a copy (z, y, x); a linear parent transform is applied to the geometry
    (voxels are not resampled); a non-linear one raises InputError."""
    if node is None or not node.IsA("vtkMRMLScalarVolumeNode"):
        raise InputError("Select a scalar volume (CT or MR image, or a labelmap) as input.")
    image = node.GetImageData()
    if image is None or image.GetPointData() is None or image.GetPointData().GetScalars() is None:
        raise InputError(f"The volume '{node.GetName()}' has no voxels loaded. Load the image first.")
    if image.GetNumberOfScalarComponents() != 1:
        raise InputError(
            f"The volume '{node.GetName()}' has {image.GetNumberOfScalarComponents()} components "
            "per voxel (colour or vector image); select a scalar CT or MR volume."
        )
    dims = image.GetDimensions()
    array = numpy_support.vtk_to_numpy(image.GetPointData().GetScalars()).reshape(dims[::-1]).copy()
    affine = _ijk_to_world_lps(node)
    spacing, direction = _split_columns(affine[:3, :3], f"The volume '{node.GetName()}'")
    return Volume(array, spacing, affine[:3, 3], direction)


def _vtk_ready(array: np.ndarray) -> np.ndarray:
    """Cast to a voxel type Slicer displays: bool→uint8, float16→float32, 64-bit int→int32."""
    a = np.asarray(array)
    if a.dtype == bool:
        return a.astype(np.uint8)
    if a.dtype == np.float16:
        return a.astype(np.float32)
    if a.dtype.kind in "iu" and a.dtype.itemsize == 8:
        info = np.iinfo(np.int32)
        if a.size and (a.min() < info.min or a.max() > info.max):
            raise InputError("Voxel values do not fit in 32-bit integers; convert the image to float.")
        return a.astype(np.int32)
    if a.dtype.kind not in "iuf":
        raise InputError(f"Voxel type {a.dtype} cannot be shown in Slicer; use integers or floats.")
    return np.ascontiguousarray(a)


def node_from_volume(scene, vol: Volume, name: str, node=None):
    """Create (or update ``node``) a vtkMRMLScalarVolumeNode holding ``vol``.

    ``vol`` geometry is taken as world LPS; an existing ``node`` under a linear transform gets
    the local geometry that puts it there. Returns the node."""
    if node is None:
        node = scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", name)
    world = _FLIP4 @ vol.index_to_physical_matrix  # IJK → world RAS
    local = np.linalg.inv(_node_to_world(node)) @ world
    image = vtk.vtkImageData()
    image.SetDimensions(*(int(v) for v in vol.size_xyz))
    vtk_array = numpy_support.numpy_to_vtk(_vtk_ready(vol.array).ravel(), deep=True)
    image.GetPointData().SetScalars(vtk_array)
    node.SetIJKToRASMatrix(_to_vtk(local))
    node.SetAndObserveImageData(image)
    if node.GetDisplayNode() is None:
        node.CreateDefaultDisplayNodes()
    return node


# -- ROI boxes --------------------------------------------------------------------------------
def box_from_roi(roi_node) -> Box:
    """World box (LPS) of a markups ROI node, rotation and parent transform included."""
    if roi_node is None or not roi_node.IsA("vtkMRMLMarkupsROINode"):
        raise InputError("Select a markups ROI (box) node.")
    _node_to_world(roi_node)  # rejects a non-linear parent transform with a clear message
    object_to_world = _to_np(roi_node.GetObjectToWorldMatrix())
    size = np.zeros(3)
    roi_node.GetSizeWorld(size)
    if np.any(size <= 0):
        raise InputError(f"The ROI '{roi_node.GetName()}' is empty (size {tuple(size)} mm); "
                         "place or resize it around the prostate.")
    center = np.zeros(3)
    roi_node.GetCenterWorld(center)
    _, axes_ras = _split_columns(object_to_world[:3, :3], f"The ROI '{roi_node.GetName()}'")
    return Box(_FLIP3 @ center, size, _FLIP3 @ axes_ras)


def roi_from_box(scene, box: Box, name: str, node=None):
    """Create (or update ``node``) a vtkMRMLMarkupsROINode covering ``box`` (world LPS).

    An existing node keeps its parent transform; its local centre/axes/size are set so that
    the ROI lands on ``box`` in world coordinates. Returns the node."""
    if node is None:
        node = scene.AddNewNodeByClass("vtkMRMLMarkupsROINode", name)
    world = np.eye(4)
    world[:3, :3] = _FLIP3 @ box.axes
    world[:3, 3] = _FLIP3 @ box.center
    local = np.linalg.inv(_node_to_world(node)) @ world
    stretch, axes = _split_columns(local[:3, :3], f"The ROI '{node.GetName()}'")
    object_to_node = np.eye(4)
    object_to_node[:3, :3] = axes
    object_to_node[:3, 3] = local[:3, 3]
    node.SetSize(*(float(v) for v in box.size * stretch))
    node.SetAndObserveObjectToNodeMatrix(_to_vtk(object_to_node))
    return node


# -- segments ---------------------------------------------------------------------------------
def _segment_names(seg_node) -> list[tuple[str, str]]:
    """[(segment id, name)] in display order."""
    seg = seg_node.GetSegmentation()
    ids = [seg.GetNthSegmentID(i) for i in range(seg.GetNumberOfSegments())]
    return [(i, seg.GetSegment(i).GetName()) for i in ids]


def _find_segment(seg_node, name: str) -> str | None:
    for sid, sname in _segment_names(seg_node):
        if sname.casefold() == name.casefold():
            return sid
    return None


def _unique_name(seg_node, name: str) -> str:
    """``name`` if unused, else "name 2", "name 3", … (case-insensitive)."""
    taken = {n.casefold() for _, n in _segment_names(seg_node)}
    if name.casefold() not in taken:
        return name
    k = 2
    while f"{name} {k}".casefold() in taken:
        k += 1
    return f"{name} {k}"


def _new_segmentation_node(scene, reference_volume_node):
    seg_node = scene.AddNewNodeByClass(
        "vtkMRMLSegmentationNode",
        scene.GenerateUniqueName(f"{reference_volume_node.GetName()} segmentation"),
    )
    seg_node.CreateDefaultDisplayNodes()
    seg_node.SetReferenceImageGeometryParameterFromVolumeNode(reference_volume_node)
    parent_transform = reference_volume_node.GetParentTransformNode()
    if parent_transform is not None:
        seg_node.SetAndObserveTransformNodeID(parent_transform.GetID())
    # Same folder / study as the input volume in the subject hierarchy.
    sh = slicer.vtkMRMLSubjectHierarchyNode.GetSubjectHierarchyNode(scene)
    if sh is not None:
        volume_item = sh.GetItemByDataNode(reference_volume_node)
        parent = sh.GetItemParent(volume_item) if volume_item else sh.GetSceneItemID()
        seg_item = sh.GetItemByDataNode(seg_node)
        if seg_item:  # Slicer's application adds an item for every new data node
            sh.SetItemParent(seg_item, parent)
        else:  # bare MRML (slicer-core): create it
            sh.CreateItem(parent, seg_node)
    return seg_node


def geometry_from_node(node) -> Volume:
    """World geometry (LPS) of a scalar volume node without copying its voxels: a :class:`Volume`
    whose array is a read-only zero view of the node's shape (z, y, x). Use it as the
    ``reference`` grid of resampling and of :func:`write_mask_segment` masks."""
    if node is None or not node.IsA("vtkMRMLScalarVolumeNode"):
        raise InputError("Select a scalar volume (CT or MR image, or a labelmap) as input.")
    image = node.GetImageData()
    if image is None:
        raise InputError(f"The volume '{node.GetName()}' has no voxels loaded. Load the image first.")
    dims = image.GetDimensions()
    affine = _ijk_to_world_lps(node)
    spacing, direction = _split_columns(affine[:3, :3], f"The volume '{node.GetName()}'")
    return Volume(np.broadcast_to(np.uint8(0), tuple(int(d) for d in dims[::-1])), spacing, affine[:3, 3], direction)


def _offset_in(mask: Volume, ref: Volume) -> tuple[int, int, int]:
    """Voxel offset (i, j, k) of ``mask``'s first voxel in ``ref``'s grid, when ``mask`` lies on a
    whole-voxel sub-extent of that grid (same spacing and axes); GeometryError otherwise."""
    if mask.same_grid(ref):
        return (0, 0, 0)
    shift = ref.physical_to_index(mask.origin)
    start = np.round(shift).astype(int)
    if (np.allclose(mask.spacing, ref.spacing, atol=1e-3) and np.allclose(mask.direction, ref.direction, atol=1e-3)
            and np.allclose(shift, start, atol=1e-2) and np.all(start >= 0)
            and np.all(start + mask.size_xyz <= ref.size_xyz)):
        return (int(start[0]), int(start[1]), int(start[2]))
    mask.check_same_grid(ref, "mask and reference volume")
    raise GeometryError("The mask is not on the reference volume's voxel grid.")  # pragma: no cover


def crop_to_mask(mask: Volume, margin: int = 1) -> Volume:
    """The smallest sub-extent of ``mask`` (plus ``margin`` voxels, clipped to the grid) that
    holds every non-zero voxel, with its own origin; a 1-voxel crop when the mask is empty.
    Writing the crop with :func:`write_mask_segment` gives the same segment as the whole mask."""
    nz = np.nonzero(mask.array)
    if not nz[0].size:
        return Volume(np.zeros((1, 1, 1), np.uint8), mask.spacing, mask.origin, mask.direction)
    lo = [max(int(a.min()) - margin, 0) for a in nz]
    hi = [min(int(a.max()) + margin + 1, n) for a, n in zip(nz, mask.shape)]
    sub = np.ascontiguousarray(mask.array[lo[0]:hi[0], lo[1]:hi[1], lo[2]:hi[2]])
    origin = mask.index_to_physical(np.array(lo[::-1], float))
    return Volume(sub, mask.spacing, origin, mask.direction)


def _mask_image(mask: Volume | np.ndarray, reference_volume_node) -> slicer.vtkOrientedImageData:
    """uint8 0/1 oriented image on the reference volume's local voxel grid (RAS). A ``Volume``
    mask may cover a sub-extent of that grid (see :func:`crop_to_mask`): only its voxels are
    copied."""
    ref = geometry_from_node(reference_volume_node)
    if isinstance(mask, Volume):
        offset = _offset_in(mask, ref)
        array = mask.array
    else:
        array = np.asarray(mask)
        offset = (0, 0, 0)
        if array.shape != ref.shape:
            raise GeometryError(
                f"The mask has shape {array.shape} but the reference volume "
                f"'{reference_volume_node.GetName()}' has {ref.shape} (z, y, x). "
                "Paste the result back onto the input volume's grid first."
            )
    binary = (np.asarray(array) > 0).astype(np.uint8)
    nz, ny, nx = binary.shape
    i, j, k = offset
    image = slicer.vtkOrientedImageData()
    image.SetExtent(i, i + nx - 1, j, j + ny - 1, k, k + nz - 1)
    image.GetPointData().SetScalars(numpy_support.numpy_to_vtk(binary.ravel(), deep=True))
    ijk_to_ras = vtk.vtkMatrix4x4()
    reference_volume_node.GetIJKToRASMatrix(ijk_to_ras)
    image.SetGeometryFromImageToWorldMatrix(ijk_to_ras)
    return image


def write_mask_segment(
    seg_node,
    mask: Volume | np.ndarray,
    reference_volume_node,
    name: str = "Prostate",
    replace: bool = False,
    scene=None,
    *,
    color: tuple[float, float, float] | None = None,
    terminology: str | None = None,
) -> tuple[object, str]:
    """Write a binary ``mask`` (z, y, x) on the reference volume's grid as a segment (a
    ``Volume`` mask may cover only a sub-extent of that grid, e.g. :func:`crop_to_mask`: the
    segment is the same, the copy far smaller).

    ``seg_node`` None creates a segmentation node with the reference volume as reference
    geometry, under the volume's parent transform and subject-hierarchy parent (its study).
    An existing segment called ``name`` is never overwritten silently: by default a new one
    "name 2", "name 3", … is added; ``replace=True`` replaces that segment's voxels in place
    (its id, colour and terminology are refreshed, not duplicated).
    ``color`` / ``terminology`` default to :func:`voxmetric.io.segment_info` for ``name``
    (SNOMED CT 41216001 and the fixed colour for "Prostate"; also bladder, rectum, …).
    Returns ``(segmentation node, segment id)``."""
    if reference_volume_node is None:
        raise InputError("A reference volume (the segmented image) is needed to write a segment.")
    scene = scene or reference_volume_node.GetScene()
    if scene is None:
        raise InputError(f"The volume '{reference_volume_node.GetName()}' is not in a scene.")
    image = _mask_image(mask, reference_volume_node)
    info = segment_info(name, 1)
    rgb: tuple[float, float, float] = (float(color[0]), float(color[1]), float(color[2])) if color is not None \
        else info.color
    terminology = terminology if terminology is not None else info.terminology
    if seg_node is None:
        seg_node = _new_segmentation_node(scene, reference_volume_node)
    else:
        if seg_node.GetDisplayNode() is None:
            seg_node.CreateDefaultDisplayNodes()
        if not seg_node.GetNodeReference(seg_node.GetReferenceImageGeometryReferenceRole()):
            seg_node.SetReferenceImageGeometryParameterFromVolumeNode(reference_volume_node)
    # Put the mask into the segmentation node's coordinate system.
    ref_parent = reference_volume_node.GetParentTransformNode()
    seg_parent = seg_node.GetParentTransformNode()
    if ref_parent is not seg_parent:
        _node_to_world(reference_volume_node)
        _node_to_world(seg_node)
        to_seg = vtk.vtkGeneralTransform()
        slicer.vtkMRMLTransformNode.GetTransformBetweenNodes(ref_parent, seg_parent, to_seg)
        slicer.vtkOrientedImageDataResample.TransformOrientedImage(image, to_seg)

    segmentation = seg_node.GetSegmentation()
    segment_id = _find_segment(seg_node, name) if replace else None
    if segment_id is None:
        segment_id = segmentation.AddEmptySegment("", _unique_name(seg_node, name), list(rgb))
    segment = segmentation.GetSegment(segment_id)
    segment.SetColor(*rgb)
    segment.SetNameAutoGenerated(False)  # our name and colour: Slicer must not replace them
    segment.SetColorAutoGenerated(False)
    if terminology:
        segment.SetTerminology(terminology)
    ok = slicer.vtkSlicerSegmentationsModuleLogic.SetBinaryLabelmapToSegment(
        image, seg_node, segment_id, slicer.vtkSlicerSegmentationsModuleLogic.MODE_REPLACE
    )
    if not ok:
        raise GeometryError(f"Slicer could not write the mask into segment '{segment.GetName()}'.")
    return seg_node, segment_id


def _tight(mask: np.ndarray, lo: list[int], ref: Volume) -> Volume:
    """The bool ``mask`` (z, y, x) whose first voxel is voxel ``lo`` (i, j, k) of ``ref``'s grid,
    cropped to its non-zero voxels (one zero voxel when there are none), as a uint8 Volume."""
    along = [np.flatnonzero(mask.any(axis=tuple(b for b in range(3) if b != a))) for a in range(3)]  # z, y, x
    if not along[0].size:
        return Volume(np.zeros((1, 1, 1), np.uint8), ref.spacing, ref.origin, ref.direction)
    box = tuple(slice(int(v[0]), int(v[-1]) + 1) for v in along)
    start = [lo[a] + box[2 - a].start for a in range(3)]  # (i, j, k)
    origin = ref.index_to_physical(np.array(start, float))
    return Volume(np.ascontiguousarray(mask[box], dtype=np.uint8), ref.spacing, origin, ref.direction)


def _crop_on_grid(seg_node, segment_id: str, reference_volume_node, ref: Volume) -> Volume | None:
    """``mask_from_segment(crop=True)`` without Slicer's resampling onto the whole reference
    extent: when the segment's labelmap voxels are voxels of the reference grid (same parent
    transform, same spacing and axes, a whole-voxel offset — e.g. it was drawn on that volume),
    only the labelmap's effective extent is read. None when that does not hold."""
    image = seg_node.GetBinaryLabelmapInternalRepresentation(segment_id)
    if image is None or seg_node.GetParentTransformNode() is not reference_volume_node.GetParentTransformNode():
        return None
    scalars = image.GetPointData().GetScalars() if image.GetPointData() else None
    if scalars is None or image.GetNumberOfScalarComponents() != 1:
        return None
    image_to_ras, ijk_to_ras = vtk.vtkMatrix4x4(), vtk.vtkMatrix4x4()
    image.GetImageToWorldMatrix(image_to_ras)
    reference_volume_node.GetIJKToRASMatrix(ijk_to_ras)
    to_ref = np.linalg.inv(_to_np(ijk_to_ras)) @ _to_np(image_to_ras)  # labelmap IJK → reference IJK
    offset = np.round(to_ref[:3, 3]).astype(int)
    if not (np.allclose(to_ref[:3, :3], np.eye(3), atol=1e-4) and np.allclose(to_ref[:3, 3], offset, atol=1e-3)):
        return None
    full = [int(v) for v in image.GetExtent()]
    effective = [0] * 6
    if not slicer.vtkOrientedImageDataResample.CalculateEffectiveExtent(image, effective):
        effective = [0, -1, 0, -1, 0, -1]
    size = [int(v) for v in ref.size_xyz]
    lo = [max(effective[2 * a], -offset[a]) for a in range(3)]  # labelmap indices, clipped to the grid
    hi = [min(effective[2 * a + 1], size[a] - 1 - offset[a]) for a in range(3)]
    if any(h < l for l, h in zip(lo, hi)):
        return _tight(np.zeros((1, 1, 1), bool), [0, 0, 0], ref)
    dims = [full[2 * a + 1] - full[2 * a] + 1 for a in range(3)]
    labels = numpy_support.vtk_to_numpy(scalars).reshape(dims[::-1])
    block = labels[tuple(slice(lo[a] - full[2 * a], hi[a] - full[2 * a] + 1) for a in (2, 1, 0))]
    value = seg_node.GetSegmentation().GetSegment(segment_id).GetLabelValue()  # segments share labelmaps
    return _tight(block == value, [lo[a] + int(offset[a]) for a in range(3)], ref)


def mask_from_segment(seg_node, segment_name: str, reference_volume_node, crop: bool = False) -> Volume:
    """uint8 0/1 mask (z, y, x) of a segment (case-insensitive name) on the reference
    volume's grid, with the reference's world geometry (as :func:`volume_from_node`).

    ``crop=True`` returns only the segment's own extent on that grid (a sub-extent with its own
    origin, clipped to the grid; one zero voxel when the segment is empty): far less to copy on
    Slicer's GUI thread, and the same mask once pasted back (:func:`paste_into`)."""
    if seg_node is None or not seg_node.IsA("vtkMRMLSegmentationNode"):
        raise InputError("Select a segmentation node.")
    segment_id = _find_segment(seg_node, segment_name)
    if segment_id is None:
        names = [n for _, n in _segment_names(seg_node)]
        raise SegmentNotFoundError(
            f"No segment '{segment_name}' in '{seg_node.GetName()}'. Available segments: "
            f"{', '.join(repr(n) for n in names) or '(none)'}. Pick one of these names."
        )
    ref = geometry_from_node(reference_volume_node)
    if crop:
        on_grid = _crop_on_grid(seg_node, segment_id, reference_volume_node, ref)
        if on_grid is not None:
            return on_grid
    ids = vtk.vtkStringArray()
    ids.InsertNextValue(segment_id)
    merged = slicer.vtkOrientedImageData()
    mode = slicer.vtkSegmentation.EXTENT_UNION_OF_EFFECTIVE_SEGMENTS if crop else slicer.vtkSegmentation.EXTENT_REFERENCE_GEOMETRY
    slicer.vtkSlicerSegmentationsModuleLogic.GenerateMergedLabelmapInReferenceGeometry(
        seg_node, reference_volume_node, ids, mode, merged
    )
    extent = tuple(int(v) for v in merged.GetExtent())
    size = [int(v) for v in ref.size_xyz]
    scalars = merged.GetPointData().GetScalars() if merged.GetPointData() else None
    if crop:  # Slicer resampled the segment onto the whole reference extent: keep the segment's own
        lo = [max(extent[2 * a], 0) for a in range(3)]
        hi = [min(extent[2 * a + 1], size[a] - 1) for a in range(3)]
        if scalars is None or any(h < l for l, h in zip(lo, hi)):
            return _tight(np.zeros((1, 1, 1), bool), [0, 0, 0], ref)
        dims = [extent[2 * a + 1] - extent[2 * a] + 1 for a in range(3)]
        labels = numpy_support.vtk_to_numpy(scalars).reshape(dims[::-1])
        sub = labels[tuple(slice(lo[a] - extent[2 * a], hi[a] - extent[2 * a] + 1) for a in (2, 1, 0))]
        return _tight(sub > 0, lo, ref)
    want = (0, size[0] - 1, 0, size[1] - 1, 0, size[2] - 1)
    if extent != want or scalars is None:
        raise GeometryError(
            f"Segment '{segment_name}' could not be exported on the grid of "
            f"'{reference_volume_node.GetName()}' (extent {extent} vs {want})."
        )
    labels = numpy_support.vtk_to_numpy(scalars).reshape(ref.shape)
    return ref.with_array((labels > 0).astype(np.uint8))


def segment_grid(seg_node, segment_name: str) -> Volume | None:
    """World geometry (LPS) of the voxel grid a segment is stored on (its binary labelmap, under
    the node's parent transform), voxels not copied: a :class:`Volume` whose array is a zero view
    of the labelmap's extent (z, y, x). None when the segment is held as something other than a
    binary labelmap (e.g. a closed surface). SegmentNotFoundError names the segments there are."""
    if seg_node is None or not seg_node.IsA("vtkMRMLSegmentationNode"):
        raise InputError("Select a segmentation node.")
    segment_id = _find_segment(seg_node, segment_name)
    if segment_id is None:
        names = [n for _, n in _segment_names(seg_node)]
        raise SegmentNotFoundError(f"No segment '{segment_name}' in '{seg_node.GetName()}'. Available segments: "
                                   f"{', '.join(repr(n) for n in names) or '(none)'}.")
    image = seg_node.GetBinaryLabelmapInternalRepresentation(segment_id)
    if image is None:
        return None
    m = vtk.vtkMatrix4x4()
    image.GetImageToWorldMatrix(m)
    affine = _FLIP4 @ _node_to_world(seg_node) @ _to_np(m)
    spacing, direction = _split_columns(affine[:3, :3], f"The segment '{segment_name}'")
    ext = [int(v) for v in image.GetExtent()]
    size = [max(ext[2 * a + 1] - ext[2 * a] + 1, 1) for a in range(3)]
    origin = affine[:3, :3] @ np.array(ext[0::2], float) + affine[:3, 3]
    return Volume(np.broadcast_to(np.uint8(0), tuple(size[::-1])), spacing, origin, direction)


def paste_into(mask: Volume, reference: Volume) -> Volume:
    """A mask on a sub-extent of ``reference``'s grid (:func:`crop_to_mask`,
    ``mask_from_segment(crop=True)``) pasted into a zero uint8 volume on the whole grid."""
    i, j, k = _offset_in(mask, reference)
    out = np.zeros(reference.shape, np.uint8)
    nz, ny, nx = mask.shape
    out[k:k + nz, j:j + ny, i:i + nx] = mask.array
    return Volume(out, reference.spacing, reference.origin, reference.direction)


# -- training curves --------------------------------------------------------------------------
#: Columns of a training-curve table: the iteration, the mean training loss, the validation DSC.
LOSS_COLUMNS: tuple[str, ...] = ("iteration", "loss", "dsc")
_SERIES_COLORS = ((0.12, 0.47, 0.71), (1.0, 0.5, 0.05), (0.17, 0.63, 0.17), (0.84, 0.15, 0.16))


def loss_table(scene, name: str, columns: tuple[str, ...] | list[str] = LOSS_COLUMNS):
    """A new vtkMRMLTableNode called ``name`` with float64 ``columns`` (the first one is the
    x axis, e.g. the iteration) and no rows."""
    if not columns:
        raise InputError("A training-curve table needs at least one column.")
    node = scene.AddNewNodeByClass("vtkMRMLTableNode", name)
    for column in columns:
        array = vtk.vtkDoubleArray()
        array.SetName(str(column))
        node.AddColumn(array)
    return node


def append_rows(table_node, rows, key: str = "iteration") -> int:
    """Add ``rows`` (mappings column name → number) to a :func:`loss_table` node; returns the
    row count. A row whose ``key`` equals the last row's merges into it (a validation DSC at the
    iteration just logged fills that row's "dsc"); cells a row does not give stay NaN.
    Unknown column names raise InputError."""
    table = table_node.GetTable()
    names = [table.GetColumnName(i) for i in range(table.GetNumberOfColumns())]
    for row in rows:
        unknown = sorted(set(row) - set(names))
        if unknown:
            raise InputError(f"The table '{table_node.GetName()}' has no column(s) {unknown}; it has {names}.")
        n = table.GetNumberOfRows()
        last = float(table.GetColumnByName(key).GetValue(n - 1)) if n and key in names else None
        if last is None or key not in row or float(row[key]) != last:
            table.InsertNextBlankRow(float("nan"))
            n += 1
        for column, value in row.items():
            table.GetColumnByName(column).SetValue(n - 1, float("nan") if value is None else float(value))
    table.Modified()
    table_node.Modified()
    return table.GetNumberOfRows()


def loss_chart(scene, table_node, name: str, x_column: str = "iteration"):
    """A vtkMRMLPlotChartNode plotting every other column of ``table_node`` against
    ``x_column``: the first as a line (the loss), the rest as markers (sparse validation
    values; NaN cells are not drawn). Returns the chart node."""
    table = table_node.GetTable()
    names = [table.GetColumnName(i) for i in range(table.GetNumberOfColumns())]
    if x_column not in names:
        raise InputError(f"The table '{table_node.GetName()}' has no column '{x_column}'.")
    chart = scene.AddNewNodeByClass("vtkMRMLPlotChartNode", name)
    chart.SetTitle(name)
    chart.SetXAxisTitle(x_column)
    for k, column in enumerate(c for c in names if c != x_column):
        series = scene.AddNewNodeByClass("vtkMRMLPlotSeriesNode", f"{name} {column}")
        series.SetAndObserveTableNodeID(table_node.GetID())
        series.SetXColumnName(x_column)
        series.SetYColumnName(column)
        series.SetPlotType(series.PlotTypeScatter)
        series.SetLineStyle(series.LineStyleSolid if k == 0 else series.LineStyleNone)
        series.SetMarkerStyle(series.MarkerStyleNone if k == 0 else series.MarkerStyleCircle)
        series.SetColor(*_SERIES_COLORS[k % len(_SERIES_COLORS)])
        chart.AddAndObservePlotSeriesNodeID(series.GetID())
    return chart


# -- result tables ----------------------------------------------------------------------------
def results_table(scene, name: str, columns, units=None):
    """A new vtkMRMLTableNode called ``name`` with ``columns`` (pairs of (name, "text" | "number")):
    string and float64 columns, no rows; ``units`` (column → unit label, e.g. "mm") are set as the
    columns' unit labels (Slicer shows them, and they travel with the table in the scene)."""
    if not columns:
        raise InputError("A results table needs at least one column.")
    node = scene.AddNewNodeByClass("vtkMRMLTableNode", name)
    for column, kind in columns:
        if kind not in ("text", "number"):
            raise InputError(f"Column '{column}' has kind {kind!r}; use 'text' or 'number'.")
        array = vtk.vtkStringArray() if kind == "text" else vtk.vtkDoubleArray()
        array.SetName(str(column))
        node.AddColumn(array)
    for column, unit in (units or {}).items():
        node.SetColumnUnitLabel(column, unit)
    return node


def add_table_row(table_node, row) -> int:
    """Append one row (a mapping column name → value) to a :func:`results_table`; number cells
    the row leaves out (or gives as None) are NaN, text cells "". Returns the new row's index.
    Unknown column names raise InputError."""
    table = table_node.GetTable()
    names = [table.GetColumnName(i) for i in range(table.GetNumberOfColumns())]
    unknown = sorted(set(row) - set(names))
    if unknown:
        raise InputError(f"The table '{table_node.GetName()}' has no column(s) {unknown}; it has {names}.")
    index = table.InsertNextBlankRow(float("nan"))
    for name in names:
        column, value = table.GetColumnByName(name), row.get(name)
        if column.IsA("vtkStringArray"):
            column.SetValue(index, "" if value is None else str(value))
        else:
            column.SetValue(index, float("nan") if value is None else float(value))
    table.Modified()
    table_node.Modified()
    return int(index)


def read_table(table_node) -> tuple[list[str], list[list[object]]]:
    """(column names, rows) of a table node: text cells as str, number cells as float."""
    table = table_node.GetTable()
    columns = [table.GetColumn(i) for i in range(table.GetNumberOfColumns())]
    names = [c.GetName() for c in columns]
    rows: list[list[object]] = [[c.GetValue(r) if c.IsA("vtkStringArray") else float(c.GetValue(r)) for c in columns]
                                for r in range(table.GetNumberOfRows())]
    return names, rows


# -- overlays -------------------------------------------------------------------------------------
#: Colour map of overlay maps (uncertainty): black → red → yellow, built into Slicer (procedural).
OVERLAY_COLOR_NODE_ID = "vtkMRMLPETProceduralColorNodePET-Heat"


def show_overlay(scene, background_node, overlay_node, opacity: float = 0.5, value_range: tuple[float, float] = (0.0, 1.0),
                 hide_below: float = 0.01) -> None:
    """Show ``overlay_node`` (a scalar volume such as an uncertainty map) over ``background_node``
    in every slice view: each slice composite node gets them as background / foreground layers
    with ``opacity``; the overlay is drawn with :data:`OVERLAY_COLOR_NODE_ID` over ``value_range``,
    and its values below ``hide_below`` are transparent (the image shows through)."""
    display = overlay_node.GetDisplayNode()
    if display is None:
        overlay_node.CreateDefaultDisplayNodes()
        display = overlay_node.GetDisplayNode()
    if scene.GetNodeByID(OVERLAY_COLOR_NODE_ID) is not None:
        display.SetAndObserveColorNodeID(OVERLAY_COLOR_NODE_ID)
    lo, hi = (float(v) for v in value_range)
    display.AutoWindowLevelOff()
    display.SetWindowLevelMinMax(lo, hi if hi > lo else lo + 1e-3)
    display.SetApplyThreshold(True)
    display.SetLowerThreshold(float(hide_below))
    display.SetUpperThreshold(max(hi, float(hide_below)) + 1e6)
    for i in range(scene.GetNumberOfNodesByClass("vtkMRMLSliceCompositeNode")):
        composite = scene.GetNthNodeByClass(i, "vtkMRMLSliceCompositeNode")
        composite.SetBackgroundVolumeID(background_node.GetID())
        composite.SetForegroundVolumeID(overlay_node.GetID())
        composite.SetForegroundOpacity(float(opacity))
