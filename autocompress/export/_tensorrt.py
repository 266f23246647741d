"""TensorRT engines built from a candidate's ONNX with the policy's per-layer precisions.

int8 layers arrive as QuantizeLinear/DequantizeLinear pairs (explicit quantization);
float16 layers get the FP16 builder flag plus a layer precision constraint; float32
layers are pinned to float32 whenever FP16 is on. The engine is loaded back, compared
with the PyTorch candidate, timed with CUDA events, and scored on the eval set.

TensorRT's Python API is imported where used: everything before the build (ONNX
preparation, the layer-to-node precision map) runs without it.
"""

from __future__ import annotations

import hashlib
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, Iterable, Mapping

import torch
from torch import nn

from autocompress._io import atomic_write_bytes
from autocompress.errors import UserError
from autocompress.spaces import Policy

__all__ = [
    "COMPUTE_OPS", "PreparedOnnx", "TensorRTEngine", "build_and_verify", "layer_precisions", "module_layer_order",
    "node_precisions", "prepare_onnx", "require_tensorrt",
]

PRECISION_OF_BITS = {32: "fp32", 16: "fp16", 8: "int8", 4: "int4"}
# ONNX nodes that carry a compressible layer's weights, in the order the exporter writes them.
COMPUTE_OPS = ("Conv", "Gemm", "MatMul", "ConvInteger", "MatMulInteger", "MatMulNBits", "DynamicQuantizeMatMul", "MatMulIntegerToFloat")
# Run-time quantized layers (dynamic int8, 4-bit weights) use ONNX Runtime kernels TensorRT lacks.
TENSORRT_UNSUPPORTED = ("MatMulNBits", "DynamicQuantizeLinear", "MatMulInteger", "ConvInteger", "DynamicQuantizeMatMul", "MatMulIntegerToFloat")
TENSORRT_FP32_TOLERANCE = 1e-3
TENSORRT_FP16_TOLERANCE = 2e-2
TENSORRT_INT8_TOLERANCE = 0.1


def require_tensorrt():
    """The ``tensorrt`` module, or a one-line UserError saying what is missing."""
    try:
        import tensorrt
    except ImportError:
        raise UserError(
            "TensorRT export needs TensorRT's Python package (pip install tensorrt) and an NVIDIA GPU; "
            "use --format onnx, onnx-int8 or onnx-fp16 on this machine."
        ) from None
    if not torch.cuda.is_available():
        raise UserError("TensorRT export needs an NVIDIA GPU with CUDA, and PyTorch sees none; use --format onnx here.")
    return tensorrt


def layer_precisions(policy: Policy, layers: Iterable[str]) -> dict[str, str]:
    """Each layer's precision name (fp32, fp16, int8, int4) under ``policy``."""
    return {name: PRECISION_OF_BITS[policy.bits_of(name)] for name in layers}


def _layer_of(target: str, layers: Iterable[str]) -> str | None:
    matches = [name for name in layers if target == name or target.startswith(name + ".")]
    return max(matches, key=len) if matches else None


def module_layer_order(candidate: nn.Module, layers: Iterable[str]) -> list[str]:
    """The inventory layer behind each weight-carrying call of ``candidate``'s graph, in
    execution order (a factorized layer appears once per part)."""
    from autocompress.compress import HalfPrecision

    layers = list(layers)
    graph = getattr(candidate, "graph", None)
    if graph is None:
        raise ValueError("the candidate must be a torch.fx.GraphModule (as compress.apply returns)")
    modules = dict(candidate.named_modules())
    order = []
    for node in graph.nodes:
        module = modules.get(str(node.target)) if node.op == "call_module" else None
        if isinstance(module, (nn.Conv2d, nn.Linear, HalfPrecision)):
            layer = _layer_of(str(node.target), layers)
            if layer is not None:
                order.append(layer)
    return order


def node_precisions(onnx_model, candidate: nn.Module, precisions: Mapping[str, str]) -> dict[str, str]:
    """ONNX node name -> precision, pairing the graph's weight-carrying nodes with the
    candidate's layers in execution order (the exporter's node names drop module paths)."""
    nodes = [n for n in onnx_model.graph.node if n.op_type in COMPUTE_OPS]
    order = module_layer_order(candidate, precisions)
    if len(nodes) != len(order):
        raise ValueError(f"the ONNX graph has {len(nodes)} weight-carrying nodes but the candidate {len(order)} layer calls")
    return {node.name: precisions[layer] for node, layer in zip(nodes, order)}


@dataclass(frozen=True)
class PreparedOnnx:
    """An ONNX graph ready for TensorRT's parser, with its inputs and per-node precisions."""

    data: bytes
    inputs: list
    node_precisions: dict
    has_qdq: bool
    has_fp16: bool


def prepare_onnx(onnx_path: Path | str, candidate: nn.Module, precisions: Mapping[str, str]) -> PreparedOnnx:
    """Check that TensorRT can take the graph, infer shapes, and map layer precisions to nodes."""
    import onnx

    from autocompress.export._artifacts import onnx_inputs

    model = onnx.load(str(onnx_path))
    bad = sorted({n.op_type for n in model.graph.node if n.op_type in TENSORRT_UNSUPPORTED or n.domain not in ("", "ai.onnx")})
    if bad:
        layers = sorted(name for name, p in precisions.items() if p == "int4")
        hint = f" (4-bit layers: {', '.join(layers)})" if layers else ""
        raise UserError(
            f"TensorRT cannot run this engine's {', '.join(bad)} nodes{hint}: run-time quantized layers are ONNX Runtime kernels; "
            "export --format onnx, or search with --bits 32,16,8 on a model without token-sequence Linear layers."
        )
    model = onnx.shape_inference.infer_shapes(model)
    per_node = node_precisions(model, candidate, precisions)
    ops = {n.op_type for n in model.graph.node}
    return PreparedOnnx(
        data=model.SerializeToString(), inputs=onnx_inputs(onnx_path), node_precisions=per_node,
        has_qdq="QuantizeLinear" in ops, has_fp16="fp16" in per_node.values(),
    )


@dataclass(frozen=True)
class TensorRTEngine:
    path: str
    size_bytes: int
    sha256: str
    tolerance: float
    relative_error: float
    max_abs_error: float
    output_cosine: float
    latency_ms: float
    latency_p10_ms: float
    latency_p90_ms: float
    runtime_metric: float | None
    node_precisions: dict = field(default_factory=dict)
    latency_method: str = "TensorRT, CUDA events around each enqueue, median of timed runs"
    ok: bool = True
    problems: tuple = ()

    def to_dict(self) -> dict:
        d = asdict(self)
        d["problems"] = list(self.problems)
        return d


def _build(trt, prepared: PreparedOnnx, max_batch: int, opt_batch: int) -> bytes:
    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    network = builder.create_network(0)
    parser = trt.OnnxParser(network, logger)
    if not parser.parse(prepared.data):
        errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise RuntimeError(f"TensorRT's ONNX parser failed: {errors}")
    config = builder.create_builder_config()
    if prepared.has_fp16:
        config.set_flag(trt.BuilderFlag.FP16)
    if prepared.has_qdq:
        config.set_flag(trt.BuilderFlag.INT8)
    constrained = 0
    for i in range(network.num_layers):
        layer = network.get_layer(i)
        precision = prepared.node_precisions.get(layer.name)
        if precision == "fp16":
            layer.precision = trt.float16
            constrained += 1
        elif precision == "fp32" and prepared.has_fp16:
            layer.precision = trt.float32
            constrained += 1
    if constrained:
        config.set_flag(trt.BuilderFlag.OBEY_PRECISION_CONSTRAINTS)
    profile = builder.create_optimization_profile()
    for spec in prepared.inputs:
        rest = tuple(int(d) for d in spec["shape"][1:])
        profile.set_shape(spec["name"], (1, *rest), (opt_batch, *rest), (max_batch, *rest))
    config.add_optimization_profile(profile)
    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        raise RuntimeError("TensorRT's builder returned no engine (see its log above)")
    return bytes(serialized)


class _Runner:
    """A deserialized engine that runs torch CUDA tensors."""

    def __init__(self, trt, plan: bytes) -> None:
        self.trt = trt
        self.engine = trt.Runtime(trt.Logger(trt.Logger.WARNING)).deserialize_cuda_engine(plan)
        self.context = self.engine.create_execution_context()
        names = [self.engine.get_tensor_name(i) for i in range(self.engine.num_io_tensors)]
        self.inputs = [n for n in names if self.engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT]
        self.outputs = [n for n in names if n not in self.inputs]
        self.stream = torch.cuda.Stream()

    def enqueue(self, *xs: torch.Tensor) -> torch.Tensor:
        dtypes = {self.trt.float32: torch.float32, self.trt.float16: torch.float16}
        keep = [x.detach().to("cuda", torch.float32).contiguous() for x in xs]
        for name, x in zip(self.inputs, keep):
            self.context.set_input_shape(name, tuple(x.shape))
            self.context.set_tensor_address(name, x.data_ptr())
        out = torch.empty(tuple(self.context.get_tensor_shape(self.outputs[0])),
                          dtype=dtypes.get(self.engine.get_tensor_dtype(self.outputs[0]), torch.float32), device="cuda")
        self.context.set_tensor_address(self.outputs[0], out.data_ptr())
        self.context.execute_async_v3(self.stream.cuda_stream)
        self._keep = keep
        return out

    def __call__(self, *xs: torch.Tensor) -> torch.Tensor:
        out = self.enqueue(*xs)
        self.stream.synchronize()
        return out.float().cpu()

    def time_ms(self, *xs: torch.Tensor, warmup: int = 20, runs: int = 200) -> list[float]:
        for _ in range(warmup):
            self(*xs)
        times = []
        for _ in range(runs):
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record(self.stream)
            self.enqueue(*xs)
            end.record(self.stream)
            end.synchronize()
            times.append(start.elapsed_time(end))
        return times


def build_and_verify(
    onnx_path: Path | str, plan_path: Path | str, candidate: nn.Module, example_inputs: tuple[torch.Tensor, ...],
    check_batches: list, precisions: Mapping[str, str], metric: Callable | None = None, eval_loader: Iterable | None = None,
) -> TensorRTEngine:
    """Build a TensorRT engine from ``onnx_path`` with ``precisions`` per layer, write it to
    ``plan_path``, load it back, compare it with ``candidate`` and time it."""
    import numpy as np

    from autocompress.export._onnx import compare_outputs
    from autocompress.task import as_input_tuple

    trt = require_tensorrt()
    prepared = prepare_onnx(onnx_path, candidate, precisions)
    batches = [as_input_tuple(b[0]) for b in check_batches] or [example_inputs]
    eval_batches = [(as_input_tuple(x), y) for x, y in (eval_loader or [])]
    max_batch = max([b[0].shape[0] for b in batches] + [x[0].shape[0] for x, _ in eval_batches] + [example_inputs[0].shape[0]])
    plan = _build(trt, prepared, max_batch, int(example_inputs[0].shape[0]))
    atomic_write_bytes(plan_path, plan)
    runner = _Runner(trt, Path(plan_path).read_bytes())

    parity = compare_outputs(candidate, runner, batches)
    max_abs, rel = parity.max_abs_error, parity.relative_error
    tolerance = (TENSORRT_INT8_TOLERANCE if prepared.has_qdq else TENSORRT_FP16_TOLERANCE if prepared.has_fp16
                 else TENSORRT_FP32_TOLERANCE)
    problems = [f"outputs differ from PyTorch by {rel:.3g} (relative), over the tolerance {tolerance}"] if rel > tolerance else []
    times = np.asarray(runner.time_ms(*example_inputs))
    runtime_metric = None
    if metric is not None and eval_batches:
        outs = torch.cat([runner(*x) for x, _ in eval_batches])
        runtime_metric = float(metric(outs, torch.cat([y for _, y in eval_batches])))
    return TensorRTEngine(
        path=str(plan_path), size_bytes=len(plan), sha256=hashlib.sha256(plan).hexdigest(), tolerance=tolerance,
        relative_error=rel, max_abs_error=max_abs, output_cosine=parity.output_cosine,
        latency_ms=float(np.median(times)), latency_p10_ms=float(np.percentile(times, 10)),
        latency_p90_ms=float(np.percentile(times, 90)), runtime_metric=runtime_metric,
        node_precisions=prepared.node_precisions, ok=not problems, problems=tuple(problems),
    )
