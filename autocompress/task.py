"""A compression task: the model to compress, its inputs, data and metric.

A task is built by a function that returns :class:`Task`. Built-in tasks are named
(``demo``); user tasks are given as ``path/to/file.py:build`` or ``package.module:build``.
"""

from __future__ import annotations

import importlib
import importlib.util
import sys
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Callable, Iterable, Mapping, Sequence

import torch
from torch import nn

from autocompress.errors import UserError, one_line

__all__ = ["Task", "load_task", "BUILTIN_TASKS", "as_input_tuple"]

Batch = tuple  # (inputs, targets); inputs is a Tensor or a tuple of Tensors
DISTILL_LOSSES = ("kl", "cosine", "mse")
DISTILL_OPTIMIZERS = ("sgd", "adamw")


@dataclass
class Task:
    """Everything a search needs to know about one model and its job.

    Attributes:
        name: Short identifier, recorded with every run.
        model: The trained model to compress (the distillation teacher). Never mutated.
        example_inputs: Inputs of one call at the deployment batch size; latency is
            measured at exactly these shapes.
        train_loader: Iterable of ``(inputs, targets)`` used for distillation (targets unused
            by pure distillation) and for calibrating int8 activation ranges.
        eval_loader: Iterable of ``(inputs, targets)`` on which the metric is computed.
        metric: ``metric(outputs, targets) -> float`` over the concatenated eval outputs.
        metric_name: Shown in reports.
        higher_is_better: Direction of the metric.
        ignored_layers: Names of modules the search must leave untouched.
        fingerprint: Identifies the model weights and data, so a run directory can refuse
            a different task.
        distill_loss: What fine-tuning matches to the original model's outputs: "kl"
            (logits, with temperature), "cosine" (embeddings) or "mse".
        distill_optimizer: "sgd" (momentum, Nesterov) or "adamw" (what transformers prefer).
        distill_lr: The task's fine-tuning learning rate; ``--lr`` overrides it.
        extra_metrics: More ``metric(outputs, targets)`` functions, reported for the
            original model and for every Pareto member.
        feature_layers: Module names whose outputs feature distillation matches
            (``--feature-weight``); a pruned student's narrower features are mapped.
    """

    name: str
    model: nn.Module
    example_inputs: tuple[torch.Tensor, ...]
    train_loader: Iterable[Batch]
    eval_loader: Iterable[Batch]
    metric: Callable[[torch.Tensor, torch.Tensor], float]
    metric_name: str = "accuracy"
    higher_is_better: bool = True
    ignored_layers: Sequence[str] = field(default_factory=tuple)
    fingerprint: str = ""
    distill_loss: str = "kl"
    distill_optimizer: str = "sgd"
    distill_lr: float | None = None
    extra_metrics: Mapping[str, Callable[[torch.Tensor, torch.Tensor], float]] = field(default_factory=dict)
    feature_layers: Sequence[str] = field(default_factory=tuple)

    def __post_init__(self) -> None:
        for attr, kind in (("name", str), ("metric_name", str), ("fingerprint", str), ("higher_is_better", bool)):
            if not isinstance(getattr(self, attr), kind):
                raise UserError(
                    f"Task {self.name!r}: `{attr}` must be a {kind.__name__}, but got {type(getattr(self, attr)).__name__}; "
                    "it is recorded with every run."
                )
        if self.distill_lr is not None and not (isinstance(self.distill_lr, (int, float)) and 0 < self.distill_lr < float("inf")):
            raise UserError(f"Task {self.name!r}: `distill_lr` must be a positive number or None, but got {self.distill_lr!r}.")
        if not isinstance(self.model, nn.Module):
            raise UserError(
                f"Task {self.name!r}: `model` must be a torch.nn.Module, but got "
                f"{type(self.model).__name__}; return the module itself from the build function."
            )
        self.example_inputs = as_input_tuple(self.example_inputs)
        if not self.example_inputs or not all(isinstance(t, torch.Tensor) for t in self.example_inputs):
            raise UserError(
                f"Task {self.name!r}: `example_inputs` must be a Tensor or a tuple of Tensors "
                "(one call of the model at the deployment batch size)."
            )
        if not callable(self.metric) or not all(callable(f) for f in self.extra_metrics.values()):
            raise UserError(f"Task {self.name!r}: `metric` and `extra_metrics` must be callable as metric(outputs, targets).")
        if self.distill_loss not in DISTILL_LOSSES:
            raise UserError(f"Task {self.name!r}: `distill_loss` must be one of {list(DISTILL_LOSSES)}, but got {self.distill_loss!r}.")
        if self.distill_optimizer not in DISTILL_OPTIMIZERS:
            raise UserError(
                f"Task {self.name!r}: `distill_optimizer` must be one of {list(DISTILL_OPTIMIZERS)}, but got {self.distill_optimizer!r}."
            )
        self.model.eval()

    def at_batch(self, batch_size: int) -> "Task":
        """This task deployed at ``batch_size`` rows per call: its example inputs' first row
        repeated (latency depends on the shapes, not the values). 0 keeps the task's own."""
        if batch_size == 0 or batch_size == int(self.example_inputs[0].shape[0]):
            return self
        if batch_size < 0:
            raise UserError(f"--batch-size must be at least 1, but got {batch_size}.")
        rows = tuple(t[:1].expand(batch_size, *t.shape[1:]).contiguous() for t in self.example_inputs)
        return replace(self, example_inputs=rows)


def as_input_tuple(inputs: object) -> tuple:
    """Normalise model inputs to a tuple (a single Tensor becomes a 1-tuple)."""
    if isinstance(inputs, torch.Tensor):
        return (inputs,)
    if isinstance(inputs, list):
        return tuple(inputs)
    return inputs  # type: ignore[return-value]


def _builtin_demo(**kwargs: object) -> Task:
    from autocompress.tasks.demo import build_demo_task

    return build_demo_task(**kwargs)  # type: ignore[arg-type]


def _builtin_minilm(**kwargs: object) -> Task:
    from autocompress.tasks.minilm import build_minilm_task

    return build_minilm_task(**kwargs)  # type: ignore[arg-type]


BUILTIN_TASKS: dict[str, Callable[..., Task]] = {"demo": _builtin_demo, "minilm": _builtin_minilm}


def load_task(spec: str, batch_size: int = 0) -> Task:
    """Build the task named by ``spec``, deployed at ``batch_size`` (0: the task's own).

    ``spec`` is a built-in name (see :data:`BUILTIN_TASKS`), ``path/to/file.py:function``
    or ``package.module:function``; the function is called without arguments.
    """
    return _build_task(spec).at_batch(batch_size)


def _build_task(spec: str) -> Task:
    if spec in BUILTIN_TASKS:
        return BUILTIN_TASKS[spec]()
    if ":" not in spec and spec.endswith(".py"):
        raise UserError(f"--task {spec!r} names a file but no function; add it: '{spec}:build'.")
    if ":" not in spec:
        raise UserError(
            f"Unknown task {spec!r}: use a built-in task ({', '.join(sorted(BUILTIN_TASKS))}), "
            "'path/to/file.py:build' or 'package.module:build'."
        )
    where, func_name = spec.rsplit(":", 1)
    if not where.strip() or not func_name.strip():
        raise UserError(f"--task {spec!r} names no module, file or function; use 'path/to/file.py:build' or 'package.module:build'.")
    if where.endswith(".py") or "/" in where or "\\" in where:
        path = Path(where)
        if path.is_dir():
            raise UserError(f"Task file {str(path)!r} is a directory; --task must name a Python file, 'path/to/file.py:build'.")
        if not path.is_file():
            raise UserError(f"Task file {str(path)!r} does not exist; check the path in --task {spec!r}.")
        module_name = f"_autocompress_user_task_{abs(hash(str(path.resolve())))}"
        module_spec = importlib.util.spec_from_file_location(module_name, path)
        if module_spec is None or module_spec.loader is None:
            raise UserError(f"Cannot import task file {str(path)!r}; it must be a Python source file.")
        module = importlib.util.module_from_spec(module_spec)
        sys.modules[module_name] = module
        try:
            module_spec.loader.exec_module(module)
        except Exception as exc:
            sys.modules.pop(module_name, None)
            fix = "install the missing package" if isinstance(exc, ImportError) else "fix the file"
            raise UserError(f"Task file {str(path)!r} failed to import ({one_line(exc)}); {fix}.") from None
    else:
        try:
            module = importlib.import_module(where)
        except ModuleNotFoundError as exc:
            raise UserError(
                f"Cannot import module {where!r} for --task {spec!r} ({exc}); install it or give a file path."
            ) from None
        except Exception as exc:
            fix = "install the missing package" if isinstance(exc, ImportError) else "fix the module"
            raise UserError(f"Module {where!r} of --task {spec!r} failed to import ({one_line(exc)}); {fix}.") from None
    build = getattr(module, func_name, None)
    if not callable(build):
        raise UserError(f"{where!r} has no function {func_name!r}; --task must name a function returning Task.")
    try:
        task = build()
    except UserError:
        raise
    except Exception as exc:
        raise UserError(f"The task function {spec!r} raised {one_line(exc)}; fix the task's build function.") from None
    if not isinstance(task, Task):
        raise UserError(
            f"{spec!r} returned {type(task).__name__}, not autocompress.Task; "
            "return Task(name=..., model=..., example_inputs=..., ...)."
        )
    return task
