"""Native TensorRT: each model is parsed from ONNX, built into an engine with TensorRT's
Python API (imported lazily), and timed with CUDA events on a PyTorch CUDA stream.

What does not need TensorRT itself is plain functions, tested everywhere: preparing the
ONNX graph (static input shapes, no ONNX Runtime-only operators), the optimization
profile's shapes, the target profile, and reading the built engine's layer information.
"""

from __future__ import annotations

import json
from collections import Counter
from typing import Any, Mapping, Sequence

import numpy as np

from autocompress.latency_lut._backend import LatencyBackend, Measurable, MeasurementError, Runner, Timing, gpu_description

__all__ = [
    "TENSORRT_PRECISIONS",
    "TensorRTBackend",
    "engine_layer_summary",
    "optimization_shapes",
    "prepare_onnx_for_tensorrt",
    "tensorrt_missing",
    "tensorrt_profile",
]

TENSORRT_PRECISIONS = ("fp32", "fp16", "int8")
WORKSPACE_BYTES = 1 << 30
# TensorRT I/O data types by enum name, and the PyTorch dtype that holds them.
_TORCH_DTYPES = {"FLOAT": "float32", "HALF": "float16", "BF16": "bfloat16", "INT8": "int8", "UINT8": "uint8",
                 "INT32": "int32", "INT64": "int64", "BOOL": "bool"}


def tensorrt_missing() -> str | None:
    """Why native TensorRT cannot run here, or None."""
    try:
        import tensorrt  # noqa: F401
    except ImportError:
        return "the `tensorrt` package is not importable: install TensorRT's Python bindings (pip install tensorrt) on a machine with an NVIDIA GPU"
    from autocompress.latency_lut._torch import torch_cuda_missing

    missing = torch_cuda_missing(0)
    return f"TensorRT buffers and streams come from PyTorch, and {missing}" if missing else None


def prepare_onnx_for_tensorrt(data: bytes, feeds: Mapping[str, np.ndarray]) -> bytes:
    """The graph TensorRT builds: symbolic input dimensions fixed to the feeds' shapes.

    Raises :class:`MeasurementError` for inputs the graph does not declare, shapes that
    contradict it, and ONNX Runtime contrib operators (dynamic int8 MatMul, 4-bit
    MatMulNBits), which TensorRT's ONNX parser does not know."""
    import onnx

    model = onnx.load_from_string(data)
    contrib = sorted({n.op_type for n in model.graph.node if n.domain not in ("", "ai.onnx")})
    if contrib:
        raise MeasurementError(f"TensorRT cannot run ONNX Runtime's operators {contrib}; keep such layers (int4, dynamic int8) out of a TensorRT search.")
    initializers = {t.name for t in model.graph.initializer}
    graph_inputs = [i for i in model.graph.input if i.name not in initializers]
    if sorted(i.name for i in graph_inputs) != sorted(feeds):
        raise MeasurementError(f"the model's inputs are {[i.name for i in graph_inputs]}, but the feeds are {sorted(feeds)}.")
    for graph_input in graph_inputs:
        shape = tuple(feeds[graph_input.name].shape)
        dims = graph_input.type.tensor_type.shape.dim
        if len(dims) != len(shape):
            raise MeasurementError(f"input {graph_input.name!r} has shape {shape}, but the model expects rank {len(dims)}.")
        declared = tuple(d.dim_value if d.HasField("dim_value") else d.dim_param for d in dims)
        if any(isinstance(d, int) and d != size for d, size in zip(declared, shape)):
            raise MeasurementError(f"input {graph_input.name!r} has shape {shape}, but the model expects {declared}.")
        for dim, size in zip(dims, shape):
            dim.Clear()
            dim.dim_value = size
    return model.SerializeToString()


def optimization_shapes(feeds: Mapping[str, np.ndarray]) -> dict[str, tuple[tuple[int, ...], tuple[int, ...], tuple[int, ...]]]:
    """(min, opt, max) per input for the builder's optimization profile: the target's
    batch size is fixed, so all three are the feed's shape."""
    return {name: (tuple(a.shape),) * 3 for name, a in feeds.items()}


def tensorrt_profile(name: str, version: str, gpu: Mapping[str, Any], precisions: Sequence[str], batch_size: int, threads: int) -> dict:
    return {
        "backend": name, **gpu, "runtime": "tensorrt", "runtime_version": version, "provider": "tensorrt-builder",
        "precisions": list(precisions), "batch_size": batch_size, "threads": threads,
    }


def engine_layer_summary(information: str) -> dict:
    """Layer count and output precisions from an engine inspector's JSON
    (``get_engine_information(LayerInformationFormat.JSON)``, detailed verbosity)."""
    try:
        data = json.loads(information)
    except ValueError:
        raise MeasurementError("TensorRT's engine information is not JSON.") from None
    layers = data.get("Layers", []) if isinstance(data, dict) else []
    precisions: Counter = Counter()
    kinds: Counter = Counter()
    for layer in layers:
        if not isinstance(layer, dict):  # layer names only, without detailed verbosity
            continue
        kinds[layer.get("LayerType", "unknown")] += 1
        for out in layer.get("Outputs", []):
            fmt = str(out.get("Format/Datatype", ""))
            precisions[next((p for p in ("Int8", "FP16", "BF16", "FP32", "Int32", "Int64") if p.lower() in fmt.lower()), "other")] += 1
    return {"layers": len(layers), "layer_types": dict(kinds), "output_precisions": dict(precisions)}


class TensorRTBackend(LatencyBackend):
    """Engines built by TensorRT's builder from each model's ONNX graph.

    ``precisions`` are the builder flags allowed (fp32 always; fp16 and int8 let TensorRT
    choose those kernels, int8 only where Q/DQ nodes give scales). The target's batch
    size is fixed in the optimization profile."""

    name = "tensorrt"

    def __init__(self, threads: int = 1, warmup: int = 10, min_runs: int = 30, min_time_s: float = 0.1, max_runs: int = 2000,
                 batch_size: int = 1, device: int = 0, precisions: Sequence[str] = TENSORRT_PRECISIONS) -> None:
        super().__init__(threads, batch_size, Timing(warmup, min_runs, min_time_s, max_runs))
        unknown = sorted(set(precisions) - set(TENSORRT_PRECISIONS))
        if unknown or "fp32" not in precisions:
            raise ValueError(f"TensorRT precisions must include fp32 and be among {list(TENSORRT_PRECISIONS)}, but got {list(precisions)}.")
        self.device = device
        self.precisions = tuple(p for p in TENSORRT_PRECISIONS if p in precisions)
        self.last_engine: dict = {}

    def profile(self) -> dict:
        import tensorrt as trt
        import torch

        return tensorrt_profile(self.name, trt.__version__, gpu_description(self.device, torch.version.cuda), self.precisions,
                                self.batch_size, self.threads)

    def build(self, data: bytes, feeds: Mapping[str, np.ndarray]) -> Any:
        """Parse, configure and build; returns the deserialized engine."""
        import tensorrt as trt

        logger = trt.Logger(trt.Logger.WARNING)
        builder = trt.Builder(logger)
        network = builder.create_network(0)  # explicit batch is the only mode in TensorRT 10
        parser = trt.OnnxParser(network, logger)
        if not parser.parse(prepare_onnx_for_tensorrt(data, feeds)):
            errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
            raise MeasurementError(f"TensorRT's ONNX parser failed: {errors}")
        config = builder.create_builder_config()
        config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, WORKSPACE_BYTES)
        config.profiling_verbosity = trt.ProfilingVerbosity.DETAILED
        if "fp16" in self.precisions:
            config.set_flag(trt.BuilderFlag.FP16)
        if "int8" in self.precisions:
            config.set_flag(trt.BuilderFlag.INT8)
        profile = builder.create_optimization_profile()
        for name, (lo, opt, hi) in optimization_shapes(feeds).items():
            profile.set_shape(name, lo, opt, hi)
        config.add_optimization_profile(profile)
        serialized = builder.build_serialized_network(network, config)
        if serialized is None:
            raise MeasurementError("TensorRT's builder returned no engine (see its log above).")
        engine = trt.Runtime(logger).deserialize_cuda_engine(serialized)
        inspector = engine.create_engine_inspector()
        self.last_engine = engine_layer_summary(inspector.get_engine_information(trt.LayerInformationFormat.JSON))
        return engine

    def prepare(self, item: Measurable) -> Runner:
        import tensorrt as trt
        import torch

        feeds = item.feeds()
        engine = self.build(item.onnx_bytes(), feeds)
        context = engine.create_execution_context()
        device = torch.device("cuda", self.device)
        buffers = []  # kept alive as long as the runner
        for i in range(engine.num_io_tensors):
            name = engine.get_tensor_name(i)
            if engine.get_tensor_mode(name) == trt.TensorIOMode.INPUT:
                tensor = torch.from_numpy(np.ascontiguousarray(feeds[name])).to(device)
                context.set_input_shape(name, tuple(tensor.shape))
            else:
                dtype = getattr(torch, _TORCH_DTYPES[engine.get_tensor_dtype(name).name])
                tensor = torch.empty(tuple(context.get_tensor_shape(name)), dtype=dtype, device=device)
            buffers.append(tensor)
            context.set_tensor_address(name, tensor.data_ptr())
        stream = torch.cuda.Stream(device)
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)

        def run() -> float:
            _ = buffers
            start.record(stream)
            if not context.execute_async_v3(stream.cuda_stream):
                raise MeasurementError("TensorRT's execution context failed to enqueue the engine.")
            end.record(stream)
            end.synchronize()
            return start.elapsed_time(end) / 1000.0

        return run

