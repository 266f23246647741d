"""A memory-bandwidth load for one core, on and off in turn: what a machine shared with other
work does to latency measurements. Each switch is printed with its time.

    taskset -c 1 .venv/bin/python benchmarks/co_load.py --on 120 --off 120 --seconds 900 &
    autocompress lut validate --task demo --samples 200 --seed 11 --repeat --json --table <copy>
"""

from __future__ import annotations

import argparse
import time

import numpy as np


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--on", type=float, default=120.0, help="seconds of copying")
    parser.add_argument("--off", type=float, default=120.0, help="seconds of rest")
    parser.add_argument("--seconds", type=float, default=900.0, help="how long in all")
    parser.add_argument("--mib", type=int, default=64, help="size of the array copied back and forth")
    args = parser.parse_args()
    a = np.ones(args.mib * 2**20 // 8)
    b = np.empty_like(a)
    start = time.time()
    while time.time() - start < args.seconds:
        print(f"{time.time():.1f} on", flush=True)
        end = time.time() + args.on
        while time.time() < end:
            np.copyto(b, a)
            np.copyto(a, b)
        print(f"{time.time():.1f} off", flush=True)
        time.sleep(args.off)


if __name__ == "__main__":
    main()
