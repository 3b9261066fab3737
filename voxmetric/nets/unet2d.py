"""2D UNet of MetricUNet Table I (METHODS.md §2.4) and the stage-1 localizer (§2.3, I-11).

Layer names follow Table I under its consistent reading: enc4 takes pool3, up-block 3 is
``embed_channels`` wide (256 in the paper), ``sega`` is a 1x1 conv+bn+relu. With the defaults
the network has exactly 3,279,842 parameters (weights, biases and BatchNorm affine terms).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from voxmetric.errors import InputError


def conv_bn_relu(in_channels: int, out_channels: int, kernel_size: int = 3) -> nn.Sequential:
    """Table I "conv+bn+r": conv (stride 1, 'same' padding, with bias) -> BatchNorm -> ReLU."""
    return nn.Sequential(
        nn.Conv2d(in_channels, out_channels, kernel_size, padding=kernel_size // 2),
        nn.BatchNorm2d(out_channels),
        nn.ReLU(inplace=True),
    )


class UNet2D(nn.Module):
    """Three-pooling 2D UNet with a separate segmentation head on the embedding layer conv6d.

    Encoder widths are ``base * (1, 2, 4, 8)``; up-blocks 1-2 mirror the encoder; up-block 3
    (``upconv6a``, ``conv6c``, ``conv6d``) and ``sega`` are ``embed_channels`` wide.

    - Paper MetricUNet / UNet: ``UNet2D()`` (in 3, base 32, embed 256) -> 3,279,842 parameters.
    - Stage-1 localizer: ``UNet2D(in_channels=5, base=32, embed_channels=32)`` (symmetric decoder).

    ``forward(x)`` takes x (B, in_channels, H, W), H and W multiples of 8, and returns
    ``(logits (B, num_classes, H, W), embedding (B, embed_channels, H, W))``; the embedding is
    the conv6d output (post-ReLU) that the voxel-metric loss samples.
    """

    #: parameter-name prefixes of the encoder (fine-tuning with a frozen encoder)
    encoder_prefixes = ("conv1", "conv2", "conv3", "enc4")

    def __init__(self, in_channels: int = 3, num_classes: int = 2, base: int = 32,
                 embed_channels: int = 256) -> None:
        super().__init__()
        w1, w2, w3, w4 = base, 2 * base, 4 * base, 8 * base
        e = embed_channels
        self.in_channels, self.num_classes, self.embed_channels = in_channels, num_classes, e
        self.pool = nn.MaxPool2d(2, 2)
        self.conv1a, self.conv1b = conv_bn_relu(in_channels, w1), conv_bn_relu(w1, w1)
        self.conv2a, self.conv2b = conv_bn_relu(w1, w2), conv_bn_relu(w2, w2)
        self.conv3a, self.conv3b = conv_bn_relu(w2, w3), conv_bn_relu(w3, w3)
        self.enc4a, self.enc4b = conv_bn_relu(w3, w4), conv_bn_relu(w4, w4)
        self.upconv4a = nn.ConvTranspose2d(w4, w3, 2, stride=2)
        self.conv4c, self.conv4d = conv_bn_relu(2 * w3, w3), conv_bn_relu(w3, w3)
        self.upconv5a = nn.ConvTranspose2d(w3, w2, 2, stride=2)
        self.conv5c, self.conv5d = conv_bn_relu(2 * w2, w2), conv_bn_relu(w2, w2)
        self.upconv6a = nn.ConvTranspose2d(w2, e, 2, stride=2)
        self.conv6c, self.conv6d = conv_bn_relu(e + w1, e), conv_bn_relu(e, e)
        self.sega = conv_bn_relu(e, e, kernel_size=1)
        self.segb = nn.Conv2d(e, num_classes, 1)

    def forward(self, x: Tensor, detach_embedding: bool = False) -> tuple[Tensor, Tensor]:
        """x (B,Cin,H,W) -> (logits (B,K,H,W), embedding (B,E,H,W)).

        ``detach_embedding=True`` (the -Sep variant) feeds ``embedding.detach()`` to the head, so
        the loss on the logits trains only ``sega``/``segb``.
        """
        emb = self.decoder_features(x)[0]
        logits = self.segb(self.sega(emb.detach() if detach_embedding else emb))
        return logits, emb

    def decoder_features(self, x: Tensor) -> list[Tensor]:
        """The three up-blocks' outputs, finest first: ``[conv6d (B,E,H,W), conv5d (B,2·base,H/2,W/2),
        conv4d (B,4·base,H/4,W/4)]`` (item k is at 1/2^k resolution; item 0 is the embedding).
        Used by :meth:`forward` and by wrappers that add their own heads (CRII-Net's coarse head)."""
        if x.ndim != 4 or x.shape[1] != self.in_channels or x.shape[2] % 8 or x.shape[3] % 8:
            raise InputError(
                f"UNet2D expects a (B, {self.in_channels}, H, W) tensor with H and W multiples of 8, "
                f"got {tuple(x.shape)}; pad or crop the slices to a multiple of 8.")
        c1 = self.conv1b(self.conv1a(x))
        c2 = self.conv2b(self.conv2a(self.pool(c1)))
        c3 = self.conv3b(self.conv3a(self.pool(c2)))
        c4 = self.enc4b(self.enc4a(self.pool(c3)))
        u4 = self.conv4d(self.conv4c(torch.cat([self.upconv4a(c4), c3], dim=1)))
        u5 = self.conv5d(self.conv5c(torch.cat([self.upconv5a(u4), c2], dim=1)))
        emb = self.conv6d(self.conv6c(torch.cat([self.upconv6a(u5), c1], dim=1)))
        return [emb, u5, u4]
