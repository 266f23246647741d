"""The conformance suite every latency backend passes.

Subclass :class:`BackendConformance` in a test module, under a name pytest collects
(``Test...``), and provide a ``backend`` fixture returning the backend to check, built with
:data:`CONFORMANCE_TIMING` so that the suite runs in seconds::

    @pytest.fixture(scope="class")
    def backend():
        return make_backend("onnxruntime-cpu", timing=CONFORMANCE_TIMING)

    class TestOrtCpu(BackendConformance):
        pass

The suite checks the contract of :class:`autocompress.latency_lut.LatencyBackend`: the
profile, the statistics of a measurement, that a model of thousands of times the FLOPs
measures slower, that ``measure_many`` answers in order, that a prepared model can be timed
again (``time_prepared``), that a wrong input shape is a
clear :class:`MeasurementError`, and that the caller's module is left alone.
"""

from __future__ import annotations

import json
import math
from typing import Mapping

import pytest
import torch
from torch import nn

from autocompress.latency_lut import LatencyBackend, Measurable, Measurement, MeasurementError, Timing, profile_id
from autocompress.latency_lut._backend import CPU_PROFILE_KEYS, GPU_PROFILE_KEYS, PROFILE_KEYS

__all__ = ["CONFORMANCE_TIMING", "BackendConformance", "check_measurement", "check_profile", "big_model", "small_model"]

CONFORMANCE_TIMING = Timing(warmup=2, min_runs=5, min_time_s=0.0, max_runs=200)
SLOWER_FACTOR = 2.0  # the big model has ~4000x the FLOPs and 6x the kernels of the small one


def check_profile(profile: Mapping, name: str) -> None:
    """A profile has every required key, JSON-serializable plain values, and the backend's name."""
    missing = [k for k in PROFILE_KEYS if k not in profile]
    assert not missing, f"profile lacks {missing}"
    kind_keys = {"cpu": CPU_PROFILE_KEYS, "cuda": GPU_PROFILE_KEYS}
    assert profile["device_kind"] in kind_keys, profile["device_kind"]
    missing = [k for k in kind_keys[profile["device_kind"]] if k not in profile]
    assert not missing, f"{profile['device_kind']} profile lacks {missing}"
    assert profile["backend"] == name
    assert isinstance(profile["device"], str) and profile["device"]
    assert isinstance(profile["runtime_version"], str) and profile["runtime_version"]
    assert isinstance(profile["batch_size"], int) and profile["batch_size"] >= 1
    assert isinstance(profile["threads"], int) and profile["threads"] >= 1
    assert isinstance(profile["precisions"], list) and "fp32" in profile["precisions"]
    assert json.loads(json.dumps(dict(profile))) == dict(profile)  # stored in tables as JSON


def check_measurement(m: Measurement, min_runs: int) -> None:
    assert isinstance(m, Measurement)
    assert m.runs >= min_runs
    assert all(math.isfinite(v) for v in (m.median_us, m.p10_us, m.p90_us))
    assert 0 < m.p10_us <= m.median_us <= m.p90_us


def small_model() -> tuple[nn.Module, tuple[torch.Tensor, ...]]:
    """One 3x3 conv, 3 -> 8 channels on 8x8: about 14 thousand multiply-adds."""
    gen = torch.Generator().manual_seed(0)
    with torch.random.fork_rng(devices=[]):  # seeded weights, the caller's generator untouched
        torch.manual_seed(0)
        model = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU()).eval()
    return model, (torch.randn(1, 3, 8, 8, generator=gen),)


def big_model() -> tuple[nn.Module, tuple[torch.Tensor, ...]]:
    """Six 3x3 convs of 32 channels on 32x32: about 57 million multiply-adds."""
    gen = torch.Generator().manual_seed(0)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        layers: list[nn.Module] = [nn.Conv2d(3, 32, 3, padding=1), nn.ReLU()]
        for _ in range(5):
            layers += [nn.Conv2d(32, 32, 3, padding=1), nn.ReLU()]
        model = nn.Sequential(*layers).eval()
    return model, (torch.randn(1, 3, 32, 32, generator=gen),)


class BackendConformance:
    """Checks every latency backend must pass; the subclass provides a ``backend`` fixture."""

    @pytest.fixture(scope="class")
    def small(self) -> Measurable:
        return Measurable.from_module(*small_model())

    @pytest.fixture(scope="class")
    def big(self) -> Measurable:
        return Measurable.from_module(*big_model())

    def test_profile_has_the_target_and_is_stable(self, backend: LatencyBackend) -> None:
        profile = backend.profile()
        check_profile(profile, backend.name)
        assert profile["threads"] == backend.threads and profile["batch_size"] == backend.batch_size
        assert backend.profile() == profile
        assert profile_id(profile) == profile_id(dict(reversed(list(profile.items()))))

    def test_measure_gives_ordered_positive_statistics(self, backend: LatencyBackend, small: Measurable) -> None:
        check_measurement(backend.measure(small), backend.timing.min_runs)

    def test_bigger_model_measures_slower(self, backend: LatencyBackend, small: Measurable, big: Measurable) -> None:
        fast, slow = backend.measure(small), backend.measure(big)
        assert slow.median_us > SLOWER_FACTOR * fast.median_us, (fast, slow)

    def test_measure_many_answers_in_order(self, backend: LatencyBackend, small: Measurable, big: Measurable) -> None:
        results = backend.measure_many([big, small, big], rounds=3)
        assert len(results) == 3
        for m in results:
            check_measurement(m, backend.timing.min_runs)
        assert results[0].median_us > SLOWER_FACTOR * results[1].median_us
        assert results[2].median_us > SLOWER_FACTOR * results[1].median_us

    def test_a_prepared_model_is_timed_again_without_preparing_it_again(self, backend: LatencyBackend, small: Measurable,
                                                                         big: Measurable) -> None:
        run = backend.prepare(big)
        first = backend.time_prepared(run, warmup=backend.timing.warmup)
        backend.measure(small)  # another model in between, as the latency table times its reference around entries
        again = backend.time_prepared(run)
        for m in (first, again):
            check_measurement(m, backend.timing.min_runs)
        assert again.median_us > SLOWER_FACTOR * backend.measure(small).median_us

    def test_wrong_input_shape_is_a_clear_error(self, backend: LatencyBackend, small: Measurable) -> None:
        wrong = Measurable((torch.randn(1, 5, 8, 8),), module=small.module, onnx=small.onnx_model)
        with pytest.raises(MeasurementError, match="shape"):
            backend.measure(wrong)

    def test_module_is_left_alone(self, backend: LatencyBackend) -> None:
        module, inputs = small_model()
        before = {k: v.clone() for k, v in module.state_dict().items()}
        backend.measure(Measurable.from_module(module, inputs))
        after = module.state_dict()
        assert all(after[k].device.type == "cpu" and torch.equal(after[k], v) for k, v in before.items())
        assert not module.training

    def test_onnx_only_request(self, backend: LatencyBackend, small: Measurable, tmp_path) -> None:
        path = tmp_path / "small.onnx"
        path.write_bytes(small.onnx_bytes())
        item = Measurable.from_onnx(path, small.feeds())
        if backend.needs_module:
            with pytest.raises(MeasurementError, match="module"):
                backend.measure(item)
        else:
            check_measurement(backend.measure(item), backend.timing.min_runs)
