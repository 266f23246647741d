"""Deployable engines: ONNX (fp32, or QDQ int8 where the policy says), each verified.

Verification loads the engine with its runtime, compares its outputs with the PyTorch
candidate on held-out inputs, counts the integer kernels in the runtime's optimized graph,
and measures latency with the same backend as the latency table. Every engine gets a JSON
sidecar (provenance and checks); fine-tuned candidates are kept as state dicts so that a
trial can be exported again later, in another format (``export_trial``), or as a
TensorRT engine (``export._tensorrt``, TensorRT imported only there).
"""

from __future__ import annotations

from autocompress.export._artifacts import (
    KEEP_OFF_FRONT_MAX_BYTES,
    candidate_path,
    file_sha256,
    load_candidate_weights,
    prune_candidates,
    read_sidecar,
    save_candidate,
    sidecar_path,
    write_sidecar,
)
from autocompress.export._onnx import INTEGER_OPS, Engine, export_engine, optimized_op_counts
from autocompress.export._trial import FORMATS, ExportResult, export_trial, retarget_float_layers

__all__ = [
    "FORMATS", "INTEGER_OPS", "KEEP_OFF_FRONT_MAX_BYTES", "Engine", "ExportResult", "candidate_path", "export_engine",
    "export_trial", "file_sha256", "load_candidate_weights", "optimized_op_counts", "prune_candidates", "read_sidecar",
    "retarget_float_layers", "save_candidate", "sidecar_path", "write_sidecar",
]
