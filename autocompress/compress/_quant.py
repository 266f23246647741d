"""Simulated int8 (fake quantization with a straight-through estimator) placed so that the
exported QDQ graph reaches ONNX Runtime's integer kernels.

Weights: per output channel, symmetric int8 (7 bits where the CPU's integer kernels would
saturate: :func:`int8_weight_max`). Activations: per tensor, asymmetric uint8 with ranges
calibrated on real inputs (the U8S8 fast path of x86 integer kernels). Each int8
layer gets a quantizer on its input (shared between consumers of one tensor) and on its
output *after* a directly following BatchNorm and ReLU, so the runtime fuses Q -> DQ -> Conv -> ReLU -> Q
into a single QLinearConv (or QGemm/QLinearMatMul) instead of leaving float math in between.
"""

from __future__ import annotations

import functools
import os
import platform
from typing import Iterable

import torch
import torch.fx
from torch import nn

from autocompress.errors import UserError
from autocompress.inventory import fused_output

__all__ = [
    "ActFakeQuant", "DynamicQuantLinear", "HalfPrecision", "INT4_BLOCK", "Int4Linear", "QuantConv2d", "QuantLinear",
    "calibrate", "dynamic_fake_quant", "insert_activation_quantizers", "int4_block_weight", "int8_weight_max",
    "quantize_module", "WEIGHT_MAX_OF_BITS", "WEIGHT_RANGE_ENV",
]


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


WEIGHT_RANGE_ENV = "AUTOCOMPRESS_INT8_WEIGHTS"
WEIGHT_MAX_OF_BITS = {8: 127, 7: 64}  # int8 weight magnitudes: full range, or ONNX Runtime's reduce_range


@functools.lru_cache(maxsize=None)
def _integer_kernels_saturate() -> bool:
    """Whether ONNX Runtime's u8 x s8 kernels on this CPU sum pairs of products in int16.

    Without VNNI (x86 with AVX2, or AVX-512 before VNNI) they multiply with VPMADDUBSW, whose
    int16 sums saturate once a pair of products passes 32767: 255 x 127 x 2 does, 255 x 64 x 2
    does not. VNNI and AMX accumulate in int32; other architectures widen before adding."""
    from autocompress.latency_lut._backend import cpu_description

    if platform.machine().lower() not in ("x86_64", "amd64", "i386", "i686"):
        return False
    return not {"avx512_vnni", "avx_vnni", "amx_int8"} & set(cpu_description()[1])


def int8_weight_max() -> int:
    """The largest int8 weight magnitude: 127, or 64 (ONNX Runtime's ``reduce_range``, 7 bits)
    where this CPU's integer kernels would saturate and the engine would part from PyTorch.

    ``AUTOCOMPRESS_INT8_WEIGHTS=8`` or ``=7`` sets it for engines meant for another CPU."""
    wanted = os.environ.get(WEIGHT_RANGE_ENV, "").strip()
    if wanted not in ("", "7", "8"):
        raise UserError(f"{WEIGHT_RANGE_ENV}={wanted!r} is not a weight width; set it to 8 or 7, or unset it "
                        "(7 on CPUs without VNNI, else 8)")
    if wanted:
        return WEIGHT_MAX_OF_BITS[int(wanted)]
    return WEIGHT_MAX_OF_BITS[7 if _integer_kernels_saturate() else 8]


def _per_channel_scale(weight: torch.Tensor, weight_max: int) -> torch.Tensor:
    dims = tuple(range(1, weight.dim()))
    return (weight.detach().abs().amax(dim=dims).clamp_min(1e-12) / float(weight_max)).float()


class _WeightFakeQuant:
    """Mixin: weight fake-quantized per output channel (int8, symmetric, at most
    ``weight_max`` in magnitude). The scale follows the weight while training and is frozen
    into a buffer whenever the module enters eval mode, so export sees constants."""

    weight: nn.Parameter
    weight_max: int = 127

    def _init_quant(self) -> None:
        self.weight_max = int8_weight_max()
        self.register_buffer("weight_scale", _per_channel_scale(self.weight, self.weight_max))  # type: ignore[attr-defined]
        self.register_buffer("weight_zero_point", torch.zeros(self.weight.shape[0], dtype=torch.int32))  # type: ignore[attr-defined]

    def _quant_weight(self) -> torch.Tensor:
        if self.training:  # type: ignore[attr-defined]
            self.weight_scale.copy_(_per_channel_scale(self.weight, self.weight_max))
        return torch.fake_quantize_per_channel_affine(self.weight, self.weight_scale, self.weight_zero_point, 0, -128, 127)

    def train(self, mode: bool = True):  # type: ignore[override]
        super().train(mode)  # type: ignore[misc]
        if not mode:
            self.weight_scale.copy_(_per_channel_scale(self.weight, self.weight_max))
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


def _copy_linear(cls: type, linear: nn.Linear) -> nn.Linear:
    q = cls(linear.in_features, linear.out_features, linear.bias is not None)
    with torch.no_grad():
        q.weight.copy_(linear.weight)
        if linear.bias is not None:
            q.bias.copy_(linear.bias)
    return q


def _matmul(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    """``x @ weight.T + bias`` written so that the exporter emits MatMul (never Gemm), the
    op ONNX Runtime's dynamic and 4-bit quantizers rewrite."""
    y = torch.matmul(x, weight.t())
    return y + bias if bias is not None else y


def dynamic_fake_quant(x: torch.Tensor) -> torch.Tensor:
    """uint8 fake quantization with the range of ``x`` itself, as ONNX DynamicQuantizeLinear
    computes it at run time (range widened to include 0); gradients pass straight through."""
    with torch.no_grad():
        lo, hi = min(float(x.min()), 0.0), max(float(x.max()), 0.0)
        scale = max((hi - lo) / 255.0, 1e-8)
        zero_point = int(min(255, max(0, round(-lo / scale))))
    return torch.fake_quantize_per_tensor_affine(x, scale, zero_point, 0, 255)


class DynamicQuantLinear(_WeightFakeQuant, nn.Linear):
    """int8 weights per output channel, activations quantized per call with their own range.

    For token sequences a static activation range is a poor fit (a transformer's activation
    outliers move from sentence to sentence). The engine runs ONNX Runtime's dynamic
    quantization (DynamicQuantizeLinear and MatMulInteger, fused to DynamicQuantizeMatMul);
    the export writes the float MatMul with the int8-grid weights and
    :func:`autocompress.latency_lut.to_onnx_bytes` quantizes it, exactly, in the graph.
    """

    @classmethod
    def from_float(cls, linear: nn.Linear) -> "DynamicQuantLinear":
        q = _copy_linear(cls, linear)
        q._init_quant()
        return q

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if torch.onnx.is_in_onnx_export():  # to_onnx_bytes has put the weight on its grid
            return _matmul(x, self.weight, self.bias)
        return nn.functional.linear(dynamic_fake_quant(x), self._quant_weight(), self.bias)

    def export_weight(self) -> torch.Tensor:
        """The weight on its int8 grid, as a constant for the export."""
        with torch.no_grad():
            s = self.weight_scale.view(-1, 1)
            return (torch.round(self.weight / s).clamp(-self.weight_max, self.weight_max) * s).detach()


INT4_BLOCK = 32


def int4_block_weight(weight: torch.Tensor, block: int = INT4_BLOCK) -> torch.Tensor:
    """Symmetric 4-bit fake quantization in blocks of ``block`` input features, on the grid
    ONNX Runtime's MatMulNBits quantizer uses: per block, the value of largest magnitude maps
    to -8 and the others round to [-8, 7]. Gradients pass straight through."""
    out_f, in_f = weight.shape
    pad = (-in_f) % block
    w = nn.functional.pad(weight, (0, pad)).view(out_f, -1, block)
    with torch.no_grad():
        idx = w.abs().argmax(dim=-1, keepdim=True)
        scale = torch.gather(w, -1, idx) / -8.0
        scale = torch.where(scale == 0, torch.full_like(scale, 1e-12), scale)
        q = torch.clamp(torch.round(w / scale), -8, 7) * scale
    return (w + (q - w).detach()).view(out_f, -1)[:, :in_f]


class Int4Linear(nn.Linear):
    """4-bit weights in blocks of 32 (float activations): ONNX Runtime's MatMulNBits, which
    pays where the layer is memory-bound (few rows, as at batch 1)."""

    @classmethod
    def from_float(cls, linear: nn.Linear) -> "Int4Linear":
        return _copy_linear(cls, linear)  # type: ignore[return-value]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if torch.onnx.is_in_onnx_export():  # to_onnx_bytes has put the weight on its grid
            return _matmul(x, self.weight, self.bias)
        return nn.functional.linear(x, int4_block_weight(self.weight), self.bias)

    def export_weight(self) -> torch.Tensor:
        """The weight on its 4-bit grid, as a constant for the export."""
        with torch.no_grad():
            return int4_block_weight(self.weight).detach()


class HalfPrecision(nn.Module):
    """Runs a Conv2d or Linear in float16 (inputs cast in, outputs cast back to float32).

    Training simulates it by rounding inputs and weights to float16, which keeps float32
    gradients; the export casts for real, so the runtime uses its float16 kernels.
    """

    def __init__(self, layer: nn.Module) -> None:
        super().__init__()
        self.layer = layer

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        layer = self.layer
        if torch.onnx.is_in_onnx_export():
            w = layer.weight.half()
            b = layer.bias.half() if layer.bias is not None else None
            xh = x.half()
        else:
            w = layer.weight + (layer.weight.half().float() - layer.weight).detach()
            b = layer.bias
            xh = x + (x.half().float() - x).detach()
        if isinstance(layer, nn.Conv2d):
            y = layer._conv_forward(xh, w, b)
        else:
            y = nn.functional.linear(xh, w, b)
        return y.float()


def quantize_module(module: nn.Module, bits: int = 8, dynamic: bool = False) -> nn.Module:
    """The reduced-precision version of a Conv2d or Linear, or of each part of a factorized
    one: ``bits`` 16 (float16), 8 (int8; ``dynamic`` activations for Linear layers) or 4
    (4-bit weights, Linear only)."""
    if isinstance(module, (QuantConv2d, QuantLinear, DynamicQuantLinear, Int4Linear, HalfPrecision)):
        return module
    if isinstance(module, nn.Sequential):
        for i, child in enumerate(list(module)):
            module[i] = quantize_module(child, bits, dynamic)
        return module
    if not isinstance(module, (nn.Conv2d, nn.Linear)):
        raise TypeError(f"cannot quantize {type(module).__name__}")
    if bits == 16:
        return HalfPrecision(module)
    if bits == 4:
        if not isinstance(module, nn.Linear):
            raise ValueError("4-bit weights apply to Linear layers only (ONNX Runtime's MatMulNBits)")
        return Int4Linear.from_float(module)
    if bits != 8:
        raise ValueError(f"unsupported bit width {bits}")
    if isinstance(module, nn.Conv2d):
        return QuantConv2d.from_float(module)
    return DynamicQuantLinear.from_float(module) if dynamic else QuantLinear.from_float(module)


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
