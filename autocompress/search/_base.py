from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal, Mapping, Protocol

from autocompress.spaces import Policy

__all__ = ["Outcome", "Searcher"]


@dataclass(frozen=True)
class Outcome:
    """What became of a proposed policy.

    - ``completed``: fine-tuned and evaluated; ``metric`` and ``latency_ms`` are set.
    - ``infeasible``: predicted over budget and never fine-tuned; ``constraint`` > 0 says by
      how many milliseconds.
    - ``failed``: an error inside the trial; ``reason`` says which.
    """

    status: Literal["completed", "infeasible", "failed"]
    metric: float | None = None
    latency_ms: float | None = None
    constraint: float = 0.0
    reason: str = ""


class Searcher(Protocol):
    """Proposes policies and learns from their outcomes, keyed by trial id.

    ``ask`` is called whenever the study wants a new candidate; it returns the trial id and
    the policy, or ``None`` when the searcher has nothing more to propose. ``tell`` is called
    exactly once per asked trial with its :class:`Outcome`, in any order, so trials may run
    serially or in parallel. ``record`` attaches facts to a trial (kept in the trial store).
    """

    def ask(self) -> tuple[int, Policy] | None: ...

    def tell(self, trial_id: int, outcome: Outcome) -> None: ...

    def record(self, trial_id: int, attrs: Mapping[str, Any]) -> None: ...
