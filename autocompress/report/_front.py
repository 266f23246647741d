from __future__ import annotations

from typing import Callable, Sequence, TypeVar

__all__ = ["pareto_front"]

T = TypeVar("T")


def pareto_front(
    items: Sequence[T], metric: Callable[[T], float], latency: Callable[[T], float], higher_is_better: bool = True
) -> list[T]:
    """Items not dominated in (metric, latency): none other is at least as good in both and
    better in one. Returned in order of increasing latency."""
    sign = 1.0 if higher_is_better else -1.0
    front = []
    for a in items:
        ma, la = sign * metric(a), latency(a)
        dominated = any(
            (sign * metric(b) >= ma and latency(b) <= la) and (sign * metric(b) > ma or latency(b) < la) for b in items
        )
        if not dominated:
            front.append(a)
    return sorted(front, key=latency)
