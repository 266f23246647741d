from __future__ import annotations

import pytest
import torch
from torch import nn

from autocompress.errors import UserError
from autocompress.inventory import build_inventory
from conftest import RESNET_LAYERS


def test_resnet_layers_found_with_channels_and_shapes(resnet_inventory):
    inv = resnet_inventory
    assert list(inv.layers) == RESNET_LAYERS
    stem = inv.layers["stem.0"]
    assert (stem.kind, stem.in_channels, stem.out_channels) == ("conv", 1, 8)
    assert stem.input_shape == (1, 1, 28, 28) and stem.output_shape == (1, 8, 28, 28)
    assert stem.kernel_size == (3, 3) and stem.stride == (1, 1) and stem.padding == (1, 1)

    down = inv.layers["layer2.0.conv1"]
    assert (down.in_channels, down.out_channels) == (8, 16)
    assert down.stride == (2, 2)
    assert down.input_shape == (1, 8, 28, 28) and down.output_shape == (1, 16, 14, 14)

    short = inv.layers["layer3.0.shortcut.0"]
    assert (short.in_channels, short.out_channels, short.kernel_size) == (16, 32, (1, 1))
    assert short.output_shape == (1, 32, 7, 7)

    fc = inv.layers["fc"]
    assert (fc.kind, fc.in_channels, fc.out_channels) == ("linear", 32, 10)
    assert fc.input_shape == (1, 32) and fc.output_shape == (1, 10)


def test_flops_and_params_by_hand(resnet_inventory):
    inv = resnet_inventory
    # stem: 8 output channels x 28x28 positions x (1 input channel x 3x3 taps) MACs, 2 FLOPs per MAC.
    assert inv.layers["stem.0"].flops == 2 * (8 * 28 * 28) * (1 * 3 * 3)
    assert inv.layers["stem.0"].params == 8 * 1 * 3 * 3
    # strided conv: 16 x 14 x 14 outputs, 8 x 3 x 3 taps each
    assert inv.layers["layer2.0.conv1"].flops == 2 * (16 * 14 * 14) * (8 * 3 * 3)
    # fc: 32 -> 10, one row
    assert inv.layers["fc"].flops == 2 * 32 * 10
    assert inv.layers["fc"].params == 32 * 10 + 10
    assert inv.total_flops == sum(l.flops for l in inv.layers.values())


def test_linear_flops_scale_with_rows(mlp):
    inv1 = build_inventory(mlp, (torch.randn(1, 16),))
    inv4 = build_inventory(mlp, (torch.randn(4, 16),))
    assert inv1.layers["0"].flops == 2 * 16 * 32
    assert inv1.layers["2"].flops == 2 * 32 * 4
    assert inv4.layers["0"].flops == 4 * inv1.layers["0"].flops
    assert inv4.layers["0"].input_shape == (4, 16)


def test_residual_coupling(resnet_inventory):
    inv = resnet_inventory
    layers = inv.layers
    # The stem's output is added to layer1's residual branch: both lose the same channels.
    assert layers["stem.0"].out_group == layers["layer1.0.conv2"].out_group
    stem_group = inv.groups[layers["stem.0"].out_group]
    assert set(stem_group.layers) == {"stem.0", "layer1.0.conv2"}
    assert {"layer1.0.conv1", "layer2.0.conv1", "layer2.0.shortcut.0"} <= set(stem_group.consumers)
    assert stem_group.channels == 8

    # layer2's residual branch and its projection shortcut are added together.
    assert layers["layer2.0.conv2"].out_group == layers["layer2.0.shortcut.0"].out_group
    g2 = inv.groups[layers["layer2.0.conv2"].out_group]
    assert set(g2.layers) == {"layer2.0.conv2", "layer2.0.shortcut.0"}
    assert g2.channels == 16
    assert layers["layer3.0.conv1"].in_group == g2.name

    # A conv feeding only a BN/ReLU/conv chain is its own group.
    assert inv.groups[layers["layer1.0.conv1"].out_group].layers == ("layer1.0.conv1",)
    assert layers["layer1.0.conv1"].out_group != layers["stem.0"].out_group
    assert layers["layer1.0.conv2"].in_group == layers["layer1.0.conv1"].out_group


def test_output_layer_not_prunable(resnet_inventory, mlp_inventory):
    fc = resnet_inventory.layers["fc"]
    assert fc.is_output
    assert not resnet_inventory.groups[fc.out_group].prunable
    assert "output" in resnet_inventory.groups[fc.out_group].reason
    assert all(not l.is_output for n, l in resnet_inventory.layers.items() if n != "fc")
    prunable = {g.name for g in resnet_inventory.prunable_groups()}
    assert fc.out_group not in prunable
    assert "stem.0" in prunable

    assert mlp_inventory.layers["2"].is_output
    assert not mlp_inventory.groups["2"].prunable
    assert mlp_inventory.groups["0"].prunable
    assert mlp_inventory.groups["0"].consumers == ("2",)


def test_fused_activation(resnet_inventory, mlp_inventory):
    layers = resnet_inventory.layers
    assert layers["stem.0"].activation == "relu"  # conv -> BN -> nn.ReLU
    assert layers["layer1.0.conv1"].activation == "relu"  # conv -> BN -> torch.relu
    assert layers["layer1.0.conv2"].activation is None  # conv -> BN -> add
    assert layers["layer2.0.shortcut.0"].activation is None
    assert layers["fc"].activation is None
    assert mlp_inventory.layers["0"].activation == "relu"
    assert mlp_inventory.layers["2"].activation is None


def test_ignored_layers(resnet):
    x = torch.randn(1, 1, 28, 28)
    inv = build_inventory(resnet, (x,), ignored_layers=["layer1.0.conv1"])
    assert "layer1.0.conv1" not in inv.layers
    # Groups the ignored layer produces or consumes are not prunable.
    assert not inv.groups["layer1.0.conv1"].prunable
    assert not inv.groups["stem.0"].prunable
    assert "ignored" in inv.groups["stem.0"].reason
    with pytest.raises(UserError, match="ignored_layers"):
        build_inventory(resnet, (x,), ignored_layers=["no.such.layer"])


def test_fingerprint_stable_and_architecture_only(resnet_factory):
    x = torch.randn(1, 1, 28, 28)
    a = build_inventory(resnet_factory(8, seed=0), (x,))
    b = build_inventory(resnet_factory(8, seed=123), (x,))  # other weights, same architecture
    assert a.fingerprint == b.fingerprint
    assert len(a.fingerprint) == 16
    c = build_inventory(resnet_factory(16, seed=0), (x,))
    assert c.fingerprint != a.fingerprint
    d = build_inventory(resnet_factory(8, seed=0), (torch.randn(2, 1, 28, 28),))
    assert d.fingerprint != a.fingerprint  # shapes are part of the architecture as used


class _DataDependent(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Linear(4, 4)
        self.b = nn.Linear(4, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.sum() > 0:
            return self.a(x)
        return self.b(x)


def test_untraceable_model_raises_user_error():
    with pytest.raises(UserError, match="torch.fx"):
        build_inventory(_DataDependent(), (torch.randn(1, 4),))


def test_wrong_example_input_shape_raises_user_error(resnet, mlp):
    with pytest.raises(UserError, match="example inputs"):
        build_inventory(resnet, (torch.randn(1, 3, 28, 28),))
    with pytest.raises(UserError, match="example inputs"):
        build_inventory(mlp, (torch.randn(1, 15),))


def test_model_without_layers_raises_user_error():
    with pytest.raises(UserError, match="no Conv2d or Linear"):
        build_inventory(nn.Sequential(nn.ReLU()), (torch.randn(1, 4),))


def test_residual_adds_follow_their_groups():
    import torch

    from autocompress.inventory import build_inventory
    from autocompress.tasks.models import DemoResNet

    inv = build_inventory(DemoResNet(width=8).eval(), (torch.randn(1, 1, 28, 28),))
    adds = sorted(inv.elementwise.values(), key=lambda e: e.shape[1])
    assert [(e.kind, e.activation, e.shape[1]) for e in adds] == [("add", "relu", 8), ("add", "relu", 16), ("add", "relu", 32)]
    # The first add sums the stem's output and layer1.0.conv2's: pruning that group shrinks it.
    assert adds[0].group == inv.layers["stem.0"].out_group == inv.layers["layer1.0.conv2"].out_group
    assert adds[1].group == inv.layers["layer2.0.conv2"].out_group
