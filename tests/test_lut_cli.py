"""`autocompress lut build | show | validate` on a tiny real task."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from autocompress.latency_lut import fidelity

ROOT = Path(__file__).resolve().parents[1]
MLP = f"{ROOT / 'tests' / 'fixtures' / 'mlp_task.py'}:build"


def cli(*args: str, tmp: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "AUTOCOMPRESS_CACHE": str(tmp / "cache")}
    return subprocess.run([sys.executable, "-m", "autocompress", *args], capture_output=True, text=True, env=env, cwd=tmp, timeout=600)


def test_fidelity_statistics_are_exact_on_known_numbers():
    report = fidelity([109.0, 96.0, 300.0, 40.0], [100.0, 100.0, 200.0, 50.0], ["a", "b", "c", "d"])
    assert report.median_abs_error == pytest.approx(np.median([0.09, 0.04, 0.5, 0.2]))
    assert report.within_10pct == pytest.approx(0.5)  # +9% and -4%
    assert report.within_5pct == pytest.approx(0.25)
    assert report.spearman == pytest.approx(0.8)  # predicted order a,b swapped against measured
    assert [w["policy"] for w in report.worst(2)] == ["c", "d"]


def test_lut_build_show_validate(tmp_path):
    table = tmp_path / "table.json"
    built = cli("lut", "build", "--task", MLP, "--table", str(table), tmp=tmp_path)
    assert built.returncode == 0, built.stderr[-2000:]
    data = json.loads(table.read_text())
    assert data["profile"]["runtime"] == "onnxruntime" and data["entries"]
    assert len(data["calibrations"]) == 1
    assert "entries measured now" in built.stdout

    again = cli("lut", "build", "--task", MLP, "--table", str(table), "--calibration-seconds", "0", tmp=tmp_path)
    assert again.returncode == 0
    assert "0 entries measured now" in again.stdout  # everything reachable is already there
    # No time past the first batch: baseline, most compressed, each uniform precision, 8 random models.
    from autocompress.inventory import build_inventory
    from autocompress.spaces import SpaceConfig, build_space
    from autocompress.task import load_task

    task = load_task(MLP)
    first_batch = 2 + len(build_space(build_inventory(task.model, task.example_inputs), SpaceConfig()).uniform_precisions()) + 8
    (recalibrated,) = json.loads(table.read_text())["calibrations"].values()
    assert len(recalibrated["points"]) == first_batch < len(data["calibrations"][next(iter(data["calibrations"]))]["points"])
    data = json.loads(table.read_text())
    fresh = cli("lut", "build", "--task", MLP, "--table", str(table), "--calibration-seconds", "0", "--remeasure", tmp=tmp_path)
    assert fresh.returncode == 0 and f"{len(data['entries'])} entries measured now ({len(data['entries'])} in all)" in fresh.stdout
    data = json.loads(table.read_text())

    shown = cli("lut", "show", "--table", str(table), tmp=tmp_path)
    assert shown.returncode == 0
    assert f"{len(data['entries'])} entries" in shown.stdout and "non-monotone" in shown.stdout
    (cal,) = data["calibrations"].values()
    assert all("parts" in p for p in cal["points"]) and "part_scales" in cal
    assert f"on {len(cal['points'])} whole models" in shown.stdout  # the calibration, as `lut build` printed it

    validated = cli("lut", "validate", "--task", MLP, "--table", str(table), "--samples", "4", "--json", "--repeat", tmp=tmp_path)
    assert validated.returncode == 0, validated.stderr[-2000:]
    report = json.loads(validated.stdout)
    assert len(report["samples"]) == 4
    assert 0.0 <= report["within_10pct"] <= 1.0 and report["median_abs_error"] >= 0.0
    for s in report["samples"]:
        assert s["predicted_us"] > 0 and s["measured_us"] > 0
    # --repeat: the same candidates timed again, compared with their first timings.
    again = report["repeatability"]["latency"]["samples"]
    assert [s["policy"] for s in again] == [s["policy"] for s in report["samples"]]
    assert [s["measured_us"] for s in again] == [s["measured_us"] for s in report["samples"]]
    assert all(s["predicted_us"] > 0 for s in again) and 0.0 <= report["repeatability"]["relative_to_original"]["within_10pct"] <= 1.0
    # The table's calibration timed the most compressed model: the view a search reports is there too.
    assert [s["policy"] for s in report["at_calibration_speed"]["samples"]] == [s["policy"] for s in report["samples"]]
    assert set(report["repeatability"]) == {"latency", "relative_to_original", "at_calibration_speed"}
    # ... and it timed the original too: the latency view predicts at the speed the two whole models read.
    assert report["latency_gauge"] == "whole_models"
    assert [s["measured_us"] for s in report["latency_by_reference"]["samples"]] == [s["measured_us"] for s in report["samples"]]
    assert all(report["machine"][k] > 0 for k in ("original_us", "original_predicted_us", "original_calibration_us", "most_compressed_us",
                                                  "most_compressed_calibration_us"))
    printed = cli("lut", "validate", "--task", MLP, "--table", str(table), "--samples", "2", tmp=tmp_path)
    assert printed.returncode == 0 and "Timed beside the candidates (median): the original" in printed.stdout
    assert "The table predicted the original at" in printed.stdout
    assert "at the calibration's machine speed" in printed.stdout
    flowing = " ".join(printed.stdout.split())  # the lines as the terminal's width wrapped them, joined
    assert "the two whole models read in the candidate's own rounds:" in flowing and "the reference graph read:" in flowing


def test_lut_validate_text_warns_of_a_machine_running_unevenly():
    """A validation whose most compressed model ran 1.6 times slower against the original than
    in the calibration says so, with what to do; an even one does not."""
    from rich.console import Console

    from autocompress.cli import _print_validation
    from autocompress.latency_lut import Validation, fidelity

    report = fidelity([100.0, 200.0], [110.0, 190.0], ["a", "b"])
    machine = {"original_us": 2000.0, "original_calibration_us": 2000.0, "most_compressed_us": 600.0, "most_compressed_calibration_us": 375.0}
    for most_compressed_us, warned in ((600.0, True), (390.0, False)):
        console = Console(record=True, width=2000)
        _print_validation(Validation(report, report, machine={**machine, "most_compressed_us": most_compressed_us}), "demo", 2, console)
        text = console.export_text()
        assert "Timed beside the candidates (median): the original 2000 us" in text
        assert ("took 60% longer than in the table's calibration" in text) is warned
        assert ("`autocompress lut build` with the same --table refits the calibration" in text) is warned


def test_lut_validate_text_says_when_whole_models_ran_off_the_gauge():
    """The original predicted at the reference graph's speed is printed against its timing,
    with a warning where whole models ran more than 5% off it; without a prediction, nothing."""
    from rich.console import Console

    from autocompress.cli import _print_validation
    from autocompress.latency_lut import Validation, fidelity

    report = fidelity([100.0, 200.0], [110.0, 190.0], ["a", "b"])
    machine = {"original_us": 2200.0, "original_calibration_us": 2000.0, "most_compressed_us": 375.0, "most_compressed_calibration_us": 375.0}
    for predicted, warned in ((2000.0, True), (2150.0, False), (None, False)):
        console = Console(record=True, width=2000)
        _print_validation(Validation(report, report, machine={**machine, "original_predicted_us": predicted}), "demo", 2, console)
        text = console.export_text()
        assert ("The table predicted the original at" in text) is (predicted is not None)
        assert ("whole models ran 10% slower than the small graph that gauges the machine says" in text) is warned
        assert ("the views relative to the original and at the calibration's speed do not" in text) is warned
    # Where the latency view followed the whole models, only the view by the reference graph judges that state.
    console = Console(record=True, width=2000)
    _print_validation(Validation(report, report, machine={**machine, "original_predicted_us": 2000.0}, by_reference=report), "demo", 2, console)
    text = console.export_text()
    assert "the latency view by that graph judges that state as much as the table; the other views do not" in text
    assert "latency at the machine speed the two whole models read in the candidate's own rounds: median" in text


def test_lut_validate_text_counts_candidates_timed_again():
    """Candidates timed again after a disturbance are counted, and those still disturbed
    named as judged as timed; a validation without any says nothing of it."""
    from rich.console import Console

    from autocompress.cli import _print_validation
    from autocompress.latency_lut import Validation, fidelity

    report = fidelity([100.0, 200.0], [110.0, 190.0], ["a", "b"])
    machine = {"original_us": 2000.0, "original_calibration_us": 2000.0, "most_compressed_us": 375.0, "most_compressed_calibration_us": 375.0}
    for counts, expected in (({"retimed": 3, "disturbed": 1}, "3 candidate timing(s) were taken again"),
                             ({"retimed": 0, "disturbed": 0}, None)):
        console = Console(record=True, width=2000)
        _print_validation(Validation(report, report, machine={**machine, **counts}), "demo", 2, console)
        text = console.export_text()
        assert (expected in text) if expected else "taken again" not in text
        assert ("1 still did, and are judged as timed" in text) is bool(counts["disturbed"])


def test_lut_show_without_a_table_says_how_to_build_one(tmp_path):
    proc = cli("lut", "show", "--table", str(tmp_path / "none.json"), tmp=tmp_path)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert "autocompress lut build" in proc.stderr
