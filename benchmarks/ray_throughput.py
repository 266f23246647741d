"""Trial throughput of a search on Ray with 1 worker and with N workers, on this machine.

    python benchmarks/ray_throughput.py --task demo --trials 8 --steps 60 --workers 2
    python benchmarks/ray_throughput.py --task tests/fixtures/mlp_task.py:build --trials 4 --steps 20   # a quick check

Runs the same search (same task, budget, space, seed and trial count; a fresh run directory
each time) as Ray Tune trials, first with one trial at a time, then with ``--workers`` at
once, on one local Ray instance with ``--workers`` CPUs. The clock runs from the first
trial's start to the end of the sweep (the latency table, baseline and front are left out;
the workers' one-off task build is in). Prints trials/minute of each and the ratio (the
target is >= 1.7x with 2 workers), and writes them to
``benchmarks/results/ray-throughput-<task>.json``. ``--rounds`` alternates the two settings
that many times, so machine drift hits both alike; medians are reported. On a shared machine
the figures say little: measure on a quiet one.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

os.environ.setdefault("RAY_AUTH_MODE", "disabled")

import ray  # noqa: E402
from ray import tune  # noqa: E402
from rich.console import Console  # noqa: E402

from autocompress._io import atomic_write_json  # noqa: E402
from autocompress.evaluators import DistillConfig  # noqa: E402
from autocompress.search._ray import RayConfig  # noqa: E402
from autocompress.spaces import SpaceConfig  # noqa: E402
from autocompress.study import SearchConfig, run_search  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"


class SweepClock(tune.Callback):
    """Wall time from the first trial's start to the end of the sweep."""

    def __init__(self) -> None:
        self.first_start: float | None = None
        self.end: float | None = None

    def __getstate__(self) -> dict:  # Tune pickles callbacks for a restore; the run uses this object
        return {}

    def on_trial_start(self, iteration, trials, trial, **info) -> None:
        if self.first_start is None:
            self.first_start = time.perf_counter()

    def on_experiment_end(self, trials, **info) -> None:
        self.end = time.perf_counter()


def sweep(args: argparse.Namespace, workers: int, run_dir: Path) -> dict:
    config = SearchConfig(
        task=args.task, latency_budget=args.budget, trials=args.trials, run_dir=str(run_dir), seed=args.seed,
        distill=DistillConfig(steps=args.steps), space=SpaceConfig(), threads=1,
        ray=RayConfig(address="local", workers=workers),
    )
    clock = SweepClock()
    result = run_search(config, console=Console(quiet=True), ray_callbacks=(clock,))
    assert clock.first_start is not None and clock.end is not None
    seconds = clock.end - clock.first_start
    completed = result.counts["completed"]
    return {"workers": workers, "completed": completed, "seconds": seconds, "trials_per_minute": 60 * completed / seconds}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--task", default="demo")
    p.add_argument("--budget", default="0.7x")
    p.add_argument("--trials", type=int, default=8)
    p.add_argument("--steps", type=int, default=60, help="distillation steps per trial")
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--rounds", type=int, default=1)
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args()

    ray.init(num_cpus=args.workers, logging_level="WARNING", log_to_driver=False)
    runs: dict[int, list[dict]] = {1: [], args.workers: []}
    with tempfile.TemporaryDirectory(prefix="ray-throughput-") as tmp:
        for r in range(args.rounds):
            for workers in (1, args.workers):
                run = sweep(args, workers, Path(tmp) / f"round{r}-workers{workers}")
                runs[workers].append(run)
                print(f"round {r + 1}, {workers} worker(s): {run['completed']} trials in {run['seconds']:.1f} s "
                      f"= {run['trials_per_minute']:.2f} trials/min", flush=True)
    ray.shutdown()

    one = statistics.median(r["trials_per_minute"] for r in runs[1])
    many = statistics.median(r["trials_per_minute"] for r in runs[args.workers])
    ratio = many / one
    print(f"\n| workers | trials/min (median of {args.rounds}) |\n| --- | --- |\n| 1 | {one:.2f} |\n| {args.workers} | {many:.2f} |")
    print(f"\nspeedup with {args.workers} workers: {ratio:.2f}x (target >= 1.7x with 2)")
    name = Path(args.task.split(":")[0]).stem if ":" in args.task else args.task
    atomic_write_json(RESULTS / f"ray-throughput-{name}.json", {
        "schema": 1, "command": [Path(sys.executable).name, *sys.argv], "args": vars(args),
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"), "cpus": os.cpu_count(),
        "machine": platform.processor() or platform.machine(), "ray": ray.__version__,
        "runs": runs, "trials_per_minute": {"1": one, str(args.workers): many}, "speedup": ratio,
    })
    return 0


if __name__ == "__main__":
    sys.exit(main())
