"""Budget repair and free widening inside a real search: an over-budget proposal is told
infeasible and its repair, within budget by the table, is fine-tuned as its own linked
trial; a within-budget proposal with choices the table says cost nothing runs without them."""

from __future__ import annotations

import json
from pathlib import Path

import optuna
import pytest

from autocompress.evaluators import DistillConfig
from autocompress.latency_lut import LatencyTable, OrtCpuBackend
from autocompress.spaces import SpaceConfig, build_space
from autocompress.inventory import build_inventory
from autocompress.study import SearchConfig, run_search, seed_policies
from autocompress.task import load_task

EXAMPLE = str(Path(__file__).resolve().parents[1] / "examples" / "digits_task.py") + ":build"
SPACE = SpaceConfig(prune_ratios=(0.0, 0.5, 0.75), rank_ratios=(1.0,), channel_multiple=4)


def _config(run_dir: Path, budget: str, **kw) -> SearchConfig:
    return SearchConfig(task=EXAMPLE, latency_budget=budget, trials=1, run_dir=str(run_dir), seed=0,
                        distill=DistillConfig(steps=2), space=SPACE, calibration_batches=1, calibration_seconds=0.0, **kw)


@pytest.mark.slow  # measures a latency table and fine-tunes: minutes on 2 shared cores
def test_an_over_budget_proposal_yields_a_repaired_trial_within_budget(tmp_path):
    task = load_task(EXAMPLE)
    first = tmp_path / "first"
    run_search(_config(first, "0.95x"), task=task)  # measures and calibrates the table
    inventory = build_inventory(task.model, task.example_inputs)
    space = build_space(inventory, SPACE)
    table = LatencyTable.open(first / "latency_table.json", OrtCpuBackend(), channel_multiple=4)
    seed_us = table.predict_us(inventory, seed_policies(space)[0])  # the first proposal: int8 everywhere
    _, fastest_us = table.fastest(inventory, space)
    budget_us = fastest_us + 0.5 * (seed_us - fastest_us)  # the seed is over it, pruning can reach it

    run_dir = tmp_path / "repair"
    run_dir.mkdir()
    (run_dir / "latency_table.json").write_bytes((first / "latency_table.json").read_bytes())
    run_search(_config(run_dir, f"{budget_us:.1f}us", share_table=False), task=task)

    trials = optuna.load_study(study_name="autocompress", storage=f"sqlite:///{run_dir / 'study.db'}").get_trials()
    budget_ms = json.loads((run_dir / "run.json").read_text())["budget_ms"]
    originals = [t for t in trials if "repaired_to" in t.user_attrs]
    assert len(originals) == 1  # one trial to fine-tune: the first repair is it
    original = originals[0]
    assert original.user_attrs["status"] == "infeasible" and original.user_attrs["predicted_ms"] > budget_ms
    repaired = trials[original.user_attrs["repaired_to"]]
    assert repaired.user_attrs["repair_of"] == original.number
    assert repaired.user_attrs["status"] == "completed" and repaired.user_attrs["predicted_ms"] <= budget_ms
    assert repaired.user_attrs["overhead_s"] > 0 and repaired.user_attrs["finetune_s"] > 0
    assert json.loads((run_dir / "pareto.json").read_text())["counts"]["repaired"] == 1


def test_the_sensitivity_seed_is_proposed_after_int8_and_fits_the_budget(tmp_path, monkeypatch):
    """The table's predictions are replaced by a fixed function of the policy, so the budget
    sits between int8 everywhere and the uniform pruning whatever the machine's speed does;
    the groups' costs, the fine-tune and the export are real."""
    def predict_us(self, inventory, policy, local=True):  # 100 us; int8 saves 3 us a layer, each pruned group 5 us
        return 100.0 - 3.0 * sum(1 for b in policy.bits.values() if b == 8) - 5.0 * sum(1 for r in policy.prune.values() if r > 0)

    monkeypatch.setattr(LatencyTable, "predict_us", predict_us)
    task = load_task(EXAMPLE)
    run_dir = tmp_path / "seeded"
    run_search(_config(run_dir, "60us", share_table=False, repair=False), task=task)

    manifest = json.loads((run_dir / "run.json").read_text())
    sensitivity = manifest["sensitivity"]
    space = build_space(build_inventory(task.model, task.example_inputs), SPACE)
    int8 = seed_policies(space)[0]
    assert set(sensitivity["costs"]) == {n.split("/", 1)[1] for n in space.domains if n.startswith("prune/")}
    assert sensitivity["base"] == int8.to_dict() and sensitivity["level"] == 0
    assert sensitivity["bn_batches"] == 8  # each candidate's BatchNorm statistics re-estimated before its score
    trials = optuna.load_study(study_name="autocompress", storage=f"sqlite:///{run_dir / 'study.db'}").get_trials()
    assert trials[0].user_attrs["policy"] == int8.to_dict() and trials[0].user_attrs["status"] == "infeasible"
    seeded = trials[1]  # right after int8 everywhere, before the uniform pruning
    assert seeded.user_attrs["seed"] == "sensitivity" and seeded.user_attrs["policy"] == sensitivity["seed"]
    assert seeded.user_attrs["status"] == "completed" and seeded.user_attrs["predicted_ms"] <= manifest["budget_ms"]
    chosen = set(sensitivity["seed"]["prune"])
    assert len(chosen) == 2  # 100 - 30 (int8) - 2 x 5 = 60 us
    assert max(sensitivity["costs"][g] for g in chosen) <= min(c for g, c in sensitivity["costs"].items() if g not in chosen)


def test_a_proposal_runs_without_the_compression_the_table_says_is_free(tmp_path, monkeypatch):
    """int8 costs 1 us a layer and pruning a group saves 20 us (a target whose int8 kernels
    are slower than its float ones): the second seed, int8 with every group lightly pruned,
    is fine-tuned in fp32 with the same pruning; the trial keeps what the sampler proposed."""
    def predict_us(self, inventory, policy, local=True):
        return 100.0 + sum(1 for b in policy.bits.values() if b == 8) - 20.0 * sum(1 for r in policy.prune.values() if r > 0)

    monkeypatch.setattr(LatencyTable, "predict_us", predict_us)
    task = load_task(EXAMPLE)
    space = build_space(build_inventory(task.model, task.example_inputs), SPACE)
    proposed = seed_policies(space)[1]
    assert proposed.bits and proposed.prune

    run_dir = tmp_path / "widened"
    run_search(_config(run_dir, "99us", share_table=False, repair=False, sensitivity_seed=False), task=task)
    trials = optuna.load_study(study_name="autocompress", storage=f"sqlite:///{run_dir / 'study.db'}").get_trials()
    assert trials[0].user_attrs["status"] == "infeasible"  # int8 everywhere: 100 us and more
    widened = trials[1]
    assert widened.user_attrs["status"] == "completed" and widened.user_attrs["widened_from"]["policy"] == proposed.to_dict()
    assert widened.user_attrs["policy"] == {**proposed.to_dict(), "bits": {}}  # fp32, pruned as proposed
    assert sorted(widened.user_attrs["widened"]) == sorted(f"bits/{name} 8->32" for name in proposed.bits)
    assert widened.user_attrs["predicted_ms"] < widened.user_attrs["widened_from"]["predicted_ms"]
    assert all(widened.params[f"bits/{name}"] == 8 for name in proposed.bits)  # the sampler's own proposal
    pareto = json.loads((run_dir / "pareto.json").read_text())
    assert pareto["counts"]["widened"] == 1


def test_widening_is_off_where_size_is_an_objective_or_asked_off():
    """A wider engine is a larger one: where size is an objective, int8 is a trade, not free."""
    assert SearchConfig().widens
    assert not SearchConfig(objectives=("metric", "latency", "size")).widens and not SearchConfig(widen=False).widens


def test_a_run_recorded_before_widening_resumes_without_it():
    from dataclasses import asdict

    recorded = asdict(SearchConfig())
    del recorded["widen"]
    assert SearchConfig.from_dict(recorded).widen is False and SearchConfig.from_dict(asdict(SearchConfig())).widen is True
