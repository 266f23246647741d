"""Command line: parse arguments, build a config, call the stage that does the work."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from autocompress.errors import UserError

__all__ = ["main"]


def _floats(text: str) -> tuple[float, ...]:
    try:
        return tuple(float(v) for v in text.split(",") if v.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated numbers, got {text!r}") from None


def _ints(text: str) -> tuple[int, ...]:
    try:
        return tuple(int(v) for v in text.split(",") if v.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from None


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # one line, exit 2, like every other input error
        self.exit(2, f"error: {message} (see `{self.prog} --help`)\n")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="autocompress", description="Hardware-aware compression search under a latency budget.")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)

    s = sub.add_parser("search", help="search pruning, bit widths and ranks under a latency budget")
    s.add_argument("--task", default="demo", help="built-in task name (demo), path/to/file.py:build or package.module:build")
    s.add_argument("--latency-budget", required=True, help="absolute (2.5ms, 800us) or a fraction of the original latency (0.5x)")
    s.add_argument("--trials", type=int, default=20, help="candidates to fine-tune (proposals over budget do not count)")
    s.add_argument("--run-dir", default=None, help="output folder (default runs/<task>); re-running resumes it")
    s.add_argument("--searcher", default="tpe", help="tpe (default), nsga2 or random")
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--distill-steps", type=int, default=120, help="fine-tuning steps per candidate")
    s.add_argument("--temperature", type=float, default=4.0, help="distillation temperature")
    s.add_argument("--lr", type=float, default=0.01, help="fine-tuning learning rate")
    s.add_argument("--threads", type=int, default=1, help="ONNX Runtime threads of the target")
    s.add_argument("--prune-ratios", type=_floats, default=None, help="e.g. 0,0.25,0.5,0.75")
    s.add_argument("--bits", type=_ints, default=None, help="e.g. 32,8")
    s.add_argument("--rank-ratios", type=_floats, default=None, help="e.g. 1,0.5,0.25")
    s.add_argument("--no-shared-table", action="store_true", help="do not reuse or update the latency table shared across runs")
    s.add_argument("--allow-other-profile", action="store_true", help="reuse a latency table measured on another target")

    r = sub.add_parser("report", help="rebuild a run's pareto.json and report.html from its trial store")
    r.add_argument("run_dir")
    return parser


def _search(args: argparse.Namespace) -> int:
    from autocompress.evaluators import DistillConfig
    from autocompress.spaces import SpaceConfig
    from autocompress.study import SearchConfig, run_search

    space_kwargs = {k: v for k, v in {"prune_ratios": args.prune_ratios, "bits": args.bits, "rank_ratios": args.rank_ratios}.items() if v is not None}
    try:
        space = SpaceConfig(**space_kwargs)
        distill = DistillConfig(steps=args.distill_steps, temperature=args.temperature, lr=args.lr)
    except ValueError as exc:
        raise UserError(f"Invalid option: {exc}") from None
    task_name = args.task if ":" not in args.task else Path(args.task.split(":")[0]).stem
    config = SearchConfig(
        task=args.task, latency_budget=args.latency_budget, trials=args.trials,
        run_dir=args.run_dir or f"runs/{task_name}", searcher=args.searcher, seed=args.seed, distill=distill,
        space=space, threads=args.threads, share_table=not args.no_shared_table, allow_other_profile=args.allow_other_profile,
    )
    run_search(config, console=_console())
    return 0


def _console():
    from rich.console import Console

    # Piped output gets a width that keeps the front's table readable in logs.
    return Console() if sys.stdout.isatty() else Console(width=150)


def _report(args: argparse.Namespace) -> int:
    from autocompress._io import read_json
    from autocompress.latency_lut import OrtCpuBackend, feeds_for
    from autocompress.study import finalize_run

    run_dir = Path(args.run_dir)
    if not (run_dir / "run.json").is_file() or not (run_dir / "study.db").is_file():
        raise UserError(f"{str(run_dir)!r} is not a run directory (no run.json and study.db); give the --run-dir of a search.")
    manifest = read_json(run_dir / "run.json")
    from autocompress.task import load_task

    task = load_task(manifest["task_spec"])
    from autocompress.latency_lut import to_onnx_bytes

    backend = OrtCpuBackend(threads=manifest["profile"]["threads"])
    finalize_run(run_dir, manifest["metric_name"], _console(), backend, feeds_for(task.example_inputs), to_onnx_bytes(task.model, task.example_inputs, dynamic_batch=True))
    return 0


def main(argv: list[str] | None = None) -> int:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    args = build_parser().parse_args(argv)
    try:
        return {"search": _search, "report": _report}[args.command](args)
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted: completed trials are kept in the run's study.db; run the same command again to resume.", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
