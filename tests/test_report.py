"""The report page, its numbers, the run-directory server and the runs commands."""

from __future__ import annotations

import http.client
import json
import os
import re
import shutil
import threading

import pytest

from autocompress.cli import main
from autocompress.errors import UserError
from autocompress.report import hypervolume_2d, list_runs, make_server, policy_grid, search_progress, write_report


def test_hypervolume_of_a_staircase():
    # Reference: metric 0, latency 10. Points (metric, latency): (1, 2) and (3, 6).
    assert hypervolume_2d([(1.0, 2.0), (3.0, 6.0)], 0.0, 10.0, True) == pytest.approx(1 * 4 + 3 * 4)
    assert hypervolume_2d([(1.0, 2.0), (0.5, 4.0)], 0.0, 10.0, True) == pytest.approx(8.0)  # a dominated point adds nothing
    assert hypervolume_2d([(1.0, 12.0)], 0.0, 10.0, True) == 0.0  # beyond the reference latency
    assert hypervolume_2d([(1.0, 2.0)], 3.0, 10.0, False) == pytest.approx(2.0 * 8.0)  # lower is better


def test_search_progress_tracks_best_feasible_hypervolume_and_rejections():
    trials = [
        {"number": 0, "status": "completed", "metric": 0.8, "measured_ms": 1.0},
        {"number": 1, "status": "infeasible"},
        {"number": 2, "status": "completed", "metric": 0.9, "measured_ms": 3.0},  # over the budget of 2 ms
        {"number": 3, "status": "completed", "metric": 0.85, "measured_ms": 1.5},
    ]
    progress = search_progress(trials, budget_ms=2.0, higher_is_better=True, budget_noise=1.0)
    assert [p["best"] for p in progress] == [0.8, 0.8, 0.8, 0.85]
    assert [p["infeasible_share"] for p in progress] == [0.0, 0.5, pytest.approx(1 / 3), 0.25]
    hv = [p["hypervolume"] for p in progress]
    assert hv[0] > 0 and hv[0] == hv[1] == hv[2] < hv[3]
    # Timed 2.4 ms on a machine running 25% slow: 1.9 ms at the start's speed, within the budget it holds.
    trials[2].update(measured_ms=2.4, at_start_ms=1.9)
    assert [p["best"] for p in search_progress(trials, budget_ms=2.0, higher_is_better=True, budget_noise=1.0)] == [0.8, 0.8, 0.9, 0.9]


def test_a_front_retimed_off_the_start_speed_says_so():
    from autocompress.report import retime_note

    assert retime_note({}) is None and retime_note({"retime_speed": {"original": 1.03, "most_compressed": 0.97}}) is None
    note = retime_note({"retime_speed": {"original": 1.18, "most_compressed": 1.12}})
    assert "the original +18%, the most compressed model +12%" in note and "held to the budget at the start's speed" in note


def test_policy_grid_reads_pruning_from_each_layers_output_group():
    layers = [{"name": "conv1", "out_group": "g1"}, {"name": "fc", "out_group": None}]
    grid = policy_grid({"prune": {"g1": 0.5}, "bits": {"fc": 8}, "rank": {"conv1": 0.25}, "decomp": {"conv1": "tucker2"}}, layers)
    assert grid == [{"layer": "conv1", "prune": 0.5, "bits": 32, "rank": 0.25, "decomp": "tucker2"},
                    {"layer": "fc", "prune": 0.0, "bits": 8, "rank": 1.0, "decomp": "svd"}]


def test_user_strings_are_escaped_in_the_page(tmp_path):
    evil = '</script><script>alert("x")</script>&<i id=evil>'
    summary = {"run": evil, "task": evil, "metric_name": evil, "higher_is_better": True, "budget": evil, "budget_ms": 1.0,
               "baseline": {"metric": 0.9, "latency_ms": 2.0, "extra_metrics": {evil: 0.5}}, "profile": {evil: evil},
               "counts": {}, "fidelity": {}, "layers": [{"name": evil, "out_group": None}]}
    member = {"trial": 0, "metric": 0.8, "predicted_ms": 0.9, "measured_ms": 1.0, "size_bytes": 2048, "speedup": 2.0,
              "policy": {"prune": {}, "bits": {evil: 8}, "rank": {}}, "summary": evil, "verified": False, "problems": [evil],
              "engine_file": f"engines/{evil}.onnx", "sidecar_file": "engines/x.onnx.json"}
    trials = [{"number": 0, "status": "completed", "metric": 0.8, "measured_ms": 1.0, "predicted_ms": 0.9, "summary": evil}]
    page = write_report(tmp_path / "report.html", summary, trials, [member]).read_text()
    assert "<script>alert" not in page and "<i id=evil>" not in page
    assert page.count("<script") == 2 and page.count("</script>") == 2  # the data block and the code only
    data = re.search(r'<script type="application/json" id="report-data">(.*?)</script>', page, re.S).group(1)
    assert json.loads(data)["task"] == evil  # escaped for HTML, intact for the script
    assert "http://" not in page.replace("http://www.w3.org/2000/svg", "") and "https://" not in page


def test_the_page_warns_when_integer_and_float_kernels_moved_apart_since_the_start(tmp_path):
    """The search's engines were timed beside the original and the most compressed model; a
    most compressed model 60% slower against the original than at the start is named."""
    summary = {"run": "r", "task": "t", "metric_name": "accuracy", "higher_is_better": True, "budget": "0.5x", "budget_ms": 1.0,
               "baseline": {"metric": 0.9, "latency_ms": 2.0}, "profile": {}, "counts": {}, "layers": [],
               "fidelity": {"candidates": 4, "median_abs_error": 0.2, "within_10pct": 0.25, "within_5pct": 0.0, "uneven": 0.6}}
    page = write_report(tmp_path / "report.html", summary, [], []).read_text()
    assert "the most compressed model took 60% longer than at the run&#x27;s start" in page
    summary["fidelity"]["uneven"] = 0.05  # within what a quiet machine moves: no warning
    assert "took 5%" not in write_report(tmp_path / "report.html", summary, [], []).read_text()


def test_a_widened_member_shows_what_its_proposal_gave_up(tmp_path):
    summary = {"run": "r", "task": "t", "metric_name": "accuracy", "higher_is_better": True, "budget": "0.5x", "budget_ms": 1.0,
               "baseline": {"metric": 0.9, "latency_ms": 2.0}, "profile": {}, "counts": {"widened": 3}, "layers": [], "fidelity": {}}
    member = {"trial": 4, "metric": 0.88, "predicted_ms": 0.9, "measured_ms": 0.95, "size_bytes": 2048, "speedup": 2.1,
              "policy": {"prune": {}, "bits": {}, "rank": {}}, "summary": "fp32", "verified": True, "problems": [],
              "widened": ["bits/fc 8->32", "prune/g1 0.5->0.25"], "engine_file": "engines/trial-0004.onnx"}
    page = write_report(tmp_path / "report.html", summary, [], [member]).read_text()
    assert "(proposal widened: 2 choices the table predicted cost no latency)" in page
    assert 'title="bits/fc 8-&gt;32, prune/g1 0.5-&gt;0.25"' in page
    assert "3 proposals widened where compressing less was predicted to cost no latency" in page


@pytest.fixture
def served(tmp_path):
    root = tmp_path / "run"
    (root / "engines").mkdir(parents=True)
    (root / "report.html").write_text("<html>report</html>")
    (root / "engines" / "trial-0000.onnx").write_bytes(b"engine")
    (tmp_path / "secret.txt").write_text("outside")
    os.symlink(tmp_path / "secret.txt", root / "link-out.txt")
    server = make_server(root, "127.0.0.1", 0)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server.server_address[1]
    server.shutdown()
    server.server_close()


def _get(port: int, path: str) -> tuple[int, bytes]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    conn.request("GET", path)  # sent as written: no client-side normalisation of .. segments
    response = conn.getresponse()
    body = response.read()
    conn.close()
    return response.status, body


def test_server_serves_the_run_and_nothing_outside_it(served):
    assert _get(served, "/report.html") == (200, b"<html>report</html>")
    assert _get(served, "/engines/trial-0000.onnx") == (200, b"engine")
    assert _get(served, "/")[0] == 302
    assert _get(served, "/missing.html")[0] == 404
    assert _get(served, "/engines/")[0] == 404  # no listings
    for path in ("/../secret.txt", "/engines/../../secret.txt", "/%2e%2e/secret.txt", "/%2E%2E%2Fsecret.txt",
                 "/engines/%2e%2e/%2e%2e/secret.txt", "/%252e%252e/secret.txt", "/..%5csecret.txt", "/link-out.txt"):
        status, body = _get(served, path)
        assert status in (403, 404) and b"outside" not in body, path


def test_server_refuses_a_missing_folder(tmp_path):
    with pytest.raises(UserError, match="not a folder"):
        make_server(tmp_path / "nope")


def test_runs_list_and_show(mlp_run, tmp_path, capsys):
    root = tmp_path / "runs"
    root.mkdir()
    shutil.copytree(mlp_run, root / "a")
    (root / "not-a-run").mkdir()
    rows = list_runs(root)
    pareto = json.loads((mlp_run / "pareto.json").read_text())
    assert [r.task for r in rows] == ["mlp-digits"]
    assert rows[0].best_metric == max(m["metric"] for m in pareto["members"]) and rows[0].trials == 3
    assert main(["runs", "list", "--root", str(root)]) == 0
    out = capsys.readouterr().out
    assert "mlp-digits" in out and "10ms" in out
    assert main(["runs", "show", str(root / "a")]) == 0
    out = capsys.readouterr().out
    assert "verified" in out and all(str(m["trial"]) in out for m in pareto["members"])
    assert main(["runs", "list", "--root", str(tmp_path / "nothing")]) == 2
    assert main(["runs", "show", str(root / "not-a-run")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 2 and all(line.startswith("error: ") for line in err)


def test_report_serve_command_serves_the_existing_report(mlp_run):
    import subprocess
    import sys

    proc = subprocess.Popen([sys.executable, "-m", "autocompress", "report", str(mlp_run), "--serve", "--port", "0"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        line = proc.stdout.readline()
        match = re.search(r"http://127\.0\.0\.1:(\d+)/report\.html", line)
        assert match, (line, proc.stderr.read() if proc.poll() is not None else "")
        port = int(match.group(1))
        status, body = _get(port, "/report.html")
        assert status == 200 and body == (mlp_run / "report.html").read_bytes()
        assert _get(port, "/%2e%2e/run.json")[0] == 403
    finally:
        proc.terminate()
        proc.wait(timeout=30)
