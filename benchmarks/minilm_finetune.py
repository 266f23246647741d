"""How far the minilm task's fine-tuning brings one compressed MiniLM back to the teacher's
embeddings: cosine on the held-out WordNet text before and after ``--steps`` steps.

    # the learning rates compared for the task's default (AdamW)
    python benchmarks/minilm_finetune.py --lr 1e-4 --steps 100 --int8
    python benchmarks/minilm_finetune.py --lr 5e-4 --steps 100 --prune fc1 --ratio 0.25 --importance taylor
    # a longer fine-tune of int8 with the MLP width pruned by 25%, with and without feature matching
    python benchmarks/minilm_finetune.py --lr 1e-4 --steps 500 --prune fc1 --ratio 0.25 --importance taylor --int8
    python benchmarks/minilm_finetune.py --lr 1e-4 --steps 500 --prune fc1 --ratio 0.25 --importance taylor --int8 --feature-weight 1

``--prune`` names the coupling groups to prune by the end of their names (``fc1``: MLP width,
``heads``: attention heads, ``fc1,heads``: both); ``--int8`` quantizes every layer the space
lets run in int8. Prints one line: the settings, cosine before -> after, fine-tuning seconds.
"""

from __future__ import annotations

import argparse
import time

import torch

from autocompress import compress
from autocompress.evaluators import DistillConfig, distill, evaluate
from autocompress.inventory import build_inventory
from autocompress.spaces import Policy, SpaceConfig, build_space
from autocompress.task import load_task


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--lr", type=float, default=1e-4)
    parser.add_argument("--steps", type=int, default=100)
    parser.add_argument("--optimizer", choices=("adamw", "sgd"), default="adamw")
    parser.add_argument("--prune", default="", help="group name endings to prune, comma-separated (fc1, heads)")
    parser.add_argument("--ratio", type=float, default=0.25)
    parser.add_argument("--importance", choices=("l1", "l2", "taylor"), default="l1")
    parser.add_argument("--int8", action="store_true")
    parser.add_argument("--feature-weight", type=float, default=0.0)
    args = parser.parse_args()

    torch.manual_seed(0)
    task = load_task("minilm")
    inventory = build_inventory(task.model, task.example_inputs, task.ignored_layers)
    space = build_space(inventory, SpaceConfig())
    groups = [n.split("/", 1)[1] for n in space.domains if n.startswith("prune/")]
    ends = [e for e in args.prune.split(",") if e]
    bits = {n: 8 for n in inventory.layers if 8 in space.domains.get(f"bits/{n}", ())} if args.int8 else {}
    policy = Policy(prune={g: args.ratio for g in groups if any(g.endswith(e) for e in ends)}, bits=bits)
    calib = [b[0] for _, b in zip(range(4), task.train_loader)]
    student = compress.apply(task.model, inventory, policy, task.example_inputs, calib, importance=args.importance)
    before = evaluate(student, task.eval_loader, task.metric)
    config = DistillConfig(steps=args.steps, loss=task.distill_loss, optimizer=args.optimizer, lr=args.lr,
                           feature_layers=task.feature_layers, feature_weight=args.feature_weight)
    t0 = time.perf_counter()
    distill(student, task.model, task.train_loader, config)
    seconds = time.perf_counter() - t0
    after = evaluate(student, task.eval_loader, task.metric)
    print(f"{vars(args)}: cosine {before:.4f} -> {after:.4f} ({seconds:.0f} s)")


if __name__ == "__main__":
    main()
