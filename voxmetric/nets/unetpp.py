"""2D UNet++ backbone for the ``UNet++`` and ``MetricUNet++-H`` configurations (METHODS.md §2.7).

Built on MONAI's ``BasicUNetPlusPlus`` (spatial_dims=2, four poolings, BatchNorm + ReLU like
Table I). Its 1x1 output convs are replaced by identities so that the network's output *is* the
final full-resolution nested node X^{0,4} (``upcat_0_4``: upsample + concat + two conv+bn+relu);
that node's last conv output is the embedding the metric loss samples (I-25), with
``features[5]`` channels. MONAI's own 1x1 conv of that node is kept as the segmentation head.

Default ``features=(32, 32, 64, 128, 256, 256)``: 3,315,650 parameters (about the 3.28M of
the Table I UNet) and a 256-d embedding, the same width as the UNet's conv6d.
"""

from __future__ import annotations

from collections.abc import Sequence

from monai.networks.nets.basic_unetplusplus import BasicUNetPlusPlus
from torch import Tensor, nn

from voxmetric.errors import InputError


class UNetPlusPlus2D(nn.Module):
    """x (B, in_channels, H, W), H and W multiples of 16 -> (logits (B,K,H,W), embedding (B,E,H,W)).

    E = ``features[5]``. ``detach_embedding=True`` feeds ``embedding.detach()`` to the head.
    """

    def __init__(self, in_channels: int = 3, num_classes: int = 2,
                 features: Sequence[int] = (32, 32, 64, 128, 256, 256)) -> None:
        super().__init__()
        if len(features) != 6:
            raise InputError(f"UNetPlusPlus2D needs six feature widths, got {tuple(features)}.")
        self.in_channels, self.num_classes = in_channels, num_classes
        self.embed_channels = int(features[5])
        self.backbone = BasicUNetPlusPlus(
            spatial_dims=2, in_channels=in_channels, out_channels=num_classes,
            features=tuple(features), deep_supervision=False, act=("relu", {"inplace": True}),
            norm="batch", bias=True, upsample="deconv")
        self.head = self.backbone.final_conv_0_4
        for name in ("final_conv_0_1", "final_conv_0_2", "final_conv_0_3", "final_conv_0_4"):
            setattr(self.backbone, name, nn.Identity())

    def forward(self, x: Tensor, detach_embedding: bool = False) -> tuple[Tensor, Tensor]:
        """x (B,Cin,H,W) -> (logits (B,K,H,W), embedding = X^{0,4} (B,E,H,W))."""
        if x.ndim != 4 or x.shape[1] != self.in_channels or x.shape[2] % 16 or x.shape[3] % 16:
            raise InputError(
                f"UNetPlusPlus2D expects a (B, {self.in_channels}, H, W) tensor with H and W "
                f"multiples of 16, got {tuple(x.shape)}; pad or crop the slices.")
        emb = self.backbone(x)[0]
        return self.head(emb.detach() if detach_embedding else emb), emb
