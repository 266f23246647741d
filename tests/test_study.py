"""A real search on a tiny task: every stage runs, and the run directory holds what it promises."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import optuna
import pytest

from autocompress.evaluators import DistillConfig
from autocompress.spaces import SpaceConfig
from autocompress.study import SearchConfig, run_search, seed_policies
from autocompress.task import load_task

EXAMPLE = str(Path(__file__).resolve().parents[1] / "examples" / "digits_task.py") + ":build"


@pytest.fixture(scope="module")
def digits_task():
    return load_task(EXAMPLE)


def _config(run_dir: Path, budget: str, trials: int = 3, **kw) -> SearchConfig:
    return SearchConfig(
        task=EXAMPLE, latency_budget=budget, trials=trials, run_dir=str(run_dir), seed=0,
        distill=DistillConfig(steps=4), space=SpaceConfig(prune_ratios=(0.0, 0.5, 0.75), rank_ratios=(1.0,), channel_multiple=4),
        calibration_batches=1, calibration_seconds=0.0, **kw,
    )


def _trials(run_dir: Path) -> list[optuna.trial.FrozenTrial]:
    study = optuna.load_study(study_name="autocompress", storage=f"sqlite:///{run_dir / 'study.db'}")
    return study.get_trials()


@pytest.fixture(scope="module")
def digits_run(tmp_path_factory, digits_task):
    """One search at 0.9x, for the tests that read it (copy it before changing it)."""
    run_dir = tmp_path_factory.mktemp("digits") / "run"
    return run_dir, run_search(_config(run_dir, "0.9x"), task=digits_task)


def test_search_writes_front_engines_and_report(digits_run):
    run_dir, result = digits_run

    manifest = json.loads((run_dir / "run.json").read_text())
    assert manifest["task"] == "digits" and manifest["config"]["seed"] == 0
    assert manifest["profile"]["runtime"] == "onnxruntime" and "torch" in manifest["versions"]
    pareto = json.loads((run_dir / "pareto.json").read_text())
    assert pareto["budget_ms"] == pytest.approx(0.9 * pareto["baseline"]["latency_ms"])
    assert len(pareto["members"]) == len(result.front)
    for member in pareto["members"]:
        assert Path(member["engine_path"]).is_file()
        assert member["engine"]["ok"]
        assert member["measured_ms"] <= pareto["budget_ms"] * 1.05
        assert member["size_bytes"] == Path(member["engine_path"]).stat().st_size
        assert set(member["policy"]) == {"prune", "bits", "rank"}
    html = (run_dir / "report.html").read_text()
    assert "<svg" in html and "http://" not in html.replace("http://www.w3.org/2000/svg", "")
    completed = [t for t in _trials(run_dir) if t.user_attrs.get("status") == "completed"]
    assert len(completed) == 3
    # Every engine was timed beside the original and the most compressed model, so the table's
    # error is also given apart from drift, by the latter's timings.
    assert all(t.user_attrs["engine"]["original_latency_us"] > 0 and t.user_attrs["engine"]["tracker_latency_us"] > 0 for t in completed)
    assert manifest["baseline"]["tracker_latency_us"] > 0
    # ... in a timer that times it again in a passing disturbance, and says how often it did
    assert all(t.user_attrs["engine"]["timed_again"] in (0, 1, 2) and isinstance(t.user_attrs["engine"]["disturbed"], bool)
               for t in completed)
    steady = pareto["fidelity"]["at_calibration_speed"]
    assert steady["candidates"] == pareto["fidelity"]["candidates"] == 3 and 0.0 <= steady["within_10pct"] <= 1.0
    assert steady["by"] == "the most compressed model"
    assert isinstance(pareto["fidelity"]["uneven"], float)  # the two models' speed ratio against the start's
    assert "At the machine speed of the table" in html
    # The front is re-timed beside both whole models and held to the budget at the start's speed.
    assert set(pareto["retime_speed"]) == {"original", "most_compressed"}
    assert all(member["at_start_ms"] <= pareto["budget_ms"] * 1.05 for member in pareto["members"])


class _SlowMachine:
    """A backend whose every timing reads ``factor`` times longer: a machine that slowed down."""

    def __init__(self, backend, factor: float) -> None:
        self.backend, self.factor = backend, factor

    def __getattr__(self, name):
        return getattr(self.backend, name)

    def measure_many(self, items, rounds=5):
        from autocompress.latency_lut import Measurement

        f = self.factor
        return [Measurement(m.median_us * f, m.p10_us * f, m.p90_us * f, m.runs) for m in self.backend.measure_many(items, rounds)]


def test_a_front_retimed_on_a_slowed_machine_keeps_its_members(tmp_path, digits_task, digits_run):
    """Re-timed on a machine three times slower than at the start, every engine measures over
    the budget; held at the start's speed by the original timed in the same rounds, the
    members stay, and the terminal table and the report say why."""
    from rich.console import Console

    from autocompress.latency_lut import Measurable, backend_for_profile
    from autocompress.study import finalize_run

    run_dir = tmp_path / "run"
    shutil.copytree(digits_run[0], run_dir)
    before = json.loads((run_dir / "pareto.json").read_text())
    assert before["members"]
    backend = backend_for_profile(before["profile"], int(digits_task.example_inputs[0].shape[0]))
    original = Measurable.from_module(digits_task.model, digits_task.example_inputs, dynamic_batch=True)
    console = Console(record=True, width=400)
    result = finalize_run(run_dir, digits_task.metric_name, console, _SlowMachine(backend, 3.0), original)

    after = json.loads((run_dir / "pareto.json").read_text())
    assert result.front and after["members"]
    assert after["retime_speed"]["original"] > 2.0 and "most_compressed" not in after["retime_speed"]
    assert any(m["measured_ms"] > after["budget_ms"] * 1.05 for m in after["members"])  # the old rule dropped these
    assert all(m["at_start_ms"] <= after["budget_ms"] * 1.05 for m in after["members"])
    # at the start's speed: the timing over the original's slowdown in the same rounds
    assert all(m["at_start_ms"] == pytest.approx(m["measured_ms"] / after["retime_speed"]["original"]) for m in after["members"])
    assert all(json.loads((run_dir / m["sidecar_file"]).read_text())["verification"]["at_start_ms"] == m["at_start_ms"]
               for m in after["members"])
    printed = " ".join(console.export_text().split())  # the caption wraps
    assert "held to the budget at the start's speed" in printed and "at start ms" in printed
    assert "held to the budget at the start&#x27;s speed" in (run_dir / "report.html").read_text()


def test_the_budget_holds_an_engine_at_the_start_speed_unless_its_rounds_ran_unevenly():
    from autocompress.study import budget_latency_us

    # The most compressed model ran 0.10 ms at the start and 0.12 ms beside the engine, the
    # original 20% slower too: the engine's 0.24 ms is 0.20 ms at the start's speed.
    even = {"latency_us": 240.0, "original_latency_us": 480.0, "tracker_latency_us": 120.0}
    assert budget_latency_us(even, 400.0, 100.0) == pytest.approx(200.0)
    # The original as at the start, the most compressed model 50% slower: the two disagree
    # beyond UNEVEN, neither carries the timing to the start, and the budget takes it as timed.
    uneven = {"latency_us": 240.0, "original_latency_us": 400.0, "tracker_latency_us": 150.0}
    assert budget_latency_us(uneven, 400.0, 100.0) == 240.0


def test_an_engine_latency_is_brought_to_the_speed_of_the_run_start():
    """The original ran 0.40 ms at the start and 0.36 ms beside the engine: the machine got 10%
    faster, so the engine's 0.18 ms is 0.20 ms at the start's speed; an engine timed alone
    (an older run's record) is taken as timed."""
    from autocompress.study import latency_at_start_us

    assert latency_at_start_us({"latency_us": 180.0, "original_latency_us": 360.0}, 400.0) == pytest.approx(200.0)
    assert latency_at_start_us({"latency_us": 180.0}, 400.0) == 180.0
    assert latency_at_start_us({"latency_us": 180.0, "original_latency_us": None}, 400.0) == 180.0


def test_the_most_compressed_model_timed_beside_an_engine_brings_it_to_the_start_speed():
    """The tracker ran 0.10 ms at the start and 0.11 ms beside the engine: the machine got 10%
    slower for compressed models, whatever the original (0.36 ms beside it, 0.40 ms at the
    start) did; without the tracker's start latency (a run recorded before it) the original
    is used."""
    from autocompress.study import latency_at_start_us

    engine = {"latency_us": 220.0, "original_latency_us": 360.0, "tracker_latency_us": 110.0}
    assert latency_at_start_us(engine, 400.0, 100.0) == pytest.approx(200.0)
    assert latency_at_start_us(engine, 400.0) == pytest.approx(220.0 * 400.0 / 360.0)
    assert latency_at_start_us({**engine, "tracker_latency_us": None}, 400.0, 100.0) == pytest.approx(220.0 * 400.0 / 360.0)


def test_rounds_that_ran_unevenly_are_named_against_the_start():
    """Original 2189 us and most compressed model 370 us at the start; beside an engine 2108
    and 594 us: relative to the original, the latter took 67% longer, beyond what a quiet
    machine moves; 2279 and 379 us is within it; an engine timed beside neither has no figure."""
    from autocompress.latency_lut import UNEVEN, timed_unevenly_note
    from autocompress.study import uneven_rounds

    slow = uneven_rounds({"original_latency_us": 2108.0, "tracker_latency_us": 594.0}, 2189.0, 370.0)
    assert slow == pytest.approx(0.667, abs=0.001) and slow > UNEVEN
    assert abs(uneven_rounds({"original_latency_us": 2279.0, "tracker_latency_us": 379.0}, 2189.0, 370.0)) < UNEVEN
    assert uneven_rounds({"latency_us": 180.0}, 2189.0, 370.0) is None
    assert uneven_rounds({"original_latency_us": 2108.0, "tracker_latency_us": 594.0}, 2189.0, None) is None
    assert timed_unevenly_note(0, 3) is None and timed_unevenly_note(None, None) is None
    assert timed_unevenly_note(2, 3).startswith("2 of 3 exported candidates were timed while")


def test_the_table_does_not_learn_from_engines_timed_while_the_machine_ran_unevenly(tmp_path, digits_task, monkeypatch, capsys):
    """Every engine's rounds ran uneven: the search still fine-tunes and records its trials,
    but feeds none of their timings to the table's calibration, and says so per trial, in
    pareto.json and in the report."""
    import autocompress.study as study
    from autocompress.latency_lut import LatencyTable

    learned = []
    monkeypatch.setattr(study, "uneven_rounds", lambda engine, baseline_us, tracker_us: 0.6)
    monkeypatch.setattr(LatencyTable, "add_measurement", lambda self, inventory, policy, us: learned.append(policy.digest))
    run_dir = tmp_path / "run"
    run_search(_config(run_dir, "0.9x", trials=2), task=digits_task)

    completed = [t for t in _trials(run_dir) if t.user_attrs.get("status") == "completed" and "duplicate_of" not in t.user_attrs]
    assert len(completed) == 2 and learned == []
    assert all(t.user_attrs["engine"]["uneven"] == pytest.approx(0.6) for t in completed)
    pareto = json.loads((run_dir / "pareto.json").read_text())
    assert pareto["fidelity"]["timed_unevenly"] == pareto["fidelity"]["candidates"] == 2
    out = " ".join(capsys.readouterr().out.split())  # the console wraps long lines
    assert out.count("not used to correct the table") == 2 and "the table did not learn from their timings" in out
    assert "the table did not learn from their timings" in (run_dir / "report.html").read_text()


def test_infeasible_proposals_are_never_fine_tuned(tmp_path, digits_task):
    import random

    from autocompress.inventory import build_inventory
    from autocompress.latency_lut import LatencyTable, OrtCpuBackend
    from autocompress.spaces import build_space

    run_dir = tmp_path / "tight"
    config = _config(run_dir, "0.95x", trials=1)
    run_search(config, task=digits_task)  # measures and calibrates the run's table
    # An absolute budget at the 15th percentile of the predicted latency of sampled policies:
    # most proposals are over it, even if the machine drifts by tens of percent meanwhile.
    # The search first proposes its seeds, int8 everywhere first, which is faster than most
    # sampled policies: the budget is also 10% under that one's prediction, so at least the
    # first proposal is over it whatever the machine's speed does between the two searches.
    inventory = build_inventory(digits_task.model, digits_task.example_inputs)
    space = build_space(inventory, config.space)
    table = LatencyTable.open(run_dir / "latency_table.json", OrtCpuBackend(), channel_multiple=4)
    rng = random.Random(1)
    predicted = sorted(table.predict_us(inventory, space.sample(rng)) for _ in range(40))
    budget_us = min(predicted[int(0.15 * len(predicted))], 0.9 * table.predict_us(inventory, seed_policies(space)[0]))
    tight = tmp_path / "tight2"
    tight.mkdir()
    (tight / "latency_table.json").write_bytes((run_dir / "latency_table.json").read_bytes())
    run_search(_config(tight, f"{budget_us:.1f}us", trials=2), task=digits_task)

    trials = _trials(tight)
    infeasible = [t for t in trials if t.user_attrs.get("status") == "infeasible"]
    completed = [t for t in trials if t.user_attrs.get("status") == "completed"]
    budget_ms = json.loads((tight / "run.json").read_text())["budget_ms"]
    assert budget_ms == pytest.approx(budget_us / 1000, rel=1e-3)
    assert infeasible, "most proposals should have been over budget"
    for t in infeasible:
        assert t.state == optuna.trial.TrialState.PRUNED
        assert t.user_attrs["predicted_ms"] > budget_ms
        assert "finetune_s" not in t.user_attrs and "engine" not in t.user_attrs and "metric" not in t.user_attrs
    for t in completed:
        assert t.user_attrs["predicted_ms"] <= budget_ms
    engines = sorted((tight / "engines").glob("trial-*.onnx"))
    assert len(engines) == len(completed) == 2


def test_rerun_resumes_and_keeps_completed_trials(tmp_path, digits_task):
    run_dir = tmp_path / "resume"
    run_search(_config(run_dir, "0.9x", trials=2), task=digits_task)
    table_mtime = (run_dir / "latency_table.json").stat().st_mtime_ns
    first = {t.number for t in _trials(run_dir) if t.user_attrs.get("status") == "completed"}
    run_search(_config(run_dir, "0.9x", trials=3), task=digits_task)
    done = [t for t in _trials(run_dir) if t.user_attrs.get("status") == "completed" and "duplicate_of" not in t.user_attrs]
    assert first <= {t.number for t in done}
    assert len(done) == 3
    table = json.loads((run_dir / "latency_table.json").read_text())
    assert len(table["calibrations"]) == 1  # calibrated once, reused on resume
    assert (run_dir / "latency_table.json").stat().st_mtime_ns >= table_mtime


def test_task_from_a_module_path(tmp_path, monkeypatch):
    (tmp_path / "my_tasks_pkg").mkdir()
    (tmp_path / "my_tasks_pkg" / "__init__.py").write_text("")
    (tmp_path / "my_tasks_pkg" / "tiny.py").write_text(
        "import torch\n"
        "from autocompress import Task\n"
        "from autocompress.evaluators import accuracy\n"
        "def build():\n"
        "    model = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.ReLU(), torch.nn.Linear(8, 2))\n"
        "    data = [(torch.randn(8, 4), torch.zeros(8, dtype=torch.long))]\n"
        "    return Task(name='tiny', model=model, example_inputs=torch.randn(1, 4), train_loader=data,\n"
        "                eval_loader=data, metric=accuracy)\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    task = load_task("my_tasks_pkg.tiny:build")
    assert task.name == "tiny"
    assert task.example_inputs[0].shape == (1, 4)  # a single tensor becomes a 1-tuple
    assert not task.model.training


def test_batch_size_is_part_of_the_target(tmp_path, digits_task):
    """--batch-size deploys the task at N rows: the table, baseline and engines are timed at
    that batch, the run records it, and a resume at another batch is refused."""
    from autocompress.errors import UserError

    at8 = digits_task.at_batch(8)
    assert at8.example_inputs[0].shape[0] == 8 and digits_task.example_inputs[0].shape[0] == 1
    assert digits_task.at_batch(0) is digits_task
    run_dir = tmp_path / "b8"
    run_search(_config(run_dir, "0.9x", trials=1, batch_size=8), task=digits_task)
    manifest = json.loads((run_dir / "run.json").read_text())
    assert manifest["profile"]["batch_size"] == 8 and manifest["config"]["batch_size"] == 8
    table = json.loads((run_dir / "latency_table.json").read_text())
    assert table["profile"]["batch_size"] == 8
    with pytest.raises(UserError, match="batch-size"):
        run_search(_config(run_dir, "0.9x", trials=1), task=digits_task)
    with pytest.raises(UserError, match="batch-size must be at least 1"):
        _config(tmp_path / "neg", "0.9x", batch_size=-1)


def test_metric_floor_is_a_constraint_and_bounds_the_front(tmp_path, digits_task):
    run_dir = tmp_path / "floor"
    # A floor just under the original: most fine-tuned candidates lose more than this.
    run_search(_config(run_dir, "0.9x", trials=3, max_metric_drop=0.002), task=digits_task)
    manifest = json.loads((run_dir / "run.json").read_text())
    floor = manifest["metric_floor"]
    assert floor == pytest.approx(manifest["baseline"]["metric"] - 0.002)
    completed = [t for t in _trials(run_dir) if t.user_attrs.get("status") == "completed"]
    assert len(completed) == 3
    for t in completed:  # the sampler sees the shortfall as a named constraint
        assert t.constraints["metric_below_floor"] == pytest.approx(floor - t.user_attrs["metric"])
    pareto = json.loads((run_dir / "pareto.json").read_text())
    assert pareto["metric_floor"] == floor
    assert pareto["counts"]["below_metric_floor"] == sum(1 for t in completed if t.user_attrs["metric"] < floor) >= 1
    assert all(m["metric"] >= floor for m in pareto["members"])
    assert "floor" in (run_dir / "report.html").read_text()


def test_negative_metric_drop_is_refused():
    from autocompress.errors import UserError

    with pytest.raises(UserError, match="--max-metric-drop must be a number >= 0"):
        SearchConfig(max_metric_drop=-0.01)


def test_a_run_whose_store_holds_a_repeat_resumes(tmp_path, mlp_run):
    """A repeat (a proposal, widened or not, that came out as a policy already fine-tuned) is
    told its original's outcome and has no metric of its own: resuming reads past it."""
    import io
    import shutil

    from rich.console import Console

    from conftest import MLP_TASK

    run_dir = tmp_path / "run"
    shutil.copytree(mlp_run, run_dir)
    study = optuna.load_study(study_name="autocompress", storage=f"sqlite:///{run_dir / 'study.db'}")
    done = next(t for t in study.get_trials() if t.user_attrs.get("status") == "completed")
    repeat = study.ask()
    for key, value in {"policy": done.user_attrs["policy"], "digest": done.user_attrs["digest"], "status": "completed",
                       "predicted_ms": done.user_attrs["predicted_ms"], "duplicate_of": done.number,
                       "measured_ms": done.user_attrs["measured_ms"]}.items():
        repeat.set_user_attr(key, value)
    study.tell(repeat, done.values)

    config = SearchConfig(
        task=MLP_TASK, latency_budget="10ms", trials=4, run_dir=str(run_dir), seed=0, distill=DistillConfig(steps=5),
        space=SpaceConfig(prune_ratios=(0.0, 0.5), bits=(32, 8), rank_ratios=(1.0,)), calibration_batches=1, share_table=False,
        calibration_seconds=0.0,
    )
    result = run_search(config, console=Console(file=io.StringIO()))
    assert result.counts["completed"] == 4 and result.counts["duplicates"] >= 1
