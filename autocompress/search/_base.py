from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal, Mapping, Protocol, runtime_checkable

from autocompress.spaces import Policy

__all__ = ["OBJECTIVES", "Outcome", "Searcher"]

# What a multi-objective study optimizes, in order: the task's metric (its own direction),
# latency (down) and, when asked for, the engine's size in bytes (down).
OBJECTIVES = ("metric", "latency", "size")


@dataclass(frozen=True)
class Outcome:
    """What became of a proposed policy.

    - ``completed``: fine-tuned and evaluated; ``metric`` and ``latency_ms`` are set (and
      ``size_bytes`` when the study minimizes size).
    - ``infeasible``: predicted over budget and never fine-tuned; ``constraint`` > 0 says by
      how many milliseconds.
    - ``failed``: an error inside the trial; ``reason`` says which.

    ``metric_shortfall``: for a completed trial of a study with a metric floor
    (``--max-metric-drop``), how far the metric falls short of the floor, in the metric's
    units (> 0: below the floor, which makes the trial infeasible to the sampler).

    ``overhead_s`` is the time the caller spent on this trial outside fine-tuning before
    ``tell`` (ask, predict, repair, record); ``tell`` adds its own time and stores the sum
    as the trial's ``overhead_s``.
    """

    status: Literal["completed", "infeasible", "failed"]
    metric: float | None = None
    latency_ms: float | None = None
    constraint: float = 0.0
    reason: str = ""
    size_bytes: float | None = None
    overhead_s: float = 0.0
    metric_shortfall: float | None = None


@runtime_checkable
class Searcher(Protocol):
    """Proposes policies and learns from their outcomes, keyed by trial id.

    Lifecycle (one study; trials may run serially or in parallel):

    1. ``ask()`` is called whenever the study wants a candidate. It opens a trial in the
       trial store and returns ``(trial_id, policy)``, or ``None`` when the searcher has
       nothing more to propose. The policy is always inside the searcher's space.
    2. ``ask_policy(policy, attrs)`` opens a trial for a policy chosen outside the searcher
       (a uniform seed, a budget repair of an over-budget proposal). It is told like any
       other trial; a searcher may learn from it or ignore it.
    3. ``record(trial_id, attrs)`` attaches facts to an open trial (kept in the trial
       store); it may be called any number of times before ``tell``.
    4. ``tell(trial_id, outcome)`` is called exactly once per opened trial, in any order.
       Failed, infeasible and non-finite outcomes are legal and must not raise.
    5. ``state_dict()`` returns what the searcher needs, beyond the trial store, to go on
       after the process ends; ``load_state_dict(state)`` restores it into a searcher built
       with the same arguments over the same trial store. A deterministic searcher makes
       the same proposals after a restore as it would have without the interruption.

    Every searcher keeps its trials in the Optuna study it was built on, so the report,
    resume and optuna-dashboard read every searcher's run alike.
    """

    def ask(self) -> tuple[int, Policy] | None: ...

    def ask_policy(self, policy: Policy, attrs: Mapping[str, Any] = ...) -> int: ...

    def tell(self, trial_id: int, outcome: Outcome) -> None: ...

    def record(self, trial_id: int, attrs: Mapping[str, Any]) -> None: ...

    def state_dict(self) -> dict[str, Any]: ...

    def load_state_dict(self, state: Mapping[str, Any]) -> None: ...
