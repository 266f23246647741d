"""Per-layer latency tables measured on the target, and whole-model prediction from them."""

from __future__ import annotations

from autocompress.latency_lut._backend import LatencyBackend, Measurement, OrtCpuBackend, cpu_description, profile_id
from autocompress.latency_lut._onnx import OPSET, feeds_for, input_names, to_onnx_bytes
from autocompress.latency_lut._table import Calibration, LatencyTable, LayerChoiceShape, effective_layers
from autocompress.latency_lut._validate import FidelityReport, fidelity, validate

__all__ = [
    "OPSET",
    "Calibration",
    "FidelityReport",
    "LatencyBackend",
    "LatencyTable",
    "LayerChoiceShape",
    "Measurement",
    "OrtCpuBackend",
    "cpu_description",
    "effective_layers",
    "feeds_for",
    "fidelity",
    "input_names",
    "profile_id",
    "to_onnx_bytes",
    "validate",
]
