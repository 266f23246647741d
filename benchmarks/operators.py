"""Each compression operator alone, and joined, on a built-in task: measured ONNX Runtime
speedup and metric after the same distillation.

    python benchmarks/operators.py --task demo   --steps 120
    python benchmarks/operators.py --task minilm --steps 100 --importance taylor

Every candidate is fine-tuned with the task's own distillation settings for ``--steps``
steps, exported, checked against PyTorch, and timed interleaved with the original model in
the same rounds (medians; speedup = original median / candidate median). Prints a Markdown
table and writes it, with the raw figures, to ``benchmarks/results/operators-<task>.json``.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import torch

from autocompress import compress
from autocompress.evaluators import DistillConfig, distill, evaluate, recalibrate_batchnorm
from autocompress.export import export_engine
from autocompress.inventory import build_inventory
from autocompress.latency_lut import OrtCpuBackend, feeds_for, to_onnx_bytes
from autocompress.search import group_costs
from autocompress.spaces import Policy, SpaceConfig, build_space, is_spatial_conv
from autocompress.task import load_task


def _policies(space, inventory) -> dict[str, Policy]:
    """Operator families at two strengths each, and joint policies at matching strength."""
    groups = [n.split("/", 1)[1] for n in space.domains if n.startswith("prune/")]
    ranked = [n.split("/", 1)[1] for n, d in space.domains.items() if n.startswith("rank/") and 0.5 in d]
    int8 = {n: 8 for n in inventory.layers if 8 in space.domains.get(f"bits/{n}", ())}

    def prune(r: float) -> dict[str, float]:
        return {g: min((x for x in space.domains[f"prune/{g}"] if x >= r), default=max(space.domains[f"prune/{g}"])) for g in groups}

    spatial = {n: "tucker2" for n in ranked if is_spatial_conv(inventory.layers[n])}
    policies = {
        "int8": Policy(bits=int8),
        "prune 25%": Policy(prune=prune(0.25)),
        "prune 50%": Policy(prune=prune(0.5)),
        "low rank 50%": Policy(rank={n: 0.5 for n in ranked}),
        "int8 + prune 25%": Policy(prune=prune(0.25), bits=int8),
        "int8 + low rank 50%": Policy(rank={n: 0.5 for n in ranked}, bits=int8),
        "int8 + prune 25% + low rank 50%": Policy(prune=prune(0.25), bits=int8, rank={n: 0.5 for n in ranked}),
    }
    mlp = [g for g in groups if g.endswith("fc1")]
    if mlp and len(mlp) < len(groups):  # a transformer: the MLP width alone, heads kept
        light = {g: r for g, r in prune(0.25).items() if g in mlp}
        policies["prune MLP 25%"] = Policy(prune=light)
        policies["int8 + prune MLP 25%"] = Policy(prune=light, bits=int8)
    if spatial:  # the kxk convs split by Tucker-2 (1x1, kxk, 1x1) instead of spatial SVD
        policies["low rank 50%, Tucker-2"] = Policy(rank={n: 0.5 for n in ranked}, decomp=spatial)
        policies["int8 + low rank 50%, Tucker-2"] = Policy(rank={n: 0.5 for n in ranked}, bits=int8, decomp=spatial)
    return policies


def _sensitivity_mix(task, inventory, space, int8: dict, calib: list, importance: str, ratio: float,
                     max_drop: float, bn_batches: int) -> tuple[Policy | None, dict[str, float]]:
    """int8 with ``ratio`` of the coupling groups pruned that cost least alone: each group is
    pruned on its own (with int8 everywhere) and scored before any fine-tuning; groups are
    taken cheapest first while their summed loss of metric stays within ``max_drop``. The
    one-shot sensitivity analysis of NNI's and AIMET's pruners, as a per-layer mix the
    search space contains. Scores are taken after BatchNorm statistics are re-estimated (as
    the search does). Returns it (None when no group fits) and each group's cost."""
    sign = 1.0 if task.higher_is_better else -1.0

    def score(policy: Policy) -> float:
        student = compress.apply(task.model, inventory, policy, task.example_inputs, calib, importance=importance)
        recalibrate_batchnorm(student, task.train_loader, bn_batches)
        return sign * evaluate(student, task.eval_loader, task.metric)

    groups = {n.split("/", 1)[1]: ratio for n, d in space.domains.items() if n.startswith("prune/") and ratio in d}
    costs = group_costs(Policy(bits=int8), groups, score)
    chosen, spent = {}, 0.0
    for group, cost in sorted(costs.items(), key=lambda kv: kv[1]):
        if spent + max(cost, 0.0) > max_drop:
            break
        chosen[group], spent = ratio, spent + max(cost, 0.0)
    print(f"sensitivity before fine-tuning ({ratio:.0%} of one group, int8 everywhere): "
          + ", ".join(f"{g} {c:+.4f}" for g, c in sorted(costs.items(), key=lambda kv: kv[1])), flush=True)
    return (Policy(prune=chosen, bits=int8) if chosen else None), costs


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--task", default="demo")
    parser.add_argument("--steps", type=int, default=120)
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--importance", choices=("l1", "l2", "taylor"), default="l1", help="pruning criterion")
    parser.add_argument("--mix-ratio", type=float, default=0.25, help="pruning ratio of the sensitivity-guided mix's groups")
    parser.add_argument("--mix-max-drop", type=float, default=0.02,
                        help="summed loss of metric before fine-tuning the sensitivity-guided mix may spend")
    parser.add_argument("--bn-batches", type=int, default=DistillConfig().bn_batches,
                        help="batches re-estimating BatchNorm statistics after each fine-tune and before each sensitivity score")
    parser.add_argument("--out", default=None, help="results file name under benchmarks/results (default operators-<task>.json)")
    args = parser.parse_args()

    torch.manual_seed(0)
    task = load_task(args.task)
    inventory = build_inventory(task.model, task.example_inputs, task.ignored_layers)
    space = build_space(inventory, SpaceConfig(decompositions=("svd", "tucker2")))
    calib = [b[0] if isinstance(b[0], tuple) else (b[0],) for _, b in zip(range(4), task.train_loader)]
    config = replace(DistillConfig(steps=args.steps, bn_batches=args.bn_batches), loss=task.distill_loss, optimizer=task.distill_optimizer,
                     lr=task.distill_lr if task.distill_lr is not None else 0.01)
    backend = OrtCpuBackend(threads=1)
    feeds = feeds_for(task.example_inputs)
    baseline_metric = evaluate(task.model, task.eval_loader, task.metric)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        engines = [to_onnx_bytes(task.model, task.example_inputs)]
        policies = _policies(space, inventory)
        int8 = policies["int8"].bits
        mix, costs = _sensitivity_mix(task, inventory, space, int8, calib, args.importance, args.mix_ratio, args.mix_max_drop,
                                      args.bn_batches)
        if mix is not None:
            policies[f"int8 + prune {args.mix_ratio:.0%} of the cheapest groups"] = mix
        for name, policy in policies.items():
            t0 = time.perf_counter()
            student = compress.apply(task.model, inventory, policy, task.example_inputs, calib, importance=args.importance)
            before = evaluate(student, task.eval_loader, task.metric)
            distill(student, task.model, task.train_loader, config)
            metric = evaluate(student, task.eval_loader, task.metric)
            engine = export_engine(student, task.example_inputs, Path(tmp) / f"{len(rows)}.onnx", backend,
                                   [next(iter(task.eval_loader))], task.metric, task.eval_loader, task.extra_metrics)
            engines.append(Path(engine.path).read_bytes())
            rows.append({"candidate": name, "policy": policy.to_dict(), "metric_before_finetune": before, "metric": metric,
                         "runtime_metric": engine.runtime_metric, "extra_metrics": engine.runtime_extra_metrics,
                         "engine_ok": engine.ok, "problems": list(engine.problems), "integer_nodes": engine.integer_nodes,
                         "size_bytes": engine.size_bytes, "seconds": time.perf_counter() - t0})
            print(f"{name}: {task.metric_name} {before:.4f} -> {metric:.4f} ({time.perf_counter() - t0:.0f} s)", flush=True)
        timings = backend.measure_many([(e, feeds) for e in engines], rounds=args.rounds)
    base_us = timings[0].median_us
    for row, t in zip(rows, timings[1:]):
        row["median_ms"] = t.median_us / 1000
        row["speedup"] = base_us / t.median_us
    print(f"\nTask `{task.name}`: original {task.metric_name} {baseline_metric:.4f}, {base_us / 1000:.3f} ms "
          f"(ONNX Runtime CPU, 1 thread, batch {task.example_inputs[0].shape[0]}); {args.steps} distillation steps each.\n")
    extra = list(task.extra_metrics)
    print(f"| candidate | {task.metric_name} (ORT) | before fine-tune | {' | '.join(extra) + ' | ' if extra else ''}median ms | speedup | engine check |")
    print(f"| --- | ---: | ---: | {'---: | ' * len(extra)}---: | ---: | --- |")
    for r in rows:
        extras = "".join(f"{r['extra_metrics'].get(n, float('nan')):.4f} | " for n in extra)
        print(f"| {r['candidate']} | {r['runtime_metric']:.4f} | {r['metric_before_finetune']:.4f} | {extras}"
              f"{r['median_ms']:.3f} | {r['speedup']:.2f}x | {'ok' if r['engine_ok'] else '; '.join(r['problems'])} |")
    out = Path(__file__).parent / "results" / (args.out or f"operators-{task.name}.json")
    out.parent.mkdir(exist_ok=True)
    out.write_text(json.dumps({"task": task.name, "steps": args.steps, "bn_batches": args.bn_batches, "importance": args.importance,
                               "distill": {"optimizer": config.optimizer, "lr": config.lr, "loss": config.loss}, "baseline_metric": baseline_metric,
                               "baseline_ms": base_us / 1000,
                               "sensitivity": {"ratio": args.mix_ratio, "max_drop": args.mix_max_drop, "cost_before_finetune": costs},
                               "rows": rows}, indent=1))


if __name__ == "__main__":
    main()
