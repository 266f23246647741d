from __future__ import annotations

import hashlib
import tempfile
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, Iterable, Mapping

import onnx
import torch
from torch import nn

from autocompress._io import atomic_write_bytes
from autocompress.compress import DynamicQuantLinear, HalfPrecision, Int4Linear, QuantConv2d, QuantLinear
from autocompress.latency_lut import LatencyBackend, Measurable, Measurement, OrtBackend, OrtCpuBackend, feeds_for, to_onnx_bytes
from autocompress.task import as_input_tuple

__all__ = ["INTEGER_OPS", "Engine", "Parity", "compare_outputs", "export_engine", "optimized_op_counts"]

INTEGER_OPS = ("QLinearConv", "ConvInteger", "QGemm", "QLinearMatMul", "MatMulInteger", "MatMulIntegerToFloat", "MatMulNBits", "DynamicQuantizeMatMul")
# A float engine must match PyTorch to float rounding; a float16 one to half-precision
# rounding; an integer engine may differ by a few quantization steps where the runtime's
# requantization rounds differently.
FP32_TOLERANCE = 1e-3
FP16_TOLERANCE = 1e-2
INT8_TOLERANCE = 0.1
# Dynamic int8 and 4-bit layers derive activation scales at run time in the runtime's own
# float arithmetic, so rounding flips add up across layers; such engines must also agree
# with PyTorch in direction (mean cosine similarity of the outputs of each input).
RUNTIME_QUANT_TOLERANCE = 0.2
MIN_OUTPUT_COSINE = 0.99


@dataclass(frozen=True)
class Engine:
    """An exported, verified engine. Errors are relative: max |ort - torch| / max |torch|;
    ``output_cosine`` is the mean cosine similarity of ORT's and PyTorch's output per input."""

    path: str
    format: str
    size_bytes: int
    sha256: str
    max_abs_error: float
    relative_error: float
    tolerance: float
    top1_agreement: float | None
    output_cosine: float
    int8_layers: int
    integer_nodes: dict = field(default_factory=dict)
    latency_us: float = 0.0
    latency_p10_us: float = 0.0
    latency_p90_us: float = 0.0
    original_latency_us: float | None = None  # the original model, timed in the same rounds (when given)
    tracker_latency_us: float | None = None  # the space's most compressed model, timed in the same rounds (when given)
    runtime_metric: float | None = None
    runtime_extra_metrics: dict = field(default_factory=dict)
    ok: bool = True
    problems: tuple[str, ...] = ()

    def to_dict(self) -> dict:
        d = asdict(self)
        d["problems"] = list(self.problems)
        return d


def optimized_op_counts(model: bytes | Path, backend: OrtCpuBackend) -> Counter:
    """Op types in the graph ONNX Runtime actually runs (after its fusions)."""
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "optimized.onnx"
        backend.session(model, optimized_model_path=out)
        graph = onnx.load(str(out)).graph
        return Counter(n.op_type for n in graph.node)


def _int8_layer_count(model: nn.Module) -> int:
    """Layers that must run as integer kernels (int8, and 4-bit weights)."""
    return sum(isinstance(m, (QuantConv2d, QuantLinear, DynamicQuantLinear, Int4Linear)) for m in model.modules())


@dataclass(frozen=True)
class Parity:
    """An engine's outputs against the PyTorch model's on the same inputs: the largest
    absolute difference, that over the largest PyTorch output, the mean cosine similarity
    of the outputs of each input, and top-1 agreement where the outputs are class scores."""

    max_abs_error: float
    relative_error: float
    output_cosine: float
    top1_agreement: float | None


def compare_outputs(model: nn.Module, run_engine: Callable[..., torch.Tensor], inputs_list: Iterable[tuple]) -> Parity:
    """Run ``model`` and the engine (``run_engine(*inputs)``) on every input tuple; compare."""
    max_abs, ref_max, agree, total, cosines = 0.0, 0.0, 0, 0, []
    with torch.no_grad():
        for inputs in inputs_list:
            ref = model(*inputs)
            ref = ref[0] if isinstance(ref, (tuple, list)) else ref
            got = run_engine(*inputs)
            max_abs = max(max_abs, float((got - ref).abs().max()))
            ref_max = max(ref_max, float(ref.abs().max()))
            cosines.append(torch.nn.functional.cosine_similarity(got.flatten(1).double(), ref.flatten(1).double(), dim=1))
            if ref.dim() == 2 and ref.shape[1] > 1:
                agree += int((got.argmax(1) == ref.argmax(1)).sum())
                total += ref.shape[0]
    return Parity(max_abs, max_abs / max(ref_max, 1e-12), float(torch.cat(cosines).mean()), agree / total if total else None)


def export_engine(
    model: nn.Module,
    example_inputs: tuple[torch.Tensor, ...],
    path: Path,
    backend: LatencyBackend,
    check_batches: Iterable | None = None,
    metric: Callable[[torch.Tensor, torch.Tensor], float] | None = None,
    eval_loader: Iterable | None = None,
    extra_metrics: Mapping[str, Callable[[torch.Tensor, torch.Tensor], float]] | None = None,
    original: Measurable | None = None,
    tracker: Measurable | None = None,
    time_beside: Callable[[list[Measurable]], list[Measurement]] | None = None,
) -> Engine:
    """Export ``model`` to ONNX at ``path`` (dynamic batch), then verify and time it.

    With ``eval_loader``, ``metric`` and each of ``extra_metrics`` are computed from the
    engine's own outputs in ONNX Runtime. With ``original``, the engine is timed round by
    round with the original model, whose latency in those rounds is kept beside its own
    (the speedup of the moment); with ``tracker`` too, so is the tracker's, a model whose
    speed moves with the engine's when the machine's does (see `study.latency_at_start_us`).
    ``time_beside(items)`` times them in rounds (by default ``backend.measure_many``, 5 rounds);
    a search passes one that times again in a passing disturbance (`QuietTimer`)."""
    model = model.eval()
    data = to_onnx_bytes(model, example_inputs, dynamic_batch=True)
    atomic_write_bytes(path, data)
    int8_layers = _int8_layer_count(model)
    problems: list[str] = []

    # The engine is ONNX whatever the target: check it in the target's ONNX Runtime, or in
    # ONNX Runtime on the CPU where the target runs something else.
    checker = backend if isinstance(backend, OrtBackend) else OrtCpuBackend(threads=1)
    session = checker.session(data)
    ort_run = lambda *xs: torch.from_numpy(session.run(None, feeds_for(tuple(xs)))[0])  # noqa: E731

    # Parity on held-out inputs.
    inputs_list = [as_input_tuple(b[0]) for b in (check_batches or [])] or [example_inputs]
    parity = compare_outputs(model, ort_run, inputs_list)
    max_abs, rel = parity.max_abs_error, parity.relative_error
    half = any(isinstance(m, HalfPrecision) for m in model.modules())
    runtime_quant = any(isinstance(m, (DynamicQuantLinear, Int4Linear)) for m in model.modules())
    tolerance = (RUNTIME_QUANT_TOLERANCE if runtime_quant else INT8_TOLERANCE if int8_layers
                 else FP16_TOLERANCE if half else FP32_TOLERANCE)
    if rel > tolerance:
        problems.append(f"outputs differ from PyTorch by {rel:.3g} (relative), over the tolerance {tolerance}")
    output_cosine = parity.output_cosine
    if int8_layers and output_cosine < MIN_OUTPUT_COSINE:
        problems.append(f"outputs point away from PyTorch's (mean cosine {output_cosine:.4f} < {MIN_OUTPUT_COSINE})")

    counts: dict = {}
    if isinstance(checker, OrtCpuBackend):
        ops = optimized_op_counts(data, checker)
        counts = {k: v for k, v in ops.items() if k in INTEGER_OPS}
        if int8_layers and sum(counts.values()) < int8_layers:
            problems.append(f"only {sum(counts.values())} of {int8_layers} int8 layers run as integer kernels")

    engine_item = Measurable(tuple(example_inputs), module=model, onnx=data, dynamic_batch=True)
    beside = [m for m in (original, tracker) if m is not None]
    time_beside = time_beside or (lambda items: backend.measure_many(items, rounds=5))
    *beside_timings, timing = time_beside([*beside, engine_item]) if beside else [backend.measure(engine_item)]
    beside_us = iter(t.median_us for t in beside_timings)
    original_us = next(beside_us) if original is not None else None
    tracker_us = next(beside_us) if tracker is not None else None
    runtime_metric, runtime_extra = None, {}
    if metric is not None and eval_loader is not None:
        outs, targets = [], []
        for inputs, target in eval_loader:
            outs.append(ort_run(*as_input_tuple(inputs)))
            targets.append(target)
        outputs, target_all = torch.cat(outs), torch.cat(targets)
        runtime_metric = float(metric(outputs, target_all))
        runtime_extra = {name: float(fn(outputs, target_all)) for name, fn in (extra_metrics or {}).items()}
    return Engine(
        path=str(path),
        format="onnx-int8" if int8_layers else "onnx",
        size_bytes=len(data),
        sha256=hashlib.sha256(data).hexdigest(),
        max_abs_error=max_abs,
        relative_error=rel,
        tolerance=tolerance,
        top1_agreement=parity.top1_agreement,
        output_cosine=output_cosine,
        int8_layers=int8_layers,
        integer_nodes=counts,
        latency_us=timing.median_us,
        latency_p10_us=timing.p10_us,
        latency_p90_us=timing.p90_us,
        original_latency_us=original_us,
        tracker_latency_us=tracker_us,
        runtime_metric=runtime_metric,
        runtime_extra_metrics=runtime_extra,
        ok=not problems,
        problems=tuple(problems),
    )
