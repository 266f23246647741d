"""Simulated int8 (fake quantization with a straight-through estimator) placed so that the
exported QDQ graph reaches ONNX Runtime's integer kernels.

Weights: per output channel, symmetric int8. Activations: per tensor, asymmetric uint8 with
ranges calibrated on real inputs (the U8S8 fast path of x86 integer kernels). Each int8
layer gets a quantizer on its input (shared between consumers of one tensor) and on its
output *after* a directly following BatchNorm and ReLU, so the runtime fuses Q -> DQ -> Conv -> ReLU -> Q
into a single QLinearConv (or QGemm/QLinearMatMul) instead of leaving float math in between.
"""

from __future__ import annotations

from typing import Iterable

import torch
import torch.fx
from torch import nn

from autocompress.inventory import fused_output

__all__ = ["ActFakeQuant", "QuantConv2d", "QuantLinear", "insert_activation_quantizers", "calibrate", "quantize_module"]


class ActFakeQuant(nn.Module):
    """Per-tensor uint8 fake quantization; observes min/max until :meth:`freeze`."""

    def __init__(self) -> None:
        super().__init__()
        self.register_buffer("scale", torch.tensor(1.0))
        self.register_buffer("zero_point", torch.tensor(0, dtype=torch.int32))
        self.register_buffer("min_val", torch.tensor(float("inf")))
        self.register_buffer("max_val", torch.tensor(float("-inf")))
        self.observing = True

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.observing:
            with torch.no_grad():
                self.min_val.copy_(torch.minimum(self.min_val, x.detach().min()))
                self.max_val.copy_(torch.maximum(self.max_val, x.detach().max()))
            return x
        return torch.fake_quantize_per_tensor_affine(x, self.scale, self.zero_point, 0, 255)

    @torch.no_grad()
    def freeze(self) -> None:
        lo = min(float(self.min_val), 0.0) if torch.isfinite(self.min_val) else 0.0
        hi = max(float(self.max_val), 0.0) if torch.isfinite(self.max_val) else 1.0
        scale = max((hi - lo) / 255.0, 1e-8)
        self.scale.fill_(scale)
        self.zero_point.fill_(int(min(255, max(0, round(-lo / scale)))))
        self.observing = False


def _per_channel_scale(weight: torch.Tensor) -> torch.Tensor:
    dims = tuple(range(1, weight.dim()))
    return (weight.detach().abs().amax(dim=dims).clamp_min(1e-12) / 127.0).float()


class _WeightFakeQuant:
    """Mixin: weight fake-quantized per output channel (int8, symmetric). The scale follows
    the weight while training and is frozen into a buffer whenever the module enters eval
    mode, so export sees constants."""

    weight: nn.Parameter

    def _init_quant(self) -> None:
        self.register_buffer("weight_scale", _per_channel_scale(self.weight))  # type: ignore[attr-defined]
        self.register_buffer("weight_zero_point", torch.zeros(self.weight.shape[0], dtype=torch.int32))  # type: ignore[attr-defined]

    def _quant_weight(self) -> torch.Tensor:
        if self.training:  # type: ignore[attr-defined]
            self.weight_scale.copy_(_per_channel_scale(self.weight))
        return torch.fake_quantize_per_channel_affine(self.weight, self.weight_scale, self.weight_zero_point, 0, -128, 127)

    def train(self, mode: bool = True):  # type: ignore[override]
        super().train(mode)  # type: ignore[misc]
        if not mode:
            self.weight_scale.copy_(_per_channel_scale(self.weight))
        return self


class QuantConv2d(_WeightFakeQuant, nn.Conv2d):
    @classmethod
    def from_float(cls, conv: nn.Conv2d) -> "QuantConv2d":
        q = cls(conv.in_channels, conv.out_channels, conv.kernel_size, conv.stride, conv.padding,
                conv.dilation, conv.groups, conv.bias is not None, conv.padding_mode)
        with torch.no_grad():
            q.weight.copy_(conv.weight)
            if conv.bias is not None:
                q.bias.copy_(conv.bias)
        q._init_quant()
        return q

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self._conv_forward(x, self._quant_weight(), self.bias)


class QuantLinear(_WeightFakeQuant, nn.Linear):
    @classmethod
    def from_float(cls, linear: nn.Linear) -> "QuantLinear":
        q = cls(linear.in_features, linear.out_features, linear.bias is not None)
        with torch.no_grad():
            q.weight.copy_(linear.weight)
            if linear.bias is not None:
                q.bias.copy_(linear.bias)
        q._init_quant()
        return q

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return nn.functional.linear(x, self._quant_weight(), self.bias)


def quantize_module(module: nn.Module) -> nn.Module:
    """The int8 (fake-quant) version of a Conv2d or Linear, or of each part of a factorized one."""
    if isinstance(module, (QuantConv2d, QuantLinear)):
        return module
    if isinstance(module, nn.Conv2d):
        return QuantConv2d.from_float(module)
    if isinstance(module, nn.Linear):
        return QuantLinear.from_float(module)
    if isinstance(module, nn.Sequential):
        for i, child in enumerate(list(module)):
            module[i] = quantize_module(child)
        return module
    raise TypeError(f"cannot quantize {type(module).__name__}")


def insert_activation_quantizers(gm: torch.fx.GraphModule) -> int:
    """Add an input and an output quantizer around every weight-quantized layer; return how many."""
    modules = dict(gm.named_modules())
    graph = gm.graph
    quantized_of: dict[torch.fx.Node, torch.fx.Node] = {}
    count = 0

    def is_quantizer(node: torch.fx.Node) -> bool:
        return node.op == "call_module" and isinstance(modules.get(str(node.target)), ActFakeQuant)

    def new_quantizer(after: torch.fx.Node) -> torch.fx.Node:
        nonlocal count
        name = f"act_quant_{count}"
        count += 1
        q_module = ActFakeQuant()
        gm.add_submodule(name, q_module)
        modules[name] = q_module
        with graph.inserting_after(after):
            q = graph.call_module(name, (after,))
        return q

    for node in list(graph.nodes):
        if node.op != "call_module" or not isinstance(modules.get(str(node.target)), (QuantConv2d, QuantLinear)):
            continue
        src = node.args[0]
        if isinstance(src, torch.fx.Node) and not is_quantizer(src):
            if src not in quantized_of:
                q = new_quantizer(src)
                # Every float consumer of this tensor that is itself quantized shares q.
                quantized_of[src] = q
            node.replace_input_with(src, quantized_of[src])
        point, _ = fused_output(node, modules)
        if any(is_quantizer(u) for u in point.users):
            continue
        q = new_quantizer(point)
        point.replace_all_uses_with(q, delete_user_cb=lambda u, q=q: u is not q)
        quantized_of[point] = q
    graph.lint()
    gm.recompile()
    return count


@torch.no_grad()
def calibrate(model: nn.Module, batches: Iterable[tuple[torch.Tensor, ...]]) -> None:
    """Observe activation ranges on ``batches``, then freeze every activation quantizer."""
    quantizers = [m for m in model.modules() if isinstance(m, ActFakeQuant)]
    if not quantizers:
        return
    model.eval()
    for q in quantizers:
        q.observing = True
    for inputs in batches:
        model(*inputs)
    for q in quantizers:
        q.freeze()
