"""A search survives SIGKILL at any moment and isolated trial failures, and loses nothing.

Kill tests run a real search of a tiny task in a subprocess. The search appends each phase
it enters to ``AUTOCOMPRESS_PHASE_LOG``; ``AUTOCOMPRESS_PHASE_PAUSE`` holds it inside a
phase, so the kill lands there deterministically. The search is then resumed and checked.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import re
import signal
import subprocess
import sys
import time
from typing import NamedTuple
from pathlib import Path

import optuna
import pytest

from autocompress.latency_lut import is_uneven

ROOT = Path(__file__).resolve().parents[1]
MLP = f"{ROOT / 'tests' / 'fixtures' / 'mlp_task.py'}:build"
TRIALS = 3
TABLE_LINE = re.compile(r"Latency table: (\d+) entries \((\d+) measured now")


def _command(run_dir: Path) -> list[str]:
    # --no-widen: under this loose budget the tiny MLP's compressions save no predicted latency,
    # so widening turns proposals into repeats and trial 1, where a kill point waits, is no fine-tune.
    return [sys.executable, "-m", "autocompress", "search", "--task", MLP, "--latency-budget", "10ms",
            "--trials", str(TRIALS), "--distill-steps", "20", "--seed", "3", "--run-dir", str(run_dir), "--no-widen"]


def _env(tmp: Path, pause: str = "") -> dict:
    return {**os.environ, "AUTOCOMPRESS_CACHE": str(tmp / "cache"), "AUTOCOMPRESS_PHASE_LOG": str(tmp / "phases.log"),
            "AUTOCOMPRESS_PHASE_PAUSE": pause}


def _phases(tmp: Path) -> list[str]:
    log = tmp / "phases.log"
    return log.read_text().splitlines() if log.is_file() else []


def _kill(proc: subprocess.Popen, tmp: Path, ready, settle_s: float = 0.0, timeout: float = 300.0) -> list[str]:
    """SIGKILL ``proc`` once ``ready(phases)`` holds (then ``settle_s`` later); return the
    phase log as it stood at the kill."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and proc.poll() is None:
        if ready(_phases(tmp)):
            time.sleep(settle_s)
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait()
            return _phases(tmp)
        time.sleep(0.05)
    proc.kill()
    pytest.fail(f"the search ended or hung before the kill point; phases: {_phases(tmp)}")


def _trials(run_dir: Path) -> list[optuna.trial.FrozenTrial]:
    if not (run_dir / "study.db").is_file():
        return []
    return optuna.load_study(study_name="autocompress", storage=f"sqlite:///{run_dir / 'study.db'}").get_trials()


def _table_entries(run_dir: Path) -> dict | None:
    path = run_dir / "latency_table.json"
    return json.loads(path.read_text())["entries"] if path.is_file() else None


def _learned(run_dir: Path) -> set[str]:
    """The policies whose whole-model timings the saved table's calibrations hold."""
    path = run_dir / "latency_table.json"
    calibrations = json.loads(path.read_text())["calibrations"].values() if path.is_file() else []
    return {p["policy"] for c in calibrations for p in c["points"]}


def _resume(run_dir: Path, tmp: Path, how: str) -> subprocess.CompletedProcess:
    command = _command(run_dir) if how == "same command" else [sys.executable, "-m", "autocompress", "search", "--resume", str(run_dir)]
    rerun = subprocess.run(command, env=_env(tmp), cwd=tmp, capture_output=True, text=True, timeout=600)
    assert rerun.returncode == 0, rerun.stdout[-2000:] + rerun.stderr[-3000:]
    return rerun


def _killed_trial(phases: list[str]) -> int | None:
    """The trial being fine-tuned or exported when the search was killed, if any."""
    last = phases[-1] if phases else ""
    return int(last.split()[-1]) if last.startswith(("finetune", "export")) else None


def assert_nothing_lost(run_dir: Path, before: set[int], entries_before: dict | None, rerun: subprocess.CompletedProcess,
                        killed_trial: int | None) -> None:
    trials = _trials(run_dir)
    completed = [t for t in trials if t.user_attrs.get("status") == "completed" and "duplicate_of" not in t.user_attrs]
    assert len(completed) == TRIALS  # the final count equals the request
    assert before <= {t.number for t in completed}  # every trial completed before the kill is kept
    digests = [t.user_attrs["digest"] for t in completed]
    assert len(set(digests)) == len(digests)  # and none was fine-tuned twice
    assert not [t for t in trials if t.state == optuna.trial.TrialState.RUNNING]
    for t in trials:
        if t.state == optuna.trial.TrialState.FAIL:
            assert t.user_attrs.get("reason") == "interrupted" and t.user_attrs.get("status") == "failed"
    if killed_trial is not None:  # the interrupted trial is marked, and its candidate tried again
        killed = next(t for t in trials if t.number == killed_trial)
        assert killed.state == optuna.trial.TrialState.FAIL and killed.user_attrs["reason"] == "interrupted"
        assert [t for t in completed if t.params == killed.params and t.user_attrs.get("retry_of") == killed_trial]
    for t in completed:  # every kept engine is whole: its bytes are those recorded
        engine = Path(t.user_attrs["engine"]["path"])
        assert hashlib.sha256(engine.read_bytes()).hexdigest() == t.user_attrs["engine"]["sha256"]
    entries, measured_now = map(int, TABLE_LINE.search(rerun.stdout).groups())
    if entries_before is not None:  # the table saved before the kill is reused, not measured again:
        # the resumed run measures only entries it never had (its calibration now holds the
        # engines timed before the kill, so its search for the fastest policy may visit new ones)
        after = _table_entries(run_dir)
        assert all(after[key] == entry for key, entry in entries_before.items())
        assert measured_now == entries - len(entries_before)
    pareto = json.loads((run_dir / "pareto.json").read_text())
    assert pareto["counts"]["completed"] == TRIALS
    assert (run_dir / "report.html").is_file()


class Killed(NamedTuple):
    """What a kill interrupted: the phases entered, the trials completed by then, and
    whether the front had already been written (the search had finished its work)."""

    phases: list[str]
    completed_before: set[int]
    front_written: bool


def _kill_and_resume(tmp: Path, ready, how: str, pause: str = "", settle_s: float = 0.0) -> Killed:
    run_dir = tmp / "run"
    proc = subprocess.Popen(_command(run_dir), env=_env(tmp, pause), cwd=tmp, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    phases = _kill(proc, tmp, ready, settle_s)
    done = [t for t in _trials(run_dir) if t.user_attrs.get("status") == "completed"]
    before = {t.number for t in done}
    entries_before = _table_entries(run_dir)
    # what the table learned from each engine timed before the kill is on disk (timings taken
    # while the machine ran unevenly are not learned from)
    learned = {t.user_attrs["digest"] for t in done if "duplicate_of" not in t.user_attrs
               and not is_uneven(t.user_attrs["engine"].get("uneven"))}
    assert learned <= _learned(run_dir)
    front_written = (run_dir / "pareto.json").is_file()
    (tmp / "phases.log").unlink(missing_ok=True)  # a kill at start-up leaves none
    rerun = _resume(run_dir, tmp, how)
    assert_nothing_lost(run_dir, before, entries_before, rerun, _killed_trial(phases))
    return Killed(phases, before, front_written)


def test_kill_during_engine_export_then_resume(tmp_path):
    phases = _kill_and_resume(tmp_path, lambda p: "export trial 1" in p, "--resume", pause="export:30").phases
    assert phases[-1] == "export trial 1" and "export trial 0" in phases  # one trial done, one mid-export


@pytest.mark.slow
def test_kill_during_latency_table_building_then_rerun(tmp_path):
    # The table phase measures for seconds; the kill lands a second into it, before any save.
    phases = _kill_and_resume(tmp_path, lambda p: p[-1:] == ["table"], "same command", settle_s=1.0).phases
    assert phases[-1] == "table"  # killed inside the phase, before the table or the trial store was written


@pytest.mark.slow
def test_kill_during_fine_tune_then_resume(tmp_path):
    phases = _kill_and_resume(tmp_path, lambda p: "finetune trial 1" in p, "--resume", pause="finetune:30").phases
    assert phases[-1] == "finetune trial 1"


@pytest.mark.slow
@pytest.mark.parametrize("seed", [0, 1])
def test_kill_at_a_seeded_random_moment_then_resume(tmp_path, seed):
    # The moment is drawn over the span of one uninterrupted run of the same search, timed
    # here: a fixed span would land after the end on a fast machine and kill nothing.
    reference = tmp_path / "reference"
    reference.mkdir()
    t0 = time.monotonic()
    subprocess.run(_command(reference / "run"), env=_env(reference), cwd=reference, capture_output=True, timeout=600, check=True)
    delay = random.Random(seed).uniform(0.05, 0.95) * (time.monotonic() - t0)
    started = time.monotonic()
    killed = _kill_and_resume(tmp_path, lambda p: time.monotonic() - started >= delay, "same command")
    # The kill cut a search short, so the resumed run's checks are about a real interruption.
    assert not killed.front_written and killed.phases[-1:] != ["done"], killed

def test_interrupted_trial_whose_outcome_was_recorded_is_told_not_lost(tmp_path, mlp_inventory):
    """A kill between recording a trial's outcome and telling Optuna keeps the trial."""
    from autocompress.search import OptunaSearcher
    from autocompress.spaces import SpaceConfig, build_space

    space = build_space(mlp_inventory, SpaceConfig())
    storage = f"sqlite:///{tmp_path / 'study.db'}"
    first = OptunaSearcher.create(space, storage, "random", 0, True)
    done_id, _ = first.ask()
    first.record(done_id, {"metric": 0.9, "measured_ms": 1.5, "status": "completed"})  # the process dies before tell
    lost_id, _ = first.ask()  # this one dies mid fine-tune

    second = OptunaSearcher.create(space, storage, "random", 0, True)
    assert second.abandon_running(retry=True) == 1
    trials = {t.number: t for t in second.study.get_trials()}
    assert trials[done_id].state == optuna.trial.TrialState.COMPLETE and trials[done_id].values == [0.9, 1.5]
    assert trials[lost_id].state == optuna.trial.TrialState.FAIL and trials[lost_id].user_attrs["reason"] == "interrupted"
    retry_id, _ = second.ask()
    assert second.study.trials[retry_id].params == trials[lost_id].params


# -- isolated trial failures ------------------------------------------------------------
FAULTY = ROOT / "tests" / "fixtures" / "faulty_tasks.py"


@pytest.fixture(scope="module")
def measured_table(tmp_path_factory) -> Path:
    """A latency table measured and calibrated once for the faulty tasks' model (they share it)."""
    from autocompress.study import run_search
    from autocompress.task import load_task

    run_dir = tmp_path_factory.mktemp("table-run")
    run_search(_search_config(run_dir, "metric_fails_once", trials=1), task=load_task(f"{FAULTY}:metric_fails_once"))
    return run_dir / "latency_table.json"


def _search_config(run_dir: Path, builder: str, trials: int = 3):
    from autocompress.evaluators import DistillConfig
    from autocompress.spaces import SpaceConfig
    from autocompress.study import SearchConfig

    # Without widening: under this loose budget the tiny MLP's compressions save no predicted
    # latency, so widening turns proposals into repeats, and the fault would not hit trial 1.
    return SearchConfig(task=f"{FAULTY}:{builder}", latency_budget="10ms", trials=trials, run_dir=str(run_dir), seed=0,
                        distill=DistillConfig(steps=4, lr=0.01), space=SpaceConfig(rank_ratios=(1.0,)), share_table=False,
                        widen=False)


def _search_with_one_fault(tmp_path: Path, measured_table: Path, builder: str) -> list[optuna.trial.FrozenTrial]:
    from autocompress.study import run_search
    from autocompress.task import load_task

    run_dir = tmp_path / "run"
    run_dir.mkdir()
    (run_dir / "latency_table.json").write_bytes(measured_table.read_bytes())
    result = run_search(_search_config(run_dir, builder), task=load_task(f"{FAULTY}:{builder}"))
    assert result.counts["completed"] == 3 and result.counts["failed"] == 1  # the search went on past the failure
    return _trials(run_dir)


@pytest.mark.parametrize(
    ("builder", "reason"),
    [
        ("metric_fails_once", "ValueError: the user's metric got an empty class"),
        ("memory_error_once", "MemoryError: cannot allocate 64 GiB"),
        ("diverges_once", "DivergedError: distillation loss became nan at step 0; the candidate was not exported"),
    ],
)
def test_a_failing_trial_is_recorded_with_its_reason_and_the_search_goes_on(tmp_path, measured_table, builder, reason):
    trials = _search_with_one_fault(tmp_path, measured_table, builder)
    failed = [t for t in trials if t.user_attrs.get("status") == "failed"]
    assert [t.number for t in failed] == [1]
    assert failed[0].state == optuna.trial.TrialState.FAIL and failed[0].user_attrs["reason"].startswith(reason)
    assert "engine" not in failed[0].user_attrs  # nothing half-made is kept as a result
    assert not (tmp_path / "run" / "engines" / "trial-0001.onnx").exists()  # the fault came before export


def test_a_policy_the_exporter_cannot_handle_fails_that_trial_only(tmp_path, measured_table, monkeypatch):
    """The exporter refuses the second candidate (an unsupported operator, as an exporter
    meets with a layer it has no ONNX rule for); that trial fails, the others complete."""
    import autocompress.study as study
    from torch.onnx import OnnxExporterError

    real_export, calls = study.export_engine, []

    def export_refusing_the_second(model, *args, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            raise OnnxExporterError("Unsupported: ONNX export of operator 'aten::frobnicate'")
        return real_export(model, *args, **kwargs)

    monkeypatch.setattr(study, "export_engine", export_refusing_the_second)
    trials = _search_with_one_fault(tmp_path, measured_table, "exported_plainly")
    failed = [t for t in trials if t.user_attrs.get("status") == "failed"]
    assert len(failed) == 1 and failed[0].user_attrs["reason"].startswith("OnnxExporterError: Unsupported")


# -- half-written files are never trusted ---------------------------------------------------
_KILLED_BEFORE_RENAME = """
import os, signal, sys
from autocompress import _io
os.replace = lambda src, dst: os.kill(os.getpid(), signal.SIGKILL)  # the process dies between write and rename
_io.atomic_write_bytes(sys.argv[1], sys.argv[2].encode())
"""


def test_a_writer_killed_between_write_and_rename_leaves_the_old_file_whole(tmp_path):
    target = tmp_path / "latency_table.json"
    target.write_text('{"old": true}')
    proc = subprocess.run([sys.executable, "-c", _KILLED_BEFORE_RENAME, str(target), '{"new": tr'], timeout=120)
    assert proc.returncode == -signal.SIGKILL
    assert json.loads(target.read_text()) == {"old": True}  # readers see the old file, whole
    leftovers = [p.name for p in tmp_path.iterdir() if p != target]
    assert len(leftovers) == 1 and leftovers[0].startswith(".latency_table.json.") and leftovers[0].endswith(".tmp")


def test_a_truncated_shared_latency_table_is_refused_not_trusted(tmp_path):
    from autocompress.errors import UserError
    from autocompress.latency_lut import LatencyTable, OrtCpuBackend

    backend = OrtCpuBackend()
    shared = tmp_path / "shared.json"
    whole = json.dumps({"schema": 1, "profile": backend.profile(), "entries": {"k": {"median_us": 1.0}}})
    shared.write_text(whole[:-20])  # cut short by a writer of an older version
    with pytest.raises(UserError, match="shared.json' is unreadable or corrupted"):
        LatencyTable.open(tmp_path / "run" / "latency_table.json", backend, shared)


@pytest.mark.parametrize("damage", ["truncated", "empty", "not a state dict"])
def test_a_damaged_cached_state_dict_is_not_loaded(tmp_path, damage):
    import torch

    from autocompress._io import atomic_torch_save, load_cached_state_dict

    path = tmp_path / "teacher.pt"
    atomic_torch_save(torch.nn.Linear(64, 32).state_dict(), path)
    assert set(load_cached_state_dict(path)) == {"weight", "bias"}
    whole = path.read_bytes()
    if damage == "not a state dict":
        atomic_torch_save([1, 2, 3], path)
    else:
        path.write_bytes(whole[: len(whole) // 2] if damage == "truncated" else b"")
    assert load_cached_state_dict(path) is None
    assert load_cached_state_dict(tmp_path / "missing.pt") is None


@pytest.mark.slow
def test_a_truncated_teacher_in_the_cache_is_trained_again_not_trusted(tmp_path, monkeypatch):
    import torch

    from autocompress._io import load_cached_state_dict
    from autocompress.tasks.demo import build_demo_task

    monkeypatch.setenv("AUTOCOMPRESS_CACHE", str(tmp_path))
    first = build_demo_task(width=8, epochs=1)
    (path,) = (tmp_path / "teachers").glob("*.pt")
    path.write_bytes(path.read_bytes()[:1000])  # cut short by a writer of an older version
    again = build_demo_task(width=8, epochs=1)  # trains again (seeded) instead of loading the damaged file
    assert again.fingerprint == first.fingerprint
    for a, b in zip(first.model.state_dict().values(), again.model.state_dict().values()):
        assert torch.equal(a, b)
    assert load_cached_state_dict(path) is not None  # and the cache holds a whole copy again


def test_atomic_writes_leave_no_temporary_file_and_honour_the_umask(tmp_path):
    from autocompress._io import atomic_write_json, read_json

    target = tmp_path / "pareto.json"
    atomic_write_json(target, {"members": []})
    atomic_write_json(target, {"members": [1]})
    assert read_json(target) == {"members": [1]}
    assert [p.name for p in tmp_path.iterdir()] == ["pareto.json"]
    umask = os.umask(0)
    os.umask(umask)
    assert target.stat().st_mode & 0o777 == 0o666 & ~umask


def test_a_table_being_built_is_checkpointed_so_a_crash_keeps_the_measured_entries(tmp_path, mlp_inventory):
    from autocompress.latency_lut import LatencyTable, OrtCpuBackend
    from autocompress.latency_lut._table import effective_layers
    from autocompress.spaces import Policy

    backend = OrtCpuBackend()
    path = tmp_path / "latency_table.json"
    table = LatencyTable.open(path, backend, channel_multiple=8)
    table.checkpoint_s = 0.0  # save after every entry
    choices = effective_layers(mlp_inventory, Policy(), 8)
    table.entry_us(choices[0])
    table.entry_us(choices[1])  # a crash here: no save() was called by the caller
    reopened = LatencyTable.open(path, backend, channel_multiple=8)
    assert {choices[0].key, choices[1].key} <= set(reopened.entries)
    reopened.entry_us(choices[0])
    assert reopened.measured_now == 0  # what was measured before the crash is not measured again
