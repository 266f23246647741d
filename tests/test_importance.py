"""Importance criteria of structured pruning: L1, L2 and first-order Taylor."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from autocompress.compress._prune import prune_groups
from autocompress.inventory import build_inventory
from autocompress.spaces import Policy

KEEP = 4  # of 8 channels, at prune ratio 0.5 and channel_multiple 1


def _model(seed: int = 0) -> nn.Sequential:
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(), nn.Conv2d(8, 4, 1))
    with torch.no_grad():
        model[1].weight.uniform_(0.5, 1.5)
        model[1].bias.uniform_(0.0, 0.5)  # keeps ReLU channels alive, so no Taylor score is 0
    return model.eval()


def _input(seed: int = 1) -> torch.Tensor:
    return torch.randn(2, 3, 6, 6, generator=torch.Generator().manual_seed(seed))


def _prune(model: nn.Module, x: torch.Tensor, **kwargs) -> nn.Module:
    pruned = copy.deepcopy(model)
    inventory = build_inventory(pruned, (x,))
    assert inventory.groups["0"].prunable and inventory.groups["0"].consumers == ("3",)
    return prune_groups(pruned, inventory, Policy(prune={"0": 0.5}), (x,), 1, **kwargs)


def _kept(original: nn.Module, pruned: nn.Module) -> set[int]:
    """Which of the original's channels the pruned model's first conv still has."""
    rows = original[0].weight.detach()
    kept = {next(i for i in range(len(rows)) if torch.equal(rows[i], r)) for r in pruned[0].weight.detach()}
    assert len(kept) == pruned[0].out_channels == KEEP
    return kept


def _magnitude(model: nn.Module, p: int) -> torch.Tensor:
    """tp's group magnitude: sum of |w|**p per channel over conv out, BN scale and conv in, averaged."""
    w1, gamma, w2 = model[0].weight.detach(), model[1].weight.detach(), model[3].weight.detach()
    return (w1.abs().pow(p).sum((1, 2, 3)) + gamma.abs().pow(p) + w2.abs().pow(p).sum((0, 2, 3))) / 3


def _taylor(model: nn.Module, batches: list[tuple[torch.Tensor, ...]], loss_fn=None) -> torch.Tensor:
    """tp's group Taylor score: sum of |w * dL/dw| per channel over conv out and conv in
    (tp 1.6.1 skips BatchNorm in this criterion), with L summed over the batches."""
    model = copy.deepcopy(model)
    for x, in batches:
        out = model(x)
        (loss_fn(out) if loss_fn else out.square().sum()).backward()
    w1, w2 = model[0].weight, model[3].weight
    return ((w1 * w1.grad).abs().sum((1, 2, 3)) + (w2 * w2.grad).abs().sum((0, 2, 3))).detach() / 2


def _top(scores: torch.Tensor) -> set[int]:
    ordered = torch.sort(scores, descending=True).values
    assert ordered[KEEP - 1] - ordered[KEEP] > 1e-3 * ordered[KEEP - 1], "ambiguous ranking; change the seed"
    return {int(i) for i in torch.topk(scores, KEEP).indices}


def _first_output_only(out: torch.Tensor) -> torch.Tensor:
    return out[:, 0].sum()


@pytest.mark.parametrize("criterion, p", [("l1", 1), ("l2", 2)])
def test_magnitude_keeps_top_channels(criterion, p):
    model, x = _model(), _input()
    assert _kept(model, _prune(model, x, importance=criterion)) == _top(_magnitude(model, p))


@pytest.mark.parametrize("loss_fn", [None, _first_output_only])
def test_taylor_keeps_top_channels(loss_fn):
    model = _model(seed=2)
    batches = [(_input(1),), (_input(2),)]
    pruned = _prune(model, _input(3), importance="taylor", batches=batches, loss_fn=loss_fn)
    assert _kept(model, pruned) == _top(_taylor(model, batches, loss_fn))


def test_default_is_l1():
    model, x = _model(), _input()
    assert _kept(model, _prune(model, x)) == _kept(model, _prune(model, x, importance="l1"))


def test_l1_and_l2_disagree_on_spiky_weights():
    """Channels 0-3 have one large weight each (high L2, low L1); channels 4-7 many small ones."""
    model = _model()
    with torch.no_grad():
        w = torch.zeros(8, 27)
        for c in range(8):
            scale = 1 + 0.05 * c
            if c < 4:
                w[c, c] = 9.0 * scale
            else:
                w[c] = scale * torch.where(torch.arange(27) % 2 == 0, 1.0, -1.0)
        model[0].weight.copy_(w.view(8, 3, 3, 3))
        model[1].weight.fill_(1.0)
        model[3].weight.fill_(0.1)
    x = _input()
    kept_l1, kept_l2 = _kept(model, _prune(model, x, importance="l1")), _kept(model, _prune(model, x, importance="l2"))
    assert kept_l1 == _top(_magnitude(model, 1)) == {4, 5, 6, 7}
    assert kept_l2 == _top(_magnitude(model, 2)) == {0, 1, 2, 3}


def test_taylor_drops_large_channel_that_does_not_reach_the_output():
    model = _model(seed=3)
    with torch.no_grad():
        model[0].weight[0] *= 10.0  # largest weights of all ...
        model[3].weight[:, 0] = 1e-6  # ... but multiplied by ~0 downstream
    x = _input()
    batches = [(x,)]
    kept_l1 = _kept(model, _prune(model, x, importance="l1"))
    kept_taylor = _kept(model, _prune(model, x, importance="taylor", batches=batches))
    assert 0 in kept_l1 and 0 not in kept_taylor
    assert kept_taylor == _top(_taylor(model, batches))


def test_taylor_leaves_no_gradients_and_restores_flags():
    model = _model().train()
    model[3].weight.requires_grad_(False)
    stats = model[1].running_mean.clone()
    x = _input()
    pruned = copy.deepcopy(model)
    inventory = build_inventory(copy.deepcopy(model), (x,))
    prune_groups(pruned, inventory, Policy(prune={"0": 0.5}), (x,), 1, importance="taylor", batches=[(x,)])
    assert pruned[0].out_channels == KEEP
    assert all(p.grad is None for p in pruned.parameters())
    assert not pruned[3].weight.requires_grad and pruned[0].weight.requires_grad
    # Gradients were taken in eval mode: BatchNorm statistics are untouched. (Torch-Pruning's
    # dependency graph leaves the model in eval mode, whatever the criterion.)
    assert torch.equal(pruned[1].running_mean, stats[sorted(_kept(model, pruned))])


def test_bad_arguments():
    model, x = _model(), _input()
    inventory = build_inventory(model, (x,))
    policy = Policy(prune={"0": 0.5})
    with pytest.raises(ValueError, match="unknown importance criterion 'l3'"):
        prune_groups(model, inventory, policy, (x,), 1, importance="l3")
    with pytest.raises(ValueError, match="needs gradients"):
        prune_groups(model, inventory, policy, (x,), 1, importance="taylor")
    with pytest.raises(ValueError, match="needs gradients"):
        prune_groups(model, inventory, policy, (x,), 1, importance="taylor", batches=[])
    assert model[0].out_channels == 8  # nothing was pruned
