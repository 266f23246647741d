"""Turning a (candidate) PyTorch model into the ONNX graph the runtime executes."""

from __future__ import annotations

import contextlib
import copy
import hashlib
import io
import logging
import tempfile
import warnings
from pathlib import Path

import numpy as np
import onnx
import onnx.numpy_helper
import torch
from torch import nn

from autocompress.compress._quant import INT4_BLOCK

__all__ = ["to_onnx_bytes", "input_names", "feeds_for", "quantize_weight_only_layers", "OPSET"]

OPSET = 17


def input_names(n: int) -> list[str]:
    return [f"input_{i}" for i in range(n)]


def to_onnx_bytes(model: nn.Module, example_inputs: tuple[torch.Tensor, ...], dynamic_batch: bool = False) -> bytes:
    """Fold BatchNorm, then export with the TorchScript-based exporter: its QDQ graphs fuse
    into integer kernels in ONNX Runtime, where the dynamo exporter's leave most convolutions
    in float."""
    from autocompress.compress import fold_batchnorm

    if any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules()):
        model = fold_batchnorm(model)
    names = input_names(len(example_inputs))
    axes = {n: {0: "batch"} for n in names} | {"output_0": {0: "batch"}} if dynamic_batch else None
    model = _snap_to_grid(model.eval())
    buf = io.BytesIO()
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            model, tuple(example_inputs), buf, dynamo=False, opset_version=OPSET,
            input_names=names, output_names=["output_0"], dynamic_axes=axes, do_constant_folding=True,
        )
    return quantize_weight_only_layers(buf.getvalue(), model)


def _snap_to_grid(model: nn.Module) -> nn.Module:
    """A copy whose run-time-quantized layers hold their on-grid weights (so the exporter
    writes them as initializers that :func:`quantize_weight_only_layers` can find)."""
    from autocompress.compress import DynamicQuantLinear, Int4Linear

    if not any(isinstance(m, (DynamicQuantLinear, Int4Linear)) for m in model.modules()):
        return model
    model = copy.deepcopy(model)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, (DynamicQuantLinear, Int4Linear)):
                m.weight.copy_(m.export_weight())
    return model.eval()


def _matmul_nodes(graph: onnx.GraphProto, modules: list[nn.Module]) -> list[str]:
    """Names of the MatMul nodes whose constant weight is one of these modules' export
    weights (the exporter writes ``x @ W.T`` with ``W.T`` folded into an initializer)."""
    wanted = {hashlib.sha1(m.export_weight().T.contiguous().numpy().astype(np.float32).tobytes()).hexdigest() for m in modules}
    weights = {t.name: t for t in graph.initializer}
    found = []
    for node in graph.node:
        if node.op_type == "MatMul" and len(node.input) == 2 and node.input[1] in weights:
            raw = onnx.numpy_helper.to_array(weights[node.input[1]]).astype(np.float32).tobytes()
            if hashlib.sha1(raw).hexdigest() in wanted:
                found.append(node.name)
    return found


def quantize_weight_only_layers(data: bytes, model: nn.Module) -> bytes:
    """Give ONNX Runtime's integer kernels the layers that quantize at run time: dynamic int8
    Linear layers become DynamicQuantizeLinear + MatMulInteger, 4-bit ones MatMulNBits. Their
    weights already lie on the target grid, so this re-quantization is exact."""
    from autocompress.compress import DynamicQuantLinear, Int4Linear

    dynamic = [m for m in model.modules() if isinstance(m, DynamicQuantLinear)]
    int4 = [m for m in model.modules() if isinstance(m, Int4Linear)]
    if not dynamic and not int4:
        return data
    from onnxruntime.quantization import QuantType, quantize_dynamic
    from onnxruntime.quantization.matmul_nbits_quantizer import DefaultWeightOnlyQuantConfig, MatMulNBitsQuantizer

    proto = onnx.load_from_string(data)
    with tempfile.TemporaryDirectory() as tmp, warnings.catch_warnings(), _quiet_quantizer_logs():
        warnings.simplefilter("ignore")
        if dynamic:
            nodes = _matmul_nodes(proto.graph, dynamic)
            if len(nodes) < len(dynamic):
                raise RuntimeError(f"found {len(nodes)} MatMul nodes for {len(dynamic)} dynamic int8 layers in the export")
            widths = {m.weight_max for m in dynamic}
            if len(widths) > 1:
                raise RuntimeError(f"dynamic int8 layers of one model on different weight ranges {sorted(widths)}")
            out = Path(tmp) / "dynamic.onnx"
            # reduce_range: ONNX Runtime's own 7-bit weights, [-64, 64], the grid the layers trained on.
            quantize_dynamic(proto, out, op_types_to_quantize=["MatMul"], per_channel=True, weight_type=QuantType.QInt8,
                             nodes_to_quantize=nodes, reduce_range=widths == {64},
                             extra_options={"MatMulConstBOnly": True})
            proto = onnx.load(str(out))
        if int4:
            nodes = _matmul_nodes(proto.graph, int4)
            if len(nodes) < len(int4):
                raise RuntimeError(f"found {len(nodes)} MatMul nodes for {len(int4)} 4-bit layers in the export")
            config = DefaultWeightOnlyQuantConfig(block_size=INT4_BLOCK, is_symmetric=True, accuracy_level=4)
            others = [n.name for n in proto.graph.node if n.op_type == "MatMul" and n.name not in nodes]
            quantizer = MatMulNBitsQuantizer(proto, nodes_to_exclude=others, algo_config=config)
            quantizer.process()
            proto = quantizer.model.model
    return proto.SerializeToString()


@contextlib.contextmanager
def _quiet_quantizer_logs():
    """ONNX Runtime's quantization tools log advice and progress at INFO and WARNING."""
    loggers = [logging.getLogger(), logging.getLogger("onnxruntime.quantization.matmul_nbits_quantizer")]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.ERROR)
    try:
        yield
    finally:
        for lg, level in zip(loggers, levels):
            lg.setLevel(level)


def feeds_for(example_inputs: tuple[torch.Tensor, ...]) -> dict[str, np.ndarray]:
    return {n: t.detach().cpu().numpy() for n, t in zip(input_names(len(example_inputs)), example_inputs)}
