"""Per-layer latency tables measured on the target, and whole-model prediction from them."""

from __future__ import annotations

from autocompress.latency_lut._backend import (
    LatencyBackend,
    Measurable,
    Measurement,
    MeasurementError,
    Timing,
    cpu_description,
    profile_id,
)
from autocompress.latency_lut._factory import (
    BACKENDS, DEFAULT_BACKEND, backend_for_profile, backend_missing, check_backend_name, make_backend,
)
from autocompress.latency_lut._onnx import OPSET, feeds_for, input_names, to_onnx_bytes
from autocompress.latency_lut._ort import OrtBackend, OrtCpuBackend, OrtCudaBackend, OrtTensorrtBackend
from autocompress.latency_lut._table import (
    CALIBRATION_BUDGET_S, Calibration, LatencyTable, LayerChoiceShape, check_table_path, effective_layers, read_table_file,
)
from autocompress.latency_lut._tensorrt import TensorRTBackend
from autocompress.latency_lut._torch import TorchCpuBackend, TorchCudaBackend
from autocompress.latency_lut._validate import (
    DISTURBED, GAUGE_GAP, GAUGE_TIMINGS, UNEVEN, FidelityReport, QuietTimer, Validation, WholeModelGauge, fidelity, is_uneven, timed_unevenly_note,
    uneven_drift, uneven_warning, validate,
)

__all__ = [
    "BACKENDS",
    "CALIBRATION_BUDGET_S",
    "DEFAULT_BACKEND",
    "DISTURBED",
    "GAUGE_GAP",
    "GAUGE_TIMINGS",
    "OPSET",
    "UNEVEN",
    "Calibration",
    "FidelityReport",
    "LatencyBackend",
    "LatencyTable",
    "LayerChoiceShape",
    "Measurable",
    "Measurement",
    "MeasurementError",
    "OrtBackend",
    "OrtCpuBackend",
    "OrtCudaBackend",
    "OrtTensorrtBackend",
    "QuietTimer",
    "TensorRTBackend",
    "Timing",
    "TorchCpuBackend",
    "TorchCudaBackend",
    "Validation",
    "WholeModelGauge",
    "backend_missing",
    "check_backend_name",
    "check_table_path",
    "cpu_description",
    "effective_layers",
    "feeds_for",
    "fidelity",
    "input_names",
    "is_uneven",
    "backend_for_profile",
    "make_backend",
    "profile_id",
    "read_table_file",
    "timed_unevenly_note",
    "to_onnx_bytes",
    "uneven_drift",
    "uneven_warning",
    "validate",
]
