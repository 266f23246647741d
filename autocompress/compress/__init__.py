"""apply(model, inventory, policy) -> a new, physically smaller, quantized, factorized model.

Stages, each a plain function on a copy of the model: prune coupled groups (channels are
removed), factorize layers whose rank the policy lowers, then simulate the precision the
policy gives each layer (float16, int8 with static or, over token sequences, dynamic
activation ranges, or 4-bit weights). BatchNorm stays in the candidate so that fine-tuning keeps its stable
dynamics; :func:`fold_batchnorm` folds it into the preceding layers before export.
Per-channel symmetric weight quantization commutes with that folding, so the integer
weights of the engine are the ones fine-tuning saw.
"""

from __future__ import annotations

import copy
from typing import Iterable

import torch
import torch.fx
from torch import nn
from torch.nn.utils.fusion import fuse_conv_bn_weights, fuse_linear_bn_weights

from autocompress.compress._lowrank import LowRankConv2d, LowRankLinear, TuckerConv2d, factorize, spatial_svd_matrix, tucker2
from autocompress.compress._prune import prune_groups
from autocompress.compress._quant import (
    ActFakeQuant,
    DynamicQuantLinear,
    HalfPrecision,
    Int4Linear,
    QuantConv2d,
    QuantLinear,
    calibrate,
    insert_activation_quantizers,
    int4_block_weight,
    WEIGHT_MAX_OF_BITS,
    WEIGHT_RANGE_ENV,
    int8_weight_max,
    quantize_module,
)
from autocompress.inventory import LayerInventory, trace
from autocompress.spaces import Policy
from autocompress.spaces._space import rank_for, tucker_ranks

__all__ = [
    "ActFakeQuant",
    "DynamicQuantLinear",
    "HalfPrecision",
    "Int4Linear",
    "LowRankConv2d",
    "LowRankLinear",
    "TuckerConv2d",
    "WEIGHT_MAX_OF_BITS",
    "WEIGHT_RANGE_ENV",
    "QuantConv2d",
    "QuantLinear",
    "apply",
    "calibrate",
    "factorize",
    "fold_batchnorm",
    "int4_block_weight",
    "int8_weight_max",
    "spatial_svd_matrix",
    "tucker2",
]


_LEAVES = (QuantConv2d, QuantLinear, ActFakeQuant, DynamicQuantLinear, Int4Linear, HalfPrecision)


def _set_submodule(root: nn.Module, name: str, module: nn.Module) -> None:
    parent_name, _, child = name.rpartition(".")
    parent = root.get_submodule(parent_name) if parent_name else root
    setattr(parent, child, module)


def apply(
    model: nn.Module,
    inventory: LayerInventory,
    policy: Policy,
    example_inputs: tuple[torch.Tensor, ...],
    calibration_batches: Iterable[tuple[torch.Tensor, ...]] | None = None,
    channel_multiple: int = 8,
    importance: str = "l1",
) -> torch.fx.GraphModule:
    """Build the candidate ``policy`` describes from ``model`` (which is not modified).

    ``calibration_batches`` (tuples of model inputs) set the int8 activation ranges, and
    feed the data-aware "taylor" pruning ``importance`` ("l1", the default, and "l2" look at
    weights only); the example inputs are used when none are given.
    """
    unknown = (set(policy.prune) - set(inventory.groups)) | ((set(policy.bits) | set(policy.rank)) - set(inventory.layers))
    if unknown:
        raise ValueError(f"policy names groups or layers the inventory lacks: {sorted(unknown)}")
    linear = sorted(n for n in policy.decomp if inventory.layers[n].kind != "conv")
    if linear:
        raise ValueError(f"Tucker-2 applies to convolutions only, but the policy asks it of {linear}")
    student = copy.deepcopy(model).eval()
    for p in student.parameters():
        p.requires_grad_(True)
    batches = list(calibration_batches) if calibration_batches is not None else [example_inputs]
    prune_groups(student, inventory, policy, example_inputs, channel_multiple, importance=importance, batches=batches)
    for name in inventory.layers:
        ratio = policy.rank_ratio(name)
        if ratio < 1.0:
            layer = student.get_submodule(name)
            c_in = layer.in_channels if isinstance(layer, nn.Conv2d) else layer.in_features
            c_out = layer.out_channels if isinstance(layer, nn.Conv2d) else layer.out_features
            if policy.decomposition(name) == "tucker2":
                _set_submodule(student, name, tucker2(layer, *tucker_ranks(c_in, c_out, ratio, channel_multiple)))
            else:
                _set_submodule(student, name, factorize(layer, rank_for(c_in, c_out, ratio, channel_multiple)))
    quantized = False
    for name, layer in inventory.layers.items():
        bits = policy.bits_of(name)
        if bits != 32:
            # Linear layers over token sequences quantize their activations per call.
            dynamic = layer.kind == "linear" and len(layer.input_shape) >= 3
            _set_submodule(student, name, quantize_module(student.get_submodule(name), bits, dynamic))
            quantized = quantized or (bits == 8 and not dynamic)
    # Re-trace so factorized layers appear as their two parts; quantized layers stay whole.
    student = trace(student, leaf_types=_LEAVES)
    if quantized:
        insert_activation_quantizers(student)
        calibrate(student, batches)
    return student.eval()




@torch.no_grad()
def fold_batchnorm(model: nn.Module) -> torch.fx.GraphModule:
    """A copy of ``model`` (in eval mode) with every BatchNorm that solely follows a Conv2d
    or Linear folded into that layer's weight and bias."""
    gm = trace(copy.deepcopy(model).eval(), leaf_types=_LEAVES)
    modules = dict(gm.named_modules())
    changed = False
    for node in list(gm.graph.nodes):
        bn = modules.get(str(node.target)) if node.op == "call_module" else None
        if not isinstance(bn, nn.modules.batchnorm._BatchNorm) or bn.running_mean is None:
            continue
        src = node.args[0]
        if not (isinstance(src, torch.fx.Node) and src.op == "call_module" and len(src.users) == 1):
            continue
        layer = modules.get(str(src.target))
        if isinstance(layer, nn.Conv2d):
            w, b = fuse_conv_bn_weights(layer.weight, layer.bias, bn.running_mean, bn.running_var, bn.eps, bn.weight, bn.bias)
        elif isinstance(layer, nn.Linear) and isinstance(bn, nn.BatchNorm1d):
            w, b = fuse_linear_bn_weights(layer.weight, layer.bias, bn.running_mean, bn.running_var, bn.eps, bn.weight, bn.bias)
        else:
            continue
        layer.weight, layer.bias = w, b
        node.replace_all_uses_with(src)
        gm.graph.erase_node(node)
        changed = True
    if changed:
        gm.graph.lint()
        gm.delete_all_unused_submodules()
        gm.recompile()
    return gm.eval()  # eval() refreshes the weight scales of int8 layers from the folded weights
