"""Bad input gets one `error:` line that names the problem and the fix, exit code 2, no traceback.

These run the command line in-process (``cli.main``). The inputs tested elsewhere, through a
subprocess, are in tests/test_cli.py: a missing task file, a task returning the wrong type,
unparseable, non-positive and unreachable budgets, an unknown searcher.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from autocompress import cli

ROOT = Path(__file__).resolve().parents[1]
BAD = ROOT / "tests" / "fixtures" / "bad_tasks.py"
PLAIN = f"{ROOT / 'tests' / 'fixtures' / 'faulty_tasks.py'}:exported_plainly"


def error_line(capsys, argv: list[str]) -> str:
    """Run the CLI; assert exit code 2, no traceback and exactly one error line; return it."""
    try:
        code = cli.main(argv)
    except SystemExit as exc:  # argparse's usage errors
        code = exc.code
    err = capsys.readouterr().err
    assert code == 2, err
    assert "Traceback" not in err
    lines = [line for line in err.splitlines() if line.startswith("error:")]
    assert len(lines) == 1, err
    return lines[0]


def search(run_dir: Path, task: str = PLAIN, *extra: str) -> list[str]:
    return ["search", "--task", task, "--latency-budget", "10ms", "--run-dir", str(run_dir), "--no-shared-table", *extra]


def test_model_not_traceable_names_the_layer_the_line_and_why(tmp_path, capsys):
    line = error_line(capsys, search(tmp_path / "run", f"{BAD}:untraceable"))
    assert "cannot be traced by torch.fx at layer '1' (_Gate, bad_tasks.py:" in line
    assert "`if x.sum() > 0:`" in line and "data-dependent Python control flow" in line and "torch.where" in line


def test_example_input_of_the_wrong_shape_names_the_layer_and_both_shapes(tmp_path, capsys):
    line = error_line(capsys, search(tmp_path / "run", f"{BAD}:wrong_input_shape"))
    assert "at layer '0' (Linear), which expects inputs whose last dimension is 16 and got (1, 20)" in line
    assert "give example_inputs the shape" in line


@pytest.mark.parametrize("damage", ["truncated", "garbage", "empty"])
def test_corrupted_latency_table_is_refused(tmp_path, capsys, damage):
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    whole = json.dumps({"schema": 1, "profile": {}, "entries": {"linear|1x16|o64": {"median_us": 3.0}}})
    text = {"truncated": whole[: len(whole) // 2], "garbage": "\x00\x13not json", "empty": ""}[damage]
    (run_dir / "latency_table.json").write_text(text)
    line = error_line(capsys, search(run_dir))
    assert "latency_table.json' is unreadable or corrupted" in line and "delete it to re-measure" in line


def test_latency_table_of_another_target_profile_is_refused(tmp_path, capsys):
    from autocompress.latency_lut import OrtCpuBackend

    run_dir = tmp_path / "run"
    run_dir.mkdir()
    profile = {**OrtCpuBackend().profile(), "device": "some other CPU"}
    (run_dir / "latency_table.json").write_text(json.dumps({"schema": 1, "profile": profile, "entries": {}}))
    line = error_line(capsys, search(run_dir))
    assert "was measured on another target (device: 'some other CPU' !=" in line and "--allow-other-profile" in line


def test_run_directory_of_a_different_task_is_refused(tmp_path, capsys):
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    (run_dir / "run.json").write_text(json.dumps({"task": "someone-else", "task_fingerprint": "x", "config": {}}))
    line = error_line(capsys, search(run_dir))
    assert "holds a run of task 'someone-else'" in line and "choose a new --run-dir" in line


def test_resume_of_a_folder_that_is_not_a_run(tmp_path, capsys):
    line = error_line(capsys, ["search", "--resume", str(tmp_path)])
    assert "is not a run directory (no run.json and study.db)" in line


def test_resume_of_a_run_with_an_unreadable_run_json(tmp_path, capsys):
    (tmp_path / "run.json").write_text('{"config": {"task": "demo", "tri')  # truncated by an older process
    (tmp_path / "study.db").write_bytes(b"")
    line = error_line(capsys, ["search", "--resume", str(tmp_path)])
    assert "run.json' is unreadable" in line and "new search" in line


@pytest.fixture
def recorded_run(tmp_path) -> Path:
    """A run folder as a search leaves it (run.json with its config; a trial store)."""
    from dataclasses import asdict

    from autocompress.study import SearchConfig

    run_dir = tmp_path / "run"
    run_dir.mkdir()
    config = SearchConfig(task=PLAIN, latency_budget="10ms", trials=4, run_dir=str(run_dir), seed=3)
    (run_dir / "run.json").write_text(json.dumps({"config": asdict(config)}))
    (run_dir / "study.db").write_bytes(b"")
    return run_dir


@pytest.mark.parametrize(
    ("option", "recorded"),
    [(["--seed", "4"], "--seed 4 conflicts with the run's recorded 3"),
     (["--latency-budget", "5ms"], "--latency-budget '5ms' conflicts with the run's recorded '10ms'"),
     (["--bits", "32,8"], "--bits (32, 8) conflicts with the run's recorded (32, 8, 4)"),
     (["--searcher", "random"], "--searcher 'random' conflicts with the run's recorded 'tpe'"),
     (["--decompositions", "svd,tucker2"], "--decompositions ('svd', 'tucker2') conflicts with the run's recorded ('svd',)"),
     (["--batch-size", "32"], "--batch-size 32 conflicts with the run's recorded 0"),
     (["--bn-batches", "4"], "--bn-batches 4 conflicts with the run's recorded 8"),
     (["--run-dir", "elsewhere"], "--run-dir 'elsewhere' conflicts with --resume")],
)
def test_resume_with_a_conflicting_option_is_refused(recorded_run, capsys, option, recorded):
    line = error_line(capsys, ["search", "--resume", str(recorded_run), *option])
    assert recorded in line


def test_resume_reads_the_recorded_config_and_accepts_agreeing_options(recorded_run):
    from autocompress.study import SearchConfig

    args = cli.build_parser().parse_args(["search", "--resume", str(recorded_run), "--seed", "3", "--trials", "6"])
    config = cli._resumed_config(args)
    assert isinstance(config, SearchConfig)
    assert (config.task, config.latency_budget, config.seed, config.trials) == (PLAIN, "10ms", 3, 6)
    assert config.run_dir == str(recorded_run) and config.space.bits == (32, 8, 4)


def test_a_run_recorded_before_batchnorm_re_estimation_resumes_without_it(recorded_run):
    manifest = json.loads((recorded_run / "run.json").read_text())
    del manifest["config"]["distill"]["bn_batches"]
    (recorded_run / "run.json").write_text(json.dumps(manifest))
    config = cli._resumed_config(cli.build_parser().parse_args(["search", "--resume", str(recorded_run)]))
    assert config.distill.bn_batches == 0  # its trials were fine-tuned without it; the rest are too


def test_negative_bn_batches_is_refused(tmp_path, capsys):
    line = error_line(capsys, search(tmp_path / "run", PLAIN, "--bn-batches", "-1"))
    assert "bn_batches" in line and ">= 0" in line


def test_unknown_decomposition_is_refused_with_the_valid_ones(tmp_path, capsys):
    line = error_line(capsys, search(tmp_path / "run", PLAIN, "--decompositions", "svd,cp"))
    assert "'cp'" in line and "tucker2" in line


def test_search_without_budget_or_resume_names_both(tmp_path, capsys):
    line = error_line(capsys, ["search", "--task", PLAIN, "--run-dir", str(tmp_path / "run")])
    assert "--latency-budget" in line and "--resume" in line


def test_copying_a_run_elsewhere_and_resuming_it_there_is_allowed(recorded_run, tmp_path):
    moved = tmp_path / "moved"
    shutil.copytree(recorded_run, moved)
    args = cli.build_parser().parse_args(["search", "--resume", str(moved)])
    assert cli._resumed_config(args).run_dir == str(moved)


def test_corrupted_trial_store_is_refused(tmp_path, capsys):
    from dataclasses import asdict

    from autocompress.study import SearchConfig

    run_dir = tmp_path / "run"
    run_dir.mkdir()
    config = SearchConfig(task=PLAIN, latency_budget="10ms", trials=1, run_dir=str(run_dir))
    (run_dir / "run.json").write_text(json.dumps({"task": "exported-plainly", "task_fingerprint": "exported-plainly-v1",
                                                  "config": asdict(config)}))
    (run_dir / "study.db").write_bytes(b"SQLite format 3\x00" + b"\xff" * 300)  # a header, then garbage
    line = error_line(capsys, search(run_dir, PLAIN, "--trials", "1", "--distill-steps", "1"))
    assert "study.db' is unreadable or corrupted" in line and "new --run-dir" in line


def test_resume_accepts_the_same_task_file_spelled_another_way(recorded_run, monkeypatch):
    monkeypatch.chdir(ROOT / "tests")
    args = cli.build_parser().parse_args(["search", "--resume", str(recorded_run), "--task", "fixtures/faulty_tasks.py:exported_plainly"])
    assert cli._resumed_config(args).task == PLAIN


def test_resume_refuses_an_option_it_cannot_check_against_the_record(recorded_run, capsys, monkeypatch):
    # An option added to `search` without a place in the recorded config is refused, never ignored.
    monkeypatch.setattr(cli, "_RECORDED_OPTIONS", {k: v for k, v in cli._RECORDED_OPTIONS.items() if k != "importance"})
    line = error_line(capsys, ["search", "--resume", str(recorded_run), "--importance", "l2"])
    assert "--importance cannot be combined with --resume" in line
