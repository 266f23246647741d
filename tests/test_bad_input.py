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
from autocompress.compress import int8_weight_max

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


def test_a_run_trained_on_other_int8_weights_is_refused_with_the_setting_that_resumes_it(tmp_path, capsys, monkeypatch):
    from autocompress.task import load_task

    run_dir = tmp_path / "run"
    run_dir.mkdir()
    task = load_task(PLAIN)
    (run_dir / "run.json").write_text(json.dumps({"task": task.name, "task_fingerprint": task.fingerprint,
                                                  "config": {"latency_budget": "10ms"}, "int8_weight_max": 64}))
    monkeypatch.setenv("AUTOCOMPRESS_INT8_WEIGHTS", "8")
    line = error_line(capsys, search(run_dir))
    assert "trained its int8 layers on 7-bit weights, not 8; set AUTOCOMPRESS_INT8_WEIGHTS=7 to resume it" in line


def test_an_int8_weight_width_that_is_neither_8_nor_7_is_refused_before_any_work(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("AUTOCOMPRESS_INT8_WEIGHTS", "4")
    line = error_line(capsys, search(tmp_path / "run"))
    assert "AUTOCOMPRESS_INT8_WEIGHTS='4' is not a weight width; set it to 8 or 7" in line
    assert not (tmp_path / "run" / "latency_table.json").exists()


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
    assert "Invalid option: --bn-batches must be >= 0, but got -1." in line  # the flag, not the config field


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
                                                  "config": asdict(config), "int8_weight_max": int8_weight_max()}))
    (run_dir / "study.db").write_bytes(b"SQLite format 3\x00" + b"\xff" * 300)  # a header, then garbage
    line = error_line(capsys, search(run_dir, PLAIN, "--trials", "1", "--distill-steps", "1"))
    assert "study.db' cannot be opened (" in line and "new --run-dir" in line


def test_resume_accepts_the_same_task_file_spelled_another_way(recorded_run, monkeypatch):
    monkeypatch.chdir(ROOT / "tests")
    args = cli.build_parser().parse_args(["search", "--resume", str(recorded_run), "--task", "fixtures/faulty_tasks.py:exported_plainly"])
    assert cli._resumed_config(args).task == PLAIN


def test_resume_refuses_an_option_it_cannot_check_against_the_record(recorded_run, capsys, monkeypatch):
    # An option added to `search` without a place in the recorded config is refused, never ignored.
    monkeypatch.setattr(cli, "_RECORDED_OPTIONS", {k: v for k, v in cli._RECORDED_OPTIONS.items() if k != "importance"})
    line = error_line(capsys, ["search", "--resume", str(recorded_run), "--importance", "l2"])
    assert "--importance cannot be combined with --resume" in line


# -- damaged files and unusable paths: each named, before minutes of work where it can be ----------


def test_a_task_file_that_fails_to_import_names_the_file_and_the_line(tmp_path, capsys):
    broken = tmp_path / "broken.py"
    broken.write_text("def build(:\n")
    line = error_line(capsys, search(tmp_path / "run", f"{broken}:build"))
    assert f"Task file '{broken}' failed to import (SyntaxError: invalid syntax, line 1); fix the file." in line
    raising = tmp_path / "raising.py"
    raising.write_text("raise RuntimeError('boom at import')\n")
    assert "failed to import (RuntimeError: boom at import)" in error_line(capsys, search(tmp_path / "run", f"{raising}:build"))


@pytest.mark.parametrize(("spec", "needle"), [(":build", "names no module, file or function"),
                                              ("model.py", "names a file but no function; add it: 'model.py:build'")])
def test_a_task_spec_without_a_module_or_a_function_says_how_to_write_one(tmp_path, capsys, spec, needle):
    assert needle in error_line(capsys, search(tmp_path / "run", spec))


def test_a_run_dir_that_cannot_be_created_is_refused_before_the_task_loads(tmp_path, capsys):
    a_file = tmp_path / "a_file"
    a_file.write_text("")
    # The task file does not exist: the run directory is checked first.
    for run_dir, why in ((a_file, "a file is there"), (a_file / "sub", f"{str(a_file)!r} is a file")):
        line = error_line(capsys, search(run_dir, f"{tmp_path / 'missing.py'}:build"))
        assert f"Cannot create the folder {str(run_dir)!r} ({why}); give --run-dir a writable folder." in line


def test_a_run_json_that_is_not_an_object_is_refused(tmp_path, capsys):
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    (run_dir / "run.json").write_text("[1, 2]")
    assert "run.json is unreadable; choose a new --run-dir" in error_line(capsys, search(run_dir))


def test_lut_commands_refuse_a_damaged_table_or_a_directory_before_measuring(tmp_path, capsys):
    from autocompress.latency_lut._table import RAW_VERSION

    table = tmp_path / "table.json"
    table.write_text(json.dumps({"schema": 1, "profile": {}, "entries": {"conv|o8": {"median_us": 2.0}},
                                 "calibrations": {"m": {"raw_version": RAW_VERSION}}}))
    line = error_line(capsys, ["lut", "show", "--table", str(table)])
    assert "is unreadable or corrupted (a calibration without its scale and offset); delete it to re-measure." in line
    # A directory as --table: refused before the task (here a missing file) loads.
    for command in ("build", "validate"):
        line = error_line(capsys, ["lut", command, "--table", str(tmp_path), "--task", f"{tmp_path / 'missing.py'}:build"])
        assert f"Latency table path {str(tmp_path)!r} is a directory; give --table a .json file path." in line


def test_lut_calibration_seconds_must_be_a_time_before_the_task_loads(tmp_path, capsys):
    for command in ("build", "validate"):
        for value in ("-5", "nan"):
            line = error_line(capsys, ["lut", command, "--calibration-seconds", value, "--task", f"{tmp_path / 'missing.py'}:build"])
            assert f"--calibration-seconds must be a number of seconds >= 0, but got {float(value)}." in line


def test_lut_build_and_validate_take_allow_other_profile_as_the_refusal_suggests():
    for command in ("build", "validate"):
        assert cli.build_parser().parse_args(["lut", command, "--allow-other-profile"]).allow_other_profile


def _run_record(run_dir: Path) -> None:
    """run.json as a finished search writes it, for the plain task on this machine."""
    from dataclasses import asdict

    from autocompress.latency_lut import OrtCpuBackend
    from autocompress.study import SearchConfig

    config = SearchConfig(task=PLAIN, latency_budget="10ms", trials=1, run_dir=str(run_dir))
    run_dir.mkdir()
    (run_dir / "run.json").write_text(json.dumps({
        "task": "exported-plainly", "task_spec": PLAIN, "task_fingerprint": "exported-plainly-v1", "config": asdict(config),
        "metric_name": "accuracy", "higher_is_better": True, "baseline": {"latency_ms": 0.01, "metric": 0.5}, "budget_ms": 10.0,
        "profile": OrtCpuBackend().profile(), "int8_weight_max": int8_weight_max()}))


def test_report_and_export_name_a_damaged_run_record_or_trial_store(tmp_path, capsys):
    incomplete = tmp_path / "incomplete"
    incomplete.mkdir()
    (incomplete / "run.json").write_text("{}")
    (incomplete / "study.db").write_bytes(b"")
    for argv in (["report", str(incomplete)], ["export", str(incomplete), "--trial", "0"]):
        assert "run.json' is not a search's record (it lacks a valid 'task')" in error_line(capsys, argv)
    garbage = tmp_path / "garbage"
    _run_record(garbage)
    (garbage / "study.db").write_bytes(b"not a database" * 10)
    for argv in (["report", str(garbage)], ["export", str(garbage), "--trial", "0"]):
        line = error_line(capsys, argv)
        assert "study.db' cannot be opened (" in line and "damaged or holds no search" in line and "new --run-dir" in line


def test_runs_list_skips_and_runs_show_names_damaged_records(tmp_path, capsys):
    root = tmp_path / "runs"
    (root / "odd").mkdir(parents=True)
    (root / "odd" / "run.json").write_text("[1]")
    assert cli.main(["runs", "list", "--root", str(root)]) == 0
    assert "No run directories" in capsys.readouterr().out
    (root / "odd" / "run.json").write_text("{}")
    (root / "odd" / "pareto.json").write_text("{}")
    assert "pareto.json' is unreadable; rebuild it with `autocompress report" in error_line(capsys, ["runs", "show", str(root / "odd")])


@pytest.mark.parametrize(("extra", "needle"), [
    (["--ray-address", "local", "--workers", "0"], "--workers must be at least 1, but got 0."),
    (["--ray-max-failures", "3"], "--workers, --ray-max-failures and --early-stop apply to Ray sweeps; add --ray-address"),
])
def test_ray_options_are_checked_not_ignored(tmp_path, capsys, extra, needle):
    assert needle in error_line(capsys, search(tmp_path / "run", PLAIN, *extra))


@pytest.mark.parametrize(("extra", "needle"), [(["--feature-weight", "nan"], "--feature-weight must be >= 0 and finite"),
                                               (["--lr", "inf"], "--lr must be > 0 and finite")])
def test_distillation_options_must_be_finite(tmp_path, capsys, extra, needle):
    assert needle in error_line(capsys, search(tmp_path / "run", PLAIN, *extra))


def test_report_refuses_host_and_port_without_serve(tmp_path, capsys):
    _run_record(tmp_path / "run")
    (tmp_path / "run" / "study.db").write_bytes(b"")
    assert "--host and --port apply with --serve" in error_line(capsys, ["report", str(tmp_path / "run"), "--port", "9000"])


def test_a_task_whose_recorded_fields_have_the_wrong_type_is_refused_before_any_work(tmp_path, capsys):
    task_file = tmp_path / "typed.py"
    task_file.write_text(
        "import torch\nfrom autocompress import Task\n"
        "def build():\n"
        "    data = [(torch.randn(4, 8), torch.randint(0, 2, (4,)))]\n"
        "    return Task(name='typed', model=torch.nn.Linear(8, 2), example_inputs=torch.randn(1, 8), train_loader=data,\n"
        "                eval_loader=data, metric=lambda o, t: 0.0, fingerprint=None)\n")
    line = error_line(capsys, search(tmp_path / "run", f"{task_file}:build"))
    assert "`fingerprint` must be a str, but got NoneType" in line
    assert not (tmp_path / "run").exists()  # refused before the run directory was made


def test_a_table_that_cannot_be_written_is_one_line_not_a_traceback(tmp_path, capsys):
    from autocompress.errors import UserError
    from autocompress.latency_lut import LatencyTable, OrtCpuBackend

    table = LatencyTable.open(tmp_path / "t.json", OrtCpuBackend())
    table.path = tmp_path / "gone" / "deeper"
    (tmp_path / "gone").write_text("a file where the folder should be")
    with pytest.raises(UserError, match="Cannot write the latency table .* give --table"):
        table.save()
