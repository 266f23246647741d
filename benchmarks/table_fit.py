"""How well the latency table's sums order and size many random candidates, against the
measurement's own repeatability, on one set of measurements.

    # measure: N random candidates, each timed twice (two passes, minutes apart), relative to the original
    .venv/bin/python benchmarks/table_fit.py --task demo --table /tmp/t/demo.json --samples 150 --out table-fit-demo.json
    # evaluate another checkout's sums on the same measurements (no timing):
    PYTHONPATH=/path/to/other/checkout .venv/bin/python benchmarks/table_fit.py --task demo --table /tmp/t/demo.json \\
        --measured benchmarks/results/table-fit-demo.json

`lut validate` compares each candidate with a table calibrated once, so its figures mix the
table's error with the machine's drift between the build and the validation (on this
project's shared machines the same model can time 10-15% apart a minute later). Here every
candidate is timed twice, interleaved with the original in each pass, and everything is
judged as speed relative to the original, which the drift does not move. The table's sums
are computed by the checkout on the import path; a calibration (scales per part and local correction,
as `LatencyTable.calibrate` fits it) is fitted on k candidates of the first pass and
predicts the others, judged against their second pass, over 20 random splits per k; both
the table's calibration by part and one line through the plain sums are reported, and the
table's own calibration where it has one (the one `lut build` fitted on its whole models).
"""

from __future__ import annotations

import argparse
import functools
import json
import random
import sys
from dataclasses import replace
from pathlib import Path
from typing import Callable

import numpy as np

RESULTS = Path(__file__).resolve().parent / "results"
CALIBRATION_SIZES = (10, 24, 42)  # 42: what `lut build` measures on demo (baseline, most compressed, 40 random)
CALIBRATION_MODELS = ("one line", "scales per part")  # the table's calibration before and since scales per part


def measure(task_spec: str, table_path: Path, samples: int, seed: int, precision: str = "mixed") -> dict:
    from rich.progress import Progress

    from autocompress.spaces import SpaceConfig
    from autocompress.study import open_workbench
    from autocompress.task import load_task

    bench = open_workbench(load_task(task_spec, 0), SpaceConfig(), 1, table_path, shared_table=False)
    rng = random.Random(f"table-fit-{seed}")
    policies = [bench.space.sample(rng) for _ in range(samples)]
    if precision != "mixed":  # every layer in one precision, pruning and ranks as drawn
        bits = {} if precision == "float" else {name: 8 for name in bench.inventory.layers}
        policies = [replace(p, bits=bits) for p in policies]
    passes: list[list[float]] = [[], []]
    with Progress(transient=True) as progress:
        bar = progress.add_task("timing candidates (two passes)", total=2 * samples)
        for timings in passes:
            for policy in policies:
                candidate_us, original_us = bench.measure_with_original(policy)
                timings.append(candidate_us / original_us)
                progress.advance(bar)
    return {"task": task_spec, "samples": samples, "seed": seed, "precision": precision, "profile": bench.table.profile,
            "policies": [p.to_dict() for p in policies], "relative": passes}


def fit_relative(x: np.ndarray, target: np.ndarray) -> Callable[[np.ndarray], np.ndarray]:
    """The least-squares fit of ``target`` by the columns of ``x`` and an offset, on relative
    error; returns the fitted predictor of such columns."""
    coef, *_ = np.linalg.lstsq(np.c_[x, np.ones(len(target))] / target[:, None], np.ones(len(target)), rcond=None)
    return lambda z: np.c_[z, np.ones(len(z))] @ coef


def in_sample_errors(parts: list[dict], relative: np.ndarray) -> np.ndarray:
    """Relative errors of the best linear fit of the parts (and an offset) to ``relative``,
    fitted on the very same candidates: what no linear calibration of these parts can beat."""
    names = sorted({k for p in parts for k in p})
    x = np.array([[p.get(k, 0.0) for k in names] for p in parts])
    return fit_relative(x, relative)(x) / relative - 1


@functools.lru_cache(maxsize=None)
def _workbench(task_spec: str, table_path: Path):
    """The task loaded and the table opened once per (task, table), for every evaluation."""
    from autocompress.spaces import SpaceConfig
    from autocompress.study import open_workbench
    from autocompress.task import load_task

    return open_workbench(load_task(task_spec, 0), SpaceConfig(), 1, table_path, shared_table=False)


def candidate_sums(measured: dict, table_path: Path) -> list[tuple[float, float, dict]]:
    """The table's (sum, integer share, parts) of every candidate in ``measured``."""
    from autocompress.spaces import Policy

    bench = _workbench(measured["task"], table_path)
    bench.table.freeze_reference()
    return [bench.table.sums(bench.inventory, Policy.from_dict(p)) for p in measured["policies"]]


def own_calibration(measured: dict, table_path: Path) -> dict | None:
    """The table's own calibration (as `lut build` or a search fitted it) on ``measured``:
    each candidate's predicted speed relative to the original's prediction, against both
    passes; None for a table without a calibration of the task."""
    from autocompress.spaces import Policy

    bench = _workbench(measured["task"], table_path)
    if not bench.table.is_calibrated(bench.inventory):
        return None
    bench.table.freeze_reference()
    base = bench.table.predict_us(bench.inventory, bench.space.baseline())
    predicted = np.array([bench.table.predict_us(bench.inventory, Policy.from_dict(p)) for p in measured["policies"]]) / base
    out = {}
    for name, timings in zip(("first pass", "second pass"), measured["relative"]):
        err = np.abs(predicted / np.array(timings) - 1)
        out[name] = {"median_abs": float(np.median(err)), "within_10pct": float(np.mean(err <= 0.1)), "within_5pct": float(np.mean(err <= 0.05))}
    return out


def evaluate(measured: dict, table_path: Path, fit_on: dict | None = None) -> dict:
    """Figures on ``measured``; with ``fit_on``, the calibrations are fitted on its candidates
    and judged on all of ``measured``."""
    from autocompress.latency_lut import Calibration

    sources = [measured, fit_on] if fit_on else [measured]
    sums = candidate_sums({**measured, "policies": [p for m in sources for p in m["policies"]]}, table_path)
    raw = np.array([s[0] for s in sums])
    share = np.array([s[1] for s in sums])
    parts = [s[2] for s in sums]
    first, second = (np.concatenate([np.array(m["relative"][i]) for m in sources]) for i in (0, 1))
    n = len(measured["policies"])
    repeat = np.abs(second[:n] / first[:n] - 1)
    in_sample = in_sample_errors(parts[:n], (first[:n] + second[:n]) / 2)
    bound = np.abs(in_sample)
    out = {"repeatability": {"median_abs": float(np.median(repeat)), "within_10pct": float(np.mean(repeat <= 0.1)),
                             "within_5pct": float(np.mean(repeat <= 0.05))},
           "in_sample": {"median_abs": float(np.median(bound)), "within_10pct": float(np.mean(bound <= 0.1)),
                         "within_5pct": float(np.mean(bound <= 0.05)), "errors": in_sample.tolist()},
           "spearman_sum": float(np.corrcoef(np.argsort(np.argsort(raw[:n])), np.argsort(np.argsort(second[:n])))[0, 1]),
           "calibrated": {}}
    for model in CALIBRATION_MODELS:
        rng = np.random.default_rng(0)  # the same splits for every model
        for k in (k for k in CALIBRATION_SIZES if k < (len(raw) - n if fit_on else n)):
            medians, within10, within5 = [], [], []
            for _ in range(20):
                if fit_on:
                    fit, held = n + rng.permutation(len(raw) - n)[:k], np.arange(n)
                else:
                    order = rng.permutation(n)
                    fit, held = order[:k], order[k:]
                cal = Calibration(points=[{"raw_us": raw[i], "int_share": share[i], "parts": parts[i], "measured_us": first[i]} for i in fit])
                cal.fit()
                by_parts = model == "scales per part"
                err = np.abs(np.array([cal.apply(raw[i], share[i], parts[i] if by_parts else None) for i in held]) / second[held] - 1)
                medians.append(np.median(err))
                within10.append(np.mean(err <= 0.1))
                within5.append(np.mean(err <= 0.05))
            out["calibrated"].setdefault(model, {})[str(k)] = {
                "median_abs": float(np.mean(medians)), "within_10pct": float(np.mean(within10)), "within_5pct": float(np.mean(within5))}
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--task", default="demo")
    parser.add_argument("--table", required=True, help="a built table of the task (lut build --table)")
    parser.add_argument("--samples", type=int, default=150)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default=None, help="file name under benchmarks/results/ for the measurements and figures")
    parser.add_argument("--measured", default=None, help="evaluate on these saved measurements instead of timing")
    parser.add_argument("--precision", choices=("mixed", "float", "int8"), default="mixed",
                        help="draw the candidates' bit widths (mixed), or put every layer in float or int8")
    parser.add_argument("--fit-on", default=None, help="fit the calibrations on these saved measurements' candidates and judge all of --measured")
    parser.add_argument("--compare-table", default=None,
                        help="another table of the task: how alike the two tables' in-sample errors are, candidate by candidate")
    args = parser.parse_args()
    if args.measured:
        measured = json.loads(Path(args.measured).read_text())
    else:
        measured = measure(args.task, Path(args.table), args.samples, args.seed, args.precision)
    fit_on = json.loads(Path(args.fit_on).read_text()) if args.fit_on else None
    figures = evaluate(measured, Path(args.table), fit_on)
    rep = figures["repeatability"]
    print(f"{measured['task']}: {measured['samples']} candidates; the second pass against the first: median "
          f"{rep['median_abs']:.1%}, within ±10% {rep['within_10pct']:.0%}, within ±5% {rep['within_5pct']:.0%}; "
          f"Spearman of the plain sum {figures['spearman_sum']:.3f}")
    bound = figures["in_sample"]
    print(f"the parts fitted on all {measured['samples']} candidates themselves (in sample): median {bound['median_abs']:.1%}, "
          f"within ±10% {bound['within_10pct']:.1%}, within ±5% {bound['within_5pct']:.0%}")
    own = own_calibration(measured, Path(args.table))
    for name, f in (own or {}).items():
        print(f"the table's own calibration, relative to the original's prediction, against the {name}: median "
              f"{f['median_abs']:.1%}, within ±10% {f['within_10pct']:.1%}, within ±5% {f['within_5pct']:.0%}")
    if args.compare_table:
        both = (np.array(measured["relative"][0]) + np.array(measured["relative"][1])) / 2
        other = in_sample_errors([s[2] for s in candidate_sums(measured, Path(args.compare_table))], both)
        print(f"in-sample errors of the two tables, correlation over the candidates: {np.corrcoef(bound['errors'], other)[0, 1]:.3f}")
    print("| calibration | models | median abs error | within ±10% | within ±5% |")
    print("| --- | ---: | ---: | ---: | ---: |")
    for model, by_k in figures["calibrated"].items():
        for k, f in by_k.items():
            print(f"| {model} | {k} | {f['median_abs']:.1%} | {f['within_10pct']:.1%} | {f['within_5pct']:.0%} |")
    if args.out and not args.measured:
        RESULTS.mkdir(exist_ok=True)
        (RESULTS / args.out).write_text(json.dumps({**measured, "figures": {**figures, "own_calibration": own}}, indent=1))


if __name__ == "__main__":
    sys.path.append(str(Path(__file__).resolve().parents[1]))  # after PYTHONPATH: another checkout can be evaluated
    main()
