"""How much of a random proposal free widening undoes, by a built table's predictions.

    .venv/bin/python benchmarks/widening.py --task demo --table /tmp/t/demo.json --samples 200

Draws random policies from the task's default space, as a sampler's first proposals are,
and widens each (`FreeWidening`, with the weight-L1 importance a search uses): how many had
a choice the table predicts costs nothing, how many changes of each kind (bits, prune, rank)
widening made, the predicted latency saved and the weight-L1 loss restored, and the time it
took per proposal: the table's entries and calibration decide. With ``--measure K``, the
first K widened proposals are also built, exported and timed end to end beside their
widenings (interleaved in rounds), so the latency saved is measured as well as predicted.
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import time
from collections import Counter
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--task", default="demo")
    parser.add_argument("--table", required=True, help="a built table of the task (lut build --table)")
    parser.add_argument("--samples", type=int, default=200)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default=None, help="file name under benchmarks/results/")
    parser.add_argument("--measure", type=int, default=0, help="time this many proposals beside their widenings")
    args = parser.parse_args()

    from autocompress.search import FreeWidening, WeightL1Importance
    from autocompress.spaces import SpaceConfig
    from autocompress.study import open_workbench
    from autocompress.task import load_task

    task = load_task(args.task, 0)
    bench = open_workbench(task, SpaceConfig(), 1, Path(args.table), shared_table=False)
    if not bench.table.is_calibrated(bench.inventory):
        raise SystemExit(f"{args.table} has no calibration for {args.task}: run `autocompress lut build --task {args.task} --table {args.table}`.")
    bench.table.freeze_reference()
    predict = lambda p: bench.table.predict_us(bench.inventory, p)  # noqa: E731
    importance = WeightL1Importance(task.model, bench.inventory, bench.space)
    widen = FreeWidening(bench.space, predict, importance)

    def lost(policy) -> float:
        return sum(importance.loss(k, v) for k, v in bench.space.to_params(policy).items())

    rng = random.Random(args.seed)
    rows, kinds, seconds, pairs = [], Counter(), [], []
    for _ in range(args.samples):
        proposal = bench.space.sample(rng)
        t0 = time.perf_counter()
        wide = widen(proposal)
        seconds.append(time.perf_counter() - t0)
        if wide is None:
            rows.append({"changes": 0, "latency_saved": 0.0, "loss_restored": 0.0})
            continue
        kinds.update(c.split("/", 1)[0] for c in wide.changes)
        if len(pairs) < args.measure:
            pairs.append((proposal, wide.policy))
        rows.append({"changes": len(wide.changes), "latency_saved": 1 - wide.predicted_us / predict(proposal),
                     "loss_restored": 1 - lost(wide.policy) / lost(proposal) if lost(proposal) > 0 else 0.0,
                     "int8_layers_before": sum(1 for b in proposal.bits.values() if b == 8),
                     "int8_layers_after": sum(1 for b in wide.policy.bits.values() if b == 8)})
    widened = [r for r in rows if r["changes"]]
    figures = {
        "widened": len(widened) / len(rows),
        "changes_per_widened": statistics.mean(r["changes"] for r in widened) if widened else 0.0,
        "changes_by_kind": dict(kinds),
        "latency_saved_median": statistics.median(r["latency_saved"] for r in widened) if widened else 0.0,
        "loss_restored_median": statistics.median(r["loss_restored"] for r in widened) if widened else 0.0,
        "seconds_per_proposal_median": statistics.median(seconds),
    }
    if pairs:
        measured = [bench.measure_policies(list(pair)) for pair in pairs]
        saved = [1 - wide_us / proposal_us for proposal_us, wide_us in measured]
        predicted = [1 - predict(w) / predict(p) for p, w in pairs]
        figures["measured"] = {"pairs": len(pairs), "latency_saved_median": statistics.median(saved),
                               "predicted_saved_median": statistics.median(predicted),
                               "widened_slower": sum(1 for s in saved if s < 0), "timings_us": measured}
        slower = [-x for x in saved if x < 0]
        print(f"timed end to end, {len(pairs)} proposals beside their widenings: latency saved, median "
              f"{statistics.median(saved):.1%} (predicted {statistics.median(predicted):.1%}); the widening slower in "
              + (f"{len(slower)}, by {max(slower):.1%} at most" if slower else "none"))
    print(f"{args.task}: {len(widened)} of {len(rows)} random proposals widened; {figures['changes_per_widened']:.1f} changes "
          f"each ({', '.join(f'{k} {v}' for k, v in sorted(kinds.items()))}); predicted latency saved, median "
          f"{figures['latency_saved_median']:.1%}; weight-L1 loss restored, median {figures['loss_restored_median']:.1%}; "
          f"{figures['seconds_per_proposal_median'] * 1000:.0f} ms per proposal (median)")
    if args.out:
        (RESULTS / args.out).write_text(json.dumps({"task": args.task, "samples": args.samples, "seed": args.seed,
                                                   "profile": bench.table.profile, "figures": figures, "rows": rows}, indent=1))


if __name__ == "__main__":
    main()
