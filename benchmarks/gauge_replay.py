"""Which machine gauge predicts a `lut validate` run's latencies best, replayed offline.

    .venv/bin/python benchmarks/gauge_replay.py --same-rounds --window 1 benchmarks/results/lut-validate-*avx2*.json
    .venv/bin/python benchmarks/gauge_replay.py benchmarks/results/lut-validate-*avx2*.json   # the earlier gauge

Every `lut validate --json` report keeps, per candidate and in the order they were timed,
the prediction at the speed the reference graph read (the latency view of reports written
before `WholeModelGauge`; `latency_by_reference` since), the prediction at the
calibration's speed, and enough to recover the original and the most compressed model
timed beside it. This replays the whole-model gauge on them: each candidate predicted at
the calibration's speed times the speed those two models read, weighed by where the
prediction lies between theirs. With ``--same-rounds --window 1``, as `lut validate` reads
it now (`GAUGE_TIMINGS`): in the candidate's own rounds. Without ``--same-rounds``, beside
the previous ``--window`` candidates (default 5: the gauge of 2026-12-06, before the first
candidate the timings there are; a run then timed the original three times before its
first); ``--window 30`` is about the minute the gauge read before it counted timings (30
demo candidates; 4 minilm ones, which three timings at least stretch to 3).
``--candidates K`` adds a gauge with no whole model: each prediction at the calibration's
speed times the median of measured over predicted of the previous K candidates (the
candidates themselves as trackers; the first one by the whole models). The gauges never
read a candidate's own timing. Nothing is measured again.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]


def _figures(predicted: np.ndarray, measured: np.ndarray) -> str:
    from autocompress.latency_lut import fidelity

    err = np.abs(predicted / measured - 1)
    return f"{np.median(err):5.1%} {np.mean(err <= 0.1):6.1%} {fidelity(list(predicted), list(measured)).spearman:5.3f}"


def replay(report: dict, window: int, candidates: int | None = None, same_rounds: bool = False) -> dict[str, tuple[np.ndarray, np.ndarray]] | None:
    """(predicted, measured) per gauge; None where the report lacks a view the replay needs."""
    from autocompress.latency_lut import WholeModelGauge
    from autocompress.latency_lut._table import REFERENCE_MIN_TIMINGS

    machine = report.get("machine") or {}
    original_then, compressed_then = machine.get("original_calibration_us"), machine.get("most_compressed_calibration_us")
    if not (original_then and compressed_then and "at_calibration_speed" in report):
        return None
    by_reference = report.get("latency_by_reference", report)["samples"]
    relative, at_cal = report["relative_to_original"]["samples"], report["at_calibration_speed"]["samples"]
    measured = np.array([s["measured_us"] for s in by_reference])
    original = measured / np.array([s["measured_us"] for s in relative])
    compressed = measured * compressed_then / np.array([s["measured_us"] for s in at_cal])
    predicted_at_cal = np.array([s["predicted_us"] for s in at_cal])
    k = window if same_rounds else max(REFERENCE_MIN_TIMINGS, window)
    whole = []
    for i, p in enumerate(predicted_at_cal):
        gauge = WholeModelGauge(original_then, compressed_then, timings=k)
        last = i + 1 if same_rounds else i  # the candidate's own rounds too, or only the earlier candidates'
        for o, c in zip(original[max(0, last - k):last], compressed[max(0, last - k):last]):
            gauge.add(o, c)
        whole.append(p * gauge.speed(p))
    views = {"reference graph": (np.array([s["predicted_us"] for s in by_reference]), measured),
             "whole models": (np.array(whole), measured),
             "calibration speed": (predicted_at_cal, np.array([s["measured_us"] for s in at_cal]))}
    if candidates:
        recent = [whole[0]] + [p * np.median(measured[max(0, i - candidates):i] / predicted_at_cal[max(0, i - candidates):i])
                               for i, p in enumerate(predicted_at_cal) if i > 0]
        views["recent candidates"] = (np.array(recent), measured)
    return views


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("reports", nargs="+", type=Path)
    parser.add_argument("--window", type=int, default=5, help="candidates the gauge's median spans (default 5)")
    parser.add_argument("--candidates", type=int, default=None, help="also replay a gauge of the previous K candidates' own errors")
    parser.add_argument("--same-rounds", action="store_true",
                        help="the gauge also reads the whole models timed in each candidate's own rounds (with --window 1, lut validate's)")
    args = parser.parse_args()
    sys.path.insert(0, str(ROOT))
    window = args.window
    names = ["reference graph", "whole models", "calibration speed"] + (["recent candidates"] if args.candidates else [])
    print(f"{'report':48s} {'n':>4s}   by the reference graph   by the whole models      at the calibration's speed"
          + (f"   by {args.candidates} recent candidates" if args.candidates else ""))
    print(f"{'':48s} {'':>4s}   median |err| ±10% rho    median |err| ±10% rho    median |err| ±10% rho"
          + ("       median |err| ±10% rho" if args.candidates else ""))
    for path in args.reports:
        report = json.loads(path.read_text())
        views = replay(report, window, args.candidates, args.same_rounds)
        if views is None:
            print(f"{path.name:48s} (no calibration timings of both whole models: skipped)")
            continue
        cells = "    ".join(f"{_figures(*views[name]):>23s}" for name in names)
        print(f"{path.name:48s} {len(views['whole models'][0]):4d}   {cells}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
