"""Physical structured pruning of coupling groups with Torch-Pruning."""

from __future__ import annotations

import torch
import torch_pruning as tp
from torch import nn

from autocompress.inventory import LayerInventory, build_dependency_graph
from autocompress.spaces import Policy, kept_channels

__all__ = ["prune_groups"]

_IMPORTANCE = tp.importance.GroupMagnitudeImportance(p=1, group_reduction="mean", normalizer=None)


def prune_groups(
    model: nn.Module,
    inventory: LayerInventory,
    policy: Policy,
    example_inputs: tuple[torch.Tensor, ...],
    channel_multiple: int,
) -> nn.Module:
    """Remove the least important channels of every group the policy prunes, in place.

    Importance is the group's L1 weight magnitude per channel, reduced over every coupled
    layer, so coupled layers lose exactly the same channels.
    """
    todo = [(inventory.groups[g], r) for g, r in policy.prune.items() if r > 0 and g in inventory.groups]
    if not todo:
        return model
    modules = dict(model.named_modules())
    dg = build_dependency_graph(model, example_inputs)
    for group_info, ratio in todo:
        if not group_info.prunable:
            raise ValueError(f"group {group_info.name!r} cannot be pruned: {group_info.reason}.")
        root = modules[group_info.name]
        fn = tp.prune_conv_out_channels if isinstance(root, nn.Conv2d) else tp.prune_linear_out_channels
        channels = root.out_channels if isinstance(root, nn.Conv2d) else root.out_features
        keep = kept_channels(channels, ratio, channel_multiple)
        if keep >= channels:
            continue
        group = dg.get_pruning_group(root, fn, idxs=list(range(channels)))
        with torch.no_grad():
            importance = _IMPORTANCE(group)
        order = torch.argsort(importance.float(), stable=True)  # least important first
        remove = sorted(int(i) for i in order[: channels - keep])
        dg.get_pruning_group(root, fn, idxs=remove).prune()
    return model
