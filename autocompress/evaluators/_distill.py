from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Iterable, Sequence

import torch
from torch import nn

from autocompress.task import DISTILL_LOSSES, DISTILL_OPTIMIZERS, as_input_tuple

__all__ = ["DistillConfig", "DivergedError", "ProgressHook", "distill", "output_loss", "recalibrate_batchnorm"]

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
    follow a cosine schedule. With ``feature_weight`` > 0, the outputs of ``feature_layers``
    (module names of the original model) are matched too: mean squared error over the
    teacher's feature variance, through a learned linear map of the channel dimension where
    pruning left the student narrower. After the steps, ``bn_batches`` training batches
    re-estimate every BatchNorm's statistics with the final weights (0: keep the running
    averages the steps left; see :func:`recalibrate_batchnorm`).
    """

    steps: int = 100
    temperature: float = 4.0
    lr: float = 0.01
    momentum: float = 0.9
    hard_label_weight: float = 0.0
    loss: str = "kl"
    optimizer: str = "sgd"
    feature_layers: tuple[str, ...] = ()
    feature_weight: float = 0.0
    bn_batches: int = 8

    def __post_init__(self) -> None:
        if self.bn_batches < 0:
            raise ValueError(f"`bn_batches` must be >= 0, but got {self.bn_batches!r}.")
        if self.steps < 0:
            raise ValueError(f"`steps` must be >= 0, but got {self.steps!r}.")
        if not 0 < self.temperature < math.inf:
            raise ValueError(f"`temperature` must be > 0 and finite, but got {self.temperature!r}.")
        if not 0 < self.lr < math.inf:
            raise ValueError(f"`lr` must be > 0 and finite, but got {self.lr!r}.")
        if self.loss not in DISTILL_LOSSES:
            raise ValueError(f"`loss` must be one of {list(DISTILL_LOSSES)}, but got {self.loss!r}.")
        if not 0 <= self.feature_weight < math.inf:
            raise ValueError(f"`feature_weight` must be >= 0 and finite, but got {self.feature_weight!r}.")
        if self.optimizer not in DISTILL_OPTIMIZERS:
            raise ValueError(f"`optimizer` must be one of {list(DISTILL_OPTIMIZERS)}, but got {self.optimizer!r}.")


@dataclass(frozen=True)
class ProgressHook:
    """Called as ``callback(step, student)`` after every ``every`` fine-tuning steps (not
    after the last one), with the student in eval mode; training resumes afterwards. A
    scheduler uses it to evaluate a candidate midway and stop a weak one early (by raising)."""

    every: int
    callback: Callable[[int, nn.Module], None]

    def __post_init__(self) -> None:
        if self.every < 1:
            raise ValueError(f"`every` must be >= 1, but got {self.every!r}.")


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


class _FeatureTaps:
    """Forward hooks that keep the outputs of named layers of the teacher and the student
    (a factorized student layer is tapped at its last part), and the channel maps that
    carry narrower student features to the teacher's width."""

    def __init__(self, student: nn.Module, teacher: nn.Module, names: Sequence[str]) -> None:
        if not names:
            raise ValueError("feature distillation (feature_weight > 0) needs feature_layers")
        self.names = list(names)
        self.student: dict[str, torch.Tensor] = {}
        self.teacher: dict[str, torch.Tensor] = {}
        self.maps = nn.ModuleDict()
        self.handles = []
        s_modules, t_modules = dict(student.named_modules()), dict(teacher.named_modules())
        for name in self.names:
            if name not in t_modules or name not in s_modules:
                raise ValueError(f"feature layer {name!r} is not a module of both the original model and the candidate")
            s_mod = s_modules[name]
            while isinstance(s_mod, nn.Sequential) and len(s_mod):
                s_mod = s_mod[-1]
            self.handles.append(t_modules[name].register_forward_hook(self._keep(self.teacher, name)))
            self.handles.append(s_mod.register_forward_hook(self._keep(self.student, name)))

    @staticmethod
    def _keep(store: dict, name: str):
        def hook(_module, _inputs, output):
            store[name] = output

        return hook

    def loss(self) -> torch.Tensor:
        total = torch.zeros(())
        for name in self.names:
            s, t = self.student[name], self.teacher[name].detach()
            dim = 1 if t.dim() == 4 else -1  # conv features are NCHW; others channel-last
            if s.shape[dim] != t.shape[dim]:
                if name not in self.maps:
                    self.maps[name] = nn.Linear(s.shape[dim], t.shape[dim], bias=False)
                s = self.maps[name](s.movedim(dim, -1)).movedim(-1, dim)
            total = total + nn.functional.mse_loss(s, t) / t.var().clamp_min(1e-8)
        return total / max(1, len(self.names))

    def close(self) -> None:
        for h in self.handles:
            h.remove()


def distill(
    student: nn.Module,
    teacher: nn.Module,
    loader: Iterable,
    config: DistillConfig = DistillConfig(),
    progress: ProgressHook | None = None,
) -> list[float]:
    """Fine-tune ``student`` in place toward ``teacher``'s logits; return the loss per step.

    The loader is cycled until ``config.steps`` steps are done. Raises :class:`DivergedError`
    when the loss becomes non-finite. ``progress`` sees the student midway (see :class:`ProgressHook`).
    """
    losses: list[float] = []
    if config.steps == 0:
        recalibrate_batchnorm(student, loader, config.bn_batches)
        return losses
    teacher.eval()
    student.train()
    params = [p for p in student.parameters() if p.requires_grad]
    if config.optimizer == "adamw":
        opt: torch.optim.Optimizer = torch.optim.AdamW(params, lr=config.lr, weight_decay=0.0)
    else:
        opt = torch.optim.SGD(params, lr=config.lr, momentum=config.momentum, nesterov=True)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=config.steps)
    batches = _forever(loader)
    taps = _FeatureTaps(student, teacher, config.feature_layers) if config.feature_weight > 0 else None
    try:
        _steps(student, teacher, config, opt, sched, batches, taps, losses, progress)
    finally:
        if taps is not None:
            taps.close()
    recalibrate_batchnorm(student, loader, config.bn_batches)
    student.eval()
    return losses


def recalibrate_batchnorm(model: nn.Module, loader: Iterable, batches: int) -> int:
    """Re-estimate the running statistics of every BatchNorm of ``model`` from ``batches``
    batches of ``loader`` (plain averages, no gradients, everything else in eval mode), in
    place; return how many BatchNorm layers were re-estimated (0 where no batch had two samples
    or more: the statistics are then left as they were). The model is left in eval mode.

    Pruning or factorizing the layer before a BatchNorm changes what it normalizes, while its
    running statistics still describe the original model: on the demo ResNet, int8 with
    every group's lightest pruning scores 10% (chance) before fine-tuning and 85% after its
    statistics are re-estimated (EagleEye's adaptive BatchNorm). After a short fine-tune
    the running averages trail the last weights; re-estimating them gained 0.63 points
    of accuracy on average after 30 distillation steps there (benchmarks/batchnorm.py)."""
    norms = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.track_running_stats]
    if batches <= 0 or not norms:
        return 0
    model.eval()
    momenta = [m.momentum for m in norms]
    saved = [(m.running_mean.clone(), m.running_var.clone(), m.num_batches_tracked.clone()) for m in norms]
    for m in norms:
        m.reset_running_stats()
        m.momentum = None  # a cumulative average over the batches
        m.train()
    seen = 0
    try:
        with torch.no_grad():
            while seen < batches:  # epochs, until enough batches (a loader with none usable: stop after one)
                before = seen
                for inputs, _targets in loader:
                    inputs = as_input_tuple(inputs)
                    if inputs[0].shape[0] < 2:  # one sample has no batch statistics
                        continue
                    model(*inputs)
                    seen += 1
                    if seen >= batches:
                        break
                if seen == before:
                    break
    finally:
        for m, momentum, state in zip(norms, momenta, saved):
            m.momentum = momentum
            if seen == 0:  # nothing to average (batches of one sample): keep the statistics it had
                for buffer, value in zip((m.running_mean, m.running_var, m.num_batches_tracked), state):
                    buffer.copy_(value)
        model.eval()
    return len(norms) if seen else 0


def _steps(student, teacher, config, opt, sched, batches, taps, losses, progress=None) -> None:
    T = config.temperature
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
        if taps is not None:
            feature_loss = taps.loss()
            if len(losses) == 0 and taps.maps:  # channel maps are created on the first step
                opt.add_param_group({"params": list(taps.maps.parameters())})  # at a constant rate
            loss = loss + config.feature_weight * feature_loss
        if config.hard_label_weight and isinstance(targets, torch.Tensor) and targets.dtype == torch.int64:
            loss = loss + config.hard_label_weight * nn.functional.cross_entropy(s_logits, targets)
        value = float(loss.detach())
        if not math.isfinite(value):
            raise DivergedError(
                f"distillation loss became {value} at step {len(losses)}; the candidate was not exported "
                "(lower --lr, or check the training data for non-finite values)"
            )
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        losses.append(value)
        if progress is not None and len(losses) % progress.every == 0 and len(losses) < config.steps:
            student.eval()
            progress.callback(len(losses), student)
            student.train()
