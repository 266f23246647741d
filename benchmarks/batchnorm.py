"""What re-estimating BatchNorm statistics does to a pruned candidate, before and after a short fine-tune.

    python benchmarks/batchnorm.py --task demo --candidates 8 --steps 30

Before fine-tuning: int8 everywhere, int8 with every coupling group at its lightest pruning,
and each group alone at each of its ratios (on int8), scored with the original's running
statistics and with statistics re-estimated on ``--bn-batches`` training batches
(``recalibrate_batchnorm``). After fine-tuning: ``--candidates`` random policies of the space,
each distilled ``--steps`` steps from the same seed, scored with the running averages the
steps left and after re-estimating them. Writes ``benchmarks/results/batchnorm-<task>.json``.
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import tempfile
from dataclasses import replace
from pathlib import Path

import torch

from autocompress.evaluators import distill, evaluate, recalibrate_batchnorm
from autocompress.spaces import Policy, SpaceConfig
from autocompress.study import SearchConfig, open_workbench, seed_policies, task_distill_config
from autocompress.task import load_task

RESULTS = Path(__file__).resolve().parent / "results"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--task", default="demo")
    parser.add_argument("--candidates", type=int, default=8, help="random policies fine-tuned both ways")
    parser.add_argument("--steps", type=int, default=30, help="distillation steps per candidate")
    parser.add_argument("--bn-batches", type=int, default=8)
    parser.add_argument("--seed", type=int, default=3)
    parser.add_argument("--table", default=None, help="latency table file (default: a temporary one; only the space is used)")
    args = parser.parse_args()

    task = load_task(args.task, 0)
    table = Path(args.table) if args.table else Path(tempfile.gettempdir()) / f"batchnorm-{task.name}-table.json"
    bench = open_workbench(task, SpaceConfig(), 1, table, shared_table=True)
    space = bench.space

    def score(policy: Policy, batches: int) -> float:
        model = bench.candidate(policy)
        recalibrate_batchnorm(model, task.train_loader, batches)
        return evaluate(model, task.eval_loader, task.metric)

    int8, uniform = seed_policies(space)[:2]
    before = {"int8": [score(int8, 0), score(int8, args.bn_batches)],
              "int8, every group at its lightest pruning": [score(uniform, 0), score(uniform, args.bn_batches)]}
    for name, domain in space.domains.items():
        if name.startswith("prune/"):
            group = name.split("/", 1)[1]
            for ratio in sorted(r for r in domain if r > 0):
                policy = Policy(prune={group: ratio}, bits=int8.bits)
                before[f"int8, {group} pruned {ratio:.0%}"] = [score(policy, 0), score(policy, args.bn_batches)]
    print(f"| before fine-tuning | {task.metric_name}, original statistics | re-estimated |")
    print("| --- | ---: | ---: |")
    for name, (kept, fresh) in before.items():
        print(f"| {name} | {kept:.4f} | {fresh:.4f} |")

    config = replace(task_distill_config(task, SearchConfig()), steps=args.steps, bn_batches=0)
    rng = random.Random(args.seed)
    after = []
    for i in range(args.candidates):
        policy = space.sample(rng)
        torch.manual_seed(i)
        student = bench.candidate(policy)
        distill(student, task.model, task.train_loader, config)
        trailing = evaluate(student, task.eval_loader, task.metric)
        recalibrate_batchnorm(student, task.train_loader, args.bn_batches)
        after.append({"policy": policy.to_dict(), "running_averages": trailing,
                      "re_estimated": evaluate(student, task.eval_loader, task.metric)})
        print(f"candidate {i}: {trailing:.4f} -> {after[-1]['re_estimated']:.4f}", flush=True)
    gains = [a["re_estimated"] - a["running_averages"] for a in after]
    print(f"after {args.steps} steps: mean gain {statistics.mean(gains):+.4f}, median {statistics.median(gains):+.4f}, "
          f"{sum(g > 0 for g in gains)} of {len(gains)} better")
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / f"batchnorm-{task.name}.json").write_text(json.dumps({
        "task": task.name, "bn_batches": args.bn_batches, "steps": args.steps, "seed": args.seed,
        "before_finetune": before, "after_finetune": after, "mean_gain": statistics.mean(gains)}, indent=1))


if __name__ == "__main__":
    main()
