"""Networks: Table I UNet (exact parameter count), stage-1 localizer, UNet++ backbone, registry."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from voxmetric.errors import ConfigError, InputError
from voxmetric.nets import UNet2D, UNetPlusPlus2D, build_network

torch.set_num_threads(1)


def n_params(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def test_unet2d_parameter_count_matches_paper() -> None:
    net = UNet2D()
    assert n_params(net) == 3_279_842
    assert abs(n_params(net) - 3_279_842) <= 0.001 * 3_279_842


# Table I "#" column (conv weights + bias, in thousands) under METHODS.md §2.4's reading.
TABLE_I_K = {"conv1a": 0.9, "conv1b": 9, "conv2a": 18, "conv2b": 37, "conv3a": 74, "conv3b": 147,
             "enc4a": 295, "enc4b": 590, "upconv4a": 131, "conv4c": 295, "conv4d": 147, "upconv5a": 32,
             "conv5c": 73, "conv5d": 37, "upconv6a": 66, "conv6c": 664, "conv6d": 590, "sega": 66, "segb": 0.5}


@pytest.mark.parametrize("name", sorted(TABLE_I_K))
def test_unet2d_layer_sizes_match_table_i(name: str) -> None:
    layer = getattr(UNet2D(), name)
    conv = layer[0] if isinstance(layer, nn.Sequential) else layer
    assert n_params(conv) / 1000 == pytest.approx(TABLE_I_K[name], abs=1.0)  # printed rounded or truncated


@pytest.mark.parametrize("shape", [(2, 3, 64, 64), (1, 3, 128, 128)])
def test_unet2d_output_shapes(shape: tuple[int, ...]) -> None:
    net = UNet2D().eval()
    with torch.inference_mode():
        logits, emb = net(torch.randn(shape))
    assert logits.shape == (shape[0], 2, *shape[2:])
    assert emb.shape == (shape[0], 256, *shape[2:])
    assert (emb >= 0).all()  # conv6d output is post-ReLU


def test_localizer_variant() -> None:
    net = UNet2D(in_channels=5, base=32, embed_channels=32)
    logits, emb = net(torch.randn(2, 5, 64, 64))
    assert logits.shape == (2, 2, 64, 64) and emb.shape == (2, 32, 64, 64)
    assert net.upconv6a.out_channels == 32 and net.conv6c[0].in_channels == 64  # symmetric decoder
    assert n_params(net) == 1_930_146  # METHODS.md §2.4 note 3: "about 1.94M"


def test_unet2d_rejects_bad_input() -> None:
    net = UNet2D()
    with pytest.raises(InputError, match="multiples of 8"):
        net(torch.randn(1, 3, 60, 64))
    with pytest.raises(InputError, match=r"\(B, 3, H, W\)"):
        net(torch.randn(1, 5, 64, 64))


def test_unetpp_shapes_and_embedding_layer() -> None:
    net = UNetPlusPlus2D()
    assert net.embed_channels == 256
    assert abs(n_params(net) - 3_279_842) / 3_279_842 < 0.02  # parameter-matched to the UNet
    logits, emb = net(torch.randn(2, 3, 64, 64))
    assert logits.shape == (2, 2, 64, 64) and emb.shape == (2, 256, 64, 64)
    # the embedding is exactly the output of the final full-resolution nested node X^{0,4}
    seen = {}
    net.backbone.upcat_0_4.register_forward_hook(lambda m, i, o: seen.setdefault("x04", o))
    net.eval()
    with torch.inference_mode():
        logits, emb = net(torch.randn(1, 3, 128, 128))
        assert torch.allclose(net.head(emb), logits)
    assert torch.equal(seen["x04"], emb) and logits.shape == (1, 2, 128, 128)
    with pytest.raises(InputError, match="multiples of 16"):
        net(torch.randn(1, 3, 72, 72))


def test_build_network_registry() -> None:
    assert isinstance(build_network("UNet2D", in_channels=5, embed_channels=32), UNet2D)
    assert isinstance(build_network("unetpp2d"), UNetPlusPlus2D)
    with pytest.raises(ConfigError, match="unet2d, unet3d, unetpp2d"):
        build_network("resnet")
    with pytest.raises(ConfigError, match="Bad arguments"):
        build_network("unet2d", widths=3)


@pytest.mark.parametrize("cls", [UNet2D, UNetPlusPlus2D])
def test_detach_embedding_blocks_head_loss_from_backbone(cls: type) -> None:
    net = cls()
    x, y = torch.randn(2, 3, 32, 32), torch.randint(0, 2, (2, 32, 32))
    logits, emb = net(x, detach_embedding=True)
    nn.functional.cross_entropy(logits, y).backward()
    head = [p for n, p in net.named_parameters() if n.startswith(("sega", "segb", "head"))]
    body = [p for n, p in net.named_parameters() if not n.startswith(("sega", "segb", "head"))]
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in head if p.ndim > 1)
    assert all(p.grad is None for p in body)
    # without detaching, the same loss reaches the first layer
    net.zero_grad(set_to_none=True)
    logits, emb = net(x)
    nn.functional.cross_entropy(logits, y).backward()
    assert all(p.grad is not None for p in body)


def test_channels_last_matches_contiguous() -> None:
    net = UNet2D(base=8, embed_channels=16).eval()
    x = torch.randn(2, 3, 32, 32)
    with torch.inference_mode():
        ref = net(x)
        net_cl = net.to(memory_format=torch.channels_last)
        out = net_cl(x.contiguous(memory_format=torch.channels_last))
    for a, b in zip(ref, out):
        assert torch.allclose(a, b, atol=1e-4)
