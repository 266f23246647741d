"""Physical structured pruning of coupling groups with Torch-Pruning."""

from __future__ import annotations

from typing import Any, Callable, Sequence

import torch
import torch_pruning as tp
from torch import nn

from autocompress.inventory import Group, LayerInventory, build_dependency_graph
from autocompress.spaces import Policy, kept_for

__all__ = ["prune_groups"]

_CRITERIA: dict[str, tp.importance.Importance] = {
    "l1": tp.importance.GroupMagnitudeImportance(p=1, group_reduction="mean", normalizer=None),
    "l2": tp.importance.GroupMagnitudeImportance(p=2, group_reduction="mean", normalizer=None),
    "taylor": tp.importance.GroupTaylorImportance(group_reduction="mean", normalizer=None),
}


def _sum_of_squares(output: Any) -> torch.Tensor:
    if isinstance(output, torch.Tensor):
        return output.float().square().sum()
    items = output.values() if isinstance(output, dict) else output
    return sum((_sum_of_squares(o) for o in items), torch.zeros(()))


def _backpropagate(
    model: nn.Module, batches: Sequence[tuple[torch.Tensor, ...]], loss_fn: Callable[[torch.Tensor], torch.Tensor]
) -> None:
    """Leave in every parameter's ``.grad`` the gradient of the loss summed over ``batches``,
    computed in eval mode (the modules' modes are restored afterwards)."""
    modes = [(m, m.training) for m in model.modules()]
    model.eval()
    model.zero_grad(set_to_none=True)
    for p in model.parameters():
        p.requires_grad_(True)
    try:
        with torch.enable_grad():
            for batch in batches:
                loss_fn(model(*batch)).backward()
    finally:
        for m, training in modes:
            m.training = training
    for p in model.parameters():
        if p.grad is None:  # not reached by the loss
            p.grad = torch.zeros_like(p)


def prune_groups(
    model: nn.Module,
    inventory: LayerInventory,
    policy: Policy,
    example_inputs: tuple[torch.Tensor, ...],
    channel_multiple: int,
    *,
    importance: str = "l1",
    batches: Sequence[tuple[torch.Tensor, ...]] | None = None,
    loss_fn: Callable[[torch.Tensor], torch.Tensor] | None = None,
) -> nn.Module:
    """Remove the least important channels of every group the policy prunes, in place.

    A channel's importance is reduced (averaged) over every coupled layer, so coupled layers
    lose exactly the same channels. ``importance`` is "l1" or "l2" (sum of ``|w|`` or ``w**2``
    over the channel's weights, BatchNorm scales included) or "taylor" (sum of ``|w * dL/dw|``,
    Torch-Pruning's first-order Taylor criterion). "taylor" needs ``batches`` (tuples of model
    inputs): the gradient of ``loss_fn(model(*batch))`` (default: the sum of squares of the
    output), summed over the batches, is taken once in eval mode before any group is pruned;
    gradients are cleared afterwards and ``requires_grad`` flags restored.
    """
    if importance not in _CRITERIA:
        raise ValueError(f"unknown importance criterion {importance!r}; choose one of {sorted(_CRITERIA)}.")
    if importance == "taylor" and not batches:
        raise ValueError('importance="taylor" needs gradients: pass `batches`, a non-empty sequence of input tuples.')
    scorer = _CRITERIA[importance]
    todo = [(inventory.groups[g], r) for g, r in policy.prune.items() if r > 0 and g in inventory.groups]
    if not todo:
        return model
    if importance != "taylor":
        return _prune(model, inventory, todo, example_inputs, channel_multiple, scorer)
    requires = {n: p.requires_grad for n, p in model.named_parameters()}
    try:
        _backpropagate(model, batches, loss_fn or _sum_of_squares)
        return _prune(model, inventory, todo, example_inputs, channel_multiple, scorer)
    finally:
        model.zero_grad(set_to_none=True)
        for n, p in model.named_parameters():
            p.requires_grad_(requires.get(n, p.requires_grad))


def _prune(
    model: nn.Module,
    inventory: LayerInventory,
    todo: list[tuple[Group, float]],
    example_inputs: tuple[torch.Tensor, ...],
    channel_multiple: int,
    scorer: tp.importance.Importance,
) -> nn.Module:
    modules = dict(model.named_modules())
    dg = build_dependency_graph(model, example_inputs)
    for group_info, ratio in todo:
        if not group_info.prunable:
            raise ValueError(f"group {group_info.name!r} cannot be pruned: {group_info.reason}.")
        root = modules[group_info.layers[0]]
        fn = tp.prune_conv_out_channels if isinstance(root, nn.Conv2d) else tp.prune_linear_out_channels
        channels = root.out_channels if isinstance(root, nn.Conv2d) else root.out_features
        keep = kept_for(group_info, ratio, channel_multiple)
        if keep >= channels:
            continue
        group = dg.get_pruning_group(root, fn, idxs=list(range(channels)))
        with torch.no_grad():
            importance = scorer(group).float()
        unit = group_info.unit
        if unit > 1:  # whole attention heads: a head's importance is the sum over its channels
            order = torch.argsort(importance.view(-1, unit).sum(dim=1), stable=True)
            remove = sorted(int(h) * unit + j for h in order[: (channels - keep) // unit] for j in range(unit))
        else:
            order = torch.argsort(importance, stable=True)  # least important first
            remove = sorted(int(i) for i in order[: channels - keep])
        dg.get_pruning_group(root, fn, idxs=remove).prune()
        if unit > 1:
            attention = modules[group_info.name.rsplit(".", 1)[0]]
            attention.num_heads = keep // unit
    return model
