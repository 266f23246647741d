"""The conformance suite every searcher passes (in the spirit of Optuna's
``optuna/testing/pytest_samplers.py``).

Subclass :class:`SearcherConformance` in a test module and set ``searcher``::

    class TestTPE(SearcherConformance):
        searcher = "tpe"

pytest then runs every ``test_*`` check below for it: proposals inside the space, the same
seed giving the same proposals, NaN/inf/failed/infeasible outcomes tolerated, fixed-policy
trials, records kept in the trial store, and state saved and restored (proposals after a
restore equal those of an uninterrupted run, for deterministic searchers). No model is
trained: outcomes are a synthetic function of the policy, so the suite runs in seconds.
"""

from __future__ import annotations

import io
from functools import lru_cache
from pathlib import Path

import optuna
import torch

from autocompress.search import Outcome, Searcher, make_searcher
from autocompress.spaces import Policy, SearchSpace, SpaceConfig, build_space

__all__ = ["SearcherConformance", "synthetic_latency_us", "synthetic_metric", "tiny_space"]

BUDGET_US = 800.0


@lru_cache(maxsize=1)
def tiny_space() -> SearchSpace:
    """A small ResNet's space: coupled groups, convs and a Linear; prune, bits and rank dimensions."""
    from autocompress.inventory import build_inventory
    from autocompress.tasks.models import DemoResNet

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model = DemoResNet(width=8).eval()
    inventory = build_inventory(model, (torch.zeros(1, 1, 28, 28),))
    return build_space(inventory, SpaceConfig(prune_ratios=(0.0, 0.25, 0.5), bits=(32, 8), rank_ratios=(1.0, 0.5)))


def _compression(space: SearchSpace, policy: Policy) -> list[float]:
    """Per dimension, how far along its domain (0: untouched, 1: most compressed) the policy is."""
    params = space.to_params(policy)
    out = []
    for name, domain in space.domains.items():
        order = sorted(domain) if name.startswith("prune/") else sorted(domain, reverse=True)
        out.append(order.index(params[name]) / (len(order) - 1))
    return out


def synthetic_latency_us(space: SearchSpace, policy: Policy) -> float:
    """1000 us untouched, down to 400 us fully compressed."""
    c = _compression(space, policy)
    return 1000.0 - 600.0 * sum(c) / len(c)


def synthetic_metric(space: SearchSpace, policy: Policy) -> float:
    """Highest at a known middle compression, lower toward both ends."""
    c = _compression(space, policy)
    return 1.0 - sum((x - 0.5) ** 2 for x in c) / len(c)


class SearcherConformance:
    """Checks every searcher must pass. Set ``searcher`` (a ``make_searcher`` name)."""

    searcher: str = ""
    trials: int = 12
    deterministic: bool = True  # same seed and history -> same proposals, also across a restore

    def create(self, storage: str | None, seed: int = 0) -> Searcher:
        space = tiny_space()
        return make_searcher(self.searcher, space, storage, seed, True, lambda p: synthetic_latency_us(space, p), BUDGET_US)

    @staticmethod
    def outcome(policy: Policy) -> Outcome:
        space = tiny_space()
        latency = synthetic_latency_us(space, policy)
        if latency > BUDGET_US:
            return Outcome("infeasible", constraint=(latency - BUDGET_US) / 1000)
        return Outcome("completed", synthetic_metric(space, policy), latency / 1000, (latency - BUDGET_US) / 1000)

    def drive(self, searcher: Searcher, n: int) -> list[Policy]:
        proposals = []
        for _ in range(n):
            asked = searcher.ask()
            assert asked is not None, f"{self.searcher} stopped proposing"
            trial_id, policy = asked
            searcher.record(trial_id, {"digest": policy.digest})
            searcher.tell(trial_id, self.outcome(policy))
            proposals.append(policy)
        return proposals

    def test_proposals_are_inside_the_space(self) -> None:
        space = tiny_space()
        for policy in self.drive(self.create(None), self.trials):
            assert space.contains(policy), f"{self.searcher} proposed {policy.to_dict()} outside the space"

    def test_same_seed_same_proposals(self) -> None:
        if not self.deterministic:
            return
        first = self.drive(self.create(None, seed=3), self.trials)
        second = self.drive(self.create(None, seed=3), self.trials)
        assert [p.digest for p in first] == [p.digest for p in second]
        assert len({p.digest for p in first}) > 1, "proposals never change"

    def test_non_finite_failed_and_infeasible_outcomes_are_tolerated(self) -> None:
        searcher = self.create(None)
        bad = [
            Outcome("completed", float("nan"), 0.5), Outcome("completed", 0.9, float("inf")), Outcome("failed", reason="boom"),
            Outcome("infeasible", constraint=0.3), Outcome("completed", float("-inf"), 0.4),
        ]
        space = tiny_space()
        for i in range(self.trials):
            trial_id, policy = searcher.ask()  # type: ignore[misc]
            assert space.contains(policy)
            searcher.tell(trial_id, bad[i % len(bad)] if i % 2 == 0 else self.outcome(policy))
        study: optuna.Study = searcher.study  # type: ignore[attr-defined]
        trials = study.get_trials(deepcopy=False)
        assert len(trials) == self.trials
        assert all(t.state.is_finished() for t in trials)
        assert {t.user_attrs["status"] for t in trials} >= {"completed", "failed", "infeasible"}
        non_finite = [t for t in trials if "non-finite" in t.user_attrs.get("reason", "")]
        assert non_finite and all(t.state == optuna.trial.TrialState.FAIL for t in non_finite)

    def test_fixed_policy_trials_and_records_are_kept(self) -> None:
        searcher = self.create(None)
        self.drive(searcher, 2)
        space = tiny_space()
        fixed = space.extreme()
        trial_id = searcher.ask_policy(fixed, {"repair_of": 1})
        searcher.record(trial_id, {"note": "fixed"})
        searcher.tell(trial_id, self.outcome(fixed))
        self.drive(searcher, 2)
        study: optuna.Study = searcher.study  # type: ignore[attr-defined]
        trial = study.trials[trial_id]
        assert space.from_params(trial.params) == fixed
        assert trial.user_attrs["repair_of"] == 1 and trial.user_attrs["note"] == "fixed"
        assert trial.user_attrs["overhead_s"] >= 0.0 and trial.user_attrs["status"] == self.outcome(fixed).status

    def test_state_round_trip_continues_where_it_stopped(self, tmp_path: Path) -> None:
        k, m = self.trials // 2, self.trials - self.trials // 2
        uninterrupted = self.drive(self.create(f"sqlite:///{tmp_path / 'a.db'}", seed=5), k + m)
        storage = f"sqlite:///{tmp_path / 'b.db'}"
        first = self.create(storage, seed=5)
        before = self.drive(first, k)
        buf = io.BytesIO()
        torch.save(first.state_dict(), buf)  # the state must survive a safe load
        del first
        state = torch.load(io.BytesIO(buf.getvalue()), weights_only=True)
        resumed = self.create(storage, seed=5)
        resumed.load_state_dict(state)
        after = self.drive(resumed, m)
        space = tiny_space()
        assert all(space.contains(p) for p in after)
        if self.deterministic:
            assert [p.digest for p in before + after] == [p.digest for p in uninterrupted]
        assert len(resumed.study.get_trials(deepcopy=False)) == k + m  # type: ignore[attr-defined]
