"""Budget repair inside a real search: an over-budget proposal is told infeasible and its
repair, within budget by the table, is fine-tuned as its own linked trial."""

from __future__ import annotations

import json
from pathlib import Path

import optuna
import pytest

from autocompress.evaluators import DistillConfig
from autocompress.latency_lut import LatencyTable, OrtCpuBackend
from autocompress.spaces import SpaceConfig, build_space
from autocompress.study import SearchConfig, run_search, seed_policies
from autocompress.task import load_task

EXAMPLE = str(Path(__file__).resolve().parents[1] / "examples" / "digits_task.py") + ":build"
SPACE = SpaceConfig(prune_ratios=(0.0, 0.5, 0.75), rank_ratios=(1.0,), channel_multiple=4)


def _config(run_dir: Path, budget: str, **kw) -> SearchConfig:
    return SearchConfig(task=EXAMPLE, latency_budget=budget, trials=1, run_dir=str(run_dir), seed=0,
                        distill=DistillConfig(steps=2), space=SPACE, calibration_batches=1, **kw)


@pytest.mark.slow  # measures a latency table and fine-tunes: minutes on 2 shared cores
def test_an_over_budget_proposal_yields_a_repaired_trial_within_budget(tmp_path):
    from autocompress.inventory import build_inventory

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
