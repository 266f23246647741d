"""Print the figures of one search run as Markdown: baseline, budget, front, table error, cost.

    python benchmarks/summarize_run.py runs/demo
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import optuna


def main(run_dir: str) -> None:
    run = Path(run_dir)
    manifest = json.loads((run / "run.json").read_text())
    pareto = json.loads((run / "pareto.json").read_text())
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.load_study(study_name="autocompress", storage=f"sqlite:///{run / 'study.db'}")
    trials = study.get_trials()
    completed = [t for t in trials if t.user_attrs.get("status") == "completed" and "duplicate_of" not in t.user_attrs]
    base = pareto["baseline"]
    print(f"Run `{run}`: task `{manifest['task']}`, budget `{pareto['budget']}` = {pareto['budget_ms']:.3f} ms, "
          f"target {manifest['profile']['device']}, ORT {manifest['profile']['runtime_version']}, "
          f"{manifest['profile']['threads']} thread(s)\n")
    print(f"Original model: {pareto['metric_name']} {base['metric']:.4f}, {base['latency_ms']:.3f} ms\n")
    print("| trial | metric | change (pp) | predicted ms | measured ms | speedup (same round) | size KiB | policy |")
    print("| ---: | ---: | ---: | ---: | ---: | ---: | ---: | --- |")
    for m in pareto["members"]:
        print(f"| {m['trial']} | {m['metric']:.4f} | {100 * (m['metric'] - base['metric']):+.1f} | {m['predicted_ms']:.3f} | "
              f"{m['measured_ms']:.3f} | {m['speedup']:.2f}x | {m['size_bytes'] / 1024:.0f} | {m['summary']} |")
    counts = pareto["counts"]
    fid = pareto.get("fidelity") or {}
    finetune_s = sum(t.user_attrs.get("finetune_s", 0.0) for t in completed)
    trial_s = sum(t.user_attrs.get("trial_s", 0.0) for t in completed)
    print(f"\nProposals: {len(trials)}; fine-tuned {counts['completed']}, rejected by the table before any fine-tune "
          f"{counts['infeasible']}, failed {counts['failed']}, repeats {counts.get('duplicates', 0)}.")
    print(f"Time in fine-tuned trials: {trial_s:.0f} s, of which fine-tuning {finetune_s:.0f} s.")
    if fid:
        print(f"Latency table on the run's {fid['candidates']} exported candidates: median |error| "
              f"{fid['median_abs_error']:.1%}, within ±10% {fid['within_10pct']:.0%}, within ±5% {fid['within_5pct']:.0%}.")
    good = [m for m in pareto["members"] if base["metric"] - m["metric"] <= 0.01 and m["measured_ms"] <= 0.5 * base["latency_ms"] * 1.05]
    print(f"Members at or under 0.5x of the original's latency and within 1 point of its metric: {len(good)}")


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "runs/demo")
