"""Turning a (candidate) PyTorch model into the ONNX graph the runtime executes."""

from __future__ import annotations

import io
import warnings

import numpy as np
import torch
from torch import nn

__all__ = ["to_onnx_bytes", "input_names", "feeds_for", "OPSET"]

OPSET = 17


def input_names(n: int) -> list[str]:
    return [f"input_{i}" for i in range(n)]


def to_onnx_bytes(model: nn.Module, example_inputs: tuple[torch.Tensor, ...], dynamic_batch: bool = False) -> bytes:
    """Fold BatchNorm, then export with the TorchScript-based exporter: its QDQ graphs fuse
    into integer kernels in ONNX Runtime, where the dynamo exporter's leave most convolutions
    in float."""
    from autocompress.compress import fold_batchnorm

    if any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules()):
        model = fold_batchnorm(model)
    names = input_names(len(example_inputs))
    axes = {n: {0: "batch"} for n in names} | {"output_0": {0: "batch"}} if dynamic_batch else None
    buf = io.BytesIO()
    model = model.eval()
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            model, tuple(example_inputs), buf, dynamo=False, opset_version=OPSET,
            input_names=names, output_names=["output_0"], dynamic_axes=axes, do_constant_folding=True,
        )
    return buf.getvalue()


def feeds_for(example_inputs: tuple[torch.Tensor, ...]) -> dict[str, np.ndarray]:
    return {n: t.detach().cpu().numpy() for n, t in zip(input_names(len(example_inputs)), example_inputs)}
