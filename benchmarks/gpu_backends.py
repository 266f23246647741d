"""Latency tables on an NVIDIA GPU: build the `demo` task's table with each GPU backend and
validate it on random candidates, predicted against measured end to end.

    PYTHONPATH=. python benchmarks/gpu_backends.py --samples 30             # torch-cuda, + onnxruntime-cuda if offered
    PYTHONPATH=. python benchmarks/gpu_backends.py --backend torch-cpu --samples 3   # the CPU path, anywhere

Needs what is installed on the machine already (a CUDA build of PyTorch; onnxruntime-gpu
for onnxruntime-cuda); installs nothing and reaches no network. For every backend it
measures every layer configuration the task's space can reach (``--bits`` and the other
space options narrow it; ``--bits`` defaults to 32,16), fits the whole-model calibration, then times ``--samples``
random candidates interleaved with the original model and reports the median absolute
error, the share within +/-10% and +/-5% and the Spearman rank correlation, for the
latency and for the speed relative to the original. Writes JSON (profiles, tables'
sizes, timings, statistics, every sample) to ``$OUT/gpu_backends.json`` when ``$OUT`` is
set, else to ``benchmarks/results/gpu_backends.json`` (``--out`` overrides), and each
backend's table beside it.
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

import torch

from autocompress._io import atomic_write_json
from autocompress.errors import UserError
from autocompress.latency_lut import BACKENDS, backend_missing, validate
from autocompress.spaces import SpaceConfig
from autocompress.study import open_workbench
from autocompress.task import load_task

SCHEMA = 1
GPU_BACKENDS = ("torch-cuda", "onnxruntime-cuda")


def _numbers(text: str, kind: type) -> tuple:
    return tuple(kind(v) for v in text.split(",") if v.strip())


def _default_out() -> Path:
    root = os.environ.get("OUT")
    return Path(root) / "gpu_backends.json" if root else Path(__file__).resolve().parent / "results" / "gpu_backends.json"


def run_backend(name: str, task, space: SpaceConfig, threads: int, samples: int, seed: int, table_path: Path) -> dict:
    """Build, calibrate and validate one backend's table; the figures as a dict."""
    t0 = time.perf_counter()
    bench = open_workbench(task, space, threads, table_path, shared_table=False, backend=name)
    table = bench.table
    reachable = len(table.reachable_choices(bench.inventory, bench.space))
    print(f"[{name}] {reachable} layer configurations to measure", flush=True)
    measured = table.build(bench.inventory, bench.space,
                           on_entry=lambda i, n: print(f"[{name}]   {i}/{n}", flush=True) if i % 50 == 0 or i == n else None)
    build_s = time.perf_counter() - t0
    t1 = time.perf_counter()
    calibration = table.calibrate(bench.inventory, bench.space, bench.measure_policies, seed=seed + 1)
    calibrate_s = time.perf_counter() - t1
    table.save()
    t2 = time.perf_counter()
    result = validate(table, bench.inventory, bench.space, bench.measure_beside, samples, seed,
                      on_sample=lambda i: print(f"[{name}]   candidate {i}/{samples}", flush=True))
    validate_s = time.perf_counter() - t2
    table.save()
    baseline_us = table.predict_us(bench.inventory, bench.space.baseline())
    for _, title, report in result.views():
        print(f"[{name}] {title}: median |error| {report.median_abs_error:.1%}, within ±10% {report.within_10pct:.0%}, "
              f"within ±5% {report.within_5pct:.0%}, Spearman {report.spearman:.3f}", flush=True)
    return {
        "backend": name, "profile": table.profile, "entries": len(table.entries), "measured_entries": measured,
        "build_s": build_s, "calibrate_s": calibrate_s, "validate_s": validate_s,
        "calibration": {"scale": calibration.scale, "offset_us": calibration.offset_us, "points": calibration.points},
        "predicted_original_us": baseline_us, "samples": samples,
        "absolute": result.latency.to_dict(), **{key: report.to_dict() for key, _, report in result.views()[1:]},
        "table": str(table_path),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backend", action="append", choices=list(BACKENDS),
                        help=f"repeatable (default: {', '.join(GPU_BACKENDS)}, each where available)")
    parser.add_argument("--task", default="demo")
    parser.add_argument("--samples", type=int, default=30, help="random candidates timed end to end per backend")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--bits", default="32,16",
                        help="bit widths of the space (default 32,16: eager PyTorch runs int8 and 4-bit layers as float simulations)")
    parser.add_argument("--prune-ratios", default=None)
    parser.add_argument("--rank-ratios", default=None)
    parser.add_argument("--out", type=Path, default=None, help="JSON file (default $OUT/gpu_backends.json or benchmarks/results/)")
    args = parser.parse_args(argv)
    if args.samples < 1:
        parser.error("--samples must be at least 1")

    options = {k: v for k, v in {"bits": _numbers(args.bits, int) if args.bits else None,
                                 "prune_ratios": _numbers(args.prune_ratios, float) if args.prune_ratios else None,
                                 "rank_ratios": _numbers(args.rank_ratios, float) if args.rank_ratios else None}.items() if v}
    space = SpaceConfig(**options)
    names = args.backend or list(GPU_BACKENDS)
    out = args.out or _default_out()
    torch.manual_seed(args.seed)
    task = load_task(args.task)
    results, skipped = [], {}
    for name in names:
        missing = backend_missing(name)
        if missing:
            skipped[name] = missing
            print(f"[{name}] skipped: {missing}", flush=True)
            continue
        table_path = out.with_name(f"{out.stem}-{name}-table.json")
        try:
            results.append(run_backend(name, task, space, args.threads, args.samples, args.seed, table_path))
        except UserError as exc:
            skipped[name] = str(exc)
            print(f"[{name}] failed: {exc}", flush=True)
    report = {
        "schema": SCHEMA, "task": args.task, "space": {k: list(v) for k, v in options.items()}, "seed": args.seed,
        "threads": args.threads, "results": results, "skipped": skipped,
        "versions": {"python": platform.python_version(), "torch": torch.__version__, "cuda": torch.version.cuda},
        "command": [sys.executable, *sys.argv], "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }
    atomic_write_json(out, report)
    print(f"wrote {out}", flush=True)
    return 0 if results else 1


if __name__ == "__main__":
    sys.exit(main())
