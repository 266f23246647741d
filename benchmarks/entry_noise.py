"""How far two builds of a latency table agree entry by entry, and how closely a reference
timed next to an entry follows the machine's speed.

    # two tables built one after the other, compared entry by entry (as speed relative to
    # the reference each entry keeps)
    autocompress lut build --task demo --table /tmp/n1/demo.json
    autocompress lut build --task demo --table /tmp/n2/demo.json
    .venv/bin/python benchmarks/entry_noise.py compare /tmp/n1/demo.json /tmp/n2/demo.json
    # the reference graph and three entries' graphs timed in turn, 0.1 s each, for 60 s
    .venv/bin/python benchmarks/entry_noise.py track --seconds 60
    # the reference timed 8 times a second apart in each of 15 fresh processes
    .venv/bin/python benchmarks/entry_noise.py lone --processes 15 --timings 8

`compare` prints the median and 90th percentile of the entries' differences, their lag-1
autocorrelation in the order they were measured (drift that the reference did not follow
shows as neighbouring entries off together) and the median difference per block of 100.
`track` prints, per entry graph, the spread of its timings divided by the reference timed
three ways: not at all, as `reference_us` times it (every 10 s, median of the last minute),
and as each new entry is timed since (the mean of timings just before and just after).
`lone` prints how far single timings of the reference sit from their process's median, and
how far the gauge a table's first prediction would use sits: the first timing alone, and
the median of the first three (what `reference_us` takes since it waits for three).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np


def compare(a_path: Path, b_path: Path) -> None:
    a, b = (json.loads(Path(p).read_text())["entries"] for p in (a_path, b_path))
    shared = [k for k in a if k in b]  # in the order the first table measured them
    keys = [k for k in shared if a[k]["median_us"] > 0 and b[k]["median_us"] > 0]  # a conversion can measure 0: no ratio
    if not keys:
        sys.exit("The two tables share no entry: build both for the same task and target.")
    if len(keys) < len(shared):
        print(f"{len(shared) - len(keys)} shared entries measure 0 us in one table or both; left out")
    d = np.log(np.array([b[k]["median_us"] / b[k]["ref_us"] for k in keys]) / np.array([a[k]["median_us"] / a[k]["ref_us"] for k in keys]))
    lag1 = float(np.corrcoef(d[:-1], d[1:])[0, 1]) if len(d) > 2 else float("nan")
    print(f"{len(keys)} shared entries compared: median |difference| {np.median(np.abs(d)):.1%}, 90th percentile "
          f"{np.percentile(np.abs(d), 90):.1%}, lag-1 autocorrelation {lag1:.2f}")
    print("median difference per block of 100 entries: " + " ".join(f"{np.median(d[i:i + 100]):+.1%}" for i in range(0, len(d), 100)))
    for kind in ("b32", "b8", "junction"):
        sel = [i for i, k in enumerate(keys) if kind in k.split("|") or k.startswith(kind)]
        if sel:
            print(f"  {kind}: {len(sel)} entries, median |difference| {np.median(np.abs(d[sel])):.1%}")


def track(seconds: float) -> None:
    from autocompress.latency_lut import Measurable, make_backend
    from autocompress.latency_lut._table import _micro_model, _reference_choice, conv_choice as conv

    entries = {"int8 3x3 16->32 at 28x28": conv(16, 32, 3, 1, 28, 8), "float 3x3/2 16->96 at 14x14": conv(16, 96, 3, 2, 14, 32),
               "int8 1x1/2 48->128 at 14x14": conv(48, 128, 1, 2, 14, 8)}
    backend = make_backend()
    runners = [backend.prepare(Measurable.from_module(*_micro_model(c, 8))) for c in (_reference_choice(), *entries.values())]
    for run in runners:
        backend.time_prepared(run, warmup=backend.timing.warmup, min_time_s=0.0)
    rows = []
    start = time.monotonic()
    while time.monotonic() - start < seconds:
        rows.append([time.monotonic() - start, *(backend.time_prepared(run).median_us for run in runners)])
    t, ref = np.array(rows)[:, 0], np.array(rows)[:, 1]
    timed_at = [0]  # reference_us: timed again when its newest timing is 10 s old
    for i in range(1, len(t)):
        if t[i] - t[timed_at[-1]] >= 10.0:
            timed_at.append(i)
    smoothed = np.array([np.median([ref[j] for j in timed_at if j <= i and t[i] - t[j] <= 60.0][-7:]) for i in range(len(t))])
    bracket = (ref[:-1] + ref[1:]) / 2  # the reference timed before this row's entries and at the start of the next row
    print(f"{len(rows)} rounds in {t[-1]:.0f} s; the reference's own spread: std {np.std(np.log(ref)):.1%}")
    print("| entry | no reference | the last minute's median | timed before and after |")
    print("| --- | ---: | ---: | ---: |")
    for j, name in enumerate(entries, start=2):
        e = np.array(rows)[:, j]
        cells = []
        for div in (np.ones_like(e), smoothed, None):
            x = np.log(e[:-1] / bracket) if div is None else np.log(e / div)
            cells.append(f"std {np.std(x):.1%}, MAD {np.median(np.abs(x - np.median(x))):.1%}")
        print(f"| {name} | " + " | ".join(cells) + " |")


def _timings(n: int, pause_s: float) -> None:
    """The reference timed ``n`` times, ``pause_s`` apart, in this process (JSON on stdout)."""
    from autocompress.latency_lut import make_backend
    from autocompress.latency_lut._table import LatencyTable

    table = LatencyTable(Path("/nonexistent/table.json"), make_backend())  # only its reference is timed, nothing saved
    out = []
    for i in range(n):
        if i:
            time.sleep(pause_s)
        out.append(table._time_reference())
    print(json.dumps(out))


def lone(processes: int, timings: int, pause_s: float) -> None:
    import subprocess

    runs = []
    for _ in range(processes):
        done = subprocess.run([sys.executable, __file__, "_timings", str(timings), str(pause_s)], capture_output=True, text=True, check=True)
        runs.append(json.loads(done.stdout.strip().splitlines()[-1]))
    off = np.concatenate([np.array(r) / np.median(r) - 1 for r in runs])
    first = np.array([r[0] / np.median(r) - 1 for r in runs])
    first3 = np.array([np.median(r[:3]) / np.median(r) - 1 for r in runs])
    print(f"{processes} processes, {off.size} timings {pause_s:g} s apart; against their process's median:")
    print(f"  single timings: median |off| {np.median(np.abs(off)):.1%}; beyond ±5% {np.sum(np.abs(off) > 0.05)}, "
          f"beyond ±10% {np.sum(np.abs(off) > 0.10)}: {', '.join(f'{x:+.1%}' for x in off[np.abs(off) > 0.05])}")
    print(f"  the first timing alone: worst {first[np.argmax(np.abs(first))]:+.1%}, beyond ±5% in {np.sum(np.abs(first) > 0.05)}")
    print(f"  the median of the first three: worst {first3[np.argmax(np.abs(first3))]:+.1%}, beyond ±5% in {np.sum(np.abs(first3) > 0.05)}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    c = sub.add_parser("compare", help="compare two tables entry by entry")
    c.add_argument("tables", nargs=2, type=Path)
    t = sub.add_parser("track", help="time the reference and three entries in turn")
    t.add_argument("--seconds", type=float, default=60.0)
    g = sub.add_parser("lone", help="single timings of the reference in fresh processes")
    g.add_argument("--processes", type=int, default=15)
    g.add_argument("--timings", type=int, default=8)
    g.add_argument("--pause", type=float, default=1.0, help="seconds between timings")
    if len(sys.argv) == 4 and sys.argv[1] == "_timings":
        return _timings(int(sys.argv[2]), float(sys.argv[3]))
    args = parser.parse_args()
    if args.command == "compare":
        compare(*args.tables)
    elif args.command == "track":
        track(args.seconds)
    else:
        lone(args.processes, args.timings, args.pause)


if __name__ == "__main__":
    sys.path.append(str(Path(__file__).resolve().parents[1]))
    main()
