"""Which model, timed beside a candidate, best carries the candidate's timing to the machine
speed of another moment: the original model, the latency table's reference conv, the
search space's most compressed model, a float conv whose data outgrows the core's cache
(two of them), a chain of 16 small convs (what a second reference for the table would be),
or the space's most compressed policy left in float.

    .venv/bin/python benchmarks/drift_trackers.py --task minilm --seconds 180
    .venv/bin/python benchmarks/drift_trackers.py --task demo --seconds 150
    # finished searches: each exported candidate's table error at the start's speed, both ways
    .venv/bin/python benchmarks/drift_trackers.py --runs runs/minilm-0.5x runs/minilm-0.33x

The seven trackers and three random candidates of the task (one with every layer int8, one as
drawn, one with every layer float) are built and exported as a search builds them, then timed in turn, 0.1 s each, for
``--seconds``. A candidate's timings divided by a tracker's timings in the same round should
not move when the machine's speed does: the spread (standard deviation of the log) of that
ratio says how well the tracker follows what moves the candidate. "Alone" is the spread of
the timings themselves. A second table gives the same spreads of running medians over
``--smooth`` seconds: what moves for as long as a gauge of several timings reads.

With ``--runs``, nothing is timed: for each exported candidate of finished searches (whose
engines were timed beside both models), the table's prediction against the engine's
timing brought to the run's start by the most compressed model, by the original, and by
both weighed by where the prediction lies between them (as `lut validate`'s
`WholeModelGauge`) or by the candidate's float share of its predicted kernel time.
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import time
from dataclasses import replace
from pathlib import Path

import numpy as np


def compare_runs(run_dirs: list[str]) -> None:
    import shutil
    import tempfile

    import optuna

    from autocompress.spaces import Policy
    from autocompress.study import SearchConfig, latency_at_start_us, open_workbench
    from autocompress.task import load_task

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    gauges = ("the most compressed model", "the original", "both, by position", "both, by float share")
    print("| run | trial | predicted us | float share | " + " | ".join(f"by {g}" for g in gauges) + " |")
    print("| --- | ---: | ---: | ---: |" + " ---: |" * len(gauges))
    errors: dict[str, list[float]] = {g: [] for g in gauges}
    for run_dir in map(Path, run_dirs):
        manifest = json.loads((run_dir / "run.json").read_text())
        base = manifest["baseline"]
        original_us, tracker_us = base["latency_ms"] * 1000, base["tracker_latency_us"]
        config = SearchConfig.from_dict(manifest["config"])
        with tempfile.TemporaryDirectory() as scratch:  # the run's table, read from a copy
            table_path = Path(scratch) / "table.json"
            shutil.copy(run_dir / "latency_table.json", table_path)
            bench = open_workbench(load_task(manifest["task_spec"], 0), config.space, config.threads, table_path, shared_table=False)
        study = optuna.load_study(study_name="autocompress", storage=f"sqlite:///{run_dir / 'study.db'}")
        for trial in study.get_trials():
            attrs = trial.user_attrs
            engine = attrs.get("engine") or {}
            if attrs.get("status") != "completed" or not engine.get("tracker_latency_us") or not engine.get("original_latency_us"):
                continue
            predicted = attrs["predicted_ms"] * 1000
            # The original is all float, the most compressed model all integer: a candidate's
            # float share of its predicted kernels, or its place between the two, weighs their speeds.
            _, _, parts = bench.table.sums(bench.inventory, Policy.from_dict(attrs["policy"]))
            kernels = sum(us for part, us in parts.items() if part in ("b32", "b16", "b8", "b4"))
            float_share = (parts.get("b32", 0.0) + parts.get("b16", 0.0)) / kernels if kernels > 0 else 1.0
            position = min(1.0, max(0.0, (predicted - tracker_us) / (original_us - tracker_us)))
            speed_o, speed_t = engine["original_latency_us"] / original_us, engine["tracker_latency_us"] / tracker_us
            at_start = {
                gauges[0]: latency_at_start_us(engine, original_us, tracker_us),
                gauges[1]: latency_at_start_us(engine, original_us),
                gauges[2]: engine["latency_us"] / (position * speed_o + (1 - position) * speed_t),
                gauges[3]: engine["latency_us"] / (float_share * speed_o + (1 - float_share) * speed_t),
            }
            for g in gauges:
                errors[g].append(predicted / at_start[g] - 1)
            print(f"| {run_dir.name} | {trial.number} | {predicted:.0f} | {float_share:.2f} | "
                  + " | ".join(f"{errors[g][-1]:+.1%}" for g in gauges) + " |")
    for name, e in errors.items():
        a = np.abs(e)
        print(f"by {name}: {len(a)} candidates, median |error| {np.median(a):.1%}, within ±10% {np.mean(a <= 0.1):.0%}, "
              f"within ±5% {np.mean(a <= 0.05):.0%}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--task", default="demo")
    parser.add_argument("--seconds", type=float, default=120.0)
    parser.add_argument("--smooth", type=float, default=15.0, help="seconds of the running medians of the second table")
    parser.add_argument("--table", default=None, help="a table of the task (default: a new one in a temporary folder)")
    parser.add_argument("--runs", nargs="*", default=None, help="finished search runs to compare instead of timing")
    args = parser.parse_args()
    if args.runs:
        compare_runs(args.runs)
        return

    import tempfile

    import torch

    from autocompress.latency_lut import Measurable
    from autocompress.latency_lut._table import _micro_model, _reference_choice, conv_choice
    from autocompress.spaces import SpaceConfig
    from autocompress.study import open_workbench
    from autocompress.task import load_task

    with tempfile.TemporaryDirectory() as tmp:
        table = Path(args.table) if args.table else Path(tmp) / "table.json"
        bench = open_workbench(load_task(args.task, 0), SpaceConfig(), 1, table, shared_table=False)
        example = bench.task.example_inputs
        rng = random.Random("drift-trackers")
        drawn = bench.space.sample(rng)
        int8 = replace(bench.space.sample(rng), bits={name: 8 for name in bench.inventory.layers})
        all_float = replace(bench.space.sample(rng), bits={})
        smallest_float = replace(bench.space.extreme(), bits={})  # pruned and factorized as far as the space goes

        def float_conv(channels: int, kernel: int, size: int) -> Measurable:
            return Measurable.from_module(*_micro_model(conv_choice(channels, channels, kernel, 1, size), bench.channel_multiple))

        def small_conv_chain(n: int) -> Measurable:
            from torch import nn

            layers = [m for _ in range(n) for m in (nn.Conv2d(16, 16, 3, padding=1), nn.ReLU())]
            return Measurable.from_module(nn.Sequential(*layers).eval(), (torch.randn(1, 16, 16, 16),))

        models = {
            "original": bench.original,
            "reference conv": Measurable.from_module(*_micro_model(_reference_choice(), bench.channel_multiple)),
            "most compressed": bench.tracker,
            "3x3 conv, 32 ch at 56x56": float_conv(32, 3, 56),  # 0.4 MB in and out, against the reference's 0.1 MB
            "1x1 conv, 128 ch at 56x56": float_conv(128, 1, 56),  # 1.6 MB in and out
            "16 small convs in a chain": small_conv_chain(16),  # a whole model's many short kernels, in the cache
            "most compressed, float": Measurable.from_module(bench.candidate(smallest_float), example, dynamic_batch=True),
            "int8 candidate": Measurable.from_module(bench.candidate(int8), example, dynamic_batch=True),
            "drawn candidate": Measurable.from_module(bench.candidate(drawn), example, dynamic_batch=True),
            "float candidate": Measurable.from_module(bench.candidate(all_float), example, dynamic_batch=True),
        }
        backend = bench.backend
        runners = [backend.prepare(m) for m in models.values()]
        for run in runners:
            backend.time_prepared(run, warmup=backend.timing.warmup, min_time_s=0.0)
        rows = []
        start = time.monotonic()
        while time.monotonic() - start < args.seconds:
            rows.append([backend.time_prepared(run, min_time_s=0.1).median_us for run in runners])
    names = list(models)
    trackers = names[:7]
    raw = np.log(np.array(rows))
    window = min(len(rows), max(1, int(round(args.smooth / (args.seconds / len(rows))))))
    # Each model's timings as a running median over ``--smooth`` seconds: what moves for that
    # long, as the speed a gauge of several timings reads does, without the rounds' jitter.
    smooth = np.array([np.median(raw[max(0, i - window + 1):i + 1], axis=0) for i in range(len(raw))])[window - 1:]
    for title, logs in (("each round", raw), (f"running medians over {args.smooth:g} s ({window} rounds)", smooth)):
        print(f"{args.task}: {len(rows)} rounds in {args.seconds:.0f} s; spreads of {title}")
        print("| model | median us | alone | " + " | ".join(f"/ {t}" for t in trackers) + " |")
        print("| --- | ---: | ---: | " + " | ".join("---:" for _ in trackers) + " |")
        for j, name in enumerate(names):
            cells = [f"{np.std(logs[:, j] - logs[:, k]):.1%}" if k != j else "" for k in range(len(trackers))]
            print(f"| {name} | {np.exp(np.median(logs[:, j])):.0f} | {np.std(logs[:, j]):.1%} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    sys.path.append(str(Path(__file__).resolve().parents[1]))
    main()
