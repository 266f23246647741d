from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Iterable

import torch
from torch import nn

from autocompress.task import DISTILL_LOSSES, DISTILL_OPTIMIZERS, as_input_tuple

__all__ = ["DistillConfig", "DivergedError", "distill", "output_loss"]

# oneDNN 3.12 in torch 2.13.0+cpu can crash ("double free or corruption") in the backward
# of strided 1x1 convs on channels_last tensors (which grayscale images become) for some
# odd batch sizes with 2 threads. Training batches are therefore trimmed to a multiple of
# this, which avoids every crashing size seen and costs at most 7 samples a batch.
BATCH_MULTIPLE = 8


class DivergedError(RuntimeError):
    """The distillation loss became NaN or infinite."""


@dataclass(frozen=True)
class DistillConfig:
    """Knowledge distillation from the original model, for a bounded number of steps.

    ``loss``: "kl" is ``T^2 * KL(softmax(teacher/T) || softmax(student/T))`` on logits;
    "cosine" is ``1 - cos(student, teacher)`` per sample (embeddings); "mse" is the mean
    squared error. ``hard_label_weight * cross_entropy(student, targets)`` is added when
    targets are class ids. ``optimizer`` is "sgd" (momentum, Nesterov) or "adamw"; both
    follow a cosine schedule.
    """

    steps: int = 100
    temperature: float = 4.0
    lr: float = 0.01
    momentum: float = 0.9
    hard_label_weight: float = 0.0
    loss: str = "kl"
    optimizer: str = "sgd"

    def __post_init__(self) -> None:
        if self.steps < 0:
            raise ValueError(f"`steps` must be >= 0, but got {self.steps!r}.")
        if not self.temperature > 0:
            raise ValueError(f"`temperature` must be > 0, but got {self.temperature!r}.")
        if not self.lr > 0:
            raise ValueError(f"`lr` must be > 0, but got {self.lr!r}.")
        if self.loss not in DISTILL_LOSSES:
            raise ValueError(f"`loss` must be one of {list(DISTILL_LOSSES)}, but got {self.loss!r}.")
        if self.optimizer not in DISTILL_OPTIMIZERS:
            raise ValueError(f"`optimizer` must be one of {list(DISTILL_OPTIMIZERS)}, but got {self.optimizer!r}.")


def _trim(inputs: tuple[torch.Tensor, ...], targets: object) -> tuple[tuple[torch.Tensor, ...], object] | None:
    n = inputs[0].shape[0]
    keep = n - n % BATCH_MULTIPLE
    if keep == n:
        return inputs, targets
    if keep == 0:
        return None
    targets = targets[:keep] if isinstance(targets, torch.Tensor) else targets
    return tuple(t[:keep] for t in inputs), targets


def _forever(loader: Iterable):
    """Iterate the loader again and again (a new epoch each time, so shuffling applies)."""
    while True:
        empty = True
        for batch in loader:
            empty = False
            yield batch
        if empty:
            raise ValueError("the training loader yielded no batch; distillation needs data.")


def output_loss(student: torch.Tensor, teacher: torch.Tensor, kind: str, temperature: float = 1.0) -> torch.Tensor:
    """The distillation loss between student and teacher outputs (see :class:`DistillConfig`)."""
    if kind == "cosine":
        return (1.0 - nn.functional.cosine_similarity(student, teacher, dim=-1)).mean()
    if kind == "mse":
        return nn.functional.mse_loss(student, teacher)
    T = temperature
    return nn.functional.kl_div(
        nn.functional.log_softmax(student / T, dim=-1), nn.functional.log_softmax(teacher / T, dim=-1),
        reduction="batchmean", log_target=True,
    ) * (T * T)


def distill(
    student: nn.Module,
    teacher: nn.Module,
    loader: Iterable,
    config: DistillConfig = DistillConfig(),
) -> list[float]:
    """Fine-tune ``student`` in place toward ``teacher``'s logits; return the loss per step.

    The loader is cycled until ``config.steps`` steps are done. Raises :class:`DivergedError`
    when the loss becomes non-finite.
    """
    losses: list[float] = []
    if config.steps == 0:
        return losses
    teacher.eval()
    student.train()
    params = [p for p in student.parameters() if p.requires_grad]
    if config.optimizer == "adamw":
        opt: torch.optim.Optimizer = torch.optim.AdamW(params, lr=config.lr, weight_decay=0.0)
    else:
        opt = torch.optim.SGD(params, lr=config.lr, momentum=config.momentum, nesterov=True)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=config.steps)
    T = config.temperature
    batches = _forever(loader)
    while len(losses) < config.steps:
        inputs, targets = next(batches)
        trimmed = _trim(as_input_tuple(inputs), targets)
        if trimmed is None:
            continue
        inputs, targets = trimmed
        with torch.no_grad():
            t_logits = teacher(*inputs)
        s_logits = student(*inputs)
        loss = output_loss(s_logits, t_logits, config.loss, T)
        if config.hard_label_weight and isinstance(targets, torch.Tensor) and targets.dtype == torch.int64:
            loss = loss + config.hard_label_weight * nn.functional.cross_entropy(s_logits, targets)
        value = float(loss.detach())
        if not math.isfinite(value):
            raise DivergedError(f"distillation loss became {value} at step {len(losses)}")
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        losses.append(value)
    student.eval()
    return losses
