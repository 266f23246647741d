"""autocompress: hardware-aware compression search under a latency budget measured on the target."""

from __future__ import annotations

from autocompress.budget import LatencyBudget, parse_budget
from autocompress.errors import UserError
from autocompress.inventory import LayerInventory, build_inventory
from autocompress.spaces import Policy, SearchSpace, SpaceConfig, build_space
from autocompress.study import RunResult, SearchConfig, run_search
from autocompress.task import Task, load_task

__version__ = "0.1.0"

__all__ = [
    "LatencyBudget",
    "LayerInventory",
    "Policy",
    "RunResult",
    "SearchConfig",
    "SearchSpace",
    "SpaceConfig",
    "Task",
    "UserError",
    "build_inventory",
    "build_space",
    "load_task",
    "parse_budget",
    "run_search",
    "__version__",
]
