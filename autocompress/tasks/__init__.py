"""Built-in tasks and the models they use."""

from __future__ import annotations

from autocompress.tasks.models import DemoResNet

__all__ = ["DemoResNet"]
