"""Searches on a real multi-node Ray cluster started on this machine (ray.cluster_utils.Cluster):
trials spread over the nodes, a node lost mid-sweep, and the failures a user can cause."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import optuna
import pytest

tune = pytest.importorskip("ray.tune")
os.environ.setdefault("RAY_AUTH_MODE", "disabled")  # before any Ray process starts

from autocompress.errors import UserError  # noqa: E402
from autocompress.evaluators import DistillConfig  # noqa: E402
from autocompress.export import file_sha256  # noqa: E402
from autocompress.search._ray import STEP, RayConfig  # noqa: E402
from autocompress.spaces import Policy, SpaceConfig  # noqa: E402
from autocompress.study import SearchConfig, run_search  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
MLP = f"{ROOT / 'tests' / 'fixtures' / 'mlp_task.py'}:build"


@pytest.fixture(scope="module")
def cluster():
    """A head node with one CPU, this process connected to it as the driver."""
    import ray
    from ray.cluster_utils import Cluster

    if ray.is_initialized():
        ray.shutdown()
    cluster = Cluster(initialize_head=True, connect=True, head_node_args={"num_cpus": 1})
    yield cluster
    ray.shutdown()
    cluster.shutdown()


def _config(run_dir: Path, trials: int, ray: RayConfig, steps: int = 40) -> SearchConfig:
    return SearchConfig(
        task=MLP, latency_budget="10ms", trials=trials, run_dir=str(run_dir), seed=0, distill=DistillConfig(steps=steps),
        space=SpaceConfig(prune_ratios=(0.0, 0.25, 0.5), rank_ratios=(1.0,), bits=(32, 8)), calibration_batches=1, ray=ray,
    )


def _trials(run_dir: Path) -> list[optuna.trial.FrozenTrial]:
    return optuna.load_study(study_name="autocompress", storage=f"sqlite:///{run_dir / 'study.db'}").get_trials()


def _fine_tuned(trials: list[optuna.trial.FrozenTrial]) -> list[optuna.trial.FrozenTrial]:
    """Completed trials, less repeats of a policy already fine-tuned (recorded, not run)."""
    return [t for t in trials if t.user_attrs.get("status") == "completed" and "duplicate_of" not in t.user_attrs]


class RemoveNodeAtItsSecondTrial(tune.Callback):
    """Kills ``node`` (no graceful exit) as its second trial starts, so that one trial has
    completed there and one is lost in flight."""

    def __init__(self, cluster, node) -> None:
        self.cluster, self.node, self.started, self.removed_during = cluster, node, set(), None

    def __getstate__(self) -> dict:  # the Tuner pickles its callbacks for a restore; the run uses this one
        return {}

    def on_trial_result(self, iteration, trials, trial, result, **info):
        if self.removed_during or result.get("node_id") != self.node.node_id or result.get(STEP) != 0:
            return
        self.started.add(trial.trial_id)
        if len(self.started) == 2:
            self.removed_during = trial.trial_id
            self.cluster.remove_node(self.node, allow_graceful=False)


def test_sweep_spans_two_nodes_and_survives_losing_one(tmp_path, cluster):
    worker = cluster.add_node(num_cpus=1)
    cluster.wait_for_nodes()
    killer = RemoveNodeAtItsSecondTrial(cluster, worker)
    run_dir = tmp_path / "run"
    trials = 5
    # Fine-tunes long enough (a second or two) that the node dies before its trial can finish.
    result = run_search(_config(run_dir, trials, RayConfig(address="auto", workers=2, max_failures=2), steps=1000),
                        ray_callbacks=(killer,))

    assert killer.removed_during is not None, "the worker node never started a second trial"
    recorded = _trials(run_dir)
    completed = _fine_tuned(recorded)
    assert len(completed) == trials == result.counts["completed"]
    assert not [t for t in recorded if t.user_attrs.get("status") == "failed"]
    # Every proposal is one trial in the store, told once (no trial is left running or doubled).
    assert all(t.state in (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED) for t in recorded)
    assert len({t.number for t in recorded}) == len(recorded)
    # Trials ran on both nodes; the one lost with the worker node was retried and finished on the head.
    nodes = Counter(t.user_attrs["ray_node"] for t in completed)
    assert set(nodes) == {cluster.head_node.node_id, worker.node_id}
    retried = [t for t in completed if t.user_attrs["ray_retries"] > 0]
    assert len(retried) == 1 and retried[0].user_attrs["ray_nodes"] == [worker.node_id, cluster.head_node.node_id]
    assert all(t.user_attrs["ray_nodes"] == [t.user_attrs["ray_node"]] for t in completed if t not in retried)
    # The driver wrote each completed trial's engine into the run directory, once.
    engines = sorted((run_dir / "engines").glob("trial-*.onnx"))
    assert [p.name for p in engines] == [f"trial-{t.number:04d}.onnx" for t in sorted(completed, key=lambda t: t.number)]
    for t in completed:
        engine = t.user_attrs["engine"]
        assert Path(engine["path"]) == run_dir / "engines" / f"trial-{t.number:04d}.onnx"
        assert engine["ok"] and Path(engine["path"]).stat().st_size == engine["size_bytes"]
        # The fine-tuned weights came back from the worker too, so the trial can be exported again.
        checkpoint = Path(t.user_attrs["checkpoint"]["path"])
        assert checkpoint == run_dir / "candidates" / f"trial-{t.number:04d}.pt"
        assert checkpoint.is_file() and file_sha256(checkpoint) == t.user_attrs["checkpoint"]["sha256"]
    assert (run_dir / "pareto.json").is_file() and (run_dir / "report.html").is_file()


def test_unreachable_address_fails_fast_with_one_line(tmp_path):
    t0 = time.monotonic()
    proc = subprocess.run(
        [sys.executable, "-m", "autocompress", "search", "--task", MLP, "--latency-budget", "10ms", "--trials", "2",
         "--run-dir", str(tmp_path / "run"), "--ray-address", "127.0.0.1:1", "--workers", "2"],
        capture_output=True, text=True, timeout=120, env={**os.environ, "AUTOCOMPRESS_CACHE": str(tmp_path / "cache")},
    )
    assert proc.returncode == 2
    assert proc.stderr.count("\n") == 1 and proc.stderr.startswith("error: No Ray head node answers at 127.0.0.1:1")
    assert "Traceback" not in proc.stderr
    assert time.monotonic() - t0 < 60  # Python and its imports included; Ray alone would retry for a minute
    assert not (tmp_path / "run" / "study.db").exists()


def test_without_ray_installed_the_error_names_the_extra(tmp_path):
    code = (
        "import sys; sys.modules['ray'] = None\n"  # makes `import ray` fail as if it were not installed
        "from autocompress.cli import main\n"
        f"sys.exit(main(['search', '--task', {MLP!r}, '--latency-budget', '10ms', '--ray-address', 'local']))\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    assert proc.stderr.strip() == ("error: --ray-address needs Ray Tune, which is not installed; "
                                   "pip install 'autocompress[ray]'.")


def test_ray_options_are_checked():
    for bad in ("nohost", "host:port", ":6379", "host:0", "host:70000"):
        with pytest.raises(UserError, match="--ray-address must be local, auto or HOST:PORT"):
            RayConfig(address=bad)
    with pytest.raises(UserError, match="--workers must be at least 1"):
        RayConfig(address="auto", workers=0)
    assert RayConfig(address="10.0.0.1:6379", workers=4).workers == 4
    from autocompress.cli import main

    assert main(["search", "--task", MLP, "--latency-budget", "10ms", "--workers", "2"]) == 2  # needs --ray-address


def test_driver_launches_only_feasible_proposals_and_records_each_trial_once(tmp_path, mlp_inventory):
    """The driver's bookkeeping, fed the results a worker sends: over-budget proposals are
    told infeasible and never launched; a trial is recorded once whatever Tune repeats."""
    import json

    from autocompress.search import OptunaSearcher
    from autocompress.search._ray import INTERMEDIATE, RaySweep, _TrialBook
    from autocompress.spaces import build_space

    space = build_space(mlp_inventory, SpaceConfig(prune_ratios=(0.0, 0.5), bits=(32, 8), rank_ratios=(1.0,)))
    searcher = OptunaSearcher.create(space, optuna.storages.InMemoryStorage(), "random", 0, True)
    layers = list(mlp_inventory.layers)
    predict = lambda p: sum(0.5 if p.bits_of(n) == 8 else 1.0 for n in layers)  # noqa: E731  within 1 ms: all int8
    shown, sweep = [], RaySweep(completed=0)
    book = _TrialBook(searcher, predict, 1.0, tmp_path, 2, sweep, 200, 5, {}, lambda i, ms, a: shown.append(i),
                      lambda p, us: None)

    def worker_result(config: dict, metric: float) -> dict:
        attrs = {"trial": config["trial"], "metric": metric, "summary": "int8",
                 "engine": {"latency_us": 900.0, "path": "/on/the/worker/trial.onnx", "ok": True}}
        return {"attrs": json.dumps(attrs), "engine_bytes": b"engine " + str(config["trial"]).encode(), "node_id": "n1"}

    launched = {tid: book.suggest(tid, finished="FINISHED") for tid in ("a", "b")}
    assert all(predict(Policy.from_dict(c["policy"])) <= 1.0 for c in launched.values())
    assert book.suggest("c", finished="FINISHED") is None  # two in flight are enough for two trials
    book.complete("a", None, error=True)  # retries exhausted: failed, and one more may launch
    book.complete("b", worker_result(launched["b"], 0.9), error=False)
    book.complete("b", worker_result(launched["b"], 0.9), error=False)  # told twice: recorded once
    launched["c"] = book.suggest("c", finished="FINISHED")
    book.complete("c", {STEP: 10, INTERMEDIATE: 0.2, "node_id": "n1"}, error=False)  # stopped by the scheduler
    launched["d"] = book.suggest("d", finished="FINISHED")
    book.complete("d", worker_result(launched["d"], 0.8), error=False)
    assert book.suggest("e", finished="FINISHED") == "FINISHED"

    assert sweep.completed == 2 and sweep.stopped_early == 1 and len(sweep.failures) == 1 and sweep.rejected > 0
    assert shown == [launched["b"]["trial"], launched["d"]["trial"]]
    trials = {t.number: t for t in searcher.study.get_trials()}
    assert all(t.state != optuna.trial.TrialState.RUNNING for t in trials.values())
    numbers = {c["trial"] for c in launched.values()}
    for number, t in trials.items():
        if number not in numbers:  # never launched: over budget, or a repeat of a completed policy
            over = t.user_attrs["status"] == "infeasible" and t.user_attrs["predicted_ms"] > 1.0
            assert over or t.user_attrs["duplicate_of"] in numbers
    assert trials[launched["a"]["trial"]].user_attrs["reason"].startswith("lost on Ray after 0 retries")
    assert trials[launched["c"]["trial"]].user_attrs["stopped_early"] is True
    for key in ("b", "d"):
        t = trials[launched[key]["trial"]]
        assert t.state == optuna.trial.TrialState.COMPLETE and t.user_attrs["ray_node"] == "n1"
        assert Path(t.user_attrs["engine"]["path"]).read_bytes() == b"engine " + str(t.number).encode()
    assert len(list((tmp_path / "engines").glob("*.onnx"))) == 2



def test_driver_repairs_over_budget_proposals_into_linked_trials(tmp_path, mlp_inventory):
    """On Ray as locally: an over-budget proposal is told infeasible and its repair is
    launched as its own trial, linked both ways in the trial store."""
    from autocompress.search import OptunaSearcher
    from autocompress.search._ray import RaySweep, _TrialBook
    from autocompress.search._repair import Repair
    from autocompress.spaces import build_space

    space = build_space(mlp_inventory, SpaceConfig(prune_ratios=(0.0, 0.5), bits=(32, 8), rank_ratios=(1.0,)))
    searcher = OptunaSearcher.create(space, optuna.storages.InMemoryStorage(), "random", 0, True)
    layers = list(mlp_inventory.layers)
    predict = lambda p: sum(0.5 if p.bits_of(n) == 8 else 1.0 for n in layers)  # noqa: E731  within 1 ms: all int8
    all_int8 = Policy(bits={n: 8 for n in layers})
    repairs = []

    def repair(policy: Policy) -> Repair:
        repairs.append(policy)
        return Repair(all_int8, predict(all_int8) * 1000, 2)

    searcher.enqueue(Policy())  # float32 everywhere: 3 ms predicted, over the 1 ms budget
    book = _TrialBook(searcher, predict, 1.0, tmp_path, 1, RaySweep(completed=0), 200, 5, {}, lambda i, ms, a: None,
                      lambda p, us: None, repair)
    launched = book.suggest("a", finished="FINISHED")
    assert Policy.from_dict(launched["policy"]) == all_int8 and repairs == [Policy()]
    trials = {t.number: t for t in searcher.study.get_trials()}
    fixed = trials[launched["trial"]]
    original = trials[fixed.user_attrs["repair_of"]]
    assert original.user_attrs["status"] == "infeasible" and original.user_attrs["repaired_to"] == fixed.number
    assert fixed.user_attrs["repair_steps"] == 2 and fixed.user_attrs["predicted_ms"] <= 1.0

@pytest.mark.slow
def test_cli_local_sweep_with_early_stopping_then_resume(tmp_path):
    """`--ray-address local` starts Ray in the process; weak fine-tunes may be stopped early,
    and a second run on the same directory resumes from the trial store."""
    run_dir = tmp_path / "run"
    base = [sys.executable, "-m", "autocompress", "search", "--task", MLP, "--latency-budget", "10ms", "--distill-steps", "40",
            "--prune-ratios", "0,0.25,0.5", "--bits", "32,8", "--rank-ratios", "1", "--run-dir", str(run_dir),
            "--ray-address", "local", "--workers", "2", "--early-stop"]
    env = {**os.environ, "AUTOCOMPRESS_CACHE": str(tmp_path / "cache")}
    first = subprocess.run([*base, "--trials", "3"], capture_output=True, text=True, timeout=600, env=env)
    assert first.returncode == 0, first.stderr[-2000:]
    done = _fine_tuned(_trials(run_dir))
    assert len(done) == 3
    second = subprocess.run([*base, "--trials", "5"], capture_output=True, text=True, timeout=600, env=env)
    assert second.returncode == 0, second.stderr[-2000:]
    recorded = _trials(run_dir)
    completed = _fine_tuned(recorded)
    assert {t.number for t in done} <= {t.number for t in completed} and len(completed) == 5
    for t in recorded:
        if t.user_attrs.get("stopped_early"):  # stopped by the scheduler: partly fine-tuned, no engine
            assert t.state == optuna.trial.TrialState.FAIL and "engine" not in t.user_attrs
            assert t.user_attrs[STEP] < 40
    assert len(list((run_dir / "engines").glob("trial-*.onnx"))) == 5


@pytest.mark.slow
def test_errors_inside_trials_are_recorded_not_retried(tmp_path, cluster):
    """A candidate that fails on the worker fails for good (Ray retries lost nodes only), and
    a sweep whose first candidates all fail stops with the reason, as a local one does."""
    config = SearchConfig(
        task=f"{ROOT / 'tests' / 'fixtures' / 'bad_tasks.py'}:metric_raises", latency_budget="10ms", trials=2,
        run_dir=str(tmp_path / "run"), distill=DistillConfig(steps=8), calibration_batches=1,
        space=SpaceConfig(prune_ratios=(0.0, 0.5), rank_ratios=(1.0,), bits=(32, 8)),
        ray=RayConfig(address="auto", workers=1, max_failures=2),
    )
    with pytest.raises(UserError, match=r"The first 5 candidates all failed \(5x ZeroDivisionError"):
        run_search(config)
    failed = [t for t in _trials(tmp_path / "run") if t.user_attrs.get("status") == "failed"]
    assert len(failed) == 5
    assert all(t.user_attrs["ray_retries"] == 0 and len(t.user_attrs["ray_nodes"]) == 1 for t in failed)
    assert all("the user's metric divided by zero" in t.user_attrs["reason"] for t in failed)
