"""The latency backend contract: what a measurement request carries, what comes back, and
the timing loop every backend shares.

Lifecycle of a backend (see :class:`LatencyBackend`):

1. Construction fixes the target: runtime, provider or device, threads, batch size and
   the timing policy. Nothing heavy is imported before it is needed.
2. ``profile()`` describes that target as plain JSON data; a latency table is keyed by it,
   and a table measured under another profile is refused.
3. ``prepare(item)`` turns one :class:`Measurable` into a ready runner (an ONNX Runtime
   session, a TensorRT engine, a module on its device), checks the inputs against what the
   model expects, and returns a zero-argument call that runs one inference and returns its
   duration in seconds. A bad request raises :class:`MeasurementError`.
4. ``measure(item)`` prepares, warms up and times calls until ``min_runs`` calls and
   ``min_time_s`` seconds are both reached; ``measure_many(items, rounds)`` prepares all
   items first and then times them round by round, so that slow drifts of a shared
   machine affect them alike; each model's turn starts with a few untimed calls, since the
   model before it evicted its weights from the caches (an int8 MiniLM timed after its
   float original otherwise runs its first calls of every round cold). Both return :class:`Measurement` statistics.

A new backend implements ``profile`` and ``prepare``; the timing loop is shared.
"""

from __future__ import annotations

import hashlib
import json
import platform
import shutil
import subprocess
import time
from dataclasses import asdict, dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any, Callable, ClassVar, Mapping, Sequence

import numpy as np

__all__ = [
    "CPU_PROFILE_KEYS",
    "GPU_PROFILE_KEYS",
    "PROFILE_KEYS",
    "LatencyBackend",
    "Measurable",
    "Measurement",
    "MeasurementError",
    "Timing",
    "cpu_description",
    "gpu_description",
    "parse_nvidia_smi",
    "profile_id",
]

# Every profile has these keys; CPU targets add CPU_PROFILE_KEYS, GPU targets GPU_PROFILE_KEYS.
PROFILE_KEYS = ("backend", "device_kind", "device", "runtime", "runtime_version", "provider", "precisions", "batch_size", "threads")
CPU_PROFILE_KEYS = ("cpu_flags", "machine")
GPU_PROFILE_KEYS = ("gpu", "driver_version", "cuda_version", "compute_capability")

REWARM_RUNS = 2  # untimed calls at the start of each model's turn in measure_many


class MeasurementError(ValueError):
    """A measurement request the backend cannot run (wrong input shapes, missing module)."""


@dataclass(frozen=True)
class Measurement:
    """Wall time of one inference call, in microseconds, over ``runs`` timed calls."""

    median_us: float
    p10_us: float
    p90_us: float
    runs: int

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class Timing:
    """How long to measure: ``warmup`` untimed calls, then timed calls until both
    ``min_runs`` calls and ``min_time_s`` seconds are reached (at most ``max_runs``)."""

    warmup: int = 10
    min_runs: int = 30
    min_time_s: float = 0.1
    max_runs: int = 2000

    def __post_init__(self) -> None:
        if self.warmup < 0 or self.min_runs < 1 or self.min_time_s < 0 or self.max_runs < self.min_runs:
            raise ValueError(f"timing needs warmup >= 0, 1 <= min_runs <= max_runs and min_time_s >= 0, but got {self!r}.")


@dataclass(frozen=True)
class Measurable:
    """One model to time, in every form a backend may need.

    ``inputs`` are the example inputs at the target's batch size. ``module`` is the PyTorch
    model (eager backends run it; never modified). ``onnx`` is the serialized graph or a
    file; when absent it is exported from ``module`` on first use (``dynamic_batch``
    decides whether the batch axis stays symbolic) and kept.
    """

    inputs: tuple[Any, ...]
    module: Any = None
    onnx: bytes | Path | None = None
    dynamic_batch: bool = False
    names: tuple[str, ...] = field(default=())

    def __post_init__(self) -> None:
        if self.module is None and self.onnx is None:
            raise ValueError("a Measurable needs a PyTorch module, an ONNX model, or both.")

    @classmethod
    def from_module(cls, module: Any, inputs: Sequence[Any], dynamic_batch: bool = False) -> "Measurable":
        return cls(tuple(inputs), module=module, dynamic_batch=dynamic_batch)

    @classmethod
    def from_onnx(cls, model: bytes | Path | str, feeds: Mapping[str, np.ndarray]) -> "Measurable":
        """An ONNX model and its feeds (name -> array); eager backends cannot time it."""
        import torch

        onnx = Path(model) if isinstance(model, str) else model
        return cls(tuple(torch.from_numpy(np.asarray(v)) for v in feeds.values()), onnx=onnx, names=tuple(feeds))

    @property
    def input_names(self) -> tuple[str, ...]:
        from autocompress.latency_lut._onnx import input_names

        return self.names or tuple(input_names(len(self.inputs)))

    def feeds(self) -> dict[str, np.ndarray]:
        """The inputs as ONNX Runtime feeds (CPU numpy arrays)."""
        return {n: t.detach().cpu().numpy() for n, t in zip(self.input_names, self.inputs)}

    @cached_property
    def onnx_model(self) -> bytes | Path:
        """The ONNX graph, exported from ``module`` the first time it is asked for."""
        if self.onnx is not None:
            return self.onnx
        from autocompress.latency_lut._onnx import to_onnx_bytes

        return to_onnx_bytes(self.module, tuple(self.inputs), dynamic_batch=self.dynamic_batch)

    def onnx_bytes(self) -> bytes:
        model = self.onnx_model
        return model if isinstance(model, bytes) else Path(model).read_bytes()


Runner = Callable[[], float]  # runs one inference, returns its duration in seconds


class LatencyBackend:
    """Measures inference latency on one target (lifecycle in the module docstring).

    Subclasses set ``name`` (the factory's name for them) and implement ``profile()`` and
    ``prepare()``. ``needs_module`` is true for backends that run the PyTorch module
    itself and therefore cannot time an ONNX file alone.
    """

    name: ClassVar[str] = ""
    needs_module: ClassVar[bool] = False

    def __init__(self, threads: int = 1, batch_size: int = 1, timing: Timing = Timing()) -> None:
        if threads < 1:
            raise ValueError(f"`threads` must be >= 1, but got {threads!r}.")
        if batch_size < 1:
            raise ValueError(f"`batch_size` must be >= 1, but got {batch_size!r}.")
        self.threads = threads
        self.batch_size = batch_size
        self.timing = timing

    # Timing settings under their historical attribute names.
    @property
    def warmup(self) -> int:
        return self.timing.warmup

    @property
    def min_runs(self) -> int:
        return self.timing.min_runs

    @property
    def min_time_s(self) -> float:
        return self.timing.min_time_s

    def profile(self) -> dict:
        raise NotImplementedError

    def prepare(self, item: Measurable) -> Runner:
        raise NotImplementedError

    def measure(self, item: Measurable | bytes | Path, feeds: Mapping[str, np.ndarray] | None = None) -> Measurement:
        """Time one model. An ONNX model and its feeds may be given instead of a Measurable."""
        return self.time_prepared(self.prepare(_as_measurable(item, feeds)), warmup=self.timing.warmup)

    def time_prepared(self, run: Runner, warmup: int = REWARM_RUNS, min_time_s: float | None = None) -> Measurement:
        """Time a model ``prepare`` returned, after ``warmup`` untimed calls, for
        ``min_time_s`` seconds (default: the timing's) and at least ``min_runs`` calls."""
        for _ in range(warmup):
            run()
        return _stats(self._time(run, self.timing.min_runs, self.timing.min_time_s if min_time_s is None else min_time_s))

    def measure_many(self, items: Sequence[Measurable | tuple[bytes | Path, Mapping[str, np.ndarray]]], rounds: int = 5) -> list[Measurement]:
        """Time several models interleaved round by round; one result per item, in order."""
        runners = [self.prepare(_as_measurable(*i) if isinstance(i, tuple) else i) for i in items]
        for run in runners:
            for _ in range(self.timing.warmup):
                run()
        samples: list[list[float]] = [[] for _ in runners]
        per_round_runs = max(1, -(-self.timing.min_runs // rounds))  # ceil: at least min_runs in all
        for _ in range(rounds):
            for i, run in enumerate(runners):
                for _ in range(REWARM_RUNS):  # the previous model evicted this one's weights from the caches
                    run()
                samples[i].extend(self._time(run, per_round_runs, self.timing.min_time_s / rounds))
        return [_stats(s) for s in samples]

    def _time(self, run: Runner, min_runs: int, min_time_s: float) -> list[float]:
        samples: list[float] = []
        start = time.perf_counter()
        while len(samples) < self.timing.max_runs and (len(samples) < min_runs or time.perf_counter() - start < min_time_s):
            samples.append(run())
        return samples


def _as_measurable(item: Measurable | bytes | Path, feeds: Mapping[str, np.ndarray] | None = None) -> Measurable:
    if isinstance(item, Measurable):
        return item
    if feeds is None:
        raise MeasurementError("an ONNX model needs its feeds; pass a Measurable or (model, feeds).")
    return Measurable.from_onnx(item, feeds)


def _stats(samples_s: list[float]) -> Measurement:
    us = np.asarray(samples_s) * 1e6
    return Measurement(float(np.median(us)), float(np.percentile(us, 10)), float(np.percentile(us, 90)), len(us))


def check_shapes(expected: Sequence[tuple[str, Sequence[Any]]], given: Mapping[str, np.ndarray]) -> None:
    """Compare feeds with a model's declared inputs (symbolic dimensions match anything)."""
    names = [n for n, _ in expected]
    if sorted(names) != sorted(given):
        raise MeasurementError(f"the model's inputs are {names}, but the feeds are {sorted(given)}.")
    for name, dims in expected:
        shape = tuple(given[name].shape)
        if len(dims) != len(shape) or any(isinstance(d, int) and d > 0 and d != s for d, s in zip(dims, shape)):
            raise MeasurementError(f"input {name!r} has shape {shape}, but the model expects {tuple(dims)}.")


def cpu_description() -> tuple[str, list[str]]:
    """CPU model name and the instruction-set flags that change which kernels run."""
    model, flags = platform.processor() or platform.machine(), set()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name") and ":" in line:
                model = line.split(":", 1)[1].strip()
            elif line.startswith("flags") and ":" in line:
                flags = set(line.split(":", 1)[1].split())
    except OSError:
        pass
    relevant = ["avx2", "fma", "avx512f", "avx512bw", "avx512_vnni", "avx_vnni", "avx512_bf16", "avx512_fp16", "amx_bf16", "amx_int8", "amx_tile"]
    return model, [f for f in relevant if f in flags]


def cpu_profile() -> dict:
    """The CPU part of a profile: model name, ISA flags, machine."""
    cpu, flags = cpu_description()
    return {"device_kind": "cpu", "device": cpu, "cpu_flags": flags, "machine": platform.machine()}


def parse_nvidia_smi(csv_text: str, index: int) -> dict:
    """GPU ``index``'s name, driver and compute capability from the output of
    ``nvidia-smi --query-gpu=index,name,driver_version,compute_cap --format=csv,noheader``."""
    for line in csv_text.strip().splitlines():
        parts = [p.strip() for p in line.split(",")]
        if len(parts) >= 3 and parts[0] == str(index):
            return {"gpu": parts[1], "driver_version": parts[2], "compute_capability": parts[3] if len(parts) > 3 else None}
    raise MeasurementError(f"nvidia-smi lists no GPU with index {index}.")


def gpu_description(index: int, cuda_version: str | None) -> dict:
    """The GPU part of a profile, from nvidia-smi (the driver's view of the device)."""
    smi = shutil.which("nvidia-smi")
    if smi is None:
        raise MeasurementError("nvidia-smi is not on PATH: no NVIDIA driver on this machine.")
    for fields in ("index,name,driver_version,compute_cap", "index,name,driver_version"):  # older drivers lack compute_cap
        out = subprocess.run([smi, f"--query-gpu={fields}", "--format=csv,noheader"], capture_output=True, text=True, timeout=30)
        if out.returncode == 0:
            break
    else:
        raise MeasurementError(f"nvidia-smi failed: {(out.stderr or out.stdout).strip()[:200]!r}")
    gpu = parse_nvidia_smi(out.stdout, index)
    return {"device_kind": "cuda", "device": f"cuda:{index}", **gpu, "cuda_version": cuda_version}


def profile_id(profile: Mapping) -> str:
    return hashlib.sha256(json.dumps(dict(profile), sort_keys=True).encode()).hexdigest()[:12]
