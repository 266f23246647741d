"""Several `benchmarks/searchers.py` result files read together: each run's trials to 95% of
the best hypervolume any of them saw, and each searcher's mean curve over its seeds.

    python benchmarks/hypervolume_curves.py benchmarks/results/searchers-demo-0.3x-24trials-tpe-nsga2-norepair-floor95-bn8.json \\
        benchmarks/results/searchers-demo-0.3x-72trials-random-norepair-floor95-bn8.json

The searchers script counts trials against the best of its own invocation; comparing a
24-trial TPE invocation with a 72-trial random one needs the best of both. The mean curve
of a searcher is the mean over its seeds of the hypervolume after k fine-tuned trials (a run
shorter than k counts with its last value). Also printed: after how many trials each
searcher's mean curve reaches 95% of the best mean any searcher's curve reached.
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("files", nargs="+", help="result files of benchmarks/searchers.py")
    args = parser.parse_args()
    runs: dict[str, list[tuple[int, list[float]]]] = {}
    for f in args.files:
        data = json.loads(Path(f).read_text())
        for name, rs in data["runs"].items():
            runs.setdefault(name, []).extend((r["seed"], r["hypervolume"]) for r in rs)
    best = max(h for rs in runs.values() for _, hv in rs for h in hv)
    print(f"best hypervolume of all runs: {best:.4f}; 95% of it: {0.95 * best:.4f}")
    print("| searcher | seeds | trials to 95% of the best, per seed | HV at the end, per seed |")
    print("| --- | --- | --- | --- |")
    for name, rs in runs.items():
        reach = [next((i + 1 for i, h in enumerate(hv) if h >= 0.95 * best), None) for _, hv in rs]
        print(f"| {name} | {', '.join(str(s) for s, _ in rs)} | "
              f"{', '.join(str(k) if k else f'>{len(hv)}' for k, (_, hv) in zip(reach, rs))} | "
              f"{', '.join(f'{hv[-1]:.3f}' for _, hv in rs)} |")

    def mean_curve(rs: list[tuple[int, list[float]]]) -> list[float]:
        n = max(len(hv) for _, hv in rs)
        return [statistics.mean(hv[min(k, len(hv)) - 1] for _, hv in rs) for k in range(1, n + 1)]

    curves = {name: mean_curve(rs) for name, rs in runs.items()}
    best_mean = max(max(c) for c in curves.values())
    print(f"\nbest mean curve value: {best_mean:.4f}; 95% of it: {0.95 * best_mean:.4f}")
    for name, c in curves.items():
        k = next((i + 1 for i, v in enumerate(c) if v >= 0.95 * best_mean), None)
        marks = ", ".join(f"{c[i - 1]:.3f} @ {i}" for i in (6, 12, 24, 48, 72) if i <= len(c))
        print(f"{name}: mean curve {marks}; reaches 95% of the best mean after {k if k else f'>{len(c)}'} trials")


if __name__ == "__main__":
    main()
