from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from autocompress.errors import UserError
from autocompress.inventory import build_inventory
from autocompress.latency_lut._table import RAW_VERSION, junction_costs_us, junction_saving_us
from autocompress.latency_lut import (
    Calibration,
    LatencyTable,
    Measurement,
    OrtCpuBackend,
    effective_layers,
    feeds_for,
    profile_id,
    to_onnx_bytes,
)
from autocompress.spaces import Policy, SpaceConfig, build_space

MULTIPLE = 4


@pytest.fixture(scope="module")
def backend() -> OrtCpuBackend:
    return OrtCpuBackend(threads=1, warmup=2, min_runs=5, min_time_s=0.0)


@pytest.fixture(scope="module")
def tiny_onnx():
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3, padding=1), torch.nn.ReLU()).eval()
    x = (torch.randn(1, 3, 16, 16),)
    return to_onnx_bytes(model, x), feeds_for(x)


@pytest.fixture(scope="module")
def mlp_onnx():
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(16, 32), torch.nn.ReLU(), torch.nn.Linear(32, 4)).eval()
    x = (torch.randn(1, 16),)
    return to_onnx_bytes(model, x), feeds_for(x)


# -- backend conformance ---------------------------------------------------------------------
def test_backend_profile(backend):
    profile = backend.profile()
    assert isinstance(profile["device"], str) and profile["device"]
    assert isinstance(profile["runtime_version"], str) and profile["runtime_version"]
    assert profile["threads"] == 1
    assert profile["backend"] == backend.name
    json.dumps(profile)  # serialisable: it is stored in tables
    assert profile == backend.profile()  # deterministic
    assert profile_id(profile) == profile_id(dict(reversed(list(profile.items()))))
    other = OrtCpuBackend(threads=2).profile()
    assert other["threads"] == 2 and profile_id(other) != profile_id(profile)


def _check_measurement(m: Measurement, min_runs: int) -> None:
    assert isinstance(m, Measurement)
    assert m.runs >= min_runs
    assert 0 < m.p10_us <= m.median_us <= m.p90_us
    assert all(np.isfinite([m.median_us, m.p10_us, m.p90_us]))
    assert set(m.to_dict()) == {"median_us", "p10_us", "p90_us", "runs"}


def test_backend_measure(backend, tiny_onnx, tmp_path):
    data, feeds = tiny_onnx
    _check_measurement(backend.measure(data, feeds), backend.min_runs)
    path = tmp_path / "m.onnx"
    path.write_bytes(data)
    _check_measurement(backend.measure(path, feeds), backend.min_runs)  # a file path works too
    many = OrtCpuBackend(threads=1, warmup=0, min_runs=12, min_time_s=0.0)
    assert many.measure(data, feeds).runs >= 12


def test_backend_measure_many(backend, tiny_onnx, mlp_onnx):
    results = backend.measure_many([tiny_onnx, mlp_onnx, tiny_onnx], rounds=5)
    assert len(results) == 3
    for m in results:
        _check_measurement(m, backend.min_runs)


def test_backend_measure_many_honours_min_runs(tiny_onnx, mlp_onnx):
    backend = OrtCpuBackend(threads=1, warmup=0, min_runs=7, min_time_s=0.0)
    for m in backend.measure_many([tiny_onnx, mlp_onnx], rounds=3):
        assert m.runs >= 7


def test_backend_rejects_bad_threads():
    with pytest.raises(ValueError):
        OrtCpuBackend(threads=0)


# -- effective layers --------------------------------------------------------------------------
def test_effective_layers_follow_pruning(resnet_inventory):
    choices = {c.layer.name: c for c in effective_layers(resnet_inventory, Policy(prune={"stem.0": 0.5}, bits={"fc": 8}, rank={"layer3.0.conv2": 0.5}), MULTIPLE)}
    assert choices["stem.0"].out_channels == 4
    assert choices["layer1.0.conv2"].out_channels == 4
    assert choices["layer1.0.conv1"].in_channels == 4
    assert choices["layer2.0.shortcut.0"].in_channels == 4
    assert choices["layer2.0.conv1"].out_channels == 16
    assert choices["fc"].bits == 8 and choices["stem.0"].bits == 32
    assert choices["layer3.0.conv2"].rank_ratio == 0.5
    assert "|b8|" in choices["fc"].key and "|b32|" in choices["stem.0"].key
    assert "1x4x28x28" in choices["layer1.0.conv1"].key
    assert len({c.key for c in choices.values()}) == len(choices)


def test_effective_layers_baseline_is_the_model(resnet_inventory):
    for c in effective_layers(resnet_inventory, Policy(), MULTIPLE):
        assert (c.in_channels, c.out_channels) == (c.layer.in_channels, c.layer.out_channels), c.layer.name


# -- the table ---------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def space(resnet_inventory):
    return build_space(resnet_inventory, SpaceConfig(channel_multiple=MULTIPLE))


@pytest.fixture(scope="module")
def policy(space) -> Policy:
    params = space.to_params(space.baseline())
    params.update({"prune/stem.0": 0.5, "bits/layer2.0.conv2": 8, "rank/layer3.0.conv2": 0.5})
    return space.from_params(params)


@pytest.fixture(scope="module")
def saved_table(tmp_path_factory, backend, resnet_inventory, policy):
    """A table measured for ``policy`` and saved; returns (path, entries, raw_us, the
    frozen reference's us the sum is at)."""
    path = tmp_path_factory.mktemp("lut") / "table.json"
    table = LatencyTable.open(path, backend, channel_multiple=MULTIPLE)
    ref = table.freeze_reference()  # one machine speed for the whole test
    assert table.entries == {} and table.measured_now == 0
    seen: list[str] = []
    table.on_measure = seen.append
    raw = table.raw_us(resnet_inventory, policy)
    layers, adds, junctions = table.choices(resnet_inventory, policy)
    # Only the add with an int8 operand runs apart; the float ones are computed inside a conv.
    assert [a.op.name for a in adds] == ["add_1"] and len(layers) == len(resnet_inventory.layers)
    n_entries = len(layers) + len(adds) + len({j.key for sides, _, unpaid in junctions for j in (*sides, *unpaid)})
    assert table.measured_now == n_entries == len(seen) == len(table.entries)
    # Measuring again reuses the entries.
    assert table.raw_us(resnet_inventory, policy) == raw
    assert table.measured_now == n_entries
    assert not path.exists()  # nothing is written until save()
    table.save()
    return path, dict(table.entries), raw, ref


def _at(entry: dict, ref_us: float) -> float:
    """An entry's latency at the machine speed where the reference takes ``ref_us``."""
    return entry["median_us"] * ref_us / entry["ref_us"]


def _choices(inventory, policy):
    return LatencyTable(Path("unused.json"), OrtCpuBackend(), channel_multiple=MULTIPLE).choices(inventory, policy)


def test_table_entries_measured_and_structured(saved_table, resnet_inventory, policy):
    _path, entries, raw, ref = saved_table
    keys = {c.key for c in effective_layers(resnet_inventory, policy, MULTIPLE)}
    keys |= {c.key for c in _choices(resnet_inventory, policy)[1]}
    junctions = _choices(resnet_inventory, policy)[2]
    junction_keys = {j.key for sides, _, unpaid in junctions for j in (*sides, *unpaid)}
    assert junction_keys and all(k.startswith("junction|") for k in junction_keys)
    assert set(entries) == keys | junction_keys
    for key, e in entries.items():
        assert set(e) == {"median_us", "p10_us", "p90_us", "runs", "ref_us"}
        assert e["p10_us"] <= e["median_us"] <= e["p90_us"] and e["runs"] >= 1 and e["ref_us"] > 0
        assert key in junction_keys or e["runs"] >= 5
    # Each entry keeps the reference timed around it and is summed at the frozen one.
    saving = junction_saving_us(junctions, lambda j: _at(entries[j.key], ref))
    assert 0 <= saving <= sum(_at(entries[j.key], ref) for sides, _, _ in junctions for j in sides) + 1e-9
    assert raw == pytest.approx(sum(_at(entries[k], ref) for k in keys) - saving)


def test_table_persisted_and_reused(saved_table, backend, resnet_inventory, policy):
    path, entries, raw, ref_then = saved_table
    data = json.loads(path.read_text())
    assert data["profile"] == backend.profile()
    assert data["profile_id"] == profile_id(backend.profile())
    assert data["entries"] == entries

    reopened = LatencyTable.open(path, backend, channel_multiple=MULTIPLE)
    assert reopened.entries == entries
    reopened.on_measure = lambda key: pytest.fail(f"re-measured {key}")
    ref_now = reopened.freeze_reference()
    # Uncalibrated: the sum of the entries, each rescaled to the machine speed of now.
    assert reopened.predict_us(resnet_inventory, policy) == pytest.approx(raw * ref_now / ref_then)
    assert reopened.measured_now == 0
    assert not reopened.is_calibrated(resnet_inventory)


def test_table_measures_only_new_entries(saved_table, tmp_path, backend, resnet_inventory, policy):
    path, entries, _raw, _ref = saved_table
    copy = tmp_path / "copy.json"
    copy.write_text(path.read_text())
    table = LatencyTable.open(copy, backend, channel_multiple=MULTIPLE)
    table.freeze_reference()  # one machine speed for the whole test
    other = Policy(prune={"stem.0": 0.5}, bits={"layer2.0.conv2": 8, "fc": 8}, rank={"layer3.0.conv2": 0.5})
    table.predict_us(resnet_inventory, other)
    assert table.measured_now == 1  # only fc at int8 is new
    assert len(table.entries) == len(entries) + 1


def test_shared_table(saved_table, tmp_path, backend, resnet_inventory, policy):
    _path, entries, _raw, _ref = saved_table
    shared = tmp_path / "shared" / "lut.json"
    first = LatencyTable.open(tmp_path / "run1.json", backend, shared_path=shared, channel_multiple=MULTIPLE)
    first.entries.update(entries)
    first.save()
    assert json.loads(shared.read_text())["entries"] == entries
    second = LatencyTable.open(tmp_path / "run2.json", backend, shared_path=shared, channel_multiple=MULTIPLE)
    second.raw_us(resnet_inventory, policy)
    assert second.measured_now == 0

    # A shared table measured on another target is ignored, not an error.
    data = json.loads(shared.read_text())
    data["profile"]["threads"] = 64
    shared.write_text(json.dumps(data))
    third = LatencyTable.open(tmp_path / "run3.json", backend, shared_path=shared, channel_multiple=MULTIPLE)
    assert third.entries == {}


def test_default_shared_path_is_in_cache(backend, isolated_cache):
    path = LatencyTable.default_shared_path(backend)
    assert Path(path).is_relative_to(isolated_cache)
    assert profile_id(backend.profile()) in path.name


def test_other_profile_refused(saved_table, tmp_path, backend):
    path, entries, _raw, _ref = saved_table
    data = json.loads(path.read_text())
    data["profile"]["threads"] = data["profile"]["threads"] + 7
    other = tmp_path / "other.json"
    other.write_text(json.dumps(data))
    with pytest.raises(UserError, match="another target"):
        LatencyTable.open(other, backend)
    table = LatencyTable.open(other, backend, allow_other_profile=True)
    assert table.entries == entries


@pytest.mark.parametrize(
    "content",
    [
        "truncated",
        "",
        "{not json",
        "[]",
        "null",
        '{"schema": 99, "profile": {}, "entries": {}}',
        '{"schema": 1, "profile": {}, "entries": []}',
        b"\xff\xfe\x00binary",
        # Valid JSON of the wrong shape: every use of the table would fail later, mid-search.
        '{"schema": 1, "profile": "a string", "entries": {}}',
        '{"schema": 1, "profile": {}, "entries": {"conv|1x8x8x8|o8": {}}}',
        '{"schema": 1, "profile": {}, "entries": {"conv|1x8x8x8|o8": {"median_us": "fast"}}}',
        '{"schema": 1, "profile": {}, "entries": {}, "calibrations": [1]}',
        json.dumps({"schema": 1, "profile": {}, "entries": {}, "calibrations": {"m": {"raw_version": RAW_VERSION}}}),
        json.dumps({"schema": 1, "profile": {}, "entries": {},
                    "calibrations": {"m": {"scale": 1, "offset_us": 0, "raw_version": RAW_VERSION, "points": [{"raw_us": 1}]}}}),
    ],
)
def test_corrupted_table_raises_user_error(saved_table, tmp_path, backend, content):
    path = tmp_path / "bad.json"
    if content == "truncated":
        text = saved_table[0].read_text()
        path.write_text(text[: len(text) // 2])
    elif isinstance(content, bytes):
        path.write_bytes(content)
    else:
        path.write_text(content)
    with pytest.raises(UserError, match="corrupted"):
        LatencyTable.open(path, backend)


# -- calibration -------------------------------------------------------------------------------
def test_calibration_recovers_line():
    cal = Calibration(points=[{"policy": str(i), "raw_us": r, "measured_us": 1.7 * r + 42.0} for i, r in enumerate([100.0, 250.0, 400.0, 900.0])])
    cal.fit()
    assert cal.scale == pytest.approx(1.7, rel=1e-9)
    assert cal.offset_us == pytest.approx(42.0, rel=1e-9)
    assert cal.apply(1000.0) == pytest.approx(1742.0)


def test_calibration_learns_a_local_bias_from_nearby_measurements():
    """Measured candidates clustered near one sum, all 15% above the rest's line, pull the
    predictions near them to within 5% of the truth, closer than the global line gets, and
    leave far ones on the line."""
    line = [{"policy": str(i), "raw_us": r, "measured_us": 2.0 * r} for i, r in enumerate([100.0, 400.0, 1000.0, 2000.0])]
    near = [{"policy": f"n{i}", "raw_us": r, "measured_us": 1.15 * 2.0 * r} for i, r in enumerate([500.0, 510.0, 495.0, 505.0])]
    cal = Calibration(points=line + near)
    cal.fit()
    truth = 1.15 * 2.0 * 500.0
    assert abs(cal.apply(500.0) / truth - 1) < 0.5 * abs(cal.line(500.0) / truth - 1)  # the line alone misses by more
    assert abs(cal.apply(500.0) / truth - 1) < 0.05
    assert cal.apply(2000.0) / cal.line(2000.0) == pytest.approx(1.0, abs=0.02)
    assert cal.line(500.0) == pytest.approx(cal.scale * 500.0 + cal.offset_us)
    plain = Calibration(points=line)
    plain.fit()
    assert plain.apply(500.0) == pytest.approx(1000.0, rel=1e-6)  # points on the line: nothing to correct


def test_calibration_tells_integer_models_from_float_ones_at_the_same_sum():
    """At one sum, all-int8 models measure 8% below the line and float ones 8% above: a
    query that gives its integer share borrows the bias of its own kind."""
    points = [{"policy": f"l{i}", "raw_us": r, "int_share": 0.5, "measured_us": 2.0 * r} for i, r in enumerate([100.0, 1000.0, 2000.0])]
    points += [{"policy": f"i{i}", "raw_us": r, "int_share": 1.0, "measured_us": 0.92 * 2.0 * r} for i, r in enumerate([490.0, 500.0, 510.0])]
    points += [{"policy": f"f{i}", "raw_us": r, "int_share": 0.0, "measured_us": 1.08 * 2.0 * r} for i, r in enumerate([490.0, 500.0, 510.0])]
    cal = Calibration(points=points)
    cal.fit()
    truth_int8, truth_float = 0.92 * 1000.0, 1.08 * 1000.0
    assert abs(cal.apply(500.0, 1.0) / truth_int8 - 1) < 0.03
    assert abs(cal.apply(500.0, 0.0) / truth_float - 1) < 0.03
    assert abs(cal.apply(500.0) / truth_int8 - 1) > 0.05  # by the sum alone the two kinds average out
    old = Calibration(points=[{k: v for k, v in p.items() if k != "int_share"} for p in points])
    old.fit()
    assert old.apply(500.0, 1.0) == pytest.approx(old.apply(500.0))  # points without a share: sum only


def test_calibration_scales_each_part_and_keeps_the_line_without_parts():
    """Whole models that pay 1.3x their float layers' entries and 0.8x their int8 layers'
    ones: one line leaves all-float and all-int8 models on opposite sides; a scale per part
    predicts both within 2.5%. Points that do not record their parts keep the line."""
    rng = np.random.default_rng(0)
    points = []
    for i in range(24):
        share = rng.uniform()
        total = rng.uniform(200.0, 800.0)
        parts = {"b32": (1 - share) * total, "b8": share * total, "elementwise": 30.0, "junctions": -10.0}
        measured = 1.3 * parts["b32"] + 0.8 * parts["b8"] + parts["elementwise"] + parts["junctions"] + 15.0
        points.append({"policy": str(i), "raw_us": sum(parts.values()), "int_share": share, "parts": parts, "measured_us": measured})
    cal = Calibration(points=points)
    cal.fit()
    assert cal.part_scales["b32"] == pytest.approx(1.3, abs=0.05) and cal.part_scales["b8"] == pytest.approx(0.8, abs=0.05)
    for parts in ({"b32": 500.0, "elementwise": 30.0, "junctions": -10.0}, {"b8": 500.0, "elementwise": 30.0, "junctions": -10.0}):
        truth = 1.3 * parts.get("b32", 0.0) + 0.8 * parts.get("b8", 0.0) + 20.0 + 15.0
        raw = sum(parts.values())
        assert abs(cal.model(raw, parts) / truth - 1) < 0.025  # the prior pulls the scales a little toward the line
        assert abs(cal.apply(raw, parts.get("b8", 0.0) / raw, parts) / truth - 1) < 0.025
        assert abs(cal.line(raw) / truth - 1) > 3 * abs(cal.model(raw, parts) / truth - 1)  # one line misses both kinds
    old = Calibration(points=[{k: v for k, v in p.items() if k != "parts"} for p in points])
    old.fit()
    assert old.part_scales == {} and old.model(500.0, {"b8": 500.0}) == old.line(500.0)


def test_calibration_scales_per_part_minimize_the_relative_error():
    """Twenty fast models and three slow ones that pay 25% more: a fit of absolute errors
    bends to the slow ones and leaves a fast one 10% off; the relative fit keeps every
    model within 6%."""
    rng = np.random.default_rng(0)
    points = []
    for i, (total, factor) in enumerate([(rng.uniform(80.0, 120.0), 1.0) for _ in range(20)] + [(2000.0, 1.25)] * 3):
        share = rng.uniform()
        parts = {"b32": (1 - share) * total, "b8": share * total}
        measured = factor * (parts["b32"] + 0.6 * parts["b8"])
        points.append({"policy": str(i), "raw_us": total, "parts": parts, "measured_us": measured})
    cal = Calibration(points=points)
    cal.fit()
    assert cal.part_scales
    errors = [abs(cal.model(p["raw_us"], p["parts"]) / p["measured_us"] - 1) for p in points]
    assert max(errors) < 0.06


def test_calibration_degenerate_cases():
    empty = Calibration()
    empty.fit()
    assert (empty.scale, empty.offset_us) == (1.0, 0.0)
    assert empty.apply(123.0) == 123.0

    one = Calibration(points=[{"policy": "a", "raw_us": 200.0, "measured_us": 300.0}])
    one.fit()
    assert (one.scale, one.offset_us) == (pytest.approx(1.5), 0.0)

    same_raw = Calibration(points=[{"policy": p, "raw_us": 100.0, "measured_us": m} for p, m in [("a", 200.0), ("b", 300.0), ("c", 220.0)]])
    same_raw.fit()
    assert same_raw.scale == pytest.approx(2.2) and same_raw.offset_us == 0.0

    # A decreasing fit is not trusted: fall back to a ratio through the origin.
    falling = Calibration(points=[{"policy": p, "raw_us": r, "measured_us": m} for p, r, m in [("a", 100.0, 300.0), ("b", 200.0, 200.0)]])
    falling.fit()
    assert falling.scale > 0 and falling.offset_us == 0.0
    assert falling.scale == pytest.approx(float(np.median([3.0, 1.0])))


def test_table_calibrate_and_persist(saved_table, tmp_path, backend, resnet_inventory, space):
    path, _entries, _raw, _ref = saved_table
    copy = tmp_path / "cal.json"
    copy.write_text(path.read_text())
    table = LatencyTable.open(copy, backend, channel_multiple=MULTIPLE)
    table.freeze_reference()  # one machine speed for the whole test
    measured: list[Policy] = []

    def fake_whole_models(policies: list[Policy]) -> list[float]:  # exactly linear in the table's own sum
        measured.extend(policies)
        return [3.0 * table.raw_us(resnet_inventory, p) + 25.0 for p in policies]

    cal = table.calibrate(resnet_inventory, space, fake_whole_models, n_random=1, seed=0, budget_s=0)
    assert measured[0] == space.baseline() and measured[1] == space.extreme() and measured[2:-1] == space.uniform_precisions()
    assert len(cal.points) == 3 + len(space.uniform_precisions())
    assert cal.scale == pytest.approx(3.0, rel=1e-6)
    assert cal.offset_us == pytest.approx(25.0, rel=1e-4, abs=1e-6)
    assert table.is_calibrated(resnet_inventory)
    base_raw = table.raw_us(resnet_inventory, space.baseline())
    assert table.predict_us(resnet_inventory, space.baseline()) == pytest.approx(3.0 * base_raw + 25.0)
    table.save()

    reopened = LatencyTable.open(copy, backend, channel_multiple=MULTIPLE)
    reopened._reference = table._reference  # same machine speed as when the table was saved
    assert reopened.is_calibrated(resnet_inventory)
    c2 = reopened.calibrations[resnet_inventory.fingerprint]
    assert (c2.scale, c2.offset_us, c2.points) == (cal.scale, cal.offset_us, cal.points)
    assert reopened.predict_us(resnet_inventory, space.baseline()) == pytest.approx(3.0 * base_raw + 25.0)
    assert reopened.measured_now == 0


def test_table_calibration_scales_parts_and_restores_them(saved_table, tmp_path, backend, resnet_inventory, space):
    """Whole models that pay their int8 layers' entries 0.7x and the rest as summed: the
    table's calibration learns it from its points, predicts the all-int8 extreme at less
    than half the error of one line through them, and a reopened table predicts exactly as the one that fitted it."""
    path, _entries, _raw, _ref = saved_table
    copy = tmp_path / "cal.json"
    copy.write_text(path.read_text())
    table = LatencyTable.open(copy, backend, channel_multiple=MULTIPLE)
    table.freeze_reference()

    def truth(p: Policy) -> float:
        raw, _share, parts = table.sums(resnet_inventory, p)
        return raw - 0.3 * sum(us for k, us in parts.items() if k in ("b8", "b4")) + 25.0

    cal = table.calibrate(resnet_inventory, space, lambda ps: [truth(p) for p in ps], n_random=16, seed=0, budget_s=0)
    assert set(cal.part_scales) >= {"b32", "b8"}
    assert cal.part_scales["b8"] < cal.part_scales["b32"]
    extreme = space.extreme()
    raw = table.raw_us(resnet_inventory, extreme)
    assert abs(table.predict_us(resnet_inventory, extreme) / truth(extreme) - 1) < 0.5 * abs(cal.line(raw) / truth(extreme) - 1)
    table.save()
    reopened = LatencyTable.open(copy, backend, channel_multiple=MULTIPLE)
    reopened._reference = table._reference
    assert reopened.calibrations[resnet_inventory.fingerprint].part_scales == pytest.approx(cal.part_scales)
    assert reopened.predict_us(resnet_inventory, extreme) == pytest.approx(table.predict_us(resnet_inventory, extreme))


def test_validation_at_the_calibration_speed_sees_through_the_machine_slowing_down(saved_table, tmp_path, backend, resnet_inventory, space):
    """Whole models run 30% slower than when the table was calibrated (40% in the second
    pass), the reference conv 10% slower: the latency view by the reference graph blames
    the table for the machine; the latency view by the two whole models timed in each
    candidate's own rounds does not, nor the view at the calibration's speed, brought there by
    the most compressed model timed beside each candidate; and without that model's
    calibration point there is neither."""
    from autocompress.latency_lut import Validation, validate

    path, _entries, _raw, _ref = saved_table
    copy = tmp_path / "val.json"
    copy.write_text(path.read_text())
    table = LatencyTable.open(copy, backend, channel_multiple=MULTIPLE)
    ref = table.freeze_reference()
    truth = {}

    def true_us(p: Policy) -> float:
        """The model's latency at the calibration's speed."""
        if p.digest not in truth:
            now, table._reference = table._reference, (float("inf"), ref)
            raw, _share, parts = table.sums(resnet_inventory, p)
            table._reference = now
            truth[p.digest] = raw - 0.3 * sum(us for k, us in parts.items() if k in ("b8", "b4")) + 25.0
        return truth[p.digest]

    table.calibrate(resnet_inventory, space, lambda ps: [true_us(p) for p in ps], n_random=16, seed=0, budget_s=0)
    table._reference = (float("inf"), 1.1 * ref)
    passes = []

    def measure_beside(p: Policy) -> tuple[float, float, float]:
        passes.append(p)
        slower = 1.3 if len(passes) <= 6 else 1.4  # the 6 candidates, then their second timings
        return slower * true_us(p), slower * true_us(space.baseline()), slower * true_us(space.extreme())

    result = validate(table, resnet_inventory, space, measure_beside, samples=6, seed=1, repeat=True)
    assert len(passes) == 12  # each candidate twice; nothing timed for the gauge alone
    assert result.by_reference is not None and result.by_reference.median_abs_error > 0.1
    assert result.at_calibration_speed is not None and result.at_calibration_speed.median_abs_error < 0.03
    assert result.latency.median_abs_error < 0.03
    assert [s["measured_us"] for s in result.latency.samples] == [s["measured_us"] for s in result.by_reference.samples]
    assert [key for key, _, _ in result.views()] == ["latency", "latency_by_reference", "relative_to_original", "at_calibration_speed"]
    assert result.views()[0][1] == Validation.WHOLE_MODELS_TITLE and result.to_dict()["latency_gauge"] == "whole_models"
    assert result.repeat["latency"].median_abs_error > 0.05 and result.repeat["at_calibration_speed"].median_abs_error < 1e-9
    assert set(result.to_dict()["repeatability"]) == {"latency", "relative_to_original", "at_calibration_speed"}
    # Both whole models timed beside the candidates ran 30% slower than in the calibration.
    assert result.machine["original_us"] / result.machine["original_calibration_us"] == pytest.approx(1.3)
    assert result.machine["most_compressed_us"] / result.machine["most_compressed_calibration_us"] == pytest.approx(1.3)
    assert result.uneven() == pytest.approx(0.0, abs=1e-9) and result.to_dict()["machine"]["uneven"] == pytest.approx(0.0, abs=1e-9)
    # The reference graph read 1.1 times slower, the original ran 1.3 times: the gap the latency view cannot see past.
    assert result.gauge_gap() == pytest.approx(1.3 / 1.1 - 1, abs=0.03) and result.to_dict()["machine"]["gauge_gap"] == result.gauge_gap()
    # 1.3 then 1.4 times slower is within what the models beside the candidates may move: nothing timed again.
    assert result.to_dict()["machine"]["retimed"] == result.machine["disturbed"] == 0

    table.calibrations[resnet_inventory.fingerprint].points = [
        pt for pt in table.calibrations[resnet_inventory.fingerprint].points if pt["policy"] != space.extreme().digest]
    result = validate(table, resnet_inventory, space, measure_beside, samples=2, seed=1)
    assert result.at_calibration_speed is None and [key for key, _, _ in result.views()] == ["latency", "relative_to_original"]
    assert result.by_reference is None and result.latency.median_abs_error > 0.1 and result.to_dict()["latency_gauge"] == "reference_graph"
    assert result.views()[0][1] == dict(Validation.VIEWS)["latency_by_reference"]


def test_whole_model_gauge_weighs_the_two_models_by_where_a_prediction_lies():
    """The original ran 2000 us in the calibration, the most compressed model 400 us; now they
    run 10% and 30% slower. A model predicted as slow as the original gets the original's
    speed, one as fast as the compressed model (or faster) that one's, one halfway the mean.
    Over five timings the speed is their median: two stray ones pass, three move it; by
    default the gauge reads the latest timing alone (`validate`'s: the candidate's rounds)."""
    from autocompress.latency_lut import GAUGE_TIMINGS, WholeModelGauge

    assert GAUGE_TIMINGS == 1
    latest = WholeModelGauge(2000.0, 400.0)
    latest.add(2200.0, 520.0)
    latest.add(2400.0, 480.0)
    assert latest.speeds() == pytest.approx((1.2, 1.2))
    gauge = WholeModelGauge(2000.0, 400.0, timings=5)
    assert gauge.speeds() is None and gauge.speed(1000.0) == 1.0
    for original, compressed in ((2200.0, 520.0), (2100.0, 400.0), (2300.0, 640.0)):
        gauge.add(original, compressed)
    assert gauge.speeds() == pytest.approx((1.1, 1.3))
    assert gauge.speed(2000.0) == pytest.approx(1.1) and gauge.speed(3000.0) == pytest.approx(1.1)
    assert gauge.speed(400.0) == pytest.approx(1.3) and gauge.speed(100.0) == pytest.approx(1.3)
    assert gauge.speed(1200.0) == pytest.approx(1.2)
    # Five timings at the usual speed: the old ones have left the median.
    for _ in range(5):
        gauge.add(2000.0, 400.0)
    assert gauge.speeds() == pytest.approx((1.0, 1.0))
    # Two stray timings do not move it; a third does.
    gauge.add(4000.0, 800.0)
    gauge.add(4000.0, 800.0)
    assert gauge.speeds() == pytest.approx((1.0, 1.0))
    gauge.add(3000.0, 600.0)
    assert gauge.speeds() == pytest.approx((1.5, 1.5))


def test_a_candidate_timed_in_a_passing_disturbance_is_timed_again():
    """The two models beside the candidates run 1000 and 200 us; a disturbance makes them
    1600 and 500 us for one timing: that candidate is timed again after a pause and the quiet
    timing kept. A disturbance outlasting the pauses keeps the least disturbed timing and is
    counted; a state that lasts becomes the usual time within half the window."""
    from autocompress.latency_lut import DISTURBED, QuietTimer
    from autocompress.spaces import Policy

    script: list[tuple[float, float, float]] = []
    pauses: list[float] = []
    timer = QuietTimer(lambda policy: script.pop(0), window=5, pauses=(1.0, 3.0), sleep=pauses.append)
    policy = Policy({}, {}, {})
    quiet, spike = (300.0, 1000.0, 200.0), (600.0, 1600.0, 500.0)
    script += [quiet] * 3
    assert [timer(policy) for _ in range(3)] == [quiet] * 3 and timer.retimed == 0 and pauses == []
    script += [spike, (310.0, 1010.0, 205.0)]
    assert timer(policy) == (310.0, 1010.0, 205.0) and timer.retimed == 1 and pauses == [1.0] and timer.disturbed == 0
    script += [spike, (500.0, 1400.0, 400.0), spike]  # disturbed all three times: the least disturbed is kept
    assert timer(policy) == (500.0, 1400.0, 400.0) and pauses == [1.0, 1.0, 3.0] and (timer.retimed, timer.disturbed) == (2, 1)
    assert timer.deviation(1000.0, 230.0) <= DISTURBED < timer.deviation(1000.0, 240.0)
    slow = (450.0, 1300.0, 300.0)  # the machine stays 30-50% slower: after three retimed timings it is the usual time
    script += [slow] * 20
    for _ in range(5):
        assert timer(policy) == slow
    assert timer.retimed <= 2 + 3 and timer.deviation(1300.0, 300.0) == 0.0


def test_calibration_adds_models_while_its_budget_allows_and_corrects_drift(saved_table, tmp_path, backend, resnet_inventory, space):
    """Models cost 20 ms each: a 1 s budget takes the first batch (baseline, most compressed,
    every layer int8, 2 random) and then as many more as fit, up to the cap; the machine is 10% slower during
    the second batch, which times the most compressed model again and is scaled back by it."""
    import time as _time

    from autocompress.latency_lut._table import calibration_policies

    path, _entries, _raw, _ref = saved_table
    copy = tmp_path / "cal.json"
    copy.write_text(path.read_text())
    table = LatencyTable.open(copy, backend, channel_multiple=MULTIPLE)
    table.freeze_reference()
    drawn = calibration_policies(space, n_random=12, seed=0)
    true_us = {p.digest: 100.0 + 7.0 * i for i, p in enumerate(drawn)}
    batches: list[list[Policy]] = []

    def whole_models(policies: list[Policy]) -> list[float]:
        batches.append(policies)
        _time.sleep(0.02 * len(policies))
        slower = 1.0 if len(batches) == 1 else 1.1
        return [slower * true_us[p.digest] for p in policies]

    cal = table.calibrate(resnet_inventory, space, whole_models, n_random=2, seed=0, budget_s=1.0, max_random=12)
    assert len(batches) == 2 and len(batches[0]) == 4 + len(space.uniform_precisions())
    assert batches[1][0] == space.extreme() and 2 <= len(batches[1]) - 1 <= 10
    assert [*batches[0], *batches[1][1:]] == drawn[:len(cal.points)]  # the same stream of draws, continued
    assert [p["measured_us"] for p in cal.points] == pytest.approx([true_us[p.digest] for p in drawn[:len(cal.points)]])

    batches.clear()
    cal = table.calibrate(resnet_inventory, space, whole_models, n_random=2, seed=0, budget_s=0.01, max_random=12)
    assert len(batches) == 1 and len(cal.points) == 4 + len(space.uniform_precisions())  # the budget was spent by the first batch


def test_build_measures_every_reachable_entry_once(tmp_path, backend, resnet_inventory, space):
    import random

    table = LatencyTable(tmp_path / "t.json", backend, channel_multiple=MULTIPLE)
    table.freeze_reference()  # one machine speed for the whole test
    reachable = table.reachable_choices(resnet_inventory, space)
    assert len({c.key for c in reachable}) == len(reachable)
    n = table.build(resnet_inventory, space)
    assert n == len(reachable) == len(table.entries)
    assert table.build(resnet_inventory, space) == 0
    before = table.measured_now
    rng = random.Random(0)
    for _ in range(10):  # any policy of the space is now predicted without measuring
        table.predict_us(resnet_inventory, space.sample(rng))
    assert table.measured_now == before


def test_remeasure_measures_every_reachable_entry_again_in_one_go(tmp_path, backend, resnet_inventory, space, monkeypatch):
    table = LatencyTable(tmp_path / "t.json", backend, channel_multiple=MULTIPLE)
    table.freeze_reference()
    measured: list[str] = []
    monkeypatch.setattr(table, "_measure_entry", lambda choice: measured.append(choice.key) or {"median_us": 2.0 * len(measured), "ref_us": None})
    reachable = {c.key for c in table.reachable_choices(resnet_inventory, space)}
    table.entries["conv|unrelated"] = {"median_us": 1.0}  # another model's entry stays
    assert table.build(resnet_inventory, space) == len(reachable) and table.build(resnet_inventory, space) == 0
    first = {k: table.entries[k]["median_us"] for k in reachable}
    assert table.build(resnet_inventory, space, remeasure=True) == len(reachable)
    assert len(measured) == 2 * len(reachable) and set(measured[len(reachable):]) == reachable
    assert all(table.entries[k]["median_us"] != first[k] for k in reachable) and "conv|unrelated" in table.entries


def test_whole_model_measurements_refit_the_calibration(tmp_path, backend, resnet_inventory, space):
    table = LatencyTable(tmp_path / "t.json", backend, channel_multiple=MULTIPLE)
    table.freeze_reference()  # one machine speed for the whole test
    policies = [space.baseline(), space.extreme(), Policy(prune={"stem.0": 0.5})]
    for p in policies:
        table.add_measurement(resnet_inventory, p, 2.0 * table.raw_us(resnet_inventory, p) + 10.0)
    cal = table.calibrations[resnet_inventory.fingerprint]
    assert len(cal.points) == 3
    assert cal.scale == pytest.approx(2.0, rel=1e-6) and cal.offset_us == pytest.approx(10.0, abs=1e-3)


def test_what_a_search_measured_or_learned_is_saved_before_it_moves_on(saved_table, tmp_path, backend, resnet_inventory, space, policy):
    path, entries, _raw, _ref = saved_table
    run = tmp_path / "run.json"
    run.write_bytes(path.read_bytes())
    table = LatencyTable.open(run, backend, channel_multiple=MULTIPLE)
    table.freeze_reference()
    mtime = run.stat().st_mtime_ns
    table.predict_us(resnet_inventory, policy)  # every entry known: nothing to save
    table.save_if_changed()
    assert run.stat().st_mtime_ns == mtime
    other = Policy(prune={"stem.0": 0.5})  # new layer shapes: measured now, well inside the checkpoint interval
    table.raw_us(resnet_inventory, other)
    assert table.measured_now > 0 and len(json.loads(run.read_text())["entries"]) == len(entries)
    table.add_measurement(resnet_inventory, other, 123.0)
    table.save_if_changed()
    saved = json.loads(run.read_text())
    assert len(saved["entries"]) == len(entries) + table.measured_now
    assert other.digest in {p["policy"] for c in saved["calibrations"].values() for p in c["points"]}


def test_entries_are_rescaled_to_the_machine_speed_of_now(saved_table, backend, resnet_inventory, policy):
    path, entries, raw, _ref = saved_table
    table = LatencyTable.open(path, backend, channel_multiple=MULTIPLE)
    ref = table.freeze_reference()
    base = table.raw_us(resnet_inventory, policy)
    table._reference = (float("inf"), 1.5 * ref)  # the machine is now 1.5x slower
    assert table.raw_us(resnet_inventory, policy) == pytest.approx(1.5 * base)


def test_calibrated_predictions_follow_the_machine_speed_as_a_whole(saved_table, tmp_path, backend, resnet_inventory, space, policy):
    """On a machine 1.5x slower (by the reference), a calibrated prediction is 1.5x the one
    at the calibration's speed, offset included, so ratios of predictions do not move; points
    that do not record their reference (older tables) scale the sum alone, as before."""
    path, _entries, _raw, _ref = saved_table
    copy = tmp_path / "speed.json"
    copy.write_text(path.read_text())
    table = LatencyTable.open(copy, backend, channel_multiple=MULTIPLE)
    ref = table.freeze_reference()
    table.calibrate(resnet_inventory, space, lambda ps: [0.8 * table.raw_us(resnet_inventory, p) + 200.0 for p in ps],
                    n_random=8, seed=0, budget_s=0)
    cal = table.calibrations[resnet_inventory.fingerprint]
    assert all(pt["ref_us"] == ref for pt in cal.points)
    base, candidate = (table.predict_us(resnet_inventory, p) for p in (space.baseline(), policy))
    table._reference = (float("inf"), 1.5 * ref)
    assert table.predict_us(resnet_inventory, policy) == pytest.approx(1.5 * candidate, rel=1e-9)
    assert table.predict_us(resnet_inventory, policy) / table.predict_us(resnet_inventory, space.baseline()) == pytest.approx(candidate / base)
    for pt in cal.points:
        pt.pop("ref_us")
    cal.points = list(cal.points)  # a new list: what the cached reference of the points keys on
    assert cal.speed(1.5 * ref) == 1.0
    assert table.predict_us(resnet_inventory, policy) < 1.5 * candidate  # the offset stays where it was fitted


def test_reference_speed_is_the_median_of_the_last_minute(tmp_path, backend, monkeypatch):
    """One jittery timing of the reference must not rescale every prediction, not even the
    first one's; a lasting change of the machine's speed must."""
    from autocompress.latency_lut import _table as table_module

    clock, pauses = [1000.0], []
    monkeypatch.setattr(table_module.time, "monotonic", lambda: clock[0])
    monkeypatch.setattr(table_module.time, "sleep", pauses.append)
    timings = iter([150.0, 100.0, 100.0, 100.0, 150.0, 100.0, 150.0, 150.0, 150.0, 150.0])
    table = LatencyTable(tmp_path / "t.json", backend)
    table.settle_pause_s = 0.5
    monkeypatch.setattr(table, "_time_reference", lambda min_time_s=None: next(timings))
    seen = [table.reference_us()]
    assert seen == [100.0] and pauses == [0.5, 0.5]  # the first timing was the jittery one: two more, a pause apart
    for _ in range(6):
        clock[0] += table_module.REFERENCE_MAX_AGE_S + 1  # every call times the reference again
        seen.append(table.reference_us())
    assert seen[:6] == [100.0] * 6  # a single 150 now and then is jitter
    assert seen[-1] == 150.0  # the machine really is slower now
    assert len(pauses) == 2  # a gauge with timings enough in the last minute does not wait
    clock[0] += table_module.REFERENCE_WINDOW_S + 60
    timings = iter([80.0, 84.0, 79.0])
    assert table.reference_us() == 80.0  # older timings no longer count, and the median is of three again
    timings = iter([90.0, 70.0, 71.0])
    assert table.reference_us(refresh=True) == 71.0  # a refresh starts the gauge afresh, on three timings too


def test_tucker2_has_its_own_entries_and_repairs_work(tmp_path, backend, resnet_inventory):
    """A Tucker-2 layer is keyed and measured apart from its spatial SVD, as the three convs a
    candidate has; budget repair moves through a space with decomposition dimensions."""
    from torch import nn

    from autocompress.latency_lut._table import _micro_model
    from autocompress.search import BudgetRepair, WeightL1Importance
    from conftest import make_resnet

    space = build_space(resnet_inventory, SpaceConfig(channel_multiple=MULTIPLE, decompositions=("svd", "tucker2")))
    table = LatencyTable(tmp_path / "t.json", backend, channel_multiple=MULTIPLE)
    table.freeze_reference()
    reachable = table.reachable_choices(resnet_inventory, space)
    tucker = [c for c in reachable if c.key.endswith("|dtucker2")]
    assert tucker and all(c.rank_ratio < 1.0 and c.layer.kernel_size == (3, 3) for c in tucker)
    assert len(reachable) > len(LatencyTable(tmp_path / "u.json", backend, channel_multiple=MULTIPLE).reachable_choices(
        resnet_inventory, build_space(resnet_inventory, SpaceConfig(channel_multiple=MULTIPLE))))
    model, _ = _micro_model(tucker[0], MULTIPLE)
    kernels = [m.kernel_size for m in model.modules() if isinstance(m, nn.Conv2d)]
    assert kernels == [(1, 1), (3, 3), (1, 1)]
    name = tucker[0].layer.name
    params = {**space.to_params(space.baseline()), f"rank/{name}": 0.25}
    as_svd, as_tucker = space.from_params(params), space.from_params({**params, f"decomp/{name}": "tucker2"})
    keys = lambda p: {c.key for c in effective_layers(resnet_inventory, p, MULTIPLE)}  # noqa: E731
    assert keys(as_svd) != keys(as_tucker)
    table.build(resnet_inventory, space)
    fastest, start = table.fastest(resnet_inventory, space)[1], table.predict_us(resnet_inventory, as_tucker)
    assert fastest < start
    budget = (fastest + start) / 2
    fixed = BudgetRepair(space, lambda p: table.predict_us(resnet_inventory, p),
                         WeightL1Importance(make_resnet(8), resnet_inventory, space))(as_tucker, budget)
    assert fixed is not None and fixed.predicted_us <= budget and space.contains(fixed.policy)


def test_concatenated_inputs_lose_every_pruned_piece():
    """A layer reading a concatenation (DenseNet) loses the channels pruned from each piece."""
    from autocompress import compress
    from autocompress.tasks.models import DenseBlockNet
    from torch import nn

    torch.manual_seed(0)
    model = DenseBlockNet(width=8, growth=8).eval()
    x = torch.randn(1, 1, 28, 28)
    inv = build_inventory(model, (x,))
    space = build_space(inv, SpaceConfig(channel_multiple=4))
    prune = {n: max(d) for n, d in space.domains.items() if n.startswith("prune/")}
    assert len(prune) >= 3
    policy = space.from_params({**space.to_params(space.baseline()), **prune})
    student = dict(compress.apply(model, inv, policy, (x,), channel_multiple=4).named_modules())
    for choice in effective_layers(inv, policy, 4):
        module = student[choice.layer.name]
        if isinstance(module, nn.Conv2d):
            assert module.in_channels == choice.in_channels, choice.layer.name


# -- what the runtime executes between layers ------------------------------------------------
def test_junction_saving_counts_the_conversions_a_tensor_avoids():
    from autocompress.latency_lut._table import JunctionShape

    def j(bits: int) -> JunctionShape:
        return JunctionShape(1, 8, (4, 4), bits)

    half = {32: 1.0, 8: 3.0}
    saving = lambda groups: junction_saving_us(groups, lambda x: half[x.bits])  # noqa: E731
    assert saving([([j(32), j(32), j(32)], False)]) == 3.0  # one layout throughout: nothing converted
    assert saving([([j(32), j(32)], True)]) == 1.0  # a plain-layout reader: converted once
    assert saving([([j(32), j(8), j(8)], False)]) == 7.0 - 4.0  # two precisions: each converted once
    assert saving([([j(8)], True), ([j(32), j(32)], False)]) == 2.0  # tensors add up
    # The two terms, as the calibration weighs them apart: what the layers' graphs paid, and
    # what the whole model still converts.
    groups = [([j(32), j(8), j(8)], False), ([j(32), j(32)], False), ([j(8)], True)]
    assert junction_costs_us(groups, lambda x: half[x.bits]) == (7.0 + 2.0 + 3.0, 4.0 + 0.0 + 3.0)
    assert saving(groups) == 12.0 - 7.0


def test_an_entry_is_timed_between_two_timings_of_the_reference(tmp_path, backend, monkeypatch):
    """The reference is timed just before and just after each new entry, and the entry keeps
    their mean; an entry's timing after serves as the next one's before while it is recent."""
    from autocompress.latency_lut import Measurement
    from autocompress.latency_lut import _table as table_module
    from autocompress.latency_lut._table import ElementwiseChoiceShape
    from autocompress.inventory import Elementwise

    clock = [1000.0]
    monkeypatch.setattr(table_module.time, "monotonic", lambda: clock[0])
    table = LatencyTable(tmp_path / "t.json", backend)
    references = iter([100.0, 110.0, 130.0, 90.0, 95.0, 100.0])  # before, after, after, before, after, now

    def time_reference(min_time_s=None):
        table._last_bracket = (clock[0], next(references))
        return table._last_bracket[1]

    monkeypatch.setattr(table, "_time_reference", time_reference)
    monkeypatch.setattr(table, "reference_us", lambda refresh=False: 100.0)
    monkeypatch.setattr(table, "_measure_choice", lambda choice: Measurement(10.0, 9.0, 11.0, 50))
    adds = [ElementwiseChoiceShape(Elementwise(f"add{c}", "add", (1, c, 4, 4), "relu", None), c) for c in (8, 16, 24)]
    table.entry_us(adds[0])
    table.entry_us(adds[1])  # right after: the previous timing after is this one's before
    clock[0] += table_module.BRACKET_REUSE_S + 1
    table.entry_us(adds[2])  # later: the reference is timed before it again
    assert [table.entries[a.key]["ref_us"] for a in adds] == [105.0, 120.0, 92.5]
    assert table.entries[adds[0].key]["median_us"] == 10.0


def test_layer_links_follow_the_graph(resnet_inventory):
    links = resnet_inventory.links
    assert links["layer1.0.conv1"].reads == "stem.0" and links["layer1.0.conv1"].feeds == ("layer1.0.conv2",)
    assert not links["layer1.0.conv1"].feeds_other
    assert links["stem.0"].reads is None and links["stem.0"].feeds_other  # the residual add reads it too
    assert links["layer1.0.conv2"].feeds == () and links["layer1.0.conv2"].feeds_other
    assert links["layer2.0.conv1"].reads is None  # it reads the residual sum ...
    assert links["layer2.0.conv1"].source == links["layer2.0.shortcut.0"].source  # ... as the shortcut does
    adds = resnet_inventory.add_links
    assert adds["add"].inputs == ("layer1.0.conv2", "stem.0") and adds["add"].result == links["layer2.0.conv1"].source
    assert not adds["add"].other_readers and adds["add_2"].other_readers  # the last sum goes to the pooling


def test_junction_groups_tell_a_layer_result_from_the_sum_it_flows_into(resnet_inventory):
    from autocompress.latency_lut._table import junction_groups

    sites = {tuple(sides): (plain, adds) for sides, plain, adds in junction_groups(resnet_inventory)}
    # The stem's result: read by a conv and by the first add (which may fuse into a float conv).
    assert sites[(("stem.0", "out"), ("layer1.0.conv1", "in"))] == (False, ("add",))
    # The first sum: read by the next block's conv and shortcut, written by the add.
    assert sites[(("layer2.0.conv1", "in"), ("layer2.0.shortcut.0", "in"))] == (False, ("add",))
    assert sites[(("layer1.0.conv2", "out"),)] == (False, ("add",))
    assert sites[(("stem.0", "in"),)] == (True, ())  # the model's input is plain
    assert sum(len(sides) for sides in sites) == 2 * sum(l.kind == "conv" for l in resnet_inventory.layers.values())


@pytest.mark.parametrize("bits, expected", [
    ({}, {"add": 32, "add_1": 32, "add_2": 32}),  # all float: every add runs inside a conv
    ({"layer2.0.conv2": 8}, {"add": 32, "add_1": 0, "add_2": 32}),  # a float add beside an int8 operand
    ({n: 8 for n in ("stem.0", "layer1.0.conv2", "layer2.0.conv1", "layer2.0.shortcut.0")},
     {"add": 8, "add_1": 0, "add_2": 32}),  # quantized operands, quantized readers: QLinearAdd
    ({n: 8 for n in ("stem.0", "layer1.0.conv2", "layer2.0.conv1")}, {"add": 0, "add_1": 32, "add_2": 32}),  # a float reader
])
def test_add_precisions_match_the_optimized_graph(resnet_inventory, backend, tmp_path, bits, expected):
    """Where the table says an add runs (inside a float conv, as QLinearAdd, or as a float
    Add in the plain layout) is where ONNX Runtime's optimized graph runs it."""
    import onnx

    from autocompress import compress
    from autocompress.latency_lut._table import add_precisions, effective_layers
    from conftest import make_resnet

    policy = Policy(bits=bits)
    precisions = add_precisions(resnet_inventory, {c.layer.name: c.bits for c in effective_layers(resnet_inventory, policy, MULTIPLE)})
    assert precisions == expected
    x = torch.randn(1, 1, 28, 28, generator=torch.Generator().manual_seed(0))
    model = compress.apply(make_resnet(8), resnet_inventory, policy, (x,), [(x,)], channel_multiple=MULTIPLE)
    backend.session(to_onnx_bytes(model, (x,)), tmp_path / "opt.onnx")
    ops = [n.op_type for n in onnx.load(str(tmp_path / "opt.onnx")).graph.node]
    assert ops.count("QLinearAdd") == sum(p == 8 for p in precisions.values())
    assert ops.count("Add") == sum(p == 0 for p in precisions.values())


def test_float_layer_between_int8_layers_runs_as_int8(resnet_inventory, backend, tmp_path):
    """The table's precision of each layer is the one ONNX Runtime executes: counted as
    integer conv kernels in the optimized graph, for policies with and without sandwiches."""
    import onnx

    from autocompress import compress
    from autocompress.latency_lut._table import runs_as_int8
    from conftest import make_resnet

    int8 = {"stem.0": 8, "layer1.0.conv2": 8}
    assert runs_as_int8(resnet_inventory, Policy(bits=int8), "layer1.0.conv1")
    assert not runs_as_int8(resnet_inventory, Policy(bits=int8, rank={"layer1.0.conv1": 0.5}), "layer1.0.conv1")
    assert not runs_as_int8(resnet_inventory, Policy(bits={"stem.0": 8}), "layer1.0.conv1")
    x = torch.randn(1, 1, 28, 28, generator=torch.Generator().manual_seed(0))
    for policy in (Policy(bits=int8), Policy(bits={**int8, "layer2.0.conv1": 8}, rank={"layer1.0.conv2": 0.5}),
                   Policy(bits={"layer1.0.conv1": 8})):
        model = compress.apply(make_resnet(8), resnet_inventory, policy, (x,), [(x,)], channel_multiple=MULTIPLE)
        backend.session(to_onnx_bytes(model, (x,)), tmp_path / "opt.onnx")
        kernels = sum(n.op_type == "QLinearConv" for n in onnx.load(str(tmp_path / "opt.onnx")).graph.node)
        expected = sum(1 if c.rank_ratio >= 1 else 2 for c in effective_layers(resnet_inventory, policy, MULTIPLE)
                       if c.bits == 8 and c.layer.kind == "conv")
        assert kernels == expected


def test_interleaved_timing_does_not_time_cold_caches():
    """Interleaving a model with a bigger one must not time the calls that reload its
    weights: each model's turn starts with untimed calls, so its median is its warm speed."""
    from autocompress.latency_lut import LatencyBackend, Measurable, Timing

    class Caches(LatencyBackend):
        """Two models share one cache; the first call after the other model ran is 10x slower."""

        name = "caches"
        last: list = [None]

        def profile(self) -> dict:
            return {}

        def prepare(self, item: Measurable):
            def run() -> float:
                cold, self.last[0] = self.last[0] is not item, item
                return (10.0 if cold else 1.0) * 1e-3
            return run

    backend = Caches(timing=Timing(warmup=1, min_runs=10, min_time_s=0.0))
    a, b = (Measurable.from_onnx(b"model", {}) for _ in range(2))
    timings = backend.measure_many([a, b], rounds=10)  # 1 timed call per model per round
    assert [t.median_us for t in timings] == [1000.0, 1000.0]
    assert max(t.p90_us for t in timings) == 1000.0


def test_uneven_drift_names_integer_and_float_kernels_moving_apart():
    """The slow state seen on the AVX2 EPYC: the original 2108 us against 2189 in the
    calibration, the most compressed model 594 us against 370: 67% longer relative to the
    original; the quiet run two minutes later (2279 and 379 us) stays within the bound."""
    from autocompress.latency_lut import UNEVEN, uneven_drift, uneven_warning

    slow = uneven_drift(2108.0, 594.0, 2189.0, 370.0)
    assert slow == pytest.approx((594 / 2108) / (370 / 2189) - 1) and slow > UNEVEN
    assert "took 67% longer than in the table's calibration" in uneven_warning(slow)
    quiet = uneven_drift(2279.0, 379.0, 2189.0, 370.0)
    assert abs(quiet) < UNEVEN and uneven_warning(quiet) is None
    assert "took 30% less time than at the run's start" in uneven_warning(-0.3, "at the run's start")
    assert uneven_drift(2108.0, 594.0, None, 370.0) is None and uneven_warning(None) is None
