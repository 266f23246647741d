"""A complete user task: scikit-learn's 8x8 digits (resized to 28x28) and a small ResNet trained here.

Run a search on it with:

    autocompress search --task examples/digits_task.py:build --latency-budget 0.6x --trials 10
"""

from __future__ import annotations

import numpy as np
import torch
from sklearn.datasets import load_digits
from torch.utils.data import DataLoader, TensorDataset

from autocompress import Task
from autocompress.evaluators import accuracy
from autocompress.tasks.demo import train_classifier
from autocompress.tasks.models import DemoResNet


def build(width: int = 16, epochs: int = 6, seed: int = 0) -> Task:
    digits = load_digits()
    x = torch.from_numpy((digits.images / 16.0 - 0.5).astype(np.float32)).unsqueeze(1)  # (1797, 1, 8, 8)
    # At 8x8 runtime overhead dominates any compute; at 28x28 compression shows.
    x = torch.nn.functional.interpolate(x, size=(28, 28), mode="bilinear", align_corners=False)
    y = torch.from_numpy(digits.target.astype(np.int64))
    order = torch.randperm(len(x), generator=torch.Generator().manual_seed(seed))
    train, held_out = order[:1400], order[1400:]
    # Full, even batches for training (see the README on the oneDNN crash); any batch size for eval.
    train_loader = DataLoader(TensorDataset(x[train], y[train]), batch_size=64, shuffle=True, drop_last=True,
                              generator=torch.Generator().manual_seed(seed))
    eval_loader = DataLoader(TensorDataset(x[held_out], y[held_out]), batch_size=200)
    torch.manual_seed(seed)
    model = train_classifier(DemoResNet(width=width), train_loader, epochs=epochs, lr=0.1, seed=seed)
    return Task(
        name="digits",
        model=model,
        example_inputs=(x[:1].clone(),),  # latency is measured at batch 1
        train_loader=train_loader,
        eval_loader=eval_loader,
        metric=accuracy,
        metric_name="accuracy",
        higher_is_better=True,
        fingerprint=f"digits-w{width}-e{epochs}-s{seed}",
    )
