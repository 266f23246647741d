"""A data-aware first proposal: the base policy (int8 everywhere) plus the lightest pruning of
the coupling groups that cost least alone, added cheapest first until the latency table
says the policy fits the budget.

Each group is pruned on its own, on top of the base policy, and the candidate scored before
any fine-tuning: the one-shot sensitivity analysis of NNI's and AIMET's pruners. It costs one
evaluation per group and no fine-tune. Where a space is dominated by a few cheap groups (the
early attention heads of a pretrained transformer lose a fraction of a point each, its last
layer several), this lands the first fine-tuned trials near the front that uniform seeds and
random draws miss. On a CNN whose pruned BatchNorms score at chance before fine-tuning every
group costs the same and the order carries no information; the seed is then just another
budget-fitted policy.
"""

from __future__ import annotations

import math
from typing import Callable

from autocompress.spaces import Policy, SearchSpace

__all__ = ["group_costs", "sensitivity_seed"]


def _lightest_ratio(space: SearchSpace, group: str) -> float | None:
    domain = space.domains.get(f"prune/{group}", ())
    return min((r for r in domain if r > 0), default=None)


def _with_pruning(base: Policy, prune: dict[str, float]) -> Policy:
    return Policy(prune={**base.prune, **prune}, bits=base.bits, rank=base.rank, decomp=base.decomp)


def group_costs(space: SearchSpace, base: Policy, score: Callable[[Policy], float]) -> dict[str, float]:
    """Each prunable group's cost: ``score(base)`` minus ``score`` of the base with that group
    alone at its lightest nonzero pruning ratio. ``score`` is higher-is-better (the caller flips
    a lower-is-better metric). A group whose candidate fails to build or scores NaN costs infinity."""
    reference = score(base)
    costs: dict[str, float] = {}
    for name in space.domains:
        if not name.startswith("prune/"):
            continue
        group = name.split("/", 1)[1]
        ratio = _lightest_ratio(space, group)
        if ratio is None:
            continue
        try:
            cost = reference - score(_with_pruning(base, {group: ratio}))
        except Exception:  # a group that cannot be pruned alone is simply not chosen
            cost = math.inf
        costs[group] = cost if math.isfinite(cost) else math.inf
    return costs


def sensitivity_seed(
    space: SearchSpace, base: Policy, score: Callable[[Policy], float], latency_us: Callable[[Policy], float], budget_us: float,
) -> tuple[Policy | None, dict[str, float]]:
    """The base policy with the cheapest groups pruned at their lightest ratio, added one at a
    time (by ``group_costs``) until ``latency_us`` fits ``budget_us``; and the costs.

    Nothing is scored, and (None, {}) returned, when the base already fits (nothing to add) or
    when every group at its lightest ratio still does not fit (no such seed exists)."""
    lightest = {n.split("/", 1)[1]: _lightest_ratio(space, n.split("/", 1)[1]) for n in space.domains if n.startswith("prune/")}
    lightest = {g: r for g, r in lightest.items() if r is not None}
    if not lightest or latency_us(base) <= budget_us or latency_us(_with_pruning(base, lightest)) > budget_us:
        return None, {}
    costs = group_costs(space, base, score)
    prune: dict[str, float] = {}
    for group, cost in sorted(costs.items(), key=lambda kv: (kv[1], kv[0])):
        if cost == math.inf:
            break
        prune[group] = lightest[group]
        policy = _with_pruning(base, prune)
        if latency_us(policy) <= budget_us:
            return (policy if space.contains(policy) else None), costs
    return None, costs
