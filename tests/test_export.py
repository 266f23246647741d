from __future__ import annotations

import hashlib
from pathlib import Path

import onnx
import pytest
import torch

from autocompress import compress
from autocompress.export import INTEGER_OPS, export_engine, optimized_op_counts
from autocompress.latency_lut import Measurable, OrtCpuBackend
from autocompress.spaces import Policy, SpaceConfig, build_space
from conftest import RESNET_MIXED_PRUNE_AND_RANK, RESNET_LAYERS

LAYERS = RESNET_LAYERS
MULTIPLE = 4


@pytest.fixture(scope="module")
def backend() -> OrtCpuBackend:
    return OrtCpuBackend(threads=1, min_runs=3, min_time_s=0.0, warmup=1)


def _policies(inventory) -> dict[str, Policy]:
    space = build_space(inventory, SpaceConfig(channel_multiple=MULTIPLE))
    int8 = {f"bits/{n}": 8 for n in LAYERS}
    mixed = {
        **RESNET_MIXED_PRUNE_AND_RANK,
        **{f"bits/{n}": 8 for n in LAYERS if n != "layer1.0.conv1"},
    }
    out = {}
    for name, overrides in {"fp32": {}, "int8": int8, "mixed": mixed}.items():
        params = space.to_params(space.baseline())
        params.update(overrides)
        out[name] = space.from_params(params)
    return out


@pytest.fixture(scope="module")
def engines(tmp_path_factory, resnet_factory, resnet_inventory, backend):
    """Export each candidate once (the module's tests inspect the results)."""
    model = resnet_factory(8)
    gen = torch.Generator().manual_seed(11)
    example = (torch.randn(1, 1, 28, 28, generator=gen),)
    calib = [(torch.randn(16, 1, 28, 28, generator=gen),) for _ in range(2)]
    checks = [(torch.randn(4, 1, 28, 28, generator=gen), torch.zeros(4, dtype=torch.long)) for _ in range(2)]
    root = tmp_path_factory.mktemp("engines")
    result = {}
    for name, policy in _policies(resnet_inventory).items():
        cand = compress.apply(model, resnet_inventory, policy, example, calib, channel_multiple=MULTIPLE)
        path = root / f"{name}.onnx"
        engine = export_engine(cand, example, path, backend, check_batches=checks)
        result[name] = (cand, engine, path)
    return result


@pytest.mark.parametrize("name", ["fp32", "int8", "mixed"])
def test_engine_ok_and_file_matches(engines, name):
    _cand, engine, path = engines[name]
    assert engine.ok, engine.problems
    assert engine.problems == ()
    assert path.is_file()
    data = path.read_bytes()
    assert engine.size_bytes == len(data)
    assert engine.sha256 == hashlib.sha256(data).hexdigest()
    assert engine.path == str(path)
    onnx.checker.check_model(onnx.load(str(path)))
    # Structure only: latency numbers exist and are ordered.
    assert 0 < engine.latency_p10_us <= engine.latency_us <= engine.latency_p90_us
    assert engine.to_dict()["problems"] == []


def test_fp32_engine(engines):
    _cand, engine, _path = engines["fp32"]
    assert engine.format == "onnx"
    assert engine.int8_layers == 0
    assert engine.relative_error < 1e-3
    assert engine.tolerance == pytest.approx(1e-3)
    assert engine.integer_nodes == {}
    assert engine.top1_agreement == 1.0


@pytest.mark.parametrize(("name", "int8_layers"), [("int8", 10), ("mixed", 12)])
def test_int8_engines_run_integer_kernels(engines, backend, name, int8_layers):
    cand, engine, path = engines[name]
    assert engine.format == "onnx-int8"
    # mixed: 9 int8 layers, three of them factorized into two int8 parts each
    assert engine.int8_layers == int8_layers
    assert engine.relative_error < 0.1
    assert engine.tolerance == pytest.approx(0.1)
    assert set(engine.integer_nodes) <= set(INTEGER_OPS)
    assert sum(engine.integer_nodes.values()) >= engine.int8_layers
    assert engine.integer_nodes.get("QLinearConv", 0) >= 1
    # Recount independently from the file on disk.
    counts = optimized_op_counts(path, backend)
    assert sum(counts[op] for op in INTEGER_OPS) == sum(engine.integer_nodes.values())
    # The exported graph is QDQ.
    ops = {n.op_type for n in onnx.load(str(path)).graph.node}
    assert {"QuantizeLinear", "DequantizeLinear"} <= ops


def test_export_has_dynamic_batch_and_matches_torch(engines, backend):
    cand, engine, path = engines["fp32"]
    session = backend.session(path)
    x = torch.randn(3, 1, 28, 28)
    (got,) = session.run(None, {"input_0": x.numpy()})
    with torch.no_grad():
        ref = cand(x)
    assert got.shape == (3, 10)
    torch.testing.assert_close(torch.from_numpy(got), ref, atol=1e-4, rtol=1e-3)
    model = onnx.load(str(path))
    assert not any(n.op_type == "BatchNormalization" for n in model.graph.node)  # folded before export


def test_int8_mlp_runs_integer_kernels(tmp_path, backend):
    from autocompress.inventory import build_inventory

    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(16, 32), torch.nn.ReLU(), torch.nn.Linear(32, 4)).eval()
    x = (torch.randn(2, 16),)
    inv = build_inventory(model, x)
    cand = compress.apply(model, inv, Policy(bits={"0": 8, "2": 8}), x, [x])
    engine = export_engine(cand, x, tmp_path / "mlp.onnx", backend)
    assert engine.int8_layers == 2 and engine.original_latency_us is None  # timed alone
    beside = export_engine(cand, x, tmp_path / "mlp-beside.onnx", backend, original=Measurable.from_module(model, x, dynamic_batch=True))
    assert beside.original_latency_us > 0 and beside.latency_us > 0  # timed round by round with the original
    assert engine.relative_error < 0.1
    assert engine.ok, engine.problems
    assert sum(engine.integer_nodes.values()) >= 2


def test_an_engine_timed_in_a_passing_disturbance_is_timed_again(tmp_path, backend):
    """The engine is timed in rounds with the original and the tracker through the timer it
    is given; one whose neighbours ran 60% slow is timed again and the quiet timing kept."""
    from autocompress.latency_lut import Measurement, QuietTimer

    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(16, 32), torch.nn.ReLU(), torch.nn.Linear(32, 4)).eval()
    x = (torch.randn(2, 16),)
    original, tracker = (Measurable.from_module(m, x, dynamic_batch=True) for m in (model, model[:1]))
    timed: list[list[Measurable]] = []

    def timings(*us: float) -> list[Measurement]:
        return [Measurement(u, u, u, 5) for u in us]
    script = [timings(100.0, 20.0, 50.0)] * 3 + [timings(160.0, 32.0, 80.0), timings(101.0, 20.0, 51.0)]

    def time_beside(items: list[Measurable]) -> list[Measurement]:
        timed.append(items)
        return script.pop(0)
    timer = QuietTimer(time_beside, pauses=(0.0,), beside=lambda t: (t[0].median_us, t[1].median_us))
    for i in range(4):
        engine = export_engine(model, x, tmp_path / f"e{i}.onnx", backend, original=original, tracker=tracker, time_beside=timer)
        assert timed[-1][:2] == [original, tracker] and timed[-1][2].onnx == Path(engine.path).read_bytes()
    assert (engine.latency_us, engine.original_latency_us, engine.tracker_latency_us) == (51.0, 101.0, 20.0)
    assert len(timed) == 5 and timer.last_attempts == 2 and timer.retimed == 1
