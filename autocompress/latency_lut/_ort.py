"""ONNX Runtime backends: CPU (the default target), CUDA and TensorRT execution providers."""

from __future__ import annotations

import time
from pathlib import Path
from typing import ClassVar

import numpy as np

from autocompress.latency_lut._backend import LatencyBackend, Measurable, MeasurementError, Runner, Timing, check_shapes, cpu_profile, gpu_description

__all__ = ["OrtBackend", "OrtCpuBackend", "OrtCudaBackend", "OrtTensorrtBackend", "ort_gpu_missing"]


def ort_gpu_missing(provider: str) -> str | None:
    """Why ``provider`` cannot be used here, or None when this onnxruntime offers it."""
    try:
        import onnxruntime as ort
    except ImportError:
        return "onnxruntime is not installed: pip install onnxruntime-gpu"
    available = ort.get_available_providers()
    if provider not in available:
        return (f"this onnxruntime offers {available}, not {provider}: install onnxruntime-gpu "
                "(it replaces onnxruntime; never install both) on a machine with an NVIDIA GPU")
    return None


class OrtBackend(LatencyBackend):
    """ONNX Runtime with full graph optimisation on one execution provider.

    ``threads`` (intra-op threads) and the batch size are part of the target: latency at
    1 thread and at 8 differs in kind, not only in degree.
    """

    provider: ClassVar[str] = "CPUExecutionProvider"

    def __init__(self, threads: int = 1, warmup: int = 10, min_runs: int = 30, min_time_s: float = 0.1, max_runs: int = 2000,
                 batch_size: int = 1, device: int = 0) -> None:
        super().__init__(threads, batch_size, Timing(warmup, min_runs, min_time_s, max_runs))
        self.device = device

    def precisions(self) -> list[str]:
        return ["fp32", "fp16", "int8", "int4"]

    def provider_options(self, model: bytes | Path) -> list:
        return ["CPUExecutionProvider"]

    def target_profile(self) -> dict:
        return cpu_profile()

    def profile(self) -> dict:
        import onnxruntime as ort

        return {
            "backend": self.name,
            **self.target_profile(),
            "runtime": "onnxruntime",
            "runtime_version": ort.__version__,
            "provider": self.provider,
            "precisions": self.precisions(),
            "batch_size": self.batch_size,
            "threads": self.threads,
            "graph_optimization": "ORT_ENABLE_ALL",
        }

    def session_options(self):
        """The options every session of this target runs with (threads, optimization level)."""
        import onnxruntime as ort

        so = ort.SessionOptions()
        so.intra_op_num_threads = self.threads
        so.inter_op_num_threads = 1
        so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        so.log_severity_level = 3
        return so

    def session(self, model: bytes | Path, optimized_model_path: Path | None = None):
        import onnxruntime as ort

        so = self.session_options()
        if optimized_model_path is not None:
            so.optimized_model_filepath = str(optimized_model_path)
        source = model if isinstance(model, bytes) else str(model)
        session = ort.InferenceSession(source, so, providers=self.provider_options(model))
        if self.provider not in session.get_providers():  # ONNX Runtime falls back silently
            raise MeasurementError(f"ONNX Runtime could not start {self.provider} (it ran {session.get_providers()}).")
        return session

    def prepare(self, item: Measurable) -> Runner:
        session = self.session(item.onnx_model)
        feeds = item.feeds()
        check_shapes([(i.name, i.shape) for i in session.get_inputs()], feeds)

        def run() -> float:
            t0 = time.perf_counter()
            session.run(None, feeds)
            return time.perf_counter() - t0

        return run


class OrtCpuBackend(OrtBackend):
    """ONNX Runtime on the CPU (CPUExecutionProvider): the default target."""

    name = "onnxruntime-cpu"


class OrtCudaBackend(OrtBackend):
    """ONNX Runtime on an NVIDIA GPU (CUDAExecutionProvider, from onnxruntime-gpu).

    Inputs and outputs are bound on the device (I/O binding), so a timed call is the
    graph's execution, not host-device copies; ONNX Runtime synchronizes the device at
    the end of every run, so wall time covers the kernels."""

    name = "onnxruntime-cuda"
    provider = "CUDAExecutionProvider"

    def precisions(self) -> list[str]:
        return ["fp32", "fp16", "int8"]

    def provider_options(self, model: bytes | Path) -> list:
        return [(self.provider, {"device_id": self.device}), "CPUExecutionProvider"]

    def target_profile(self) -> dict:
        from onnxruntime.capi import build_and_package_info

        return gpu_description(self.device, getattr(build_and_package_info, "cuda_version", None))

    def prepare(self, item: Measurable) -> Runner:
        import onnxruntime as ort

        session = self.session(item.onnx_model)
        feeds = item.feeds()
        check_shapes([(i.name, i.shape) for i in session.get_inputs()], feeds)
        binding = session.io_binding()
        for name, array in feeds.items():
            binding.bind_ortvalue_input(name, ort.OrtValue.ortvalue_from_numpy(np.ascontiguousarray(array), "cuda", self.device))
        for out in session.get_outputs():
            binding.bind_output(out.name, "cuda", self.device)

        def run() -> float:
            t0 = time.perf_counter()
            session.run_with_iobinding(binding)
            return time.perf_counter() - t0

        return run


class OrtTensorrtBackend(OrtCudaBackend):
    """ONNX Runtime's TensorRT execution provider (nodes it cannot take fall back to CUDA).

    Engines are built on the first call of a session (the warm-up), with FP16 kernels
    allowed, and INT8 where the graph carries Q/DQ scales (without them TensorRT would
    want a calibration table)."""

    name = "onnxruntime-tensorrt"
    provider = "TensorrtExecutionProvider"

    def provider_options(self, model: bytes | Path) -> list:
        trt = {"device_id": self.device, "trt_fp16_enable": True, "trt_int8_enable": has_qdq(model)}
        return [(self.provider, trt), ("CUDAExecutionProvider", {"device_id": self.device}), "CPUExecutionProvider"]



def has_qdq(model: bytes | Path) -> bool:
    """Whether the graph quantizes explicitly (QuantizeLinear nodes carry the int8 scales)."""
    import onnx

    proto = onnx.load_from_string(model) if isinstance(model, bytes) else onnx.load(str(model))
    return any(n.op_type == "QuantizeLinear" for n in proto.graph.node)
