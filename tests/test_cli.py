"""The command line as a user meets it: bad input gets one line, the fix, exit code 2."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
MLP = f"{ROOT / 'tests' / 'fixtures' / 'mlp_task.py'}:build"
BAD = ROOT / "tests" / "fixtures" / "bad_tasks.py"


def run_cli(*args: str, cache: Path, cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "AUTOCOMPRESS_CACHE": str(cache)}
    return subprocess.run([sys.executable, "-m", "autocompress", *args], capture_output=True, text=True, env=env, cwd=cwd, timeout=600)


def assert_one_line_error(proc: subprocess.CompletedProcess, *needles: str) -> None:
    assert proc.returncode == 2, (proc.returncode, proc.stderr[-2000:])
    assert "Traceback" not in proc.stderr
    lines = [l for l in proc.stderr.splitlines() if l.startswith("error:")]
    assert len(lines) == 1, proc.stderr
    for needle in needles:
        assert needle in lines[0], lines[0]


@pytest.mark.parametrize(
    ("args", "needles"),
    [
        (["--task", "no_such_task", "--latency-budget", "0.5x"], ["Unknown task 'no_such_task'", "demo"]),
        (["--task", "missing/file.py:build", "--latency-budget", "0.5x"], ["does not exist"]),
        (["--task", "no_such_module_xyz:build", "--latency-budget", "0.5x"], ["Cannot import module"]),
        (["--task", f"{BAD}:returns_dict", "--latency-budget", "0.5x"], ["returned dict", "Task"]),
        (["--task", f"{BAD}:raises", "--latency-budget", "0.5x"], ["RuntimeError", "boom"]),
        (["--task", f"{BAD}:nothing_here", "--latency-budget", "0.5x"], ["has no function 'nothing_here'"]),
        (["--task", f"{BAD}:metric_always_raises", "--latency-budget", "0.99x"], ["metric failed on the original model", "ZeroDivisionError"]),
        (["--latency-budget", "fast"], ["Cannot parse latency budget 'fast'", "2.5ms", "0.5x"]),
        (["--latency-budget", "0ms"], ["must be positive"]),
        (["--latency-budget", "0.5x", "--searcher", "annealing"], ["Unknown searcher 'annealing'", "tpe"]),
        (["--latency-budget", "0.5x", "--trials", "0"], ["--trials"]),
        (["--latency-budget", "0.5x", "--calibration-seconds", "-1"], ["--calibration-seconds", ">= 0"]),
        (["--latency-budget", "0.5x", "--prune-ratios", "0,1.5"], ["prune ratios must be in [0, 1)"]),
    ],
)
def test_bad_input_gets_one_line_and_exit_2(tmp_path, args, needles):
    proc = run_cli("search", *args, "--run-dir", str(tmp_path / "run"), cache=tmp_path / "cache", cwd=tmp_path)
    assert_one_line_error(proc, *needles)


def test_missing_required_budget_is_a_usage_error(tmp_path):
    proc = run_cli("search", "--task", "demo", cache=tmp_path / "cache", cwd=tmp_path)
    assert_one_line_error(proc, "--latency-budget")


def test_budget_below_fastest_candidate_names_the_reachable_latency_and_keeps_the_table(tmp_path):
    run_dir = tmp_path / "run"
    proc = run_cli("search", "--task", MLP, "--latency-budget", "1us", "--run-dir", str(run_dir), "--calibration-seconds", "0",
                   cache=tmp_path / "cache", cwd=tmp_path)
    assert_one_line_error(proc, "below the fastest latency", "ms predicted by the latency table")
    assert (run_dir / "latency_table.json").is_file(), "the measured table must survive the error"


def test_report_on_a_folder_that_is_not_a_run(tmp_path):
    proc = run_cli("report", str(tmp_path), cache=tmp_path / "cache", cwd=tmp_path)
    assert_one_line_error(proc, "not a run directory")


def test_a_run_whose_candidates_all_fail_stops_early_with_the_reason(tmp_path):
    run_dir = tmp_path / "run"
    proc = run_cli("search", "--task", f"{BAD}:metric_raises", "--latency-budget", "10ms", "--trials", "20",
                   "--distill-steps", "2", "--run-dir", str(run_dir), cache=tmp_path / "cache", cwd=tmp_path)
    assert_one_line_error(proc, "candidates all failed", "ZeroDivisionError", "study.db")
    import optuna

    study = optuna.load_study(study_name="autocompress", storage=f"sqlite:///{run_dir / 'study.db'}")
    failed = [t for t in study.get_trials() if t.user_attrs.get("status") == "failed"]
    assert len(failed) == 5
    assert all("ZeroDivisionError" in t.user_attrs["reason"] for t in failed)


def test_remeasure_table_measures_the_shared_entries_again(tmp_path):
    """A second search reuses the entries the first measured; with --remeasure-table it
    measures every entry of the space again before its calibration."""
    import re

    line = re.compile(r"Latency table: (\d+) entries \((\d+) measured now")
    common = ("search", "--task", MLP, "--latency-budget", "1us", "--calibration-seconds", "0")
    first = run_cli(*common, "--run-dir", str(tmp_path / "a"), cache=tmp_path / "cache", cwd=tmp_path)
    reused = run_cli(*common, "--run-dir", str(tmp_path / "b"), cache=tmp_path / "cache", cwd=tmp_path)
    again = run_cli(*common, "--run-dir", str(tmp_path / "c"), "--remeasure-table", cache=tmp_path / "cache", cwd=tmp_path)
    (entries_a, measured_a), (entries_b, measured_b), (entries_c, measured_c) = (
        map(int, line.search(p.stdout).groups()) for p in (first, reused, again))
    assert measured_a == entries_a > 0 and measured_b < entries_a  # the budget error comes after the table, which is kept
    assert measured_c == entries_c >= entries_a
