"""Searchers compared on a built-in task: hypervolume of the (metric, latency) front
against fine-tuned trials, over several seeds, and each searcher's per-trial overhead.

    python benchmarks/searchers.py --task demo --trials 20 --seeds 0,1,2 --distill-steps 60

Each (searcher, seed) is a real search (``run_search``) with the same budget, space and
fine-tuning, into its own run folder; the latency table is shared, so it is measured once.
The hypervolume uses the table's PREDICTED latency of each fine-tuned trial, not its
measured latency, so that timing noise on a shared machine does not enter the comparison;
the metric is the distilled one. Reference point: the original model's latency and a metric
floor (``--metric-floor``, default 80% of the original's metric, or 125% where lower is better); only trials predicted
within the budget count. Hypervolumes are normalized by the box (original latency x (original
metric - floor)). Overhead is the per-trial time outside fine-tuning (ask, predict, repair,
record, tell: the trial store's ``overhead_s``), median over every proposal.

Prints a Markdown table and writes it, with the curves, to
``benchmarks/results/searchers-<task>.json``.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import optuna
from rich.console import Console

from autocompress._io import atomic_write_json
from autocompress.evaluators import DistillConfig
from autocompress.spaces import SpaceConfig
from autocompress.study import SearchConfig, run_search
from autocompress.task import load_task


def hypervolume_2d(points: list[tuple[float, float]], ref_metric: float, ref_latency: float) -> float:
    """Area dominated by ``points`` (metric up, latency down) inside the reference box."""
    inside = sorted((lat, m) for m, lat in points if m > ref_metric and lat < ref_latency)
    area, best = 0.0, ref_metric
    for i, (lat, m) in enumerate(inside):
        best = max(best, m)
        nxt = inside[i + 1][0] if i + 1 < len(inside) else ref_latency
        area += (nxt - lat) * (best - ref_metric)
    return area


def curve(run_dir: Path, floor: float, baseline_ms: float, budget_ms: float, higher_is_better: bool) -> tuple[list[float], list[float]]:
    """Normalized hypervolume after each fine-tuned trial, and every proposal's overhead (s)."""
    study = optuna.load_study(study_name="autocompress", storage=f"sqlite:///{run_dir / 'study.db'}")
    sign = 1.0 if higher_is_better else -1.0
    points: list[tuple[float, float]] = []
    hv: list[float] = []
    overheads: list[float] = []
    for t in sorted(study.get_trials(deepcopy=False), key=lambda t: t.number):
        a = t.user_attrs
        if "overhead_s" in a:
            overheads.append(float(a["overhead_s"]))
        if a.get("status") != "completed" or "duplicate_of" in a:
            continue
        if a["predicted_ms"] <= budget_ms:
            points.append((sign * a["metric"], a["predicted_ms"]))
        hv.append(hypervolume_2d(points, sign * floor, baseline_ms))
    return hv, overheads


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--task", default="demo")
    parser.add_argument("--latency-budget", default="0.5x")
    parser.add_argument("--trials", type=int, default=20, help="fine-tuned trials per search")
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--searchers", default="tpe,nsga2,amc,random")
    parser.add_argument("--distill-steps", type=int, default=60)
    parser.add_argument("--metric-floor", type=float, default=None, help="reference metric (default: --floor-fraction x the original's)")
    parser.add_argument("--floor-fraction", type=float, default=0.8,
                        help="reference metric as a fraction of the original's (inverted where lower is better; default 0.8)")
    parser.add_argument("--best-hypervolume", type=float, default=None,
                        help="the best hypervolume to reach 95%% of (default: the best any run of this table saw)")
    parser.add_argument("--out", default=None, help="results file name under benchmarks/results (default searchers-<task>.json)")
    parser.add_argument("--no-repair", action="store_true", help="compare the searchers without budget repair")
    parser.add_argument("--no-widen", action="store_true", help="compare the searchers without free widening")
    parser.add_argument("--search-floor", action="store_true",
                        help="tell every search the hypervolume's metric floor (as --max-metric-drop), so samplers "
                             "that read constraints avoid candidates below it (random ignores it)")
    parser.add_argument("--bn-batches", type=int, default=DistillConfig().bn_batches,
                        help="batches re-estimating BatchNorm statistics after each fine-tune (0: off)")
    parser.add_argument("--keep-runs", default=None, help="folder for the run directories (default: a temporary one)")
    args = parser.parse_args()

    seeds = [int(s) for s in args.seeds.split(",") if s.strip()]
    searchers = [s for s in args.searchers.split(",") if s.strip()]
    task = load_task(args.task)
    console = Console(quiet=True)
    root = Path(args.keep_runs) if args.keep_runs else Path(tempfile.mkdtemp(prefix="searchers-"))
    results: dict[str, list[dict]] = {}
    baseline: dict = {}
    max_drop = None
    if args.search_floor:
        from autocompress.evaluators import evaluate

        original = evaluate(task.model, task.eval_loader, task.metric)
        default_floor = (args.floor_fraction if task.higher_is_better else 1.0 / args.floor_fraction) * original
        max_drop = abs(original - (args.metric_floor if args.metric_floor is not None else default_floor))
    for name in searchers:
        for seed in seeds:
            run_dir = root / f"{name}-{seed}"
            config = SearchConfig(
                task=args.task, latency_budget=args.latency_budget, trials=args.trials, run_dir=str(run_dir), searcher=name,
                seed=seed, distill=DistillConfig(steps=args.distill_steps, bn_batches=args.bn_batches), space=SpaceConfig(), repair=not args.no_repair,
                widen=not args.no_widen, max_metric_drop=max_drop,
            )
            t0 = time.perf_counter()
            result = run_search(config, console=console, task=task)
            wall = time.perf_counter() - t0
            baseline = {"latency_ms": result.baseline_ms, "metric": result.baseline_metric, "budget_ms": result.budget_ms}
            default_floor = (args.floor_fraction if task.higher_is_better else 1.0 / args.floor_fraction) * result.baseline_metric
            floor = args.metric_floor if args.metric_floor is not None else default_floor
            hv, overheads = curve(run_dir, floor, result.baseline_ms, result.budget_ms, task.higher_is_better)
            box = result.baseline_ms * abs(result.baseline_metric - floor)
            results.setdefault(name, []).append({
                "seed": seed, "hypervolume": [h / box for h in hv], "overhead_s": overheads, "counts": result.counts,
                "wall_s": wall, "front": [{"metric": m["metric"], "predicted_ms": m["predicted_ms"], "measured_ms": m["measured_ms"]}
                                          for m in result.front],
            })
            print(f"{name} seed {seed}: hypervolume {hv[-1] / box if hv else 0.0:.4f} after {len(hv)} trials, {wall:.0f} s", flush=True)

    checkpoints = sorted({max(1, args.trials // 4), max(1, args.trials // 2), args.trials})
    best = args.best_hypervolume if args.best_hypervolume is not None else max(
        (h for runs in results.values() for r in runs for h in r["hypervolume"]), default=0.0)

    def to_reach(hv: list[float]) -> int | None:
        """Fine-tuned trials until 95% of the best hypervolume any run saw (None: never)."""
        if best <= 0:
            return None
        return next((i + 1 for i, h in enumerate(hv) if h >= 0.95 * best), None)

    header = ("| searcher | " + " | ".join(f"HV @ {k}" for k in checkpoints)
              + " | trials to 95% of best (per seed) | median overhead (ms) | repaired | widened | infeasible |")
    lines = [header, "|" + " --- |" * (len(checkpoints) + 6)]
    for name, runs in results.items():
        cells = []
        for k in checkpoints:
            values = [r["hypervolume"][min(k, len(r["hypervolume"])) - 1] if r["hypervolume"] else 0.0 for r in runs]
            spread = f" ± {statistics.stdev(values):.3f}" if len(values) > 1 else ""
            cells.append(f"{statistics.mean(values):.3f}{spread}")
        reach = [to_reach(r["hypervolume"]) for r in runs]
        for r, k in zip(runs, reach):
            r["trials_to_95pct_of_best"] = k
        cells.append(", ".join(str(k) if k is not None else f">{len(r['hypervolume'])}" for r, k in zip(runs, reach)))
        overhead = statistics.median([o for r in runs for o in r["overhead_s"]] or [0.0]) * 1000
        repaired = sum(r["counts"].get("repaired", 0) for r in runs)
        widened = sum(r["counts"].get("widened", 0) for r in runs)
        infeasible = sum(r["counts"].get("infeasible", 0) for r in runs)
        lines.append(f"| {name} | " + " | ".join(cells) + f" | {overhead:.1f} | {repaired} | {widened} | {infeasible} |")
    table = "\n".join(lines)
    print(f"\n{args.task}, budget {args.latency_budget} ({baseline.get('budget_ms', 0):.3f} ms), {args.trials} trials, "
          f"seeds {seeds}, {args.distill_steps} distillation steps; hypervolume on predicted latency, normalized\n")
    print(table)
    out = Path(__file__).parent / "results" / (args.out or f"searchers-{task.name}.json")
    atomic_write_json(out, {
        "schema": 1, "task": task.name, "latency_budget": args.latency_budget, "trials": args.trials, "seeds": seeds,
        "distill_steps": args.distill_steps, "bn_batches": args.bn_batches, "repair": not args.no_repair, "metric_floor": args.metric_floor,
        "search_floor_drop": max_drop,
        "floor_fraction": args.floor_fraction, "best_hypervolume": best,
        "hypervolume_latency": "predicted", "baseline": baseline, "table": table, "runs": results,
    })
    print(f"\nwritten: {out}")


if __name__ == "__main__":
    main()
