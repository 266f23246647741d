"""Front members leave verified engines with sidecars and the fine-tuned weights that
rebuild them; `autocompress export` exports a trial again in another format."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import onnx
import pytest
import torch

from autocompress.cli import main
from autocompress.errors import UserError
from autocompress.export import candidate_path, export_trial, file_sha256, prune_candidates, retarget_float_layers
from autocompress.spaces import Policy


def _pareto(run_dir: Path) -> dict:
    return json.loads((run_dir / "pareto.json").read_text())


def test_every_front_member_has_a_sidecar_with_provenance_and_checks(mlp_run):
    pareto = _pareto(mlp_run)
    manifest = json.loads((mlp_run / "run.json").read_text())
    assert pareto["members"]
    for member in pareto["members"]:
        engine = mlp_run / member["engine_file"]
        sidecar = json.loads((mlp_run / member["sidecar_file"]).read_text())
        assert sidecar["sha256"] == file_sha256(engine) == member["engine"]["sha256"]
        assert sidecar["policy"] == member["policy"] and sidecar["trial"] == member["trial"]
        assert sidecar["task"] == "mlp-digits" and sidecar["target_profile"] == manifest["profile"]
        assert sidecar["versions"]["onnxruntime"] and sidecar["run"] == pareto["run"]
        graph_inputs = [i.name for i in onnx.load(str(engine)).graph.input]
        assert [i["name"] for i in sidecar["inputs"]] == graph_inputs and sidecar["inputs"][0]["shape"] == ["batch", 64]
        check = sidecar["verification"]
        assert check["ok"] is True and member["verified"] is True and check["problems"] == []
        assert check["relative_error"] <= check["tolerance"]
        assert check["latency_ms"] == pytest.approx(member["measured_ms"])  # the front table's re-timed figure
        assert check["runtime_metric"] == pytest.approx(member["metric"], abs=0.02)
        assert sidecar["checkpoint"]["sha256"] == file_sha256(candidate_path(mlp_run, member["trial"]))


def test_checkpoint_rebuilds_the_fine_tuned_candidate(mlp_run, tmp_path):
    member = _pareto(mlp_run)["members"][0]
    data = torch.load(candidate_path(mlp_run, member["trial"]), weights_only=True)
    assert data["policy"] == member["policy"] and data["trial"] == member["trial"]
    result = export_trial(mlp_run, member["trial"], "onnx", tmp_path)
    assert result.ok, result.problems
    sidecar = json.loads(result.sidecar.read_text())
    # The same weights give the same outputs: the engine scores what the search's engine scored.
    assert sidecar["verification"]["runtime_metric"] == pytest.approx(member["engine"]["runtime_metric"], abs=1e-9)
    assert sidecar["finetune"]["final_steps"] == 0


def test_retarget_sets_only_float_layers():
    policy = Policy({"g": 0.5}, {"a": 8, "b": 4}, {"c": 0.5})
    assert retarget_float_layers(policy, ["a", "b", "c", "d"], 16) == Policy({"g": 0.5}, {"a": 8, "b": 4, "c": 16, "d": 16}, {"c": 0.5})


def test_prune_candidates_deletes_only_large_checkpoints_off_the_front(tmp_path):
    folder = tmp_path / "candidates"
    folder.mkdir()
    for trial, size in ((0, 10), (1, 5000), (2, 5000)):
        (folder / f"trial-{trial:04d}.pt").write_bytes(b"x" * size)
    removed = prune_candidates(tmp_path, keep={2}, max_bytes=1000)
    assert [p.name for p in removed] == ["trial-0001.pt"]
    assert sorted(p.name for p in folder.iterdir()) == ["trial-0000.pt", "trial-0002.pt"]


def test_changed_engine_is_marked_failed_in_pareto_report_and_runs_show(mlp_run, tmp_path, capsys):
    run = tmp_path / "run"
    shutil.copytree(mlp_run, run)
    members = _pareto(run)["members"]
    # The most accurate member: no other candidate can dominate it, whatever the re-timing says.
    victim = max(members, key=lambda m: m["metric"])
    engine = onnx.load(run / victim["engine_file"])
    engine.doc_string = "changed after verification"  # still a valid engine, but not the verified file
    onnx.save(engine, run / victim["engine_file"])
    assert main(["report", str(run)]) == 0
    # re-timed beside the run's most compressed model, built again from its recorded config
    assert set(_pareto(run)["retime_speed"]) == {"original", "most_compressed"}
    marked = {m["trial"]: m for m in _pareto(run)["members"]}
    assert victim["trial"] in marked, "a failed member dominated by no verified one stays listed, marked"
    failed = marked[victim["trial"]]
    assert failed["verified"] is False and any("sha256" in p for p in failed["problems"])
    assert json.loads((run / victim["sidecar_file"]).read_text())["verification"]["ok"] is False
    html = (run / "report.html").read_text()
    assert "FAILED: " in html and "changed since it was verified" in html
    capsys.readouterr()
    assert main(["runs", "show", str(run)]) == 0
    assert "FAILED" in capsys.readouterr().out


def test_export_errors_are_one_line(mlp_run, tmp_path, capsys):
    assert main(["export", str(tmp_path), "--trial", "0"]) == 2
    assert main(["export", str(mlp_run), "--trial", "99"]) == 2
    assert main(["export", str(mlp_run), "--trial", "0", "--format", "onnx-int4"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 3 and all(line.startswith("error: ") for line in err)
    assert "not a run directory" in err[0] and "no trial 99" in err[1] and "onnx-fp16" in err[2]
    with pytest.raises(UserError, match="--final-finetune"):
        export_trial(mlp_run, 0, "onnx", tmp_path, final_finetune_steps=-1)


def test_export_keeps_the_int8_weight_range_the_run_trained_on(mlp_run, tmp_path, monkeypatch):
    recorded = json.loads((mlp_run / "run.json").read_text())["int8_weight_max"]
    other = "8" if recorded == 64 else "7"
    monkeypatch.setenv("AUTOCOMPRESS_INT8_WEIGHTS", other)
    width = "7" if recorded == 64 else "8"
    with pytest.raises(UserError, match=f"on {width}-bit weights, not {other}; set AUTOCOMPRESS_INT8_WEIGHTS={width} to export"):
        export_trial(mlp_run, 0, "onnx-int8", tmp_path)


@pytest.mark.parametrize("fmt, bits", [("onnx-int8", 8), ("onnx-fp16", 16)])
def test_export_in_another_precision_with_final_finetune(mlp_run, tmp_path, fmt, bits):
    member = _pareto(mlp_run)["members"][-1]
    result = export_trial(mlp_run, member["trial"], fmt, tmp_path, final_finetune_steps=5)
    sidecar = json.loads(result.sidecar.read_text())
    assert result.ok, result.problems
    assert sidecar["format"] == fmt and sidecar["searched_policy"] == member["policy"]
    layers = [layer["name"] for layer in json.loads((mlp_run / "run.json").read_text())["layers"]]
    assert all(sidecar["policy"]["bits"][name] in (bits, member["policy"]["bits"].get(name)) for name in layers)
    assert all(name in sidecar["policy"]["bits"] for name in layers)  # no float32 layer is left
    assert sidecar["finetune"]["final_steps"] == 5 and sidecar["finetune"]["metric_after"] is not None
    if bits == 8:
        assert sum(sidecar["verification"]["integer_nodes"].values()) >= len(layers)
