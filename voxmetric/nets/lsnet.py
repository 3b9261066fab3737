"""L-SNet networks [LS] (METHODS.md §4): L-Net, the RoI recalibration, S-Net and their glue.

* :class:`LNet`: an encoder–decoder (5 poolings down to H/32, 3 up-samplings back to H/4: output
  stride ``s = 4``, I-39) with two heads on the stride-4 feature map F:

  - keypoint (KP) head: 3×3 conv, ReLU, 1×1 conv (I-41) → heatmap logits (B, 1, H/4, W/4); the
    sigmoid of them is Ŷ, targets are Gaussians (``voxmetric.learning.lsnet.heatmap_targets``);
  - box-regression (BBR) head: two 3×3 convs and one 13×13 conv, 64 channels, ReLU after each,
    the last one included (I-45) → distances (l, r, t, b) ≥ 0 in input pixels (B, 4, H/4, W/4).

  Feature cell (i, j) sits at input pixel (s·i + (s−1)/2, s·j + (s−1)/2) (I-40,
  :func:`cell_to_pixel`).
* :func:`roi_theta`, :func:`recalibrate`: the RoI recalibration (§4.3, Eqs. 2–3, I-46): the STN
  affine θ of a keypoint and its four distances plus a border margin ``m`` (15 px), bilinear
  ``grid_sample`` with ``align_corners=True`` — differentiable with respect to the distances.
* :func:`inverse_theta`, :func:`paste_back`: θ⁻¹ with the smoothing term ε (Eq. 4, I-50) that maps
  S-Net's RoI output back onto the slice (zeros outside); :func:`merge_rois`: several RoIs of one
  slice merged by the voxel-wise max (I-51).
* :func:`scale_gradient`: identity forward, ``grad · γ`` backward (I-49, default γ = 0.1): S-Net's
  gradient reaches L-Net scaled by γ.
* :class:`LSNet`: L-Net + S-Net (default S-Net: our :class:`~voxmetric.nets.unet2d.UNet2D`). Its
  ``forward`` runs either part: ``mode="lnet"`` (L-Net alone) or ``mode="joint"`` (L-Net → one
  keypoint per image chosen by ``select`` → θ → RoI → S-Net), so that a training step can send
  each phase through the (DDP-wrapped) model.

Networks only: losses and target / keypoint helpers live in :mod:`voxmetric.learning.lsnet`.
Coordinates in this module are (x, y) = (column, row) in pixels unless said otherwise.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from voxmetric.errors import ConfigError, InputError
from voxmetric.nets.unet2d import UNet2D, conv_bn_relu

STRIDE = 4  # L-Net's output stride (I-39)
POOLINGS = 5  # encoder poolings: inputs must be multiples of 2**5 = 32 (I-38)


# ---- gradient decay -----------------------------------------------------------------------------------
class _ScaleGradient(torch.autograd.Function):
    """Identity forward; backward multiplies the incoming gradient by ``gamma`` (I-49)."""

    @staticmethod
    def forward(ctx: torch.autograd.function.FunctionCtx, x: Tensor, gamma: float) -> Tensor:  # pyright: ignore[reportIncompatibleMethodOverride]
        ctx.gamma = float(gamma)  # pyright: ignore[reportAttributeAccessIssue]
        return x.view_as(x)

    @staticmethod
    def backward(ctx: torch.autograd.function.FunctionCtx, *grads: Tensor) -> tuple[Tensor, None]:  # pyright: ignore[reportIncompatibleMethodOverride]
        return grads[0] * ctx.gamma, None  # pyright: ignore[reportAttributeAccessIssue]


def scale_gradient(x: Tensor, gamma: float) -> Tensor:
    """``x`` unchanged; the gradient flowing back through it is multiplied by ``gamma``
    (γ = 0: L-Net gets nothing from S-Net, the §6.2 "trained alone" case)."""
    return _ScaleGradient.apply(x, gamma)  # pyright: ignore[reportReturnType]


# ---- geometry -----------------------------------------------------------------------------------------
def cell_to_pixel(cells: Tensor, stride: int = STRIDE) -> Tensor:
    """Feature-map coordinates (any shape, float or int) → input pixel coordinates, centre-aligned
    (I-40): ``s · c + (s − 1) / 2``."""
    return cells.to(torch.float32 if not cells.is_floating_point() else cells.dtype) * stride + (stride - 1) / 2.0


def pixel_to_cell(pixels: Tensor | float, stride: int = STRIDE) -> Tensor | float:
    """Inverse of :func:`cell_to_pixel`: ``(p − (s − 1) / 2) / s``."""
    return (pixels - (stride - 1) / 2.0) / stride


def roi_theta(keypoints: Tensor, distances: Tensor, size: Sequence[int], margin: float = 15.0) -> Tensor:
    """STN affine θ (B, 2, 3) of RoIs (§4.3, Eq. 3, I-46) in ``align_corners=True`` normalised
    coordinates of an input of ``size`` = (H, W) pixels.

    ``keypoints`` (B, 2) = (x, y) input pixels (no gradient is needed through them, I-48);
    ``distances`` (B, 4) = (l, r, t, b) ≥ 0 pixels; the RoI spans x − l − m … x + r + m and
    y − t − m … y + b + m:

        s_x = (l + r + 2m)/(W − 1),  t_x = (2x + r − l)/(W − 1) − 1   (and y with t, b, H).
    """
    h, w = (float(v) for v in size)
    if keypoints.ndim != 2 or keypoints.shape[1] != 2 or distances.shape != (keypoints.shape[0], 4):
        raise InputError(f"roi_theta needs keypoints (B, 2) and distances (B, 4), got {tuple(keypoints.shape)} "
                         f"and {tuple(distances.shape)}.")
    x, y = keypoints[:, 0].to(distances.dtype), keypoints[:, 1].to(distances.dtype)
    l, r, t, b = distances.unbind(1)
    sx = (l + r + 2 * margin) / (w - 1)
    sy = (t + b + 2 * margin) / (h - 1)
    tx = (2 * x + r - l) / (w - 1) - 1
    ty = (2 * y + b - t) / (h - 1) - 1
    zero = torch.zeros_like(sx)
    return torch.stack([torch.stack([sx, zero, tx], 1), torch.stack([zero, sy, ty], 1)], 1)


def inverse_theta(theta: Tensor, eps: float = 1e-6) -> Tensor:
    """θ⁻¹ (B, 2, 3) of RoI θ (B, 2, 3) with the smoothing term ε (Eq. 4, I-50):
    ``[[1/(s_x+ε), 0, −t_x/(s_x+ε)], [0, 1/(s_y+ε), −t_y/(s_y+ε)]]``."""
    sx, tx = theta[:, 0, 0] + eps, theta[:, 0, 2]
    sy, ty = theta[:, 1, 1] + eps, theta[:, 1, 2]
    zero = torch.zeros_like(sx)
    return torch.stack([torch.stack([1 / sx, zero, -tx / sx], 1), torch.stack([zero, 1 / sy, -ty / sy], 1)], 1)


def recalibrate(image: Tensor, theta: Tensor, size: Sequence[int], mode: str = "bilinear") -> Tensor:
    """The RoI recalibration: ``image`` (B, C, H, W) sampled on the grid of θ (B, 2, 3) →
    (B, C, *size); bilinear (``mode``), ``align_corners=True``, zeros outside the image."""
    grid = F.affine_grid(theta.to(image.dtype), [image.shape[0], image.shape[1], int(size[0]), int(size[1])],
                         align_corners=True)
    return F.grid_sample(image, grid, mode=mode, padding_mode="zeros", align_corners=True)


def paste_back(roi: Tensor, theta: Tensor, size: Sequence[int], eps: float = 1e-6) -> Tensor:
    """RoI maps ``roi`` (B, C, h, w) (e.g. S-Net probabilities) back onto slices of ``size`` = (H, W)
    with θ⁻¹ (:func:`inverse_theta`), bilinear, zeros outside the RoI → (B, C, H, W)."""
    return recalibrate(roi, inverse_theta(theta, eps), size)


def merge_rois(pasted: Tensor, owner: Tensor, n_images: int) -> Tensor:
    """Voxel-wise max (I-51) of pasted RoI maps (N, C, H, W) per image: ``owner`` (N,) long says
    which of the ``n_images`` each RoI belongs to → (n_images, C, H, W), zeros where none."""
    out = pasted.new_zeros((n_images, *pasted.shape[1:]))
    index = owner.view(-1, 1, 1, 1).expand_as(pasted)
    return out.scatter_reduce(0, index, pasted, reduce="amax", include_self=True)


# ---- L-Net ----------------------------------------------------------------------------------------------
class LNet(nn.Module):
    """Anchor-free RoI detector (§4.2). Encoder widths ``base · (1, 2, 4, 8, 8, 8)`` at strides
    1 … 32 (two conv+BN+ReLU each, max-pool between), decoder: three (transposed-conv ×2, concat
    skip, two conv+BN+ReLU) blocks back to stride 4, then the KP and BBR heads.

    ``forward(x)`` takes slabs x (B, in_channels, H, W), H and W multiples of 32, and returns
    ``(heatmap logits (B, 1, H/4, W/4), distances (B, 4, H/4, W/4))``, distances (l, r, t, b) in
    input pixels, ≥ 0. ``num_classes`` is kept for the predictor (the class maps it returns); the
    heatmap has one channel: every foreground object is a keypoint.
    """

    def __init__(self, in_channels: int = 5, base: int = 16, head_channels: int = 64, num_classes: int = 2) -> None:
        super().__init__()
        if base < 1 or head_channels < 1 or in_channels < 1:
            raise ConfigError(f"LNet needs in_channels, base and head_channels ≥ 1, got {in_channels}, {base}, "
                              f"{head_channels}.")
        self.in_channels, self.num_classes, self.stride = in_channels, num_classes, STRIDE
        widths = [base * k for k in (1, 2, 4, 8, 8, 8)]
        self.enc = nn.ModuleList()
        prev = in_channels
        for w in widths:
            self.enc.append(nn.Sequential(conv_bn_relu(prev, w), conv_bn_relu(w, w)))
            prev = w
        self.pool = nn.MaxPool2d(2, 2)
        self.up = nn.ModuleList()
        self.dec = nn.ModuleList()
        for level in (4, 3, 2):  # 32 → 16 → 8 → 4
            self.up.append(nn.ConvTranspose2d(prev, widths[level], 2, stride=2))
            self.dec.append(nn.Sequential(conv_bn_relu(2 * widths[level], widths[level]),
                                          conv_bn_relu(widths[level], widths[level])))
            prev = widths[level]
        c = head_channels
        kp_out, bbr_out = nn.Conv2d(c, 1, 1), nn.Conv2d(c, 4, 13, padding=6)
        self.kp = nn.Sequential(nn.Conv2d(prev, c, 3, padding=1), nn.ReLU(inplace=True), kp_out)
        self.bbr = nn.Sequential(nn.Conv2d(prev, c, 3, padding=1), nn.ReLU(inplace=True),
                                 nn.Conv2d(c, c, 3, padding=1), nn.ReLU(inplace=True), bbr_out, nn.ReLU())
        assert kp_out.bias is not None and bbr_out.bias is not None
        nn.init.constant_(kp_out.bias, -2.19)  # prior ≈ 0.1 on the heatmap (CenterNet), stable focal loss
        nn.init.normal_(bbr_out.weight, std=1e-3)
        nn.init.constant_(bbr_out.bias, 8.0)  # start from 8-pixel distances: the final ReLU is live

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """x (B, Cin, H, W) → (heatmap logits (B, 1, H/4, W/4), distances (B, 4, H/4, W/4))."""
        n = 2 ** POOLINGS
        if x.ndim != 4 or x.shape[1] != self.in_channels or x.shape[2] % n or x.shape[3] % n:
            raise InputError(f"LNet expects a (B, {self.in_channels}, H, W) tensor with H and W multiples of {n}, "
                             f"got {tuple(x.shape)}; pad the slices to a multiple of {n}.")
        skips = []
        for i, block in enumerate(self.enc):
            x = block(self.pool(x) if i else x)
            skips.append(x)
        for up, dec, skip in zip(self.up, self.dec, (skips[4], skips[3], skips[2])):
            x = dec(torch.cat([up(x), skip], 1))
        return self.kp(x), self.bbr(x)


# ---- L-SNet ----------------------------------------------------------------------------------------------
Select = Callable[[Tensor], Tensor]


class LSNet(nn.Module):
    """L-Net (``lnet``) + S-Net (``snet``: a :class:`UNet2D` on ``roi_size``² RoIs of the slab, as
    many input channels as L-Net) joined by the RoI recalibration.

    ``forward(x, mode="lnet")`` → L-Net's ``(heatmap logits, distances)``;
    ``forward(x, mode="joint", select=f, gamma=γ)`` → ``(heatmap logits, distances (both
    detached), θ (B, 2, 3), S-Net logits (B, K, roi, roi))``: ``f`` maps the heatmap logits
    (B, 1, h, w) to one keypoint cell (row, col) per image (B, 2) long; the distances read there pass through
    :func:`scale_gradient` (γ) before θ, so S-Net's loss reaches L-Net scaled by γ while the
    keypoint itself carries no gradient (I-48).
    """

    def __init__(self, in_channels: int = 3, num_classes: int = 2, lnet_base: int = 16, head_channels: int = 64,
                 snet_base: int = 32, snet_embed: int = 32, roi_size: int = 128, margin: float = 15.0) -> None:
        super().__init__()
        if roi_size < 8 or roi_size % 8:
            raise ConfigError(f"roi_size must be a positive multiple of 8 (S-Net pools three times), got {roi_size}.")
        self.lnet = LNet(in_channels, lnet_base, head_channels, num_classes)
        self.snet = UNet2D(in_channels, num_classes, snet_base, snet_embed)
        self.in_channels, self.num_classes, self.roi_size, self.margin = in_channels, num_classes, roi_size, margin

    def segment_rois(self, image: Tensor, theta: Tensor) -> Tensor:
        """S-Net logits (N, K, roi, roi) of the RoIs θ (N, 2, 3) of slabs ``image`` (N, Cin, H, W)."""
        logits, _ = self.snet(recalibrate(image, theta, (self.roi_size, self.roi_size)))
        return logits

    def forward(self, x: Tensor, mode: str = "lnet", select: Select | None = None,
                gamma: float = 0.1) -> tuple[Tensor, ...]:
        heat, dist = self.lnet(x)
        if mode == "lnet":
            return heat, dist
        if mode != "joint" or select is None:
            raise ConfigError(f"LSNet.forward: mode must be 'lnet' or 'joint' (with a select function), got {mode!r}.")
        cells = select(heat.detach())  # (B, 2) rows, cols
        rows = torch.arange(x.shape[0], device=x.device)
        d = scale_gradient(dist[rows, :, cells[:, 0], cells[:, 1]], gamma)  # (B, 4)
        keypoints = cell_to_pixel(cells.flip(1), self.lnet.stride)  # (x, y) pixels
        theta = roi_theta(keypoints, d, x.shape[-2:], self.margin)
        # heatmap and distance maps go out detached: only θ and the S-Net logits carry the graph,
        # so DDP (find_unused_parameters) sees the keypoint head as unused in this pass
        return heat.detach(), dist.detach(), theta, self.segment_rois(x, theta)


__all__ = ["LNet", "LSNet", "STRIDE", "cell_to_pixel", "inverse_theta", "merge_rois", "paste_back",
           "pixel_to_cell", "recalibrate", "roi_theta", "scale_gradient"]
