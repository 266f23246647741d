"""How far the table's predictions are from end-to-end measurements of random candidates."""

from __future__ import annotations

import random
from dataclasses import asdict, dataclass, field
from typing import Callable

import numpy as np

from autocompress.inventory import LayerInventory
from autocompress.latency_lut._table import LatencyTable
from autocompress.spaces import Policy, SearchSpace

__all__ = ["FidelityReport", "fidelity", "validate"]


def _ranks(x: np.ndarray) -> np.ndarray:
    order = np.argsort(x, kind="stable")
    ranks = np.empty(len(x))
    ranks[order] = np.arange(len(x))
    return ranks


@dataclass
class FidelityReport:
    """Prediction error statistics over ``samples`` (relative error = predicted/measured - 1)."""

    samples: list[dict] = field(default_factory=list)
    median_abs_error: float = float("nan")
    within_10pct: float = float("nan")
    within_5pct: float = float("nan")
    spearman: float = float("nan")

    def worst(self, n: int = 5) -> list[dict]:
        return sorted(self.samples, key=lambda s: -abs(s["error"]))[:n]

    def to_dict(self) -> dict:
        d = asdict(self)
        d["worst"] = self.worst()
        return d


def fidelity(predicted_us: list[float], measured_us: list[float], labels: list[str] | None = None) -> FidelityReport:
    p, m = np.asarray(predicted_us, float), np.asarray(measured_us, float)
    errors = p / m - 1
    report = FidelityReport(
        samples=[{"policy": (labels or [""] * len(p))[i], "predicted_us": float(p[i]), "measured_us": float(m[i]), "error": float(errors[i])} for i in range(len(p))]
    )
    if len(p):
        abs_err = np.abs(errors)
        report.median_abs_error = float(np.median(abs_err))
        report.within_10pct = float(np.mean(abs_err <= 0.10))
        report.within_5pct = float(np.mean(abs_err <= 0.05))
    if len(p) >= 3 and np.ptp(p) > 0 and np.ptp(m) > 0:
        report.spearman = float(np.corrcoef(_ranks(p), _ranks(m))[0, 1])
    return report


def validate(
    table: LatencyTable,
    inventory: LayerInventory,
    space: SearchSpace,
    measure_with_original: Callable[[Policy], tuple[float, float]],
    samples: int,
    seed: int = 0,
    on_sample: Callable[[int], None] | None = None,
    repeat: bool = False,
) -> tuple[FidelityReport, FidelityReport] | tuple[FidelityReport, FidelityReport, FidelityReport, FidelityReport]:
    """Draw ``samples`` random policies; predict each, then build, export and time it end to
    end, interleaved with the original model.

    Returns two reports: the error of the predicted latency itself, and the error of the
    predicted speed relative to the original (predicted ratio against the ratio measured
    in the same round), which machine drift between minutes cannot touch.
    ``measure_with_original(policy)`` returns (candidate us, original us).

    With ``repeat``, every candidate is timed a second time after all the first timings
    (minutes later on a big sample), and two more reports say how well the measurement
    agrees with itself, as latency and as relative speed: a table cannot be judged closer
    to the measurements than they are to each other.
    """
    rng = random.Random(seed)
    baseline = space.baseline()
    policies = [space.sample(rng) for _ in range(samples)]
    predicted, measured, labels = [], [], []
    predicted_ratio, measured_ratio = [], []
    for i, policy in enumerate(policies):
        p = table.predict_us(inventory, policy)
        p_base = table.predict_us(inventory, baseline)
        m, m_base = measure_with_original(policy)
        predicted.append(p)
        measured.append(m)
        predicted_ratio.append(p / p_base)
        measured_ratio.append(m / m_base)
        labels.append(policy.digest)
        if on_sample is not None:
            on_sample(i + 1)
    reports = (fidelity(predicted, measured, labels), fidelity(predicted_ratio, measured_ratio, labels))
    if not repeat:
        return reports
    again, again_ratio = [], []
    for i, policy in enumerate(policies):
        m, m_base = measure_with_original(policy)
        again.append(m)
        again_ratio.append(m / m_base)
        if on_sample is not None:
            on_sample(samples + i + 1)
    return (*reports, fidelity(again, measured, labels), fidelity(again_ratio, measured_ratio, labels))
