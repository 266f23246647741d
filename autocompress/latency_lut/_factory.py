"""make_backend(): a latency backend by name, or a one-line error saying what is missing."""

from __future__ import annotations

from typing import Any, Callable, Mapping

from autocompress.errors import UserError
from autocompress.latency_lut._backend import LatencyBackend, Timing
from autocompress.latency_lut._ort import OrtCpuBackend, OrtCudaBackend, OrtTensorrtBackend, ort_gpu_missing
from autocompress.latency_lut._tensorrt import TensorRTBackend, tensorrt_missing
from autocompress.latency_lut._torch import TorchCpuBackend, TorchCudaBackend, torch_cuda_missing

__all__ = ["BACKENDS", "DEFAULT_BACKEND", "backend_for_profile", "backend_missing", "check_backend_name", "make_backend"]

DEFAULT_BACKEND = "onnxruntime-cpu"
BACKENDS: dict[str, type[LatencyBackend]] = {
    "onnxruntime-cpu": OrtCpuBackend,
    "onnxruntime-cuda": OrtCudaBackend,
    "onnxruntime-tensorrt": OrtTensorrtBackend,
    "tensorrt": TensorRTBackend,
    "torch-cpu": TorchCpuBackend,
    "torch-cuda": TorchCudaBackend,
}

_MISSING: dict[str, Callable[[int], str | None]] = {
    "onnxruntime-cpu": lambda device: None,
    "onnxruntime-cuda": lambda device: ort_gpu_missing("CUDAExecutionProvider") or torch_free_gpu_missing(device),
    "onnxruntime-tensorrt": lambda device: ort_gpu_missing("TensorrtExecutionProvider") or torch_free_gpu_missing(device),
    "tensorrt": lambda device: tensorrt_missing(),
    "torch-cpu": lambda device: None,
    "torch-cuda": torch_cuda_missing,
}


def torch_free_gpu_missing(device: int) -> str | None:
    """Whether the NVIDIA driver sees GPU ``device`` (ONNX Runtime needs no CUDA PyTorch)."""
    from autocompress.latency_lut._backend import MeasurementError, gpu_description

    try:
        gpu_description(device, None)
    except (MeasurementError, OSError) as exc:
        return f"no NVIDIA GPU here ({exc})"
    return None


def backend_missing(name: str, device: int = 0) -> str | None:
    """Why backend ``name`` cannot run on this machine, or None when it can."""
    check_backend_name(name)
    return _MISSING[name](device)


def check_backend_name(name: str) -> None:
    """UserError for a name that is not in BACKENDS, listing those that are."""
    if name not in BACKENDS:
        raise UserError(f"Unknown latency backend {name!r}; choose one of {list(BACKENDS)}.")


def make_backend(name: str = DEFAULT_BACKEND, threads: int = 1, device: int = 0, batch_size: int = 1, timing: Timing = Timing()) -> LatencyBackend:
    """The backend called ``name`` for this target, ready to measure.

    Raises UserError for an unknown name (listing the valid ones) and for a backend this
    machine cannot run (saying what is missing: a GPU, a package)."""
    check_backend_name(name)
    if threads < 1:
        raise UserError(f"--threads must be at least 1, but got {threads}.")
    if device < 0:
        raise UserError(f"The GPU index must be at least 0, but got {device}.")
    missing = _MISSING[name](device)
    if missing:
        raise UserError(f"The {name} latency backend cannot run here: {missing}.")
    return BACKENDS[name](threads=threads, warmup=timing.warmup, min_runs=timing.min_runs, min_time_s=timing.min_time_s,
                          max_runs=timing.max_runs, batch_size=batch_size, device=device)


def backend_for_profile(profile: Mapping[str, Any], batch_size: int) -> LatencyBackend:
    """The backend that measured a run whose target profile is ``profile`` (its name and
    threads), so later timings of that run are taken the same way."""
    return make_backend(profile.get("backend", DEFAULT_BACKEND), threads=int(profile.get("threads", 1)), batch_size=batch_size)
