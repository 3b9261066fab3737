"""CRII-Net's coarse-refined network (METHODS.md §5, D-1, D-2) around an existing backbone.

One shared encoder-decoder (D-1: the 2.5D :class:`~voxmetric.nets.unet2d.UNet2D` or the
:class:`~voxmetric.nets.unet3d.UNet3D`) with two heads (D-2):

* **coarse**: a 1×1 convolution on the decoder's 1/4-resolution features, its logits upsampled
  (bilinear / trilinear, ``align_corners=False``) to the input size → P_c after a softmax;
* **refined**: the last decoder features concatenated with P_c → 3×3 conv–BN–ReLU
  (``head_channels`` wide) → 1×1 convolution → P_r after a softmax.

The backbone's own segmentation head (``sega``/``segb`` of UNet2D, ``head`` of UNet3D) is not
used and is removed from the wrapped backbone, so the package holds only what inference runs.
``forward(x)`` returns ``(refined logits, coarse logits)``, both at input resolution: like every
net here (logits, features), so a generic predictor that reads ``model(x)[0]`` gets P_r (D-9).
"""

from __future__ import annotations

from typing import cast

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from voxmetric.errors import ConfigError
from voxmetric.nets.unet2d import UNet2D
from voxmetric.nets.unet3d import UNet3D


class CRIINet(nn.Module):
    """Coarse and refined heads on ``backbone`` (a UNet2D or a UNet3D with at least 4 levels).

    2D: x (B, slab, H, W), H and W multiples of 8; 3D: x (B, 1, D, H, W), multiples of
    ``backbone.multiple``. Returns ``(logits_r, logits_c)``, each (B, num_classes, *spatial).
    """

    def __init__(self, backbone: nn.Module, num_classes: int = 2, head_channels: int = 64) -> None:
        super().__init__()
        if head_channels < 1:
            raise ConfigError(f"head_channels must be at least 1, got {head_channels}.")
        if isinstance(backbone, UNet2D):
            self.dims = 2
            quarter, last = cast(nn.Conv2d, backbone.conv4d[0]).out_channels, backbone.embed_channels
            del backbone.sega, backbone.segb  # unused: the refined head replaces them
        elif isinstance(backbone, UNet3D):
            if len(backbone.widths) < 4:
                raise ConfigError(f"CRII-Net needs a 3D U-Net with at least 4 levels (a decoder block at 1/4 "
                                  f"resolution), got widths {backbone.widths}.")
            self.dims = 3
            quarter, last = backbone.widths[2], backbone.widths[0]
            del backbone.head  # unused: the refined head replaces it
        else:
            raise ConfigError(f"CRII-Net wraps a UNet2D or a UNet3D, not {type(backbone).__name__}.")
        conv = nn.Conv2d if self.dims == 2 else nn.Conv3d
        norm = nn.BatchNorm2d if self.dims == 2 else nn.BatchNorm3d
        self.backbone, self.num_classes = backbone, num_classes
        self.coarse = conv(quarter, num_classes, 1)
        self.refine = nn.Sequential(conv(last + num_classes, head_channels, 3, padding=1), norm(head_channels),
                                    nn.ReLU(inplace=True), conv(head_channels, num_classes, 1))

    def _decoder(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """(last decoder features at full resolution, decoder features at 1/4 resolution)."""
        if self.dims == 2:
            feats = self.backbone.decoder_features(x)  # type: ignore[operator]
        else:
            feats = self.backbone.features(x)[0]  # type: ignore[operator]
        return feats[0], feats[2]

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        last, quarter = self._decoder(x)
        mode = "bilinear" if self.dims == 2 else "trilinear"
        logits_c = F.interpolate(self.coarse(quarter), size=tuple(last.shape[2:]), mode=mode, align_corners=False)
        p_c = torch.softmax(logits_c.float(), 1).to(last.dtype)
        logits_r = self.refine(torch.cat([last, p_c], dim=1))
        return logits_r, logits_c
