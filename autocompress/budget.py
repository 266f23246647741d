"""Latency budgets: an absolute time (``2.5ms``, ``800us``) or a fraction of the baseline (``0.5x``)."""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

from autocompress.errors import UserError

__all__ = ["LatencyBudget", "parse_budget"]

_UNITS_MS = {"s": 1000.0, "ms": 1.0, "us": 1e-3, "µs": 1e-3}
_PATTERN = re.compile(r"^\s*([0-9]*\.?[0-9]+(?:[eE][-+]?[0-9]+)?)\s*(s|ms|us|µs|x)\s*$")


@dataclass(frozen=True)
class LatencyBudget:
    """Either ``absolute_ms`` or ``fraction`` (of the original model's measured latency)."""

    text: str
    absolute_ms: float | None = None
    fraction: float | None = None

    def resolve(self, baseline_ms: float) -> float:
        """The budget in milliseconds, given the original model's measured latency."""
        if self.absolute_ms is not None:
            return self.absolute_ms
        assert self.fraction is not None
        return self.fraction * baseline_ms


def parse_budget(text: str) -> LatencyBudget:
    match = _PATTERN.match(text or "")
    if not match:
        raise UserError(
            f"Cannot parse latency budget {text!r}; give a time such as 2.5ms or 800us, "
            "or a fraction of the original model's latency such as 0.5x."
        )
    value, unit = float(match.group(1)), match.group(2)
    if not math.isfinite(value) or value <= 0:
        raise UserError(f"The latency budget must be positive and finite, but got {text!r}; for example 0.5x or 2.5ms.")
    if unit == "x":
        if value > 1:
            raise UserError(f"A budget of {text!r} is above the original model's latency, so it needs no compression; use a fraction below 1x, such as 0.5x.")
        return LatencyBudget(text.strip(), fraction=value)
    return LatencyBudget(text.strip(), absolute_ms=value * _UNITS_MS[unit])
