"""Budget-aware repair and free widening: move a proposal with the latency table.

A proposal the table predicts over budget would cost nothing but teach nothing. Repair makes
it faster, one dimension at a time, always taking the change with the most predicted
latency saved per importance lost, until the prediction fits the budget.

Latency is not monotone in the choices: on a CPU whose int8 kernels lack VNNI an int8 layer
can run slower than the same layer in fp32, and a channel count can run slower than a larger
one. A proposal that compresses where compressing less costs no predicted latency loses
accuracy for nothing; widening undoes such choices before the proposal is fine-tuned.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Container, Protocol

import torch
from torch import nn

from autocompress.compress._quant import int4_block_weight
from autocompress.inventory import LayerInventory
from autocompress.spaces import Policy, SearchSpace, kept_for
from autocompress.spaces._space import rank_for

__all__ = ["BudgetRepair", "FreeWidening", "ImportanceProxy", "Repair", "WeightL1Importance", "Widening", "more_aggressive"]

_EPS = 1e-9


class ImportanceProxy(Protocol):
    """How much of the model a choice removes: 0 at the uncompressed value, larger is worse.

    ``loss(dimension, value)`` for a dimension of the space (``prune/<group>``,
    ``bits/<layer>``, ``rank/<layer>``); losses of different dimensions add."""

    def loss(self, dimension: str, value: Any) -> float: ...


def more_aggressive(dimension: str, domain: tuple, value: Any) -> Any | None:
    """The next value of ``domain`` that compresses more than ``value``, or None at the end.

    More pruning, fewer bits, lower rank; a decomposition is a different form, not more
    compression, so it has no next value."""
    kind = dimension.split("/", 1)[0]
    if kind == "decomp":
        return None
    order = sorted(domain) if kind == "prune" else sorted(domain, reverse=True)
    i = order.index(value)
    return order[i + 1] if i + 1 < len(order) else None


class WeightL1Importance:
    """The share of the model's weight L1 norm a choice removes or perturbs.

    Pruning removes a group's lowest-L1 output channels (as the l1 criterion does); a bit
    width perturbs weights by their quantization error; a rank by the truncated-SVD residual
    (of the weight as a matrix, out x everything else). Each value is computed once, lazily.
    A cheap proxy for accuracy lost, good enough to rank choices against each other."""

    def __init__(self, model: nn.Module, inventory: LayerInventory, space: SearchSpace) -> None:
        self.inventory = inventory
        self.space = space
        modules = dict(model.named_modules())
        self._weights = {
            name: modules[name].weight.detach().float()
            for name in inventory.layers if name in modules and isinstance(getattr(modules[name], "weight", None), torch.Tensor)
        }
        self._total = float(sum(w.abs().sum() for w in self._weights.values())) or 1.0
        self._cache: dict[tuple[str, Any], float] = {}

    def loss(self, dimension: str, value: Any) -> float:
        key = (dimension, value)
        if key not in self._cache:
            kind, target = dimension.split("/", 1)
            with torch.no_grad():
                raw = {"prune": self._prune, "bits": self._bits, "rank": self._rank, "decomp": self._decomp}[kind](target, value)
            self._cache[key] = raw / self._total
        return self._cache[key]

    def _prune(self, group_name: str, ratio: float) -> float:
        group = self.inventory.groups[group_name]
        per_channel = torch.zeros(group.channels)
        for name in group.layers:
            w = self._weights.get(name)
            if w is not None and w.shape[0] == group.channels:
                per_channel += w.abs().reshape(group.channels, -1).sum(dim=1)
        removed = group.channels - kept_for(group, ratio, self.space.config.channel_multiple)
        return float(per_channel.sort().values[:removed].sum())

    def _bits(self, layer: str, bits: int) -> float:
        w = self._weights.get(layer)
        if w is None or bits == 32:
            return 0.0
        if bits == 16:
            q = w.half().float()
        elif bits == 4 and w.dim() == 2:
            q = int4_block_weight(w)
        else:
            flat = w.reshape(w.shape[0], -1)
            levels = 2 ** (bits - 1) - 1
            scale = flat.abs().amax(dim=1, keepdim=True).clamp_min(1e-12) / levels
            q = (torch.clamp(torch.round(flat / scale), -levels - 1, levels) * scale).reshape(w.shape)
        return float((w - q).abs().sum())

    def _decomp(self, layer_name: str, how: str) -> float:
        """The rank dimension carries a factorization's loss; its form adds none here."""
        return 0.0

    def _rank(self, layer_name: str, ratio: float) -> float:
        w = self._weights.get(layer_name)
        if w is None or ratio >= 1.0:
            return 0.0
        layer = self.inventory.layers[layer_name]
        r = rank_for(layer.in_channels, layer.out_channels, ratio, self.space.config.channel_multiple)
        m = w.reshape(w.shape[0], -1).double()
        u, s, vh = torch.linalg.svd(m, full_matrices=False)
        approx = (u[:, :r] * s[:r]) @ vh[:r]
        return float((m - approx).abs().sum())


@dataclass(frozen=True)
class Repair:
    """A repaired policy, its predicted latency and how many changes it took."""

    policy: Policy
    predicted_us: float
    steps: int


class BudgetRepair:
    """Greedy repair of over-budget policies, deterministic and bounded.

    Each step tries every other value of every dimension against the table
    (``predict_us``) and takes the one with the highest predicted latency saved per
    importance lost (a move that saves latency and restores importance goes first; ties: the
    space's dimension order). Every step strictly lowers the prediction, so no policy comes
    twice, and there are at most ``max_steps`` steps. Returns None when the budget cannot be
    reached that way or when the result was already seen (``seen`` holds policy digests).
    """

    def __init__(self, space: SearchSpace, predict_us: Callable[[Policy], float], importance: ImportanceProxy) -> None:
        self.space = space
        self.predict_us = predict_us
        self.importance = importance
        self.max_steps = 2 * sum(len(d) - 1 for d in space.domains.values())

    def __call__(self, policy: Policy, budget_us: float, seen: Container[str] = ()) -> Repair | None:
        params = self.space.to_params(policy)
        current = self.predict_us(policy)
        steps = 0
        while current > budget_us and steps < self.max_steps:
            best: tuple[float, str, Any, float] | None = None
            for name, domain in self.space.domains.items():
                # Every other value, not only the next notch: latency is not monotone (int8 on
                # few channels can be slower than fp32), so the move that saves may be two
                # notches on, or a step back that also restores importance.
                for nxt in domain:
                    if nxt == params[name]:
                        continue
                    us = self.predict_us(self.space.from_params({**params, name: nxt}))
                    saved = current - us
                    if saved <= 0:
                        continue
                    lost = max(self.importance.loss(name, nxt) - self.importance.loss(name, params[name]), 0.0)
                    score = saved / (lost + _EPS)
                    if best is None or score > best[0]:
                        best = (score, name, nxt, us)
            if best is None:
                return None  # no single change saves anything more
            _, name, nxt, current = best
            params[name] = nxt
            steps += 1
        repaired = self.space.from_params(params)
        if current > budget_us or repaired.digest in seen:
            return None
        return Repair(repaired, current, steps)


@dataclass(frozen=True)
class Widening:
    """A widened policy, its predicted latency, and the changes made, in order
    (``"bits/fc 8->32"``)."""

    policy: Policy
    predicted_us: float
    changes: tuple[str, ...]


class FreeWidening:
    """Greedy widening of a proposal where the table says it costs nothing, deterministic and
    bounded.

    Each step tries every value of every dimension that removes less of the model by
    ``importance`` (less pruning, more bits, a higher rank) and takes, among those the table
    (``predict_us``) predicts no slower than the policy so far, the one that restores the most
    importance (ties: the larger latency saved, then the space's dimension order). The
    prediction never rises and the importance lost strictly falls, so no policy comes twice,
    and there are at most ``max_steps`` steps. Returns None where no change is free.
    """

    def __init__(self, space: SearchSpace, predict_us: Callable[[Policy], float], importance: ImportanceProxy) -> None:
        self.space = space
        self.predict_us = predict_us
        self.importance = importance
        self.max_steps = sum(len(d) - 1 for d in space.domains.values())

    def __call__(self, policy: Policy) -> Widening | None:
        params = self.space.to_params(policy)
        current = self.predict_us(policy)
        changes: list[str] = []
        while len(changes) < self.max_steps:
            best: tuple[float, float, str, Any, float] | None = None
            for name, domain in self.space.domains.items():
                lost_now = self.importance.loss(name, params[name])
                for nxt in domain:
                    restored = lost_now - self.importance.loss(name, nxt)
                    if restored <= _EPS:
                        continue
                    us = self.predict_us(self.space.from_params({**params, name: nxt}))
                    if us > current:
                        continue
                    if best is None or (restored, current - us) > (best[0], best[1]):
                        best = (restored, current - us, name, nxt, us)
            if best is None:
                break
            _, _, name, nxt, current = best
            changes.append(f"{name} {params[name]}->{nxt}")
            params[name] = nxt
        if not changes:
            return None
        return Widening(self.space.from_params(params), current, tuple(changes))
