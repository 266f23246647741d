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


def _names(text: str) -> tuple[str, ...]:
    return tuple(v.strip() for v in text.split(",") if v.strip())


def _ints(text: str) -> tuple[int, ...]:
    try:
        return tuple(int(v) for v in text.split(",") if v.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from None


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # one line, exit 2, like every other input error
        self.exit(2, f"error: {message} (see `{self.prog} --help`)\n")


def _backend_option(p: argparse.ArgumentParser) -> None:
    p.add_argument("--backend", default="onnxruntime-cpu",
                   help="latency backend of the target: onnxruntime-cpu (default), onnxruntime-cuda, onnxruntime-tensorrt, "
                        "tensorrt, torch-cpu or torch-cuda")


def _target_and_space_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--threads", type=int, default=1, help="threads of the target (ONNX Runtime intra-op, or PyTorch)")
    p.add_argument("--batch-size", type=int, default=0,
                   help="rows per call on the target (default: the task's example inputs, 1 for the built-in tasks)")
    _backend_option(p)
    p.add_argument("--prune-ratios", type=_floats, default=None, help="e.g. 0,0.25,0.5,0.75")
    p.add_argument("--bits", type=_ints, default=None, help="bit widths from 32,16,8,4 (default 32,8,4; 4-bit weights apply to Linear layers)")
    p.add_argument("--rank-ratios", type=_floats, default=None, help="e.g. 1,0.5,0.25")
    p.add_argument("--decompositions", type=_names, default=None,
                   help="how factorized kxk convs are split: svd (spatial SVD, default), tucker2 (1x1, kxk, 1x1), or svd,tucker2 to search both")
    p.add_argument("--importance", choices=("l1", "l2", "taylor"), default=None,
                   help="which channels pruning removes: weight magnitude (l1, default; l2) or first-order Taylor on data")
    p.add_argument("--calibration-seconds", type=float, default=30.0, metavar="S",
                   help="time the latency table's calibration may spend on more random whole models after its first "
                        "batch (default 30; 0: the first batch only, about a dozen models)")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="autocompress", description="Hardware-aware compression search under a latency budget.")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)

    s = sub.add_parser("search", help="search pruning, bit widths and ranks under a latency budget")
    s.add_argument("--task", default="demo", help="built-in task name (demo or minilm), path/to/file.py:build or package.module:build")
    s.add_argument("--latency-budget", default=None, help="absolute (2.5ms, 800us) or a fraction of the original latency (0.5x); required unless --resume")
    s.add_argument("--trials", type=int, default=20, help="candidates to fine-tune (proposals over budget do not count)")
    s.add_argument("--run-dir", default=None, help="output folder (default runs/<task>); re-running resumes it")
    s.add_argument("--searcher", default="tpe",
                   help="tpe (default), nsga2, nsga3, gp, random, amc (DDPG agent) or optuna:<SamplerClass>")
    s.add_argument("--objectives", default="metric,latency", help="metric,latency (default) or metric,latency,size")
    s.add_argument("--repair", action=argparse.BooleanOptionalAction, default=True,
                   help="repair over-budget proposals toward the budget with the latency table (default on)")
    s.add_argument("--widen", action=argparse.BooleanOptionalAction, default=True,
                   help="before fine-tuning, undo each compression choice the latency table predicts costs no latency "
                        "(an int8 layer no faster than fp32, a channel count no faster than a larger one); default on, "
                        "off where size is an objective")
    s.add_argument("--sensitivity-seed", action=argparse.BooleanOptionalAction, default=True,
                   help="before the first trial, score each coupling group's lightest pruning without fine-tuning and "
                        "propose int8 with the cheapest groups pruned until it fits the budget (default on)")
    s.add_argument("--max-metric-drop", type=float, default=None, metavar="DROP",
                   help="the most of the task's metric you accept to lose, in its units (0.01 = one point of accuracy): "
                        "candidates losing more are infeasible to the searcher and left off the front (default: no floor)")
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--distill-steps", type=int, default=120, help="fine-tuning steps per candidate")
    s.add_argument("--temperature", type=float, default=4.0, help="distillation temperature")
    s.add_argument("--feature-weight", type=float, default=0.0,
                   help="weight of intermediate-feature matching (the task's feature_layers) added to the output loss")
    s.add_argument("--lr", type=float, default=None, help="fine-tuning learning rate (default: the task's, else 0.01)")
    s.add_argument("--bn-batches", type=int, default=8, metavar="N",
                   help="training batches that re-estimate BatchNorm statistics after each fine-tune and before "
                        "the sensitivity scores (0: off; default 8)")
    _target_and_space_options(s)
    s.add_argument("--no-shared-table", action="store_true", help="do not reuse or update the latency table shared across runs")
    s.add_argument("--remeasure-table", action="store_true",
                   help="measure every entry of the space again in one go before the search (about 3 minutes for demo): "
                        "entries gathered over earlier runs agree with each other less")
    s.add_argument("--allow-other-profile", action="store_true", help="reuse a latency table measured on another target")
    s.add_argument("--final-finetune", type=int, default=0, metavar="STEPS",
                   help="distill each front member STEPS more steps and export it again to engines/final/")
    s.add_argument("--ray-address", default=None,
                   help="run trials as Ray Tune trials: local (start Ray here), auto (this machine's cluster) or HOST:PORT")
    s.add_argument("--workers", type=int, default=None, help="with --ray-address: trials fine-tuned at once (default 1)")
    s.add_argument("--ray-max-failures", type=int, default=None, help="with --ray-address: restarts of a trial whose node died (default 2)")
    s.add_argument("--early-stop", action="store_true",
                   help="with --ray-address: stop weak fine-tunes early (successive halving on the metric at each quarter)")
    s.add_argument("--resume", metavar="RUN", default=None,
                   help="continue the search in run directory RUN with the settings of its run.json (--trials may raise the count)")

    r = sub.add_parser("report", help="rebuild a run's pareto.json and report.html from its trial store")
    r.add_argument("run_dir")
    r.add_argument("--serve", action="store_true", help="serve the run directory over HTTP (builds the report first if missing)")
    r.add_argument("--host", default=None, help="with --serve: address to serve on (default 127.0.0.1)")
    r.add_argument("--port", type=int, default=None, help="with --serve: port to serve on (default 8000; 0 picks a free one)")

    e = sub.add_parser("export", help="export one trial of a run as a verified engine with a JSON sidecar")
    e.add_argument("run_dir")
    e.add_argument("--trial", type=int, required=True, help="trial number (see `autocompress runs show RUN`)")
    e.add_argument("--format", default="onnx", help="onnx (the policy's precisions), onnx-int8, onnx-fp16 or tensorrt")
    e.add_argument("--out", default=None, help="output folder (default RUN/exports)")
    e.add_argument("--final-finetune", type=int, default=0, metavar="STEPS", help="distill the trial STEPS more steps before export")

    runs = sub.add_parser("runs", help="list run directories or show one run's front")
    rsub = runs.add_subparsers(dest="runs_command", required=True, parser_class=_Parser)
    rl = rsub.add_parser("list", help="a table of the runs under a folder")
    rl.add_argument("--root", default="runs", help="folder holding run directories (default runs)")
    rs = rsub.add_parser("show", help="a run's front as a table, with each engine's verification status")
    rs.add_argument("run_dir")

    lut = sub.add_parser("lut", help="build, show and validate latency tables")
    lsub = lut.add_subparsers(dest="lut_command", required=True, parser_class=_Parser)
    table_help = "table file (default: the table shared by every run on this target, in the cache)"
    b = lsub.add_parser("build", help="measure every layer configuration the task's space can reach, then calibrate")
    b.add_argument("--task", default="demo", help="task whose space the table covers (demo or minilm, or a path/module spec as for search)")
    b.add_argument("--table", default=None, help=table_help)
    b.add_argument("--allow-other-profile", action="store_true", help="add to a table measured on another target, on purpose")
    b.add_argument("--remeasure", action="store_true",
                   help="measure every entry of the space again in one go, replacing those the table has (entries gathered "
                        "over earlier runs agree with each other less)")
    _target_and_space_options(b)
    sh = lsub.add_parser("show", help="the table's target, entries, calibrations and non-monotone channel counts")
    sh.add_argument("--table", default=None, help=table_help)
    sh.add_argument("--threads", type=int, default=1, help="target threads (chooses the default table)")
    sh.add_argument("--batch-size", type=int, default=1, help="target batch size (chooses the default table)")
    _backend_option(sh)
    v = lsub.add_parser("validate", help="predicted vs measured end-to-end latency of random candidates")
    v.add_argument("--task", default="demo", help="task whose space the candidates are drawn from (demo or minilm, or a path/module spec as for search)")
    v.add_argument("--samples", type=int, default=20)
    v.add_argument("--seed", type=int, default=0)
    v.add_argument("--json", action="store_true", help="print the report as JSON")
    v.add_argument("--repeat", action="store_true",
                   help="time every candidate again after the first pass and report how well the measurement agrees with itself")
    v.add_argument("--table", default=None, help=table_help)
    v.add_argument("--allow-other-profile", action="store_true", help="validate a table measured on another target, on purpose")
    _target_and_space_options(v)
    return parser


def _space_config(args: argparse.Namespace):
    from autocompress.spaces import SpaceConfig

    kwargs = {k: v for k, v in {"prune_ratios": args.prune_ratios, "bits": args.bits, "rank_ratios": args.rank_ratios,
                                "importance": getattr(args, "importance", None),
                                "decompositions": getattr(args, "decompositions", None)}.items() if v is not None}
    try:
        return SpaceConfig(**kwargs)
    except ValueError as exc:
        raise UserError(f"Invalid option: {exc}") from None


# Search options and where each lives in a run's recorded config (run.json "config").
_RECORDED_OPTIONS = {
    "task": ("task",), "latency_budget": ("latency_budget",), "searcher": ("searcher",), "seed": ("seed",),
    "distill_steps": ("distill", "steps"), "temperature": ("distill", "temperature"), "lr": ("distill", "lr"),
    "feature_weight": ("distill", "feature_weight"), "bn_batches": ("distill", "bn_batches"), "threads": ("threads",),
    "prune_ratios": ("space", "prune_ratios"),
    "bits": ("space", "bits"), "rank_ratios": ("space", "rank_ratios"), "importance": ("space", "importance"),
    "decompositions": ("space", "decompositions"),
    "no_shared_table": ("share_table",), "allow_other_profile": ("allow_other_profile",), "backend": ("backend",),
    "final_finetune": ("final_finetune",), "ray_address": ("ray", "address"), "workers": ("ray", "workers"),
    "ray_max_failures": ("ray", "max_failures"), "early_stop": ("ray", "early_stop"), "batch_size": ("batch_size",),
    "max_metric_drop": ("max_metric_drop",), "sensitivity_seed": ("sensitivity_seed",),
}


def _task_key(spec: str) -> str:
    """A task spec with its file path made absolute, so two spellings of one file agree."""
    where, _, func = spec.rpartition(":")
    return f"{Path(where).resolve()}:{func}" if where.endswith(".py") else spec


def _resumed_config(args: argparse.Namespace):
    """The config recorded in ``args.resume``'s run.json; options given beside --resume must
    agree with it (only --trials may differ: it sets how many trials the run ends with)."""
    from dataclasses import replace

    from autocompress._io import read_json
    from autocompress.study import SearchConfig

    run_dir = Path(args.resume)
    if not (run_dir / "run.json").is_file() or not (run_dir / "study.db").is_file():
        raise UserError(f"--resume {str(run_dir)!r} is not a run directory (no run.json and study.db); give the --run-dir of a search.")
    try:
        recorded = read_json(run_dir / "run.json")["config"]
        config = SearchConfig.from_dict(recorded)
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise UserError(f"{str(run_dir / 'run.json')!r} is unreadable ({type(exc).__name__}); start a new search with --run-dir.") from None
    if args.run_dir is not None and Path(args.run_dir).resolve() != run_dir.resolve():
        raise UserError(f"--run-dir {args.run_dir!r} conflicts with --resume {str(run_dir)!r}; give only --resume.")
    defaults = vars(build_parser().parse_args(["search"]))
    unchecked = sorted(d for d in defaults if d not in _RECORDED_OPTIONS and d not in ("command", "resume", "run_dir", "trials")
                       and getattr(args, d) != defaults[d])
    if unchecked:
        flag = unchecked[0].replace("_", "-")
        flag = f"--no-{flag}" if getattr(args, unchecked[0]) is False else f"--{flag}"  # a switch that is on by default
        raise UserError(f"{flag} cannot be combined with --resume; drop it to resume as recorded.")
    for dest, where in _RECORDED_OPTIONS.items():
        given = getattr(args, dest)
        if given == defaults[dest]:
            continue
        value = recorded
        for key in where:
            value = value.get(key) if isinstance(value, dict) else None
        if dest == "no_shared_table":
            value = not value
        if isinstance(value, list):
            value = tuple(value)
        if dest == "task" and isinstance(value, str) and _task_key(given) == _task_key(value):
            continue
        if given != value:
            option = "--" + dest.replace("_", "-")
            raise UserError(
                f"{option} {given!r} conflicts with the run's recorded {value!r} ({run_dir / 'run.json'}); "
                f"drop {option} to resume as recorded, or start a new search with another --run-dir."
            )
    trials = args.trials if args.trials != defaults["trials"] else config.trials
    return replace(config, run_dir=str(run_dir), trials=trials)


_DISTILL_FLAGS = {"steps": "--distill-steps", "temperature": "--temperature", "lr": "--lr", "bn_batches": "--bn-batches",
                  "feature_weight": "--feature-weight"}


def _search(args: argparse.Namespace) -> int:
    from autocompress.evaluators import DistillConfig
    from autocompress.study import SearchConfig, run_search

    if args.resume is not None:
        run_search(_resumed_config(args), console=_console())
        return 0
    if args.latency_budget is None:
        raise UserError("the following arguments are required: --latency-budget (or --resume RUN to continue a run).")
    space = _space_config(args)
    try:
        distill = DistillConfig(steps=args.distill_steps, temperature=args.temperature, lr=args.lr if args.lr is not None else 0.01,
                                feature_weight=args.feature_weight, bn_batches=args.bn_batches)
    except ValueError as exc:  # named by the fields of DistillConfig: say the flags
        message = str(exc)
        for field, flag in _DISTILL_FLAGS.items():
            message = message.replace(f"`{field}`", flag)
        raise UserError(f"Invalid option: {message}") from None
    task_name = args.task if ":" not in args.task else Path(args.task.split(":")[0]).stem
    ray = None
    if args.ray_address is not None:
        from autocompress.search._ray import RayConfig

        ray = RayConfig(address=args.ray_address, workers=args.workers if args.workers is not None else 1,
                        max_failures=args.ray_max_failures if args.ray_max_failures is not None else 2, early_stop=args.early_stop)
    elif args.workers is not None or args.early_stop or args.ray_max_failures is not None:
        raise UserError("--workers, --ray-max-failures and --early-stop apply to Ray sweeps; add --ray-address local|auto|HOST:PORT.")
    config = SearchConfig(
        task=args.task, latency_budget=args.latency_budget, trials=args.trials,
        run_dir=args.run_dir or f"runs/{task_name}", searcher=args.searcher, seed=args.seed, distill=distill,
        objectives=tuple(args.objectives.split(",")), repair=args.repair, widen=args.widen, sensitivity_seed=args.sensitivity_seed,
        space=space, lr_given=args.lr is not None, threads=args.threads, share_table=not args.no_shared_table, allow_other_profile=args.allow_other_profile,
        final_finetune=args.final_finetune,
        backend=args.backend, batch_size=args.batch_size, max_metric_drop=args.max_metric_drop,
        ray=ray, calibration_seconds=args.calibration_seconds, remeasure_table=args.remeasure_table,
    )
    run_search(config, console=_console())
    return 0


def _console():
    from rich.console import Console

    # Piped output gets a width that keeps the front's table readable in logs.
    return Console() if sys.stdout.isatty() else Console(width=150)


def _report(args: argparse.Namespace) -> int:
    from autocompress.latency_lut import Measurable, backend_for_profile
    from autocompress.study import finalize_run, load_recorded_task, read_run_record, recorded_tracker

    run_dir = Path(args.run_dir)
    if not (run_dir / "run.json").is_file() or not (run_dir / "study.db").is_file():
        raise UserError(f"{str(run_dir)!r} is not a run directory (no run.json and study.db); give the --run-dir of a search.")
    if not args.serve and (args.host is not None or args.port is not None):
        raise UserError("--host and --port apply with --serve; add --serve to serve the report, or drop them.")
    host, port = args.host or "127.0.0.1", 8000 if args.port is None else args.port
    if args.serve and (run_dir / "report.html").is_file():
        return _serve(run_dir, host, port)
    manifest = read_run_record(run_dir)
    task = load_recorded_task(manifest)
    profile = manifest["profile"]
    backend = backend_for_profile(profile, int(task.example_inputs[0].shape[0]))
    original = Measurable.from_module(task.model, task.example_inputs, dynamic_batch=True)
    finalize_run(run_dir, manifest["metric_name"], _console(), backend, original, tracker=recorded_tracker(manifest, task))
    return _serve(run_dir, host, port) if args.serve else 0


def _serve(run_dir: Path, host: str, port: int) -> int:
    from autocompress.report import make_server

    server = make_server(run_dir, host, port)
    print(f"Serving {run_dir} at http://{host}:{server.server_address[1]}/report.html (Ctrl-C stops)", flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
    return 0


def _export(args: argparse.Namespace) -> int:
    from autocompress.export import export_trial

    result = export_trial(Path(args.run_dir), args.trial, args.format, args.out, args.final_finetune)
    metric = f"{result.metric:.4f}" if result.metric is not None else "-"
    status = "verified" if result.ok else "FAILED verification: " + "; ".join(result.problems)
    print(f"{result.engine}: metric {metric}, {result.latency_ms:.3f} ms, {status}\nsidecar: {result.sidecar}")
    return 0 if result.ok else 1


def _runs(args: argparse.Namespace) -> int:
    from rich.table import Table

    from autocompress.report import list_runs, load_front

    console = _console()
    if args.runs_command == "show":
        from autocompress.study import front_table

        front = load_front(Path(args.run_dir))
        try:
            console.print(front_table(front, front["members"]))
        except (KeyError, TypeError, AttributeError, ValueError):
            raise UserError(f"{str(Path(args.run_dir) / 'pareto.json')!r} is incomplete; rebuild it with "
                            f"`autocompress report {args.run_dir}`.") from None
        failed = [m for m in front.get("members", []) if not m.get("verified", m.get("engine", {}).get("ok", True))]
        if failed:
            console.print(f"[red]{len(failed)} member(s) failed engine verification; see the engine column.[/]")
        return 0
    rows = list_runs(Path(args.root))
    table = Table(title=f"Runs in {args.root}")
    for col in ("run", "task", "target", "budget", "trials", "best under budget", "date"):
        table.add_column(col, overflow="fold")
    for r in rows:
        budget = f"{r.budget} ({r.budget_ms:.3f} ms)" if r.budget_ms is not None else r.budget
        best = f"{r.metric_name} {r.best_metric:.4f}" if r.best_metric is not None else "-"
        table.add_row(r.path, r.task, r.target, budget, "-" if r.trials is None else str(r.trials), best, r.created)
    console.print(table if rows else f"No run directories in {args.root}.")
    return 0


def _table_path(args: argparse.Namespace, batch_size: int) -> Path:
    from autocompress.latency_lut import LatencyTable, check_backend_name, make_backend

    if args.table:  # a given table is read whatever this machine can measure
        check_backend_name(args.backend)
        return Path(args.table)
    if batch_size < 1:
        raise UserError(f"--batch-size must be at least 1, but got {batch_size}.")
    backend = make_backend(args.backend, threads=args.threads, batch_size=batch_size)  # checks name, threads, availability
    return LatencyTable.default_shared_path(backend)


def _lut(args: argparse.Namespace) -> int:
    import json
    import time

    from rich.progress import Progress

    from autocompress.latency_lut import check_backend_name, check_table_path, read_table_file
    from autocompress.study import check_calibration_seconds, open_workbench
    from autocompress.task import load_task

    console = _console()
    if args.lut_command == "show":
        return _lut_show(_table_path(args, args.batch_size), console)
    if args.lut_command == "validate" and args.samples < 1:
        raise UserError(f"--samples must be at least 1, but got {args.samples}.")
    # Options checked before the task loads, which can take minutes.
    space_config = _space_config(args)
    check_backend_name(args.backend)
    if args.threads < 1:
        raise UserError(f"--threads must be at least 1, but got {args.threads}.")
    check_calibration_seconds(args.calibration_seconds)
    if args.table:
        check_table_path(Path(args.table))
        if Path(args.table).is_file():
            read_table_file(Path(args.table))  # a damaged table is named now, not after the task loads
    task = load_task(args.task, args.batch_size)
    path = _table_path(args, int(task.example_inputs[0].shape[0]))
    bench = open_workbench(task, space_config, args.threads, path, shared_table=False,
                           allow_other_profile=args.allow_other_profile, backend=args.backend)
    table = bench.table
    if args.lut_command == "build":
        t0 = time.perf_counter()
        with Progress(console=console, transient=True) as progress:
            bar = progress.add_task("measuring layers", total=None)
            n = table.build(bench.inventory, bench.space, on_entry=lambda i, total: progress.update(bar, completed=i, total=total),
                            remeasure=args.remeasure)
            table.save()
            progress.update(bar, description="calibrating on whole models", completed=0, total=None)
            cal = table.calibrate(bench.inventory, bench.space, bench.measure_policies, budget_s=args.calibration_seconds)
        table.save()
        console.print(
            f"{path}: {n} entries measured now ({len(table.entries)} in all) in {time.perf_counter() - t0:.1f} s; "
            f"calibration {cal.describe()}"
        )
        return 0
    from autocompress.latency_lut import validate

    with Progress(console=console, transient=True) as progress:
        bar = progress.add_task("measuring random candidates", total=args.samples * (2 if args.repeat else 1))
        if not table.is_calibrated(bench.inventory):
            table.calibrate(bench.inventory, bench.space, bench.measure_policies, seed=args.seed, budget_s=args.calibration_seconds)
        result = validate(table, bench.inventory, bench.space, bench.measure_beside, args.samples, args.seed,
                          on_sample=lambda i: progress.update(bar, completed=i), repeat=args.repeat)
    table.save()
    if args.json:
        print(json.dumps({"task": args.task, "samples": args.samples, "profile": table.profile, **result.to_dict()}, indent=2))
        return 0
    _print_validation(result, args.task, args.samples, console)
    return 0


def _print_validation(result, task: str, samples: int, console) -> None:
    """`lut validate`'s report as text: each view with its worst cases, the machine line,
    and what to doubt in it."""
    from autocompress.latency_lut import DISTURBED, GAUGE_GAP, uneven_warning

    for key, title, report in result.views():
        unit = "x" if key == "relative_to_original" else "us"
        console.print(
            f"{samples} random candidates of task {task!r}, {title}: median |error| {report.median_abs_error:.1%}, "
            f"within ±10% {report.within_10pct:.0%}, within ±5% {report.within_5pct:.0%}, Spearman {report.spearman:.3f}"
        )
        for w in report.worst(3):
            console.print(f"  {w['policy']}: predicted {w['predicted_us']:.3g}{unit}, measured {w['measured_us']:.3g}{unit} ({w['error']:+.1%})")

    def beside(name: str, key: str) -> str:
        now, then = result.machine[f"{key}_us"], result.machine[f"{key}_calibration_us"]
        return f"{name} {now:.0f} us" + (f" (in the calibration {then:.0f} us, {now / then - 1:+.1%})" if then else "")

    console.print("Timed beside the candidates (median): "
                  f"{beside('the original', 'original')}; {beside('the most compressed model', 'most_compressed')}")
    if (gap := result.gauge_gap()) is not None:
        console.print(f"The table predicted the original at {result.machine['original_predicted_us']:.0f} us at the machine speed "
                      f"its reference graph read ({gap:+.1%} against its timing)"
                      + (f": [yellow]whole models ran {abs(gap):.0%} {'slower' if gap > 0 else 'faster'} than the small graph "
                         "that gauges the machine says, and the latency view by that graph judges that state as much as the table"
                         + ("; the other views do not" if result.by_reference is not None else
                            "; the views relative to the original and at the calibration's speed do not") + ".[/]"
                         if abs(gap) > GAUGE_GAP else "."))
    if retimed := result.machine.get("retimed"):
        console.print(f"{retimed} candidate timing(s) were taken again after a pause: the original or the most compressed model "
                      f"beside them ran more than {DISTURBED:.0%} off its usual time (a passing disturbance of the machine)"
                      + (f"; {n} still did, and are judged as timed." if (n := result.machine.get("disturbed")) else "."))
    warning = uneven_warning(result.uneven())
    if warning:
        console.print(f"[yellow]{warning} Validate again when the machine is quiet; if this state lasts, "
                      "`autocompress lut build` with the same --table refits the calibration to it.[/]")
    if result.at_calibration_speed is None:
        console.print("[yellow]The table's calibration did not time this space's most compressed model: no view at the "
                      "calibration's speed. Calibrate it for this space with `autocompress lut build` and the same space options.[/]")
    for key, title, _ in result.views():
        report = result.repeat.get(key)
        if report is not None:
            console.print(
                f"The measurement against itself (second timing vs first), {title}: median |difference| "
                f"{report.median_abs_error:.1%}, within ±10% {report.within_10pct:.0%}, within ±5% {report.within_5pct:.0%}"
            )


def _lut_show(path: Path, console) -> int:
    from autocompress.latency_lut import Calibration, read_table_file

    if path.is_dir():
        raise UserError(f"Latency table path {str(path)!r} is a directory; give the table's .json file.")
    if not path.is_file():
        raise UserError(f"No latency table at {str(path)!r}; build one with `autocompress lut build --task T`.")
    data = read_table_file(path)
    entries = data["entries"]
    console.print(f"[bold]{path}[/]")
    for k, v in (data.get("profile") or {}).items():
        console.print(f"  {k}: {v}")
    console.print(f"{len(entries)} entries; calibrations for {len(data.get('calibrations') or {})} model(s)")
    for fp, c in (data.get("calibrations") or {}).items():
        cal = Calibration(c["scale"], c["offset_us"], list(c.get("points", [])), dict(c.get("part_scales") or {}), c.get("parts_offset_us", 0.0))
        console.print(f"  model {fp}: {cal.describe()}")
    # Non-monotone latency: more output channels measured faster than fewer, all else equal.
    families: dict[str, list[tuple[int, float]]] = {}
    for key, e in entries.items():
        parts = key.split("|")
        out = next((p for p in parts if p.startswith("o") and p[1:].isdigit()), None)
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
        return {"search": _search, "report": _report, "lut": _lut, "export": _export, "runs": _runs}[args.command](args)
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted: completed trials are kept in the run's study.db; run the same command again to resume.", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
