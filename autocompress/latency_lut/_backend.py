"""Latency measurement backends. A backend turns an ONNX model and inputs into a timing."""

from __future__ import annotations

import hashlib
import json
import platform
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Mapping, Protocol, Sequence

import numpy as np

__all__ = ["LatencyBackend", "Measurement", "OrtCpuBackend", "cpu_description", "profile_id"]


@dataclass(frozen=True)
class Measurement:
    """Wall time of one inference call, in microseconds, over ``runs`` timed calls."""

    median_us: float
    p10_us: float
    p90_us: float
    runs: int

    def to_dict(self) -> dict:
        return asdict(self)


class LatencyBackend(Protocol):
    """Measures inference latency on one target.

    ``profile()`` describes the target (device, runtime and version, provider, threads);
    tables measured under another profile are refused. ``measure`` is called with a
    serialized ONNX model and its feeds; it warms up, repeats and returns the statistics.
    ``measure_many`` interleaves several models round by round, so that slow drifts of a
    shared machine affect them alike.
    """

    name: str

    def profile(self) -> dict: ...

    def measure(self, model: bytes | Path, feeds: Mapping[str, np.ndarray]) -> Measurement: ...

    def measure_many(self, models: Sequence[tuple[bytes | Path, Mapping[str, np.ndarray]]], rounds: int = 5) -> list[Measurement]: ...


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


def profile_id(profile: Mapping) -> str:
    return hashlib.sha256(json.dumps(dict(profile), sort_keys=True).encode()).hexdigest()[:12]


def _stats(samples_s: list[float]) -> Measurement:
    us = np.asarray(samples_s) * 1e6
    return Measurement(float(np.median(us)), float(np.percentile(us, 10)), float(np.percentile(us, 90)), len(us))


class OrtCpuBackend:
    """ONNX Runtime on the CPU (CPUExecutionProvider), full graph optimisation.

    ``threads`` is part of the target: latency at 1 thread and at 8 differs in kind, not
    only in degree. Each measurement warms up, then times single calls until both
    ``min_runs`` calls and ``min_time_s`` seconds are reached; the median is kept.
    """

    name = "onnxruntime-cpu"

    def __init__(self, threads: int = 1, warmup: int = 10, min_runs: int = 30, min_time_s: float = 0.1, max_runs: int = 2000) -> None:
        if threads < 1:
            raise ValueError(f"`threads` must be >= 1, but got {threads!r}.")
        self.threads = threads
        self.warmup = warmup
        self.min_runs = min_runs
        self.min_time_s = min_time_s
        self.max_runs = max_runs

    def profile(self) -> dict:
        import onnxruntime as ort

        cpu, flags = cpu_description()
        return {
            "backend": self.name,
            "device": cpu,
            "cpu_flags": flags,
            "machine": platform.machine(),
            "runtime": "onnxruntime",
            "runtime_version": ort.__version__,
            "provider": "CPUExecutionProvider",
            "threads": self.threads,
            "graph_optimization": "ORT_ENABLE_ALL",
        }

    def session(self, model: bytes | Path, optimized_model_path: Path | None = None):
        import onnxruntime as ort

        so = ort.SessionOptions()
        so.intra_op_num_threads = self.threads
        so.inter_op_num_threads = 1
        so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        so.log_severity_level = 3
        if optimized_model_path is not None:
            so.optimized_model_filepath = str(optimized_model_path)
        source = model if isinstance(model, bytes) else str(model)
        return ort.InferenceSession(source, so, providers=["CPUExecutionProvider"])

    def _time(self, session, feeds: Mapping[str, np.ndarray], min_runs: int, min_time_s: float) -> list[float]:
        samples: list[float] = []
        start = time.perf_counter()
        while len(samples) < self.max_runs and (len(samples) < min_runs or time.perf_counter() - start < min_time_s):
            t0 = time.perf_counter()
            session.run(None, feeds)
            samples.append(time.perf_counter() - t0)
        return samples

    def measure(self, model: bytes | Path, feeds: Mapping[str, np.ndarray]) -> Measurement:
        session = self.session(model)
        for _ in range(self.warmup):
            session.run(None, feeds)
        return _stats(self._time(session, feeds, self.min_runs, self.min_time_s))

    def measure_many(self, models: Sequence[tuple[bytes | Path, Mapping[str, np.ndarray]]], rounds: int = 5) -> list[Measurement]:
        sessions = [(self.session(m), f) for m, f in models]
        for s, f in sessions:
            for _ in range(self.warmup):
                s.run(None, f)
        samples: list[list[float]] = [[] for _ in sessions]
        per_round_runs = max(1, -(-self.min_runs // rounds))  # ceil: at least min_runs in all
        for _ in range(rounds):
            for i, (s, f) in enumerate(sessions):
                samples[i].extend(self._time(s, f, per_round_runs, self.min_time_s / rounds))
        return [_stats(s) for s in samples]
