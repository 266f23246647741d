"""A data-aware first proposal: the base policy (int8 everywhere) plus pruning of the coupling
groups that cost least alone, added cheapest first until the latency table says the policy
fits the budget.

Each group is pruned on its own, on top of the base policy, and the candidate scored before
any fine-tuning: the one-shot sensitivity analysis of NNI's and AIMET's pruners. It costs one
evaluation per group and no fine-tune. Where a space is dominated by a few cheap groups (the
early attention heads of a pretrained transformer lose a fraction of a point each, its last
layer several), this lands the first fine-tuned trials near the front that uniform seeds and
random draws miss. A CNN's pruned BatchNorms score at chance before fine-tuning with the
original's statistics, so the caller re-estimates them first (``recalibrate_batchnorm``);
without that, every group costs the same and the order carries no information.

Groups climb their pruning ratios level by level: every group at its first nonzero ratio,
cheapest first; if all of them together still do not fit, all stay there and the cheapest
move on to their second ratio, and so on. Only the level where the policy first fits is
scored (the table tells which one that is before anything is evaluated).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Callable

from autocompress.spaces import Policy, SearchSpace

__all__ = ["Sensitivity", "group_costs", "sensitivity_seed"]


def _ratios(space: SearchSpace) -> dict[str, list[float]]:
    """Each prunable group's nonzero pruning ratios, lightest first."""
    return {name.split("/", 1)[1]: sorted(r for r in domain if r > 0)
            for name, domain in space.domains.items() if name.startswith("prune/") and any(r > 0 for r in domain)}


def _at_level(ratios: dict[str, list[float]], level: int) -> dict[str, float]:
    """Every group at its ``level``-th nonzero ratio (its heaviest where it has fewer)."""
    return {g: rs[min(level, len(rs) - 1)] for g, rs in ratios.items()}


def _with_pruning(base: Policy, prune: dict[str, float]) -> Policy:
    return Policy(prune={**base.prune, **prune}, bits=base.bits, rank=base.rank, decomp=base.decomp)


def group_costs(base: Policy, prune: dict[str, float], score: Callable[[Policy], float]) -> dict[str, float]:
    """Each group's cost: ``score(base)`` minus ``score`` of the base with that group alone at
    its ratio in ``prune``. ``score`` is higher-is-better (the caller flips a lower-is-better
    metric). A group whose candidate fails to build or scores NaN costs infinity."""
    reference = score(base)
    costs: dict[str, float] = {}
    for group, ratio in prune.items():
        try:
            cost = reference - score(_with_pruning(base, {group: ratio}))
        except Exception:  # a group that cannot be pruned alone is simply not chosen
            cost = math.inf
        costs[group] = cost if math.isfinite(cost) else math.inf
    return costs


@dataclass(frozen=True)
class Sensitivity:
    """What the analysis found: the seed (None if none), the level it was built at (0: each
    group's lightest nonzero ratio), each group's ratio there and cost alone at that ratio."""

    seed: Policy | None = None
    level: int | None = None
    ratios: dict[str, float] = field(default_factory=dict)
    costs: dict[str, float] = field(default_factory=dict)


def sensitivity_seed(
    space: SearchSpace, base: Policy, score: Callable[[Policy], float], latency_us: Callable[[Policy], float], budget_us: float,
) -> Sensitivity:
    """The base policy with the cheapest groups pruned, added one at a time (by
    ``group_costs``) at the lightest level of pruning ratios where the policy can fit
    ``budget_us`` by ``latency_us``, until it does.

    Nothing is scored, and an empty result returned, when the base already fits (nothing to
    add) or when every group at its heaviest ratio still does not fit (no such seed exists)."""
    ratios = _ratios(space)
    if not ratios or latency_us(base) <= budget_us:
        return Sensitivity()
    levels = max(len(rs) for rs in ratios.values())
    level = next((k for k in range(levels) if latency_us(_with_pruning(base, _at_level(ratios, k))) <= budget_us), None)
    if level is None:
        return Sensitivity()
    below = _at_level(ratios, level - 1) if level > 0 else {}  # where every group already stands
    here = _at_level(ratios, level)
    moving = {g: r for g, r in here.items() if below.get(g) != r}
    costs = group_costs(base, moving, score)
    prune = dict(below)
    for group, cost in sorted(costs.items(), key=lambda kv: (kv[1], kv[0])):
        if cost == math.inf:
            break
        prune[group] = moving[group]
        policy = _with_pruning(base, prune)
        if latency_us(policy) <= budget_us:
            return Sensitivity(policy if space.contains(policy) else None, level, moving, costs)
    return Sensitivity(None, level, moving, costs)
