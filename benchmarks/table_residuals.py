"""What the latency table's parts leave unexplained on random candidates: is it noise, or a
property of each candidate, and could per-layer features the table does not have explain it?

    .venv/bin/python benchmarks/table_residuals.py --task demo --table /tmp/t/demo.json \\
        --sets benchmarks/results/table-fit-demo-mixed-seed6.json benchmarks/results/table-fit-demo-mixed-seed5.json \\
        --again benchmarks/results/table-fit-demo-mixed-seed8.json:benchmarks/results/table-fit-demo-mixed-seed8-again.json

Works on saved `table_fit.py` measurements (no timing). Per set of candidates:

- the in-sample error of the table's parts (least squares on relative error, with an offset,
  fitted on the set itself, to the mean of its two passes), and of the parts with one-hot
  features added: each layer's precision, each layer's rank, and per residual add the
  precisions of its operands and of the layers reading its sum;
- the same fits held out: fitted on k candidates' first pass, judged on the others' second
  pass, 30 random splits (the same splits for every feature set);
- for a pair of sets holding the same candidates measured in two sessions (``--again``):
  how closely the in-sample errors of the two sessions agree, candidate by candidate, next
  to how closely the two passes of one session agree.

Features that explain a property of the candidates raise the held-out figures with them;
features that only add freedom raise the in-sample figures and lower the held-out ones.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

from table_fit import fit_relative

FEATURES = {
    "the table's parts": (),
    "+ each layer's precision": ("bits",),
    "+ each layer's rank": ("rank",),
    "+ precisions around each residual add": ("adds",),
    "+ all three": ("bits", "rank", "adds"),
}
SPLITS = 30


def candidate_rows(task: str, table_path: Path, measured: list[dict]) -> list[list[tuple[dict, set[str]]]]:
    """Per set, per candidate: the table's parts and its one-hot features."""
    from autocompress.latency_lut import effective_layers
    from autocompress.spaces import Policy, SpaceConfig
    from autocompress.study import open_workbench
    from autocompress.task import load_task

    bench = open_workbench(load_task(task, 0), SpaceConfig(), 1, table_path, shared_table=False)
    bench.table.freeze_reference()
    inv = bench.inventory
    readers: dict[str, list[str]] = {}
    for name, link in inv.links.items():
        if link.source is not None:
            readers.setdefault(link.source, []).append(name)
    out = []
    for m in measured:
        rows = []
        for p in m["policies"]:
            policy = Policy.from_dict(p)
            bits = {c.layer.name: c.bits for c in effective_layers(inv, policy, bench.space.config.channel_multiple)}
            feats = {f"bits:{n}={b}" for n, b in bits.items()} | {f"rank:{n}={policy.rank_ratio(n):g}" for n in bits}
            for add, link in inv.add_links.items():
                ops = "".join("i" if bits.get(i) == 8 else "f" for i in link.inputs)
                rd = "".join("i" if bits.get(r) == 8 else "f" for r in readers.get(link.result, ()))
                feats.add(f"adds:{add}={ops}>{rd}")
            rows.append((bench.table.sums(inv, policy)[2], feats))
        out.append(rows)
    return out


def design(rows: list[tuple[dict, set[str]]], kinds: tuple[str, ...]) -> np.ndarray:
    """The parts (us) and the chosen one-hot features, the latter scaled to 5% of the median sum
    so that every column weighs alike in the least squares."""
    parts = sorted({k for p, _ in rows for k in p})
    x = np.array([[p.get(k, 0.0) for k in parts] for p, _ in rows])
    vocab = sorted({f for _, fs in rows for f in fs if f.split(":")[0] in kinds})
    z = np.array([[1.0 if v in fs else 0.0 for v in vocab] for _, fs in rows]).reshape(len(rows), len(vocab))
    return np.c_[x, z * 0.05 * np.median(x.sum(1))]


def errors(x: np.ndarray, fit_on: np.ndarray, target: np.ndarray, judge: np.ndarray, judge_target: np.ndarray) -> np.ndarray:
    coef_fit = fit_relative(x[fit_on], target)
    return coef_fit(x[judge]) / judge_target - 1


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--task", default="demo")
    parser.add_argument("--table", required=True, help="a built table of the task (its entries give the parts)")
    parser.add_argument("--sets", nargs="*", default=[], help="table_fit.py measurements")
    parser.add_argument("--again", nargs="*", default=[], help="FIRST:SECOND, the same candidates measured in two sessions")
    parser.add_argument("--sizes", default="42,100", help="calibration sizes k (those below a set's size are used)")
    args = parser.parse_args()
    pairs = [tuple(a.split(":", 1)) for a in args.again]
    paths = list(dict.fromkeys([*args.sets, *(p for pair in pairs for p in pair)]))
    measured = [json.loads(Path(p).read_text()) for p in paths]
    rows = dict(zip(paths, candidate_rows(args.task, Path(args.table), measured)))
    passes = {p: (np.array(m["relative"][0]), np.array(m["relative"][1])) for p, m in zip(paths, measured)}
    sizes = [int(k) for k in args.sizes.split(",")]

    print("| set | features | columns | in sample: median, within ±10% | " + " | ".join(f"held out, k = {k}" for k in sizes) + " |")
    print("| --- | --- | ---: | ---: | " + " | ".join("---:" for _ in sizes) + " |")
    for path in paths:
        first, second = passes[path]
        n = len(first)
        mean = (first + second) / 2
        rng = np.random.default_rng(0)
        splits = {k: [rng.permutation(n) for _ in range(SPLITS)] for k in sizes if k < n}
        for label, kinds in FEATURES.items():
            x = design(rows[path], kinds)
            every = np.arange(n)
            ins = np.abs(errors(x, every, mean, every, mean))
            held = []
            for k in sizes:
                if k not in splits:
                    held.append("")
                    continue
                within = [np.mean(np.abs(errors(x, o[:k], first[o[:k]], o[k:], second[o[k:]])) <= 0.1) for o in splits[k]]
                held.append(f"{np.mean(within):.1%}")
            print(f"| {Path(path).stem} | {label} | {x.shape[1]} | {np.median(ins):.1%}, {np.mean(ins <= 0.1):.0%} | " + " | ".join(held) + " |")

    for a, b in pairs:
        res = []
        for path in (a, b):
            first, second = passes[path]
            mean = (first + second) / 2
            every = np.arange(len(mean))
            res.append(errors(design(rows[path], ()), every, mean, every, mean))
        noise = [np.std(np.log(passes[p][1] / passes[p][0])) for p in (a, b)]
        print(f"{Path(a).stem} and {Path(b).stem}: in-sample errors, correlation over the candidates {np.corrcoef(*res)[0, 1]:.2f}; "
              f"their spread {np.std(res[0]):.1%} and {np.std(res[1]):.1%}; second pass against the first, spread "
              f"{noise[0]:.1%} and {noise[1]:.1%}")


if __name__ == "__main__":
    main()
