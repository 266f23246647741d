"""Eager PyTorch backends: the module itself on the CPU or an NVIDIA GPU (no ONNX).

For NVIDIA GPUs without TensorRT. The module runs as written: fake-quantized layers run
their simulation in float (no integer kernels), so eager latency rewards pruning and low
rank, and precision only through float16 layers.
"""

from __future__ import annotations

import copy
import time
from typing import Any

from autocompress.latency_lut._backend import LatencyBackend, Measurable, MeasurementError, Runner, Timing, cpu_profile, gpu_description

__all__ = ["TorchBackend", "TorchCpuBackend", "TorchCudaBackend", "torch_cuda_missing"]


class TorchBackend(LatencyBackend):
    """Times ``module(*inputs)`` under ``torch.inference_mode()`` on one device."""

    needs_module = True

    def __init__(self, threads: int = 1, warmup: int = 10, min_runs: int = 30, min_time_s: float = 0.1, max_runs: int = 2000,
                 batch_size: int = 1, device: int = 0) -> None:
        super().__init__(threads, batch_size, Timing(warmup, min_runs, min_time_s, max_runs))
        self.device = device

    def torch_device(self) -> Any:
        raise NotImplementedError

    def target_profile(self) -> dict:
        raise NotImplementedError

    def profile(self) -> dict:
        import torch

        return {
            "backend": self.name,
            **self.target_profile(),
            "runtime": "torch",
            "runtime_version": torch.__version__,
            "provider": f"eager-{self.torch_device().type}",
            "precisions": ["fp32", "fp16"],
            "batch_size": self.batch_size,
            "threads": self.threads,
        }

    def _place(self, item: Measurable) -> tuple[Any, tuple]:
        if item.module is None:
            raise MeasurementError(f"{self.name} runs the PyTorch module, and this request carries only an ONNX model.")
        device = self.torch_device()
        module = copy.deepcopy(item.module).eval().to(device)  # the caller's model stays where it is
        inputs = tuple(t.to(device) for t in item.inputs)
        try:
            self._call(module, inputs)
        except (RuntimeError, TypeError, ValueError) as exc:
            shapes = [tuple(t.shape) for t in inputs]
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise MeasurementError(f"the module rejected inputs of shapes {shapes}: {first}") from None
        return module, inputs

    def _call(self, module: Any, inputs: tuple) -> None:
        import torch

        with torch.inference_mode():
            module(*inputs)


class TorchCpuBackend(TorchBackend):
    """Eager PyTorch on the CPU with ``threads`` intra-op threads, timed with perf_counter."""

    name = "torch-cpu"

    def torch_device(self) -> Any:
        import torch

        return torch.device("cpu")

    def target_profile(self) -> dict:
        return cpu_profile()

    def prepare(self, item: Measurable) -> Runner:
        import torch

        module, inputs = self._place(item)
        threads = self.threads

        def run() -> float:
            previous = torch.get_num_threads()
            torch.set_num_threads(threads)
            try:
                with torch.inference_mode():
                    t0 = time.perf_counter()
                    module(*inputs)
                    return time.perf_counter() - t0
            finally:
                torch.set_num_threads(previous)

        return run


class TorchCudaBackend(TorchBackend):
    """Eager PyTorch on CUDA device ``device``, each call timed by CUDA events around it
    on the current stream and synchronized before the next one starts."""

    name = "torch-cuda"

    def torch_device(self) -> Any:
        import torch

        return torch.device("cuda", self.device)

    def target_profile(self) -> dict:
        import torch

        profile = gpu_description(self.device, torch.version.cuda)
        profile["gpu"] = profile["gpu"] or torch.cuda.get_device_name(self.device)
        return profile

    def prepare(self, item: Measurable) -> Runner:
        import torch

        module, inputs = self._place(item)
        device = self.torch_device()
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)

        def run() -> float:
            with torch.cuda.device(device), torch.inference_mode():
                torch.cuda.synchronize(device)
                start.record()
                module(*inputs)
                end.record()
                end.synchronize()
                return start.elapsed_time(end) / 1000.0  # ms -> s

        return run


def torch_cuda_missing(device: int) -> str | None:
    """Why eager CUDA timing cannot run here, or None."""
    import torch

    if not torch.cuda.is_available():
        build = "a CPU-only build" if torch.version.cuda is None else f"CUDA {torch.version.cuda}, but no usable GPU"
        return f"PyTorch {torch.__version__} is {build}: torch-cuda needs an NVIDIA GPU and a CUDA build of PyTorch"
    if not 0 <= device < torch.cuda.device_count():
        return f"there is no CUDA device {device} (found {torch.cuda.device_count()})"
    return None

