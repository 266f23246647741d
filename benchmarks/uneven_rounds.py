"""Could a candidate timed while the machine ran unevenly still be brought to the speed of
the table's calibration? Works on saved `lut validate --json` reports (no timing).

    .venv/bin/python benchmarks/uneven_rounds.py --task demo --table T --seed 3 \\
        --reports benchmarks/results/lut-validate-demo-avx2-rebuilt-60-slow.json \\
                  benchmarks/results/lut-validate-demo-avx2-rebuilt-60.json

Each report's candidates were timed beside the original and the space's most compressed
model. Their timings are brought to the calibration's speed three ways, and the table's
prediction at that speed judged against each: by the most compressed model (what a search
does), by the original, and by a two-factor model in which a candidate's integer layers
slow down as the most compressed model's do and its float parts as the original's, in
proportion to its sums in each (the table's parts; the most compressed model's own float
share is taken out of its factor). The draws are repeated from ``--seed`` and checked
against the report's policies.
"""

from __future__ import annotations

import argparse
import json
import random
import shutil
import tempfile
from pathlib import Path

import numpy as np

INTEGER_PARTS = ("b8", "b4")


def integer_share(parts: dict[str, float]) -> float:
    """The share of the sum in integer layers, the junctions' (negative) credit left out."""
    integer = sum(v for k, v in parts.items() if k in INTEGER_PARTS)
    rest = sum(v for k, v in parts.items() if k not in INTEGER_PARTS and k != "junctions")
    return integer / (integer + rest)


def figures(predicted: np.ndarray, measured: np.ndarray) -> str:
    errors = np.abs(predicted / measured - 1)
    return f"{np.median(errors):.1%}, {np.mean(errors <= 0.10):.0%}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--task", default="demo")
    parser.add_argument("--table", required=True, help="the table the reports validated (a copy is read)")
    parser.add_argument("--seed", type=int, required=True, help="the reports' --seed")
    parser.add_argument("--reports", nargs="+", required=True)
    args = parser.parse_args()

    from autocompress.spaces import SpaceConfig
    from autocompress.study import open_workbench
    from autocompress.task import load_task

    with tempfile.TemporaryDirectory() as scratch:
        table_path = Path(scratch) / "table.json"
        shutil.copy(args.table, table_path)
        bench = open_workbench(load_task(args.task, 0), SpaceConfig(), 1, table_path, shared_table=False)
        table, inventory, space = bench.table, bench.inventory, bench.space
        table.freeze_reference()
        points = {p["policy"]: p for p in table.calibrations[inventory.fingerprint].points}
        tracker_then = points[space.extreme().digest]["measured_us"]
        original_then = points[space.baseline().digest]["measured_us"]
        tracker_share = integer_share(table.sums(inventory, space.extreme())[2])
        print("| report | pass | int factor, float factor (medians) | by the most compressed model | by the original | two-factor |")
        print("| --- | ---: | --- | ---: | ---: | ---: |")
        for path in args.reports:
            report = json.loads(Path(path).read_text())
            rng = random.Random(args.seed)
            policies = [space.sample(rng) for _ in report["samples"]]
            if [p.digest for p in policies] != [s["policy"] for s in report["samples"]]:
                raise SystemExit(f"{path}: its candidates are not the draws of --seed {args.seed}; give the report's seed.")
            share = np.array([integer_share(table.sums(inventory, p)[2]) for p in policies])
            predicted = np.array([s["predicted_us"] for s in report["at_calibration_speed"]["samples"]])
            # (latency, relative, at calibration speed) per pass: the first pass as measured, the
            # second as the repeat's "predicted" values
            passes = [tuple(np.array([s["measured_us"] for s in v["samples"]])
                            for v in (report, report["relative_to_original"], report["at_calibration_speed"]))]
            if "repeatability" in report:
                rep = report["repeatability"]
                passes.append(tuple(np.array([s["predicted_us"] for s in rep[k]["samples"]])
                                    for k in ("latency", "relative_to_original", "at_calibration_speed")))
            for n, (latency, relative, at_calibration) in enumerate(passes, 1):
                original_now = latency / relative  # the relative view divides by the original of the round
                tracker_now = latency * tracker_then / at_calibration
                float_factor = original_now / original_then
                tracker_factor = tracker_now / tracker_then
                int_factor = np.maximum((tracker_factor - float_factor * (1 - tracker_share)) / tracker_share, 1e-3)
                two_factor = latency / (int_factor * share + float_factor * (1 - share))
                print(f"| {Path(path).name} | {n} | {np.median(int_factor):.2f}, {np.median(float_factor):.2f} "
                      f"| {figures(predicted, latency / tracker_factor)} | {figures(predicted, latency / float_factor)} "
                      f"| {figures(predicted, two_factor)} |")


if __name__ == "__main__":
    main()
