"""Whether the table's error on switching one layer's precision depends on its neighbours.

    .venv/bin/python benchmarks/precision_flips.py --table /tmp/t/demo.json \\
        --measured benchmarks/results/table-fit-demo-mixed-seed8.json --index 15 --out precision-flips-demo.json

Takes one saved candidate (`table_fit.py` measurements) and three versions of it: as drawn,
with every layer float, and with every layer that can be int8 in int8 (pruning and ranks as
drawn). In each, every such layer's precision is switched in turn (float to int8 or back);
the candidate before and after is timed interleaved with the original (two rounds, median
of the ratios), and predicted by the table's calibration without its local correction. The
figure per switch is the predicted change of the whole model's latency over the measured
change, less 1: a table whose errors were a property of each layer and precision would give
the same figure in every column.
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np

RESULTS = Path(__file__).resolve().parent / "results"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--task", default="demo")
    parser.add_argument("--table", required=True, help="a built and calibrated table of the task (lut build --table)")
    parser.add_argument("--measured", required=True, help="saved table_fit.py measurements to take the candidate from")
    parser.add_argument("--index", type=int, default=0, help="which of their candidates")
    parser.add_argument("--out", default=None, help="file name under benchmarks/results/ for the figures")
    args = parser.parse_args()

    from autocompress.spaces import Policy, SpaceConfig
    from autocompress.study import open_workbench
    from autocompress.task import load_task

    measured = json.loads(Path(args.measured).read_text())
    if not 0 <= args.index < len(measured["policies"]):
        sys.exit(f"--index {args.index} is out of range: the file has {len(measured['policies'])} candidates.")
    bench = open_workbench(load_task(args.task, 0), SpaceConfig(), 1, Path(args.table), shared_table=False)
    table, inventory = bench.table, bench.inventory
    if not table.is_calibrated(inventory):
        sys.exit(f"The table {args.table} has no calibration for {args.task}: build it with `autocompress lut build --task {args.task}`.")
    table.freeze_reference()
    drawn = Policy.from_dict(measured["policies"][args.index])
    switchable = [name for name in inventory.layers if f"bits/{name}" in bench.space.domains]
    versions = {"as drawn": drawn, "all float": replace(drawn, bits={}), "all int8": replace(drawn, bits={n: 8 for n in switchable})}

    def relative(policy: Policy) -> float:
        timings = [bench.measure_with_original(policy) for _ in range(2)]
        return float(np.median([c / o for c, o in timings]))

    figures: dict[str, dict[str, float]] = {}
    for version, base in versions.items():
        base_measured, base_predicted = relative(base), table.predict_us(inventory, base, local=False)
        for name in switchable:
            bits = dict(base.bits)
            if base.bits_of(name) == 8:
                bits.pop(name)
            else:
                bits[name] = 8
            switched = replace(base, bits=bits)
            predicted_change = table.predict_us(inventory, switched, local=False) / base_predicted
            measured_change = relative(switched) / base_measured
            figures.setdefault(name, {})[version] = predicted_change / measured_change - 1
            print(f"{version:9s} {name:22s} {figures[name][version]:+.1%}", flush=True)
    print("| layer switched | " + " | ".join(versions) + " |")
    print("| --- |" + " ---: |" * len(versions))
    for name, by_version in figures.items():
        print(f"| {name} | " + " | ".join(f"{by_version[v]:+.1%}" for v in versions) + " |")
    if args.out:
        RESULTS.mkdir(exist_ok=True)
        (RESULTS / args.out).write_text(json.dumps({"task": args.task, "candidate": measured["policies"][args.index],
                                                    "profile": table.profile, "figures": figures}, indent=1))


if __name__ == "__main__":
    sys.path.append(str(Path(__file__).resolve().parents[1]))
    main()
