"""Fine-tuning by distillation and metric evaluation of a candidate."""

from __future__ import annotations

from autocompress.evaluators._distill import DistillConfig, DivergedError, ProgressHook, distill, recalibrate_batchnorm
from autocompress.evaluators._evaluate import accuracy, collect_outputs, evaluate

__all__ = ["DistillConfig", "DivergedError", "ProgressHook", "distill", "recalibrate_batchnorm", "accuracy", "collect_outputs", "evaluate"]
