"""3D U-Net (Çiçek et al. layout: two 3×3×3 conv+BN+ReLU per level, 2× max-pooling, transposed-conv
up-sampling, skip concatenation) — the base network of voxel-level SimSiam ([VS] §3.2, METHODS.md §3).

[VS] gives 16.313 M parameters but no widths (I-28). ``PAPER_WIDTHS`` (32, 64, 128, 256, 320 —
four poolings, so a 64 × 128 × 128 input has a 4 × 8 × 8 bottleneck as in I-36, with nnU-Net's
320-channel cap) gives 16.55 M with 9 classes, within 1.5 % of the paper; ``SMALL_WIDTHS`` is a
CPU preset (0.94 M).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

from voxmetric.errors import ConfigError, InputError

PAPER_WIDTHS = (32, 64, 128, 256, 320)
SMALL_WIDTHS = (8, 16, 32, 64, 64)


def _double_conv(cin: int, cout: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv3d(cin, cout, 3, padding=1), nn.BatchNorm3d(cout), nn.ReLU(inplace=True),
        nn.Conv3d(cout, cout, 3, padding=1), nn.BatchNorm3d(cout), nn.ReLU(inplace=True),
    )


class UNet3D(nn.Module):
    """``forward(x)``: x (B, in_channels, D, H, W), each of D, H, W a multiple of
    ``2 ** (len(widths) - 1)`` → ``(logits (B, num_classes, D, H, W), features)`` where
    ``features`` are the encoder outputs deepest first: ``features[0]`` is the bottleneck f¹,
    ``features[1]`` f², … (the layers voxel SimSiam samples, I-34)."""

    #: parameter-name prefixes of the encoder (fine-tuning with a frozen encoder)
    encoder_prefixes = ("enc.",)

    def __init__(self, in_channels: int = 1, num_classes: int = 2, widths: Sequence[int] = PAPER_WIDTHS) -> None:
        super().__init__()
        widths = tuple(int(w) for w in widths)
        if len(widths) < 2 or min(widths) < 1:
            raise ConfigError(f"UNet3D needs at least two positive widths, got {widths}.")
        self.in_channels, self.num_classes, self.widths = in_channels, num_classes, widths
        self.multiple = 2 ** (len(widths) - 1)
        chans = (in_channels, *widths)
        self.enc = nn.ModuleList(_double_conv(chans[i], chans[i + 1]) for i in range(len(widths)))
        self.pool = nn.MaxPool3d(2)
        self.up = nn.ModuleList(nn.ConvTranspose3d(widths[i + 1], widths[i], 2, stride=2) for i in range(len(widths) - 1))
        self.dec = nn.ModuleList(_double_conv(2 * widths[i], widths[i]) for i in range(len(widths) - 1))
        self.head = nn.Conv3d(widths[0], num_classes, 1)

    def forward(self, x: Tensor) -> tuple[Tensor, list[Tensor]]:
        decoded, skips = self.features(x)
        return self.head(decoded[0]), skips[::-1]

    def features(self, x: Tensor) -> tuple[list[Tensor], list[Tensor]]:
        """``(decoder outputs, encoder outputs)``, both finest first: decoder item k is level k's
        block output (B, widths[k], D/2^k, H/2^k, W/2^k), k = 0 … len(widths) − 2; encoder item k
        the same level's encoder output (the last one the bottleneck). :meth:`forward` puts the
        head on decoder item 0; wrappers (CRII-Net's coarse head) may use the coarser ones."""
        if x.ndim != 5 or x.shape[1] != self.in_channels or any(s % self.multiple for s in x.shape[2:]):
            raise InputError(f"UNet3D expects a (B, {self.in_channels}, D, H, W) tensor with D, H, W multiples of "
                             f"{self.multiple}, got {tuple(x.shape)}; pad the volume first.")
        skips: list[Tensor] = []
        h = x
        for level, block in enumerate(self.enc):
            h = block(h if level == 0 else self.pool(h))
            skips.append(h)
        decoded: list[Tensor] = []
        for level in reversed(range(len(self.up))):
            h = self.dec[level](torch.cat([self.up[level](h), skips[level]], dim=1))
            decoded.append(h)
        return decoded[::-1], skips
