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


def _target_and_space_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--threads", type=int, default=1, help="ONNX Runtime threads of the target")
    p.add_argument("--prune-ratios", type=_floats, default=None, help="e.g. 0,0.25,0.5,0.75")
    p.add_argument("--bits", type=_ints, default=None, help="bit widths from 32,16,8,4 (default 32,8,4; 4-bit weights apply to Linear layers)")
    p.add_argument("--rank-ratios", type=_floats, default=None, help="e.g. 1,0.5,0.25")
    p.add_argument("--importance", choices=("l1", "l2", "taylor"), default=None,
                   help="which channels pruning removes: weight magnitude (l1, default; l2) or first-order Taylor on data")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="autocompress", description="Hardware-aware compression search under a latency budget.")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)

    s = sub.add_parser("search", help="search pruning, bit widths and ranks under a latency budget")
    s.add_argument("--task", default="demo", help="built-in task name (demo), path/to/file.py:build or package.module:build")
    s.add_argument("--latency-budget", required=True, help="absolute (2.5ms, 800us) or a fraction of the original latency (0.5x)")
    s.add_argument("--trials", type=int, default=20, help="candidates to fine-tune (proposals over budget do not count)")
    s.add_argument("--run-dir", default=None, help="output folder (default runs/<task>); re-running resumes it")
    s.add_argument("--searcher", default="tpe",
                   help="tpe (default), nsga2, nsga3, gp, random, amc (DDPG agent) or optuna:<SamplerClass>")
    s.add_argument("--objectives", default="metric,latency", help="metric,latency (default) or metric,latency,size")
    s.add_argument("--repair", action=argparse.BooleanOptionalAction, default=True,
                   help="repair over-budget proposals toward the budget with the latency table (default on)")
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--distill-steps", type=int, default=120, help="fine-tuning steps per candidate")
    s.add_argument("--temperature", type=float, default=4.0, help="distillation temperature")
    s.add_argument("--feature-weight", type=float, default=0.0,
                   help="weight of intermediate-feature matching (the task's feature_layers) added to the output loss")
    s.add_argument("--lr", type=float, default=None, help="fine-tuning learning rate (default: the task's, else 0.01)")
    _target_and_space_options(s)
    s.add_argument("--no-shared-table", action="store_true", help="do not reuse or update the latency table shared across runs")
    s.add_argument("--allow-other-profile", action="store_true", help="reuse a latency table measured on another target")

    r = sub.add_parser("report", help="rebuild a run's pareto.json and report.html from its trial store")
    r.add_argument("run_dir")

    lut = sub.add_parser("lut", help="build, show and validate latency tables")
    lsub = lut.add_subparsers(dest="lut_command", required=True, parser_class=_Parser)
    table_help = "table file (default: the table shared by every run on this target, in the cache)"
    b = lsub.add_parser("build", help="measure every layer configuration the task's space can reach, then calibrate")
    b.add_argument("--task", default="demo")
    b.add_argument("--table", default=None, help=table_help)
    _target_and_space_options(b)
    sh = lsub.add_parser("show", help="the table's target, entries, calibrations and non-monotone channel counts")
    sh.add_argument("--table", default=None, help=table_help)
    sh.add_argument("--threads", type=int, default=1, help="target threads (chooses the default table)")
    v = lsub.add_parser("validate", help="predicted vs measured end-to-end latency of random candidates")
    v.add_argument("--task", default="demo")
    v.add_argument("--samples", type=int, default=20)
    v.add_argument("--seed", type=int, default=0)
    v.add_argument("--json", action="store_true", help="print the report as JSON")
    v.add_argument("--table", default=None, help=table_help)
    _target_and_space_options(v)
    return parser


def _space_config(args: argparse.Namespace):
    from autocompress.spaces import SpaceConfig

    kwargs = {k: v for k, v in {"prune_ratios": args.prune_ratios, "bits": args.bits, "rank_ratios": args.rank_ratios,
                                "importance": getattr(args, "importance", None)}.items() if v is not None}
    try:
        return SpaceConfig(**kwargs)
    except ValueError as exc:
        raise UserError(f"Invalid option: {exc}") from None


def _search(args: argparse.Namespace) -> int:
    from autocompress.evaluators import DistillConfig
    from autocompress.study import SearchConfig, run_search

    space = _space_config(args)
    try:
        distill = DistillConfig(steps=args.distill_steps, temperature=args.temperature, lr=args.lr if args.lr is not None else 0.01,
                                feature_weight=args.feature_weight)
    except ValueError as exc:
        raise UserError(f"Invalid option: {exc}") from None
    task_name = args.task if ":" not in args.task else Path(args.task.split(":")[0]).stem
    config = SearchConfig(
        task=args.task, latency_budget=args.latency_budget, trials=args.trials,
        run_dir=args.run_dir or f"runs/{task_name}", searcher=args.searcher, seed=args.seed, distill=distill,
        objectives=tuple(args.objectives.split(",")), repair=args.repair,
        space=space, lr_given=args.lr is not None, threads=args.threads, share_table=not args.no_shared_table, allow_other_profile=args.allow_other_profile,
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


def _table_path(args: argparse.Namespace) -> Path:
    from autocompress.latency_lut import LatencyTable, OrtCpuBackend

    if args.threads < 1:
        raise UserError(f"--threads must be at least 1, but got {args.threads}.")
    return Path(args.table) if args.table else LatencyTable.default_shared_path(OrtCpuBackend(threads=args.threads))


def _lut(args: argparse.Namespace) -> int:
    import json
    import time

    from rich.progress import Progress

    from autocompress.study import open_workbench
    from autocompress.task import load_task

    console = _console()
    path = _table_path(args)
    if args.lut_command == "show":
        return _lut_show(path, console)
    if args.lut_command == "validate" and args.samples < 1:
        raise UserError(f"--samples must be at least 1, but got {args.samples}.")
    bench = open_workbench(load_task(args.task), _space_config(args), args.threads, path, shared_table=False)
    table = bench.table
    if args.lut_command == "build":
        t0 = time.perf_counter()
        with Progress(console=console, transient=True) as progress:
            bar = progress.add_task("measuring layers", total=None)
            n = table.build(bench.inventory, bench.space, on_entry=lambda i, total: progress.update(bar, completed=i, total=total))
            table.save()
            progress.update(bar, description="calibrating on whole models", completed=0, total=None)
            cal = table.calibrate(bench.inventory, bench.space, bench.measure_policy)
        table.save()
        console.print(
            f"{path}: {n} entries measured now ({len(table.entries)} in all) in {time.perf_counter() - t0:.1f} s; "
            f"calibration {cal.scale:.3f} x sum + {cal.offset_us:.0f} us on {len(cal.points)} whole models"
        )
        return 0
    from autocompress.latency_lut import validate

    with Progress(console=console, transient=True) as progress:
        bar = progress.add_task("measuring random candidates", total=args.samples)
        if not table.is_calibrated(bench.inventory):
            table.calibrate(bench.inventory, bench.space, bench.measure_policy, seed=args.seed + 1)
        absolute, relative = validate(table, bench.inventory, bench.space, bench.measure_with_original, args.samples, args.seed,
                                      on_sample=lambda i: progress.update(bar, completed=i))
    table.save()
    if args.json:
        print(json.dumps({"task": args.task, "samples": args.samples, "profile": table.profile,
                          **absolute.to_dict(), "relative_to_original": relative.to_dict()}, indent=2))
        return 0
    for title, report, unit in (("latency", absolute, "us"), ("speed relative to the original, timed in the same round", relative, "x")):
        console.print(
            f"{args.samples} random candidates of task {args.task!r}, {title}: median |error| {report.median_abs_error:.1%}, "
            f"within ±10% {report.within_10pct:.0%}, within ±5% {report.within_5pct:.0%}, Spearman {report.spearman:.3f}"
        )
        for w in report.worst(3):
            console.print(f"  {w['policy']}: predicted {w['predicted_us']:.3g}{unit}, measured {w['measured_us']:.3g}{unit} ({w['error']:+.1%})")
    return 0


def _lut_show(path: Path, console) -> int:
    import json

    if not path.is_file():
        raise UserError(f"No latency table at {str(path)!r}; build one with `autocompress lut build --task T`.")
    try:
        data = json.loads(path.read_text())
        entries = data["entries"]
    except (OSError, ValueError, KeyError, TypeError):
        raise UserError(f"Latency table {str(path)!r} is unreadable or corrupted; delete it to re-measure.") from None
    console.print(f"[bold]{path}[/]")
    for k, v in (data.get("profile") or {}).items():
        console.print(f"  {k}: {v}")
    console.print(f"{len(entries)} entries; calibrations for {len(data.get('calibrations') or {})} model(s)")
    for fp, c in (data.get("calibrations") or {}).items():
        console.print(f"  model {fp}: {c['scale']:.3f} x sum + {c['offset_us']:.0f} us on {len(c.get('points', []))} whole models")
    # Non-monotone latency: more output channels measured faster than fewer, all else equal.
    families: dict[str, list[tuple[int, float]]] = {}
    for key, e in entries.items():
        parts = key.split("|")
        out = next((p for p in parts if p.startswith("o")), None)
        if out is None:
            continue
        families.setdefault("|".join(p for p in parts if p != out), []).append((int(out[1:]), e["median_us"]))
    found = []
    for fam, points in families.items():
        points.sort()
        for (c0, t0), (c1, t1) in zip(points, points[1:]):
            if t1 < 0.9 * t0:
                found.append(f"  {fam}: {c1} output channels {t1:.1f} us < {c0} channels {t0:.1f} us")
    console.print(f"{len(found)} non-monotone channel counts (a larger count measured >10% faster):")
    for line in found[:20]:
        console.print(line)
    return 0


def main(argv: list[str] | None = None) -> int:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    args = build_parser().parse_args(argv)
    try:
        return {"search": _search, "report": _report, "lut": _lut}[args.command](args)
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted: completed trials are kept in the run's study.db; run the same command again to resume.", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
