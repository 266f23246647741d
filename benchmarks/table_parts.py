"""What a latency table's prediction is made of, against the whole model measured now.

    python benchmarks/table_parts.py --task minilm --table runs/minilm/latency_table.json

For a few uniform policies of the task's space (fp32, int8 everywhere, int8 with every group
pruned by 25% and 50%, fp32 with 25%, and for a transformer int8 with only the MLP width or
only the heads pruned by 50%), prints the sum of the layer entries (MLP layers apart from
the rest), of the element-wise entries, the junction saving, the raw sum and the measured
whole model (timed interleaved, in rounds), and their ratio. A calibration is one line
through such ratios; where int-heavy and float-heavy policies sit at different ratios, or
a ratio moves between runs, a line cannot follow it.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from autocompress.latency_lut._table import junction_saving_us
from autocompress.spaces import Policy, SpaceConfig
from autocompress.study import open_workbench, seed_policies
from autocompress.task import load_task


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--task", default="demo")
    parser.add_argument("--table", required=True, help="a table file (a run's latency_table.json)")
    args = parser.parse_args()
    task = load_task(args.task)
    bench = open_workbench(task, SpaceConfig(), 1, Path(args.table), shared_table=False)
    inventory, space, table = bench.inventory, bench.space, bench.table
    int8 = seed_policies(space)[0]
    groups = [n.split("/", 1)[1] for n in space.domains if n.startswith("prune/")]

    def pruned(ratio: float, bits: dict, which: str = "") -> Policy:
        return Policy(bits=bits, prune={g: max(r for r in space.domains[f"prune/{g}"] if r <= ratio)
                                        for g in groups if g.endswith(which)})

    policies = {"fp32": Policy(), "int8": int8, "int8, prune 25%": pruned(0.25, int8.bits),
                "int8, prune 50%": pruned(0.5, int8.bits), "fp32, prune 25%": pruned(0.25, {})}
    if any(g.endswith("fc1") for g in groups):
        policies["int8, MLP width 50%"] = pruned(0.5, int8.bits, "fc1")
        policies["int8, heads 50%"] = pruned(0.5, int8.bits, "heads")
    measured = bench.measure_policies(list(policies.values()))
    table.reference_us()
    print("| policy | MLP layers us | other layers us | element-wise us | junction saving us | raw sum us | measured us | measured / raw |")
    print("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
    for (name, policy), m in zip(policies.items(), measured):
        layers, elementwise, junctions = table.choices(inventory, policy)
        mlp = sum(table.entry_us(c) for c in layers if "fc" in c.layer.name)
        other = sum(table.entry_us(c) for c in layers) - mlp
        ew = sum(table.entry_us(c) for c in elementwise)
        saving = junction_saving_us(junctions, table.entry_us)
        raw = mlp + other + ew - saving
        print(f"| {name} | {mlp:.0f} | {other:.0f} | {ew:.0f} | {saving:.0f} | {raw:.0f} | {m:.0f} | {m / raw:.2f} |")


if __name__ == "__main__":
    main()
