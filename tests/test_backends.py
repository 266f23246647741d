"""Every latency backend available here passes the shared conformance suite; the parts of
the GPU backends that need no GPU are checked everywhere."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import onnx
import pytest
import torch

from autocompress.errors import UserError
from autocompress.latency_lut import BACKENDS, LatencyTable, Measurable, MeasurementError, OrtTensorrtBackend, backend_missing, make_backend, profile_id
from autocompress.latency_lut._backend import parse_nvidia_smi
from autocompress.latency_lut._tensorrt import engine_layer_summary, optimization_shapes, prepare_onnx_for_tensorrt, tensorrt_profile
from autocompress.testing.backends import CONFORMANCE_TIMING, BackendConformance, check_profile, small_model

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="class", params=list(BACKENDS))
def backend(request):
    missing = backend_missing(request.param)
    if missing:
        pytest.skip(f"{request.param} is unavailable: {missing}")
    return make_backend(request.param, timing=CONFORMANCE_TIMING)


class TestEveryBackend(BackendConformance):
    """The conformance suite, once per backend in BACKENDS (unavailable ones skip)."""


# -- the factory -------------------------------------------------------------------------------
def test_unknown_backend_lists_the_valid_ones():
    with pytest.raises(UserError, match="Unknown latency backend 'onnx-gpu'") as info:
        make_backend("onnx-gpu")
    assert all(name in str(info.value) for name in BACKENDS) and "\n" not in str(info.value)


@pytest.mark.parametrize("name", [n for n in BACKENDS if backend_missing(n)])
def test_unavailable_backend_says_what_is_missing(name):
    with pytest.raises(UserError, match=f"The {name} latency backend cannot run here") as info:
        make_backend(name)
    message = str(info.value)
    assert "\n" not in message
    assert any(word in message for word in ("install", "GPU", "CUDA"))


def test_profiles_differ_by_target():
    cpu1, cpu2 = make_backend("onnxruntime-cpu", threads=1), make_backend("onnxruntime-cpu", threads=2)
    batch8 = make_backend("onnxruntime-cpu", batch_size=8)
    eager = make_backend("torch-cpu")
    ids = {profile_id(b.profile()) for b in (cpu1, cpu2, batch8, eager)}
    assert len(ids) == 4
    assert batch8.profile()["batch_size"] == 8 and eager.profile()["runtime"] == "torch"


def test_table_of_another_backend_is_refused(tmp_path):
    path = tmp_path / "t.json"
    ort = LatencyTable.open(path, make_backend("onnxruntime-cpu"))
    ort.save()
    with pytest.raises(UserError, match="another target.*backend: 'onnxruntime-cpu' != 'torch-cpu'.*--allow-other-profile"):
        LatencyTable.open(path, make_backend("torch-cpu"))
    assert LatencyTable.open(path, make_backend("torch-cpu"), allow_other_profile=True).entries == {}


def test_measurable_exports_once_and_keeps_the_graph():
    module, inputs = small_model()
    item = Measurable.from_module(module, inputs)
    first = item.onnx_model
    assert isinstance(first, bytes) and item.onnx_model is first
    graph = onnx.load_from_string(first).graph
    assert [d.dim_value for d in graph.input[0].type.tensor_type.shape.dim] == [1, 3, 8, 8]
    assert list(item.feeds()) == ["input_0"]
    with pytest.raises(ValueError):
        Measurable(inputs)


# -- GPU parts that need no GPU ------------------------------------------------------------------
def test_nvidia_smi_output_is_parsed():
    text = "0, NVIDIA H100 80GB HBM3, 550.54.15, 9.0\n1, NVIDIA A10, 550.54.15, 8.6\n"
    assert parse_nvidia_smi(text, 1) == {"gpu": "NVIDIA A10", "driver_version": "550.54.15", "compute_capability": "8.6"}
    with pytest.raises(MeasurementError, match="index 2"):
        parse_nvidia_smi(text, 2)


def test_gpu_description_from_an_older_driver(tmp_path, monkeypatch):
    from autocompress.latency_lut._backend import gpu_description

    smi = tmp_path / "nvidia-smi"  # a driver without the compute_cap field
    smi.write_text('#!/bin/sh\ncase "$1" in *compute_cap*) echo "Field compute_cap is not a valid field" >&2; exit 2;; esac\n'
                   'echo "0, Tesla T4, 470.82.01"\n')
    smi.chmod(0o755)
    monkeypatch.setenv("PATH", f"{tmp_path}{os.pathsep}{os.environ['PATH']}")
    assert gpu_description(0, "11.4") == {"device_kind": "cuda", "device": "cuda:0", "gpu": "Tesla T4", "driver_version": "470.82.01",
                                          "compute_capability": None, "cuda_version": "11.4"}
    with pytest.raises(MeasurementError, match="index 1"):
        gpu_description(1, "11.4")


def test_tensorrt_profile_has_the_required_keys():
    gpu = {"device_kind": "cuda", "device": "cuda:0", **parse_nvidia_smi("0, NVIDIA L4, 550.1, 8.9", 0), "cuda_version": "12.4"}
    profile = tensorrt_profile("tensorrt", "10.3.0", gpu, ("fp32", "fp16"), 4, 1)
    check_profile(profile, "tensorrt")
    assert profile["precisions"] == ["fp32", "fp16"] and profile["gpu"] == "NVIDIA L4"


def test_onnx_for_tensorrt_gets_static_shapes():
    module, inputs = small_model()
    dynamic = Measurable.from_module(module, inputs, dynamic_batch=True)
    assert onnx.load_from_string(dynamic.onnx_bytes()).graph.input[0].type.tensor_type.shape.dim[0].dim_param
    feeds = {"input_0": torch.randn(4, 3, 8, 8).numpy()}
    fixed = onnx.load_from_string(prepare_onnx_for_tensorrt(dynamic.onnx_bytes(), feeds))
    assert [d.dim_value for d in fixed.graph.input[0].type.tensor_type.shape.dim] == [4, 3, 8, 8]
    assert optimization_shapes(feeds) == {"input_0": ((4, 3, 8, 8),) * 3}
    with pytest.raises(MeasurementError, match=r"expects \('batch', 3, 8, 8\)"):
        prepare_onnx_for_tensorrt(dynamic.onnx_bytes(), {"input_0": torch.randn(4, 5, 8, 8).numpy()})
    with pytest.raises(MeasurementError, match="inputs are"):
        prepare_onnx_for_tensorrt(dynamic.onnx_bytes(), {"x": torch.randn(1, 3, 8, 8).numpy()})


def test_onnx_for_tensorrt_refuses_onnx_runtime_operators():
    from autocompress import compress
    from autocompress.inventory import build_inventory
    from autocompress.spaces import Policy

    model = torch.nn.Sequential(torch.nn.Linear(64, 64)).eval()
    x = (torch.randn(1, 64),)
    int4 = compress.apply(model, build_inventory(model, x), Policy(bits={"0": 4}), x, [x])
    item = Measurable.from_module(int4, x)
    with pytest.raises(MeasurementError, match="MatMulNBits"):
        prepare_onnx_for_tensorrt(item.onnx_bytes(), item.feeds())


def test_engine_information_is_summarized():
    info = json.dumps({"Layers": [
        {"Name": "conv1", "LayerType": "CaskConvolution", "Outputs": [{"Name": "a", "Format/Datatype": "Channel major FP16 format"}]},
        {"Name": "conv2", "LayerType": "CaskConvolution", "Outputs": [{"Name": "b", "Format/Datatype": "Row major linear Int8 format"}]},
        {"Name": "pool", "LayerType": "Reformat", "Outputs": [{"Name": "c", "Format/Datatype": "Row major linear FP32"}]},
    ], "Bindings": ["input_0", "output_0"]})
    summary = engine_layer_summary(info)
    assert summary == {"layers": 3, "layer_types": {"CaskConvolution": 2, "Reformat": 1},
                       "output_precisions": {"FP16": 1, "Int8": 1, "FP32": 1}}
    assert engine_layer_summary(json.dumps({"Layers": ["conv1", "conv2"]}))["layers"] == 2
    with pytest.raises(MeasurementError):
        engine_layer_summary("not json")


@pytest.mark.skipif(backend_missing("tensorrt") is not None, reason="the tensorrt package or a GPU is missing")
def test_tensorrt_engine_runs_the_precisions_it_was_built_with():
    backend = make_backend("tensorrt", timing=CONFORMANCE_TIMING)
    backend.measure(Measurable.from_module(*small_model()))
    assert backend.last_engine["layers"] >= 1


# -- the command line ------------------------------------------------------------------------------
def _cli(*args: str, tmp: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "AUTOCOMPRESS_CACHE": str(tmp / "cache")}
    return subprocess.run([sys.executable, "-m", "autocompress", *args], capture_output=True, text=True, env=env, cwd=tmp, timeout=600)


def test_cli_unknown_backend_is_one_line(tmp_path):
    proc = _cli("lut", "show", "--backend", "nope", tmp=tmp_path)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert proc.stderr.count("\n") == 1 and "onnxruntime-cpu" in proc.stderr and "torch-cuda" in proc.stderr


@pytest.mark.slow
def test_cli_lut_build_with_the_torch_backend(tmp_path):
    table = tmp_path / "table.json"
    task = f"{ROOT / 'tests' / 'fixtures' / 'mlp_task.py'}:build"
    built = _cli("lut", "build", "--task", task, "--table", str(table), "--backend", "torch-cpu", "--bits", "32", "--rank-ratios", "1", "--prune-ratios", "0,0.5",
                 tmp=tmp_path)
    assert built.returncode == 0, built.stderr[-2000:]
    data = json.loads(table.read_text())
    assert data["profile"]["backend"] == "torch-cpu" and data["profile"]["runtime"] == "torch"
    assert data["entries"] and all(e["median_us"] > 0 for e in data["entries"].values())
    refused = _cli("lut", "build", "--task", task, "--table", str(table), tmp=tmp_path)  # the default backend
    assert refused.returncode == 2 and "another target" in refused.stderr and "--allow-other-profile" in refused.stderr


def test_engine_export_with_an_eager_backend_checks_in_onnx_runtime(tmp_path, mlp, mlp_input, mlp_inventory):
    from autocompress import compress
    from autocompress.export import export_engine
    from autocompress.spaces import Policy

    x = (mlp_input,)
    candidate = compress.apply(mlp, mlp_inventory, Policy(bits={"0": 8}), x, [x])
    engine = export_engine(candidate, x, tmp_path / "e.onnx", make_backend("torch-cpu", timing=CONFORMANCE_TIMING))
    assert engine.ok, engine.problems
    assert engine.latency_us > 0 and engine.relative_error <= engine.tolerance
    assert sum(engine.integer_nodes.values()) >= 1  # the engine's integer kernels are checked in ONNX Runtime


def test_tensorrt_provider_allows_int8_only_for_explicitly_quantized_graphs(mlp, mlp_input, mlp_inventory):
    from autocompress import compress
    from autocompress.latency_lut._ort import has_qdq
    from autocompress.spaces import Policy

    x = (mlp_input,)
    int8 = compress.apply(mlp, mlp_inventory, Policy(bits={"0": 8, "2": 8}), x, [x])
    assert has_qdq(Measurable.from_module(int8, x).onnx_bytes())
    assert not has_qdq(Measurable.from_module(mlp, x).onnx_bytes())
    options = dict(OrtTensorrtBackend().provider_options(Measurable.from_module(int8, x).onnx_bytes())[0:1])
    assert options["TensorrtExecutionProvider"]["trt_int8_enable"] is True


@pytest.mark.slow
def test_gpu_benchmark_runs_its_cpu_path(tmp_path):
    out = tmp_path / "gpu_backends.json"
    task = f"{ROOT / 'tests' / 'fixtures' / 'mlp_task.py'}:build"
    proc = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "gpu_backends.py"), "--backend", "torch-cpu", "--task", task, "--samples", "2",
         "--bits", "32", "--prune-ratios", "0,0.5", "--rank-ratios", "1", "--out", str(out)],
        capture_output=True, text=True, env={**os.environ, "AUTOCOMPRESS_CACHE": str(tmp_path / "cache")}, timeout=900,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    report = json.loads(out.read_text())
    (result,) = report["results"]
    assert result["profile"]["backend"] == "torch-cpu" and result["entries"] >= 3
    assert len(result["absolute"]["samples"]) == 2 and len(result["relative_to_original"]["samples"]) == 2
    assert all(s["measured_us"] > 0 and s["predicted_us"] > 0 for s in result["absolute"]["samples"])
    assert Path(result["table"]).is_file()


@pytest.mark.slow
def test_search_with_the_eager_backend_keeps_trial_timings(tmp_path):
    from autocompress.evaluators import DistillConfig
    from autocompress.spaces import SpaceConfig
    from autocompress.study import SearchConfig, run_search

    task = f"{ROOT / 'tests' / 'fixtures' / 'mlp_task.py'}:build"
    config = SearchConfig(task=task, latency_budget="100ms", trials=2, run_dir=str(tmp_path / "run"), backend="torch-cpu",
                          distill=DistillConfig(steps=4), space=SpaceConfig(bits=(32,), rank_ratios=(1.0,), prune_ratios=(0.0, 0.5)),
                          calibration_batches=1, share_table=False)
    result = run_search(config)
    manifest = json.loads((tmp_path / "run" / "run.json").read_text())
    assert manifest["profile"]["backend"] == "torch-cpu" and manifest["config"]["backend"] == "torch-cpu"
    assert result.front and all(m["engine"]["ok"] and m["speedup"] > 0 for m in result.front)
    with pytest.raises(UserError, match="Unknown latency backend"):
        SearchConfig(backend="tensorrt-llm")
