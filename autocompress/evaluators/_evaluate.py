from __future__ import annotations

from typing import Callable, Iterable

import torch
from torch import nn

from autocompress.task import as_input_tuple

__all__ = ["accuracy", "collect_outputs", "evaluate"]


def accuracy(outputs: torch.Tensor, targets: torch.Tensor) -> float:
    """Top-1 accuracy of logits ``outputs`` against integer class ``targets``."""
    return float((outputs.argmax(dim=1) == targets).float().mean())


@torch.no_grad()
def collect_outputs(model: nn.Module | Callable, loader: Iterable) -> tuple[torch.Tensor, torch.Tensor]:
    """Run ``model`` over ``loader``; return concatenated outputs and targets."""
    if isinstance(model, nn.Module):
        model.eval()
    outs, targets = [], []
    for inputs, target in loader:
        out = model(*as_input_tuple(inputs))
        outs.append(out[0] if isinstance(out, (tuple, list)) else out)
        targets.append(target)
    return torch.cat(outs), torch.cat(targets)


def evaluate(model: nn.Module | Callable, loader: Iterable, metric: Callable[[torch.Tensor, torch.Tensor], float]) -> float:
    """The task metric of ``model`` on the whole of ``loader``."""
    outputs, targets = collect_outputs(model, loader)
    return float(metric(outputs, targets))
