"""A search killed with SIGKILL and run again with the same command loses nothing and
counts nothing twice."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import optuna
import pytest

ROOT = Path(__file__).resolve().parents[1]
MLP = f"{ROOT / 'tests' / 'fixtures' / 'mlp_task.py'}:build"
TRIALS = 4


def _command(run_dir: Path) -> list[str]:
    return [sys.executable, "-m", "autocompress", "search", "--task", MLP, "--latency-budget", "10ms",
            "--trials", str(TRIALS), "--distill-steps", "150", "--seed", "3", "--run-dir", str(run_dir), "--calibration-seconds", "0"]


def _env(tmp: Path) -> dict:
    return {**os.environ, "AUTOCOMPRESS_CACHE": str(tmp / "cache")}


def _kill_when(proc: subprocess.Popen, ready, timeout: float = 300.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and proc.poll() is None:
        if ready():
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait()
            return
        time.sleep(0.05)
    proc.kill()
    pytest.fail("the search finished or hung before the kill point was reached")


def _trials(run_dir: Path):
    study = optuna.load_study(study_name="autocompress", storage=f"sqlite:///{run_dir / 'study.db'}")
    return study.get_trials()


@pytest.mark.parametrize("kill_point", ["before any trial", "after two trials"])
def test_sigkill_then_rerun_keeps_every_completed_trial_once(tmp_path, kill_point):
    run_dir = tmp_path / "run"
    proc = subprocess.Popen(_command(run_dir), env=_env(tmp_path), cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    if kill_point == "before any trial":
        _kill_when(proc, lambda: (run_dir / "latency_table.json").is_file())
    else:
        _kill_when(proc, lambda: len(list((run_dir / "engines").glob("trial-*.onnx"))) >= 2)
    before = {t.number for t in _trials(run_dir) if t.user_attrs.get("status") == "completed"} if (run_dir / "study.db").is_file() else set()
    table_before = (run_dir / "latency_table.json").read_bytes() if kill_point != "before any trial" else None

    rerun = subprocess.run(_command(run_dir), env=_env(tmp_path), cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    assert "The original model already meets this budget" in rerun.stdout  # 10 ms: the MLP takes microseconds

    trials = _trials(run_dir)
    completed = [t for t in trials if t.user_attrs.get("status") == "completed" and "duplicate_of" not in t.user_attrs]
    assert len(completed) == TRIALS  # the final count equals the request
    assert before <= {t.number for t in completed}  # nothing completed before the kill was lost
    digests = [t.user_attrs["digest"] for t in completed]
    assert len(set(digests)) == len(digests)  # and nothing was fine-tuned twice
    assert not [t for t in trials if t.state == optuna.trial.TrialState.RUNNING]
    for t in trials:
        if t.state == optuna.trial.TrialState.FAIL:
            assert t.user_attrs.get("reason") == "interrupted"
    for t in completed:
        assert Path(t.user_attrs["engine"]["path"]).is_file()
    if table_before is not None:
        assert "Resuming:" in rerun.stdout
        # The table was not calibrated again: its first whole-model points are those from before the kill.
        import json

        old = json.loads(table_before)["calibrations"]
        new = json.loads((run_dir / "latency_table.json").read_text())["calibrations"]
        assert old.keys() == new.keys()
        for fp, cal in old.items():
            assert new[fp]["points"][: len(cal["points"])] == cal["points"]
    assert (run_dir / "pareto.json").is_file() and (run_dir / "report.html").is_file()
