"""Every searcher passes the shipped conformance suite; the AMC agent learns; names and
objectives are checked; budget repair is bounded, deterministic and within budget."""

from __future__ import annotations

import random

import pytest

from autocompress.errors import UserError
from autocompress.search import (
    AMCConfig, AMCSearcher, BudgetRepair, FreeWidening, Outcome, make_searcher, parse_objectives, sensitivity_seed,
)
from autocompress.search._repair import more_aggressive
from autocompress.spaces import Policy, SearchSpace, SpaceConfig, build_space
from autocompress.testing.searchers import SearcherConformance, synthetic_latency_us, tiny_space


class TestTPE(SearcherConformance):
    searcher = "tpe"


class TestNSGA2(SearcherConformance):
    searcher = "nsga2"
    trials = 20  # past the first generation (population 16)


class TestNSGA3(SearcherConformance):
    searcher = "nsga3"


class TestRandom(SearcherConformance):
    searcher = "random"


class TestGP(SearcherConformance):
    searcher = "gp"
    trials = 10  # past its 8 start-up trials; each GP fit takes a while


class TestOptunaClassName(SearcherConformance):
    searcher = "optuna:TPESampler"


class TestAMC(SearcherConformance):
    searcher = "amc"
    trials = 20  # past the warm-up, so the networks are trained and their state saved


@pytest.mark.parametrize("name, needle", [
    ("bogus", "tpe"), ("optuna:CmaEsSampler", "single-objective"), ("qmc", "numerical parameters only"),
    ("optuna:GridSampler", "grid"), ("optuna:Nope", "optuna:TPESampler"),
])
def test_unknown_or_unfit_searchers_are_refused_with_the_valid_names(name, needle):
    space = tiny_space()
    with pytest.raises(UserError) as err:
        make_searcher(name, space, None, 0, True, lambda p: synthetic_latency_us(space, p), 800.0)
    message = str(err.value)
    assert needle in message and "\n" not in message and "amc" in message


def test_objectives_parse_and_size_is_a_third_objective():
    assert parse_objectives("metric,latency,size") == ("metric", "latency", "size")
    for bad in ("latency,metric", "metric", "metric,latency,speed", "metric,latency,size,size"):
        with pytest.raises(UserError):
            parse_objectives(bad)
    space = tiny_space()
    searcher = make_searcher("nsga2", space, None, 0, True, lambda p: synthetic_latency_us(space, p), 800.0,
                             objectives=("metric", "latency", "size"))
    trial_id, _ = searcher.ask()  # type: ignore[misc]
    searcher.tell(trial_id, Outcome("completed", 0.9, 0.5, -0.1, size_bytes=1234.0))
    assert searcher.study.trials[0].values == [0.9, 0.5, 1234.0]  # type: ignore[attr-defined]
    trial_id, _ = searcher.ask()  # type: ignore[misc]
    searcher.tell(trial_id, Outcome("completed", 0.9, 0.5, -0.1))  # size missing: not a finite objective
    assert searcher.study.trials[1].state.name == "FAIL"  # type: ignore[attr-defined]


def _learning_problem(resnet_inventory) -> tuple[SearchSpace, AMCSearcher, dict[str, float]]:
    space = build_space(resnet_inventory, SpaceConfig(prune_ratios=(0.0, 0.25, 0.5, 0.75), bits=(32, 8), rank_ratios=(1.0,)))
    searcher = AMCSearcher.create(space, None, lambda p: 100.0, 1000.0, True, seed=0, config=AMCConfig(gamma=0.5))
    # The optimum: per unit, prune fully or not at all and quantize or not, alternating by unit.
    target = {d: float((t + k) % 2) for t, u in enumerate(searcher.units) for k, d in u.dims}
    return space, searcher, target


def _reward(space: SearchSpace, policy, target: dict[str, float]) -> float:
    params = space.to_params(policy)
    err = 0.0
    for d, want in target.items():
        order = sorted(space.domains[d]) if d.startswith("prune/") else sorted(space.domains[d], reverse=True)
        err += abs(order.index(params[d]) / (len(order) - 1) - want)
    return 1.0 - err / len(target)


def test_amc_learns_a_synthetic_problem_with_a_known_optimum(resnet_inventory):
    space, searcher, target = _learning_problem(resnet_inventory)
    rng = random.Random(0)
    random_rewards = sorted(_reward(space, space.sample(rng), target) for _ in range(200))
    for _ in range(150):
        trial_id, policy = searcher.ask()  # type: ignore[misc]
        searcher.tell(trial_id, Outcome("completed", _reward(space, policy, target), 0.1))
    greedy = _reward(space, searcher.greedy_policy(), target)
    assert greedy >= 0.85, greedy  # the optimum scores 1.0
    assert greedy > random_rewards[int(0.99 * len(random_rewards))]  # better than 99% of random policies
    assert sum(random_rewards) / len(random_rewards) < 0.6


def test_amc_action_wall_keeps_every_proposal_within_a_reachable_budget(resnet_inventory):
    space = build_space(resnet_inventory, SpaceConfig(prune_ratios=(0.0, 0.5, 0.75), bits=(32, 8), rank_ratios=(1.0,)))

    def latency(p):
        return synthetic_latency_us(space, p)

    budget = latency(space.extreme()) + 50.0  # only heavily compressed policies fit
    searcher = AMCSearcher.create(space, None, latency, budget, True, seed=1)
    for _ in range(20):
        trial_id, policy = searcher.ask()  # type: ignore[misc]
        assert latency(policy) <= budget
        searcher.tell(trial_id, Outcome("completed", 0.5, latency(policy) / 1000))


def test_repair_reaches_the_budget_deterministically_and_skips_seen_policies():
    space = tiny_space()

    def predict(p):
        return synthetic_latency_us(space, p)

    class ParamsCount:  # importance: every notch costs the same, so latency saved decides
        def loss(self, dimension, value):
            order = sorted(space.domains[dimension]) if dimension.startswith("prune/") else sorted(space.domains[dimension], reverse=True)
            return float(order.index(value))

    repair = BudgetRepair(space, predict, ParamsCount())
    start = space.baseline()
    budget = 850.0
    first = repair(start, budget)
    assert first is not None and predict(first.policy) <= budget and first.predicted_us == predict(first.policy)
    assert 0 < first.steps <= repair.max_steps and space.contains(first.policy)
    assert repair(start, budget) == first  # deterministic
    assert repair(start, budget, seen={first.policy.digest}) is None
    assert repair(start, 100.0) is None  # unreachable: bounded, gives up
    for name, domain in space.domains.items():  # every dimension only moved toward compression
        value = space.to_params(first.policy)[name]
        walk, v = [space.to_params(start)[name]], space.to_params(start)[name]
        while (v := more_aggressive(name, domain, v)) is not None:
            walk.append(v)
        assert value in walk


def test_widening_undoes_compression_the_table_says_costs_nothing():
    """int8 on the first conv runs slower than fp32 there, and pruning the first group to its
    middle ratio slower than not pruning it (a channel count off the kernels' tiles): a
    proposal with either gets them back, and keeps every choice that saves latency."""
    space = tiny_space()
    bits_dim = next(n for n in space.domains if n.startswith("bits/"))
    prune_dim = next(n for n in space.domains if n.startswith("prune/"))
    middle = sorted(space.domains[prune_dim])[1]

    def predict(p):
        params = space.to_params(p)
        us = synthetic_latency_us(space, p)
        us += 80.0 if params[bits_dim] == 8 else 0.0  # more than the 600 / dims its notch saves
        return us + (80.0 if params[prune_dim] == middle else 0.0)

    class ParamsCount:
        def loss(self, dimension, value):
            order = sorted(space.domains[dimension]) if dimension.startswith("prune/") else sorted(space.domains[dimension], reverse=True)
            return float(order.index(value))

    widen = FreeWidening(space, predict, ParamsCount())
    extreme = space.to_params(space.extreme())
    proposal = space.from_params({**extreme, bits_dim: 8, prune_dim: middle})
    wide = widen(proposal)
    assert wide is not None and wide.predicted_us == predict(wide.policy) <= predict(proposal)
    params = space.to_params(wide.policy)
    assert params[bits_dim] == 32 and params[prune_dim] == 0.0
    assert f"{bits_dim} 8->32" in wide.changes and f"{prune_dim} {middle}->0.0" in wide.changes
    # Every other choice saves latency, so it stays.
    assert {k: v for k, v in params.items() if k not in (bits_dim, prune_dim)} == {
        k: v for k, v in extreme.items() if k not in (bits_dim, prune_dim)}
    assert widen(proposal) == wide  # deterministic
    assert widen(wide.policy) is None  # nothing more is free
    assert widen(space.baseline()) is None  # nothing to undo
    # Under the plain synthetic latency every compression saves time: nothing is free.
    assert FreeWidening(space, lambda p: synthetic_latency_us(space, p), ParamsCount())(proposal) is None


def test_amc_saves_its_state_after_each_tell_and_a_new_process_restores_it(tmp_path):
    space = tiny_space()

    def latency(p):
        return synthetic_latency_us(space, p)

    storage = f"sqlite:///{tmp_path / 'study.db'}"
    first = make_searcher("amc", space, storage, 2, True, latency, 800.0, run_dir=tmp_path)
    for _ in range(3):
        trial_id, policy = first.ask()  # type: ignore[misc]
        first.tell(trial_id, SearcherConformance.outcome(policy))
    saved = tmp_path / "amc_state.pt"
    assert saved.is_file() and not list(tmp_path.glob(".amc_state.pt.*"))  # written atomically, no temporary left
    again = make_searcher("amc", space, storage, 2, True, latency, 800.0, run_dir=tmp_path)
    assert again.episodes_told == 3 and again.buffer_count == first.buffer_count  # type: ignore[union-attr]
    assert again.ask()[1] == first.ask()[1]  # type: ignore[index]
    with pytest.raises(UserError):  # another seed must not silently reuse the agent
        make_searcher("amc", space, storage, 3, True, latency, 800.0, run_dir=tmp_path)


def test_sensitivity_seed_prunes_the_cheapest_groups_until_the_budget_fits():
    space = tiny_space()
    groups = sorted(n.split("/", 1)[1] for n in space.domains if n.startswith("prune/"))
    lightest = {g: min(r for r in space.domains[f"prune/{g}"] if r > 0) for g in groups}
    int8 = Policy(bits={n.split("/", 1)[1]: 8 for n in space.domains if n.startswith("bits/")})
    cost = {g: 0.01 * (i + 1) for i, g in enumerate(reversed(groups))}  # the last group by name is cheapest
    cost[groups[-2]] = float("nan")  # a group whose candidate scores NaN is never chosen
    scored = []

    def score(p):
        scored.append(p)
        pruned = [g for g in p.prune if p.prune[g] > 0]
        assert p.bits == int8.bits and len(pruned) <= 1 and all(p.prune[g] == lightest[g] for g in pruned)  # one group at its lightest
        return 1.0 - sum(cost[g] for g in pruned)

    def latency(p):  # each pruned group saves 10 us of 100
        return 100.0 - 10.0 * sum(1 for r in p.prune.values() if r > 0)

    found = sensitivity_seed(space, int8, score, latency, budget_us=75.0)
    assert len(scored) == len(groups) + 1 and found.level == 0  # the base, then each group alone
    assert found.costs[groups[-1]] == pytest.approx(0.01) and found.costs[groups[-2]] == float("inf")
    cheapest = sorted((g for g in groups if g != groups[-2]), key=lambda g: cost[g])[:3]
    assert found.seed is not None and set(found.seed.prune) == set(cheapest) and latency(found.seed) <= 75.0
    assert found.seed.bits == int8.bits and space.contains(found.seed)

    scored.clear()  # nothing is scored where the base fits, or where no such seed can fit
    assert sensitivity_seed(space, int8, score, latency, budget_us=100.0).costs == {}
    assert sensitivity_seed(space, int8, score, latency, budget_us=100.0 - 10.0 * len(groups) - 1).seed is None
    assert not scored


def test_sensitivity_seed_climbs_to_heavier_ratios_where_the_lightest_cannot_fit():
    space = build_space(tiny_space().inventory, SpaceConfig(prune_ratios=(0.0, 0.25, 0.5, 0.75), bits=(32, 8), rank_ratios=(1.0,)))
    ratios = {n.split("/", 1)[1]: sorted(r for r in d if r > 0) for n, d in space.domains.items() if n.startswith("prune/")}
    assert any(len(rs) >= 2 for rs in ratios.values())
    int8 = Policy(bits={n.split("/", 1)[1]: 8 for n in space.domains if n.startswith("bits/")})

    def latency(p):  # 100 us, less 20 us per unit of pruning ratio
        return 100.0 - 20.0 * sum(p.prune.values())

    at_first = latency(Policy(prune={g: rs[0] for g, rs in ratios.items()}))
    at_second = latency(Policy(prune={g: rs[min(1, len(rs) - 1)] for g, rs in ratios.items()}))
    scored = []
    found = sensitivity_seed(space, int8, lambda p: scored.append(p) or -sum(p.prune.values()), latency, (at_first + at_second) / 2)
    assert found.level == 1 and found.seed is not None and latency(found.seed) <= (at_first + at_second) / 2
    assert all(found.seed.prune[g] >= rs[0] for g, rs in ratios.items())  # every group at least at its first ratio
    assert set(found.costs) == {g for g, rs in ratios.items() if len(rs) >= 2}  # only the groups that can move were scored
    assert len(scored) == len(found.costs) + 1


def test_the_fastest_policy_is_found_where_the_most_aggressive_precision_is_slow():
    """4-bit everywhere slower than int8 everywhere, and one layer flipped alone paying the
    conversions around it: the descent from the most aggressive policy stops there, the one
    from int8 everywhere finds the fastest."""
    space = tiny_space()
    space = build_space(space.inventory, SpaceConfig(prune_ratios=(0.0, 0.5), bits=(32, 8, 4), rank_ratios=(1.0,)))
    per_layer = {32: 10.0, 8: 3.0, 4: 5.0}

    def latency(p):
        widths = [p.bits_of(n.split("/", 1)[1]) for n in space.domains if n.startswith("bits/")]
        return sum(per_layer[w] for w in widths) + 20.0 * (len(set(widths)) - 1) - sum(p.prune.values())

    extreme = space.extreme()
    assert 4 in extreme.bits.values()
    policy, us = space.fastest(latency)
    assert set(policy.bits.values()) == {8} and us == latency(policy) < latency(extreme)
