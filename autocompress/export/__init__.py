"""Deployable engines: ONNX (fp32, or QDQ int8 where the policy says), each verified.

Verification loads the engine with its runtime, compares its outputs with the PyTorch
candidate on held-out inputs, counts the integer kernels in the runtime's optimized graph,
and measures latency with the same backend as the latency table.
"""

from __future__ import annotations

from autocompress.export._onnx import INTEGER_OPS, Engine, export_engine, optimized_op_counts

__all__ = ["INTEGER_OPS", "Engine", "export_engine", "optimized_op_counts"]
