"""run_search(): the one place that wires the stages of a search together.

task -> inventory -> space -> latency table (measured, calibrated) -> baseline and budget
-> loop(ask -> predict -> [infeasible: tell] -> compress -> distill -> evaluate -> export
and verify -> tell) -> Pareto front -> engines, pareto.json, report.html.
"""

from __future__ import annotations

import functools
import itertools
import math
import platform
import statistics
import sys
import time
from collections import Counter
from dataclasses import asdict, dataclass, field, fields, replace
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable, Mapping

import torch
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from rich.table import Table

from autocompress import compress
from autocompress._io import atomic_write_json, make_folder, read_json
from autocompress._phases import enter_phase
from autocompress.budget import parse_budget
from autocompress.errors import UserError, one_line
from autocompress.evaluators import DistillConfig, ProgressHook, distill, evaluate, recalibrate_batchnorm
from autocompress.export import (
    candidate_path, export_engine, export_trial, file_sha256, prune_candidates, read_sidecar, save_candidate, sidecar_path,
    write_sidecar,
)
from autocompress.inventory import build_inventory
from autocompress.latency_lut import (
    CALIBRATION_BUDGET_S, DEFAULT_BACKEND, DISTURBED, LatencyBackend, LatencyTable, Measurable, check_backend_name, make_backend,
    QuietTimer, is_uneven, timed_unevenly_note, uneven_drift, uneven_warning,
)
from autocompress.latency_lut import fidelity as table_fidelity  # `fidelity` names the run's figures below
from autocompress.report import pareto_front, retime_note, write_report
from autocompress.search import (
    BudgetRepair, FreeWidening, Outcome, WeightL1Importance, make_searcher, parse_objectives, sensitivity_seed, validate_searcher_name,
)
from autocompress.search._ray import RayConfig
from autocompress.spaces import Policy, SearchSpace, SpaceConfig, build_space
from autocompress.task import Task, as_input_tuple, load_task

__all__ = ["SearchConfig", "RunResult", "Workbench", "finalize_run", "front_table", "open_workbench", "run_search", "train_and_export"]

SCHEMA = 1
BUDGET_NOISE = 1.05  # measured latency may exceed the budget by this factor (timing noise)
MAX_FAILURES_BEFORE_SUCCESS = 5  # a run whose first candidates all fail stops instead of spinning


@dataclass(frozen=True)
class SearchConfig:
    task: str = "demo"
    latency_budget: str = "0.5x"
    trials: int = 20
    run_dir: str = "runs/demo"
    searcher: str = "tpe"  # a make_searcher name: tpe, nsga2, nsga3, gp, random, amc, optuna:<Class>
    objectives: tuple[str, ...] = ("metric", "latency")  # optionally "size" too
    repair: bool = True  # repair over-budget proposals toward the budget with the table
    widen: bool = True  # undo compression the table predicts costs no latency (not when size is an objective)
    seed: int = 0
    distill: DistillConfig = DistillConfig()
    space: SpaceConfig = SpaceConfig()
    threads: int = 1
    calibration_batches: int = 4
    calibration_seconds: float = CALIBRATION_BUDGET_S  # the table's calibration: time for whole models past its first batch
    max_proposals_per_trial: int = 50
    share_table: bool = True
    allow_other_profile: bool = False
    backend: str = DEFAULT_BACKEND  # latency backend of the target (latency_lut.BACKENDS)
    batch_size: int = 0  # rows per call on the target; 0 keeps the task's example inputs
    lr_given: bool = False  # distill.lr was set by the user; otherwise the task's own rate applies
    final_finetune: int = 0  # extra distillation steps for each front member before its final export
    ray: RayConfig | None = None  # run the trials as Ray Tune trials on a Ray cluster
    max_metric_drop: float | None = None  # the most metric the user accepts to lose (metric units); None: no floor
    sensitivity_seed: bool = True  # score each group's pruning before fine-tuning for a budget-fitted first proposal
    remeasure_table: bool = False  # measure every entry of the space again in one go before the calibration (a new run only)

    def __post_init__(self) -> None:
        if self.trials < 1:
            raise UserError(f"--trials must be at least 1, but got {self.trials}.")
        validate_searcher_name(self.searcher)
        object.__setattr__(self, "objectives", parse_objectives(self.objectives))
        if self.threads < 1:
            raise UserError(f"--threads must be at least 1, but got {self.threads}.")
        if self.final_finetune < 0:
            raise UserError(f"--final-finetune must be at least 0, but got {self.final_finetune}.")
        check_backend_name(self.backend)
        if self.batch_size < 0:
            raise UserError(f"--batch-size must be at least 1, but got {self.batch_size}.")
        check_calibration_seconds(self.calibration_seconds)
        if self.max_metric_drop is not None and not (math.isfinite(self.max_metric_drop) and self.max_metric_drop >= 0):
            raise UserError(f"--max-metric-drop must be a number >= 0 in the task metric's units (0.01 = one point), but got {self.max_metric_drop}.")

    @property
    def widens(self) -> bool:
        """Whether proposals are widened: asked for, and size is no objective (a wider engine
        is a larger one: where size counts, int8 is a trade, not free)."""
        return self.widen and "size" not in self.objectives

    @classmethod
    def from_dict(cls, data: dict) -> "SearchConfig":
        """The config a run recorded in its run.json (``asdict`` of this class), rebuilt."""
        known = {f.name for f in fields(cls)}
        plain = {k: v for k, v in data.items() if k in known and k not in ("distill", "space", "ray")}
        distill = {k: tuple(v) if isinstance(v, list) else v for k, v in data.get("distill", {}).items()}
        distill.setdefault("bn_batches", 0)  # runs recorded before BatchNorm re-estimation go on without it
        plain.setdefault("widen", False)  # and runs recorded before free widening, without it
        space = {k: tuple(v) if isinstance(v, list) else v for k, v in data.get("space", {}).items()}
        ray = RayConfig(**data["ray"]) if data.get("ray") else None
        return cls(**plain, distill=DistillConfig(**distill), space=SpaceConfig(**space), ray=ray)


def check_calibration_seconds(seconds: float) -> None:
    if not (math.isfinite(seconds) and seconds >= 0):
        raise UserError(f"--calibration-seconds must be a number of seconds >= 0, but got {seconds}.")


def metric_shortfall(metric: float, floor: float | None, higher_is_better: bool) -> float | None:
    """How far ``metric`` falls short of a run's metric floor (> 0: beyond it, infeasible),
    or None for a run without one (no --max-metric-drop)."""
    if floor is None:
        return None
    return floor - metric if higher_is_better else metric - floor


@dataclass
class RunResult:
    run_dir: Path
    baseline_ms: float
    baseline_metric: float
    budget_ms: float
    front: list[dict] = field(default_factory=list)
    counts: dict = field(default_factory=dict)


@dataclass
class Workbench:
    """What every command that measures a task needs: the task, its inventory and space,
    the target backend and latency table, and calibration inputs."""

    task: Task
    inventory: Any
    space: Any
    backend: LatencyBackend
    table: LatencyTable
    calib_batches: list
    channel_multiple: int
    _original: Measurable | None = None
    _tracker: Measurable | None = None
    _engine_timer: QuietTimer | None = None

    def candidate(self, policy: Policy) -> torch.nn.Module:
        return compress.apply(
            self.task.model, self.inventory, policy, self.task.example_inputs, self.calib_batches, self.channel_multiple,
            self.space.config.importance,
        )

    def measure_policies(self, policies: list[Policy]) -> list[float]:
        """Build, export and time the candidates ``policies`` describe, end to end (us each),
        interleaved in rounds: a moment's disturbance of the machine then lands in one
        round of one model instead of setting its whole median (one calibration model
        once timed 16% slow that way). The most aggressive policy is the tracker, built once."""
        example = self.task.example_inputs
        extreme = self.space.extreme()
        items = [self.tracker if p == extreme else Measurable.from_module(self.candidate(p), example, dynamic_batch=True)
                 for p in policies]
        return [m.median_us for m in self.backend.measure_many(items, rounds=5)]

    @property
    def original(self) -> Measurable:
        """The original model, ready to time (its ONNX export is kept between calls)."""
        if self._original is None:
            self._original = Measurable.from_module(self.task.model, self.task.example_inputs, dynamic_batch=True)
        return self._original

    @property
    def tracker(self) -> Measurable:
        """The space's most compressed model, ready to time: timed beside each exported engine,
        it carries the engine's timing to the machine speed of another moment
        (`latency_at_start_us`). Its kernels and size are like a compressed candidate's, so
        its speed moves with theirs, where the original's can move apart: on minilm, the float
        original drifted 7-8% against compressed candidates within three minutes, the most
        compressed model 2-3% (`benchmarks/drift_trackers.py`)."""
        if self._tracker is None:
            self._tracker = Measurable.from_module(self.candidate(self.space.extreme()), self.task.example_inputs, dynamic_batch=True)
        return self._tracker

    @property
    def engine_timer(self) -> QuietTimer:
        """Times an exported engine in rounds with the original and the tracker, and again
        after a pause where either ran more than `DISTURBED` off its usual time in this
        process's last engines: a passing disturbance of the machine then sets neither the
        engine's reported latency nor what the table learns from it."""
        if self._engine_timer is None:
            self._engine_timer = QuietTimer(lambda items: self.backend.measure_many(items, rounds=5),
                                            beside=lambda timings: (timings[0].median_us, timings[1].median_us))
        return self._engine_timer

    def measure_with_original(self, policy: Policy) -> tuple[float, float]:
        """The candidate and the original model timed interleaved, round by round (us, us)."""
        candidate = Measurable.from_module(self.candidate(policy), self.task.example_inputs, dynamic_batch=True)
        original, measured = self.backend.measure_many([self.original, candidate], rounds=5)
        return measured.median_us, original.median_us

    def measure_beside(self, policy: Policy) -> tuple[float, float, float]:
        """The candidate, the original and the most compressed model (`tracker`) timed
        interleaved, round by round (us, us, us)."""
        candidate = Measurable.from_module(self.candidate(policy), self.task.example_inputs, dynamic_batch=True)
        original, tracker, measured = self.backend.measure_many([self.original, self.tracker, candidate], rounds=5)
        return measured.median_us, original.median_us, tracker.median_us


def open_workbench(
    task: Task, space_config: SpaceConfig, threads: int, table_path: Path, shared_table: bool, allow_other_profile: bool = False,
    calibration_batches: int = 4, backend: str = DEFAULT_BACKEND,
) -> Workbench:
    """The task's inventory, space and calibration inputs, and the latency table of the
    target named by ``backend`` and ``threads`` at the task's batch size."""
    inventory = build_inventory(task.model, task.example_inputs, task.ignored_layers)
    try:
        space = build_space(inventory, space_config)
    except ValueError as exc:
        raise UserError(f"{exc} Widen the space (--prune-ratios, --bits, --rank-ratios).") from None
    latency = make_backend(backend, threads=threads, batch_size=int(task.example_inputs[0].shape[0]))
    shared = LatencyTable.default_shared_path(latency) if shared_table else None
    if shared is not None and Path(shared).resolve() == Path(table_path).resolve():
        shared = None
    table = LatencyTable.open(table_path, latency, shared, allow_other_profile, space_config.channel_multiple)
    calib = _calibration_inputs(task, calibration_batches)
    return Workbench(task, inventory, space, latency, table, calib, space_config.channel_multiple)


def _calibration_inputs(task: Task, batches: int) -> list[tuple[torch.Tensor, ...]]:
    """The first ``batches`` training batches' inputs: what int8 scales are calibrated on."""
    return [as_input_tuple(inputs) for inputs, _ in itertools.islice(task.train_loader, batches)]


def recorded_tracker(manifest: Mapping[str, Any], task: Task) -> Measurable | None:
    """A finished run's most compressed model (`Workbench.tracker`), built again as its
    search built it, to time beside its engines; None where the run's space no longer
    builds from its recorded config or recorded no start timing of it (an older version's
    run: its engines are then timed beside the original only)."""
    if not manifest.get("baseline", {}).get("tracker_latency_us"):
        return None  # nothing to bring its timing back to
    try:
        config = SearchConfig.from_dict(manifest["config"])
        inventory = build_inventory(task.model, task.example_inputs, task.ignored_layers)
        space = build_space(inventory, config.space)
    except (KeyError, TypeError, ValueError):
        return None
    model = compress.apply(task.model, inventory, space.extreme(), task.example_inputs,
                           _calibration_inputs(task, config.calibration_batches), config.space.channel_multiple, config.space.importance)
    return Measurable.from_module(model, task.example_inputs, dynamic_batch=True)


def _versions() -> dict:
    import onnx
    import onnxruntime
    import optuna
    import torch_pruning

    return {
        "python": platform.python_version(), "torch": torch.__version__, "onnx": onnx.__version__,
        "onnxruntime": onnxruntime.__version__, "optuna": optuna.__version__, "torch_pruning": torch_pruning.__version__,
    }


def seed_policies(space: SearchSpace) -> list[Policy]:
    """Policies tried first: int8 everywhere, then int8 with the lightest pruning of every
    group. Over-budget ones cost nothing (the latency table rejects them)."""
    params = space.to_params(Policy())
    for name, domain in space.domains.items():
        if name.startswith("bits/") and 8 in domain:
            params[name] = 8
    seeds = [space.from_params(params)]
    pruned = dict(params)
    for name, domain in space.domains.items():
        if name.startswith("prune/"):
            pruned[name] = min((r for r in domain if r > 0), default=0.0)
    seeds.append(space.from_params(pruned))
    return [p for i, p in enumerate(seeds) if p not in seeds[:i] and p != Policy()]


def _sensitivity_seed(
    bench: Workbench, base: Policy, latency_us: Callable[[Policy], float], budget_us: float, run_dir: Path, manifest: dict,
    console: Console, bn_batches: int,
) -> Policy | None:
    """Score each group's pruning on top of ``base`` before fine-tuning (BatchNorm statistics
    re-estimated on ``bn_batches`` training batches), and return ``base`` with the cheapest
    groups pruned until it fits the budget (None when the base fits or no such policy does);
    what was scored goes into run.json."""
    task = bench.task
    sign = 1.0 if task.higher_is_better else -1.0

    def score(policy: Policy) -> float:
        candidate = bench.candidate(policy)
        recalibrate_batchnorm(candidate, task.train_loader, bn_batches)
        return sign * evaluate(candidate, task.eval_loader, task.metric)

    t0 = time.perf_counter()
    with console.status("Scoring each coupling group's pruning before fine-tuning ..."):
        found = sensitivity_seed(bench.space, base, score, latency_us, budget_us)
    if not found.costs:
        return None
    seconds = time.perf_counter() - t0
    manifest["sensitivity"] = {
        "base": base.to_dict(), "bn_batches": bn_batches, "level": found.level, "ratios": found.ratios, "costs": found.costs,
        "seed": found.seed.to_dict() if found.seed else None, "seconds": seconds,
    }
    atomic_write_json(run_dir / "run.json", manifest)
    if found.seed is None:
        console.print(f"Sensitivity: {len(found.costs)} groups scored in {seconds:.0f} s; no budget-fitted seed from them.")
        return None
    added = sorted((g for g in found.costs if found.seed.prune.get(g) == found.ratios[g]), key=lambda g: found.costs[g])
    if len(added) == len(found.costs):  # the order did not matter: every group is needed
        console.print(f"Sensitivity: all {len(added)} groups are needed at that pruning to fit the budget; the seed is uniform "
                      f"({seconds:.0f} s).")
        return found.seed
    console.print(f"Sensitivity seed: {len(added)} of {len(found.costs)} groups pruned {'further ' if found.level else ''}"
                  f"by the cheapest cost before fine-tuning ({', '.join(f'{g} {found.costs[g]:+.4f}' for g in added[:4])}"
                  f"{', ...' if len(added) > 4 else ''}; {seconds:.0f} s)")
    return found.seed


def _summarize_policy(policy: Policy, n_layers: int) -> str:
    counts = Counter(policy.bits.values())
    bits = ", ".join(f"{name} {counts[b]}/{n_layers}" for b, name in ((8, "int8"), (4, "int4"), (16, "fp16")) if counts[b])
    pruned = [r for r in policy.prune.values() if r > 0]
    mean = (sum(pruned) / len(pruned)) if pruned else 0.0
    tucker = f" (tucker2 {len(policy.decomp)})" if policy.decomp else ""
    return f"{bits or 'fp32'}, prune {len(pruned)}g~{mean:.0%}, rank {len(policy.rank)}{tucker}"


def _check_run_dir(run_dir: Path, task: Task, config: SearchConfig) -> dict | None:
    compress.int8_weight_max()  # a bad AUTOCOMPRESS_INT8_WEIGHTS is refused before any work
    manifest = run_dir / "run.json"
    if not manifest.is_file():
        return None
    try:
        previous = read_json(manifest)
    except (OSError, ValueError):
        previous = None
    if not isinstance(previous, dict) or not isinstance(previous.get("config", {}), dict):
        raise UserError(f"{manifest} is unreadable; choose a new --run-dir or delete that folder.")
    if previous.get("task_fingerprint") != task.fingerprint or previous.get("task") != task.name:
        raise UserError(
            f"Run directory {str(run_dir)!r} holds a run of task {previous.get('task')!r} with other weights or data; "
            "choose a new --run-dir to start a new search."
        )
    if previous.get("config", {}).get("batch_size", 0) != config.batch_size:
        raise UserError(
            f"Run directory {str(run_dir)!r} was searched at --batch-size {previous.get('config', {}).get('batch_size', 0) or 'of the task'}, "
            f"not {config.batch_size or 'of the task'}; use a new --run-dir for another batch size."
        )
    check_int8_weight_width(previous, run_dir, "resume it")
    if previous.get("config", {}).get("latency_budget") != config.latency_budget:
        raise UserError(
            f"Run directory {str(run_dir)!r} was searched with budget {previous.get('config', {}).get('latency_budget')!r}, "
            f"not {config.latency_budget!r}; use a new --run-dir for another budget."
        )
    return previous


def task_distill_config(task: Task, config: SearchConfig) -> DistillConfig:
    """The search's distillation settings with the task's loss, optimizer and (unless the
    user set one) learning rate."""
    lr = task.distill_lr if task.distill_lr is not None and not config.lr_given else config.distill.lr
    features = tuple(config.distill.feature_layers or task.feature_layers) if config.distill.feature_weight > 0 else ()
    if config.distill.feature_weight > 0 and not features:
        raise UserError(f"--feature-weight needs feature layers, and task {task.name!r} names none; set Task.feature_layers.")
    return replace(config.distill, loss=task.distill_loss, optimizer=task.distill_optimizer, lr=lr, feature_layers=features)


def latency_at_start_us(engine: Mapping[str, Any], baseline_us: float, tracker_us: float | None = None) -> float:
    """An engine's latency at the machine speed of the run's start, when the original was
    timed and the table calibrated: its timing times a whole model's start latency over that
    model's latency in the same rounds. The model is the tracker (the space's most
    compressed model, `Workbench.tracker`) where both its start latency ``tracker_us`` and
    its timing beside the engine are known, else the original (``baseline_us``); an engine
    timed beside neither: as timed.

    The table's reference conv follows most drift, not all: on a fresh machine, whole models
    once ran 11% slower while the table was calibrated than minutes later, with the reference
    conv already back to its usual speed, and every candidate of that search was predicted
    high. Points and predictions in the start's units do not move with such drift. The
    original follows it too, but also moves on its own where what limits it does not limit
    compressed models (minilm's float original reads some 43 MB of weights every run)."""
    for start_us, beside_us in ((tracker_us, engine.get("tracker_latency_us")), (baseline_us, engine.get("original_latency_us"))):
        if start_us and beside_us and start_us > 0 and beside_us > 0:
            return float(engine["latency_us"]) * start_us / float(beside_us)
    return float(engine["latency_us"])


def uneven_rounds(engine: Mapping[str, Any], baseline_us: float, tracker_us: float | None) -> float | None:
    """`uneven_drift` of the original and the tracker timed beside an engine, against their
    timings at the run's start (None where either was not timed beside it)."""
    return uneven_drift(engine.get("original_latency_us"), engine.get("tracker_latency_us"), baseline_us, tracker_us)


def budget_latency_us(engine: Mapping[str, Any], baseline_us: float, tracker_us: float | None) -> float:
    """What the budget holds of an engine: its latency at the machine speed of the run's
    start (`latency_at_start_us`), where the budget and the predictions were set; as timed
    where its rounds ran integer and float kernels at other relative speeds than the start
    (`uneven_rounds` beyond ``UNEVEN``), where no whole model carries its timing there."""
    if is_uneven(uneven_rounds(engine, baseline_us, tracker_us)):
        return float(engine["latency_us"])
    return latency_at_start_us(engine, baseline_us, tracker_us)


def train_and_export(
    bench: Workbench, policy: Policy, trial_id: int, distill_config: DistillConfig, engines_dir: Path, check_batches: list,
    seed: int, progress: ProgressHook | None = None,
) -> dict[str, Any]:
    """One trial's expensive part: build the candidate, distill it from the original,
    evaluate it, export and verify its engine. Returns the facts to record; raises on failure.
    ``progress`` sees the student during distillation (a scheduler's intermediate results)."""
    task = bench.task
    torch.manual_seed(seed * 100003 + trial_id)
    t0 = time.perf_counter()
    student = bench.candidate(policy)
    enter_phase("finetune", f"trial {trial_id}")
    losses = distill(student, task.model, task.train_loader, distill_config, progress)
    t_ft = time.perf_counter() - t0
    metric = evaluate(student, task.eval_loader, task.metric)
    enter_phase("export", f"trial {trial_id}")
    checkpoint = save_candidate(student, candidate_path(engines_dir.parent, trial_id), trial_id, policy.to_dict())
    engine = export_engine(
        student, task.example_inputs, engines_dir / f"trial-{trial_id:04d}.onnx", bench.backend, check_batches,
        task.metric, task.eval_loader, task.extra_metrics, original=bench.original, tracker=bench.tracker,
        time_beside=bench.engine_timer,
    )
    timer = bench.engine_timer
    return {
        "trial": trial_id, "metric": metric, "measured_ms": engine.latency_us / 1000,
        "size_bytes": engine.size_bytes,
        "engine": {**engine.to_dict(), "timed_again": timer.last_attempts - 1, "disturbed": timer.last_deviation > DISTURBED},
        "final_loss": losses[-1] if losses else None, "finetune_s": t_ft,
        "summary": _summarize_policy(policy, len(bench.inventory.layers)),
        "checkpoint": {"path": str(checkpoint), "sha256": file_sha256(checkpoint)},
    }


def _stop_if_every_trial_failed(n_done: int, failures: list[str], table: LatencyTable, run_dir: Path) -> None:
    """A run whose first candidates all fail stops with the commonest reason instead of spinning."""
    if n_done == 0 and len(failures) >= MAX_FAILURES_BEFORE_SUCCESS:
        table.save()
        common, count = Counter(failures).most_common(1)[0]
        raise UserError(
            f"The first {len(failures)} candidates all failed ({count}x {common}); the search stopped. "
            f"Each failure is kept with its reason in {run_dir / 'study.db'}; fix the cause and re-run to resume."
        )


def run_search(
    config: SearchConfig, console: Console | None = None, task: Task | None = None, ray_callbacks: tuple = (),
) -> RunResult:
    """Run (or resume) the search ``config`` describes; ``ray_callbacks`` are extra Ray Tune
    callbacks of a search on Ray."""
    console = console or Console(stderr=False)
    budget = parse_budget(config.latency_budget)
    if config.ray is not None:
        from autocompress.search._ray import check_reachable

        check_reachable(config.ray)  # before minutes of measuring
    run_dir = Path(config.run_dir)
    make_folder(run_dir, create=False)  # before the task loads, which can take minutes
    t_start = time.perf_counter()
    torch.manual_seed(config.seed)

    # 1. Task, inventory, space, target.
    task = (task or load_task(config.task)).at_batch(config.batch_size)
    previous = _check_run_dir(run_dir, task, config)
    distill_config = task_distill_config(task, config)
    bench = open_workbench(
        task, config.space, config.threads, run_dir / "latency_table.json", config.share_table, config.allow_other_profile,
        config.calibration_batches, config.backend,
    )
    make_folder(run_dir)
    inventory, space, backend, table = bench.inventory, bench.space, bench.backend, bench.table
    console.print(
        f"[bold]{task.name}[/]: {len(inventory.layers)} layers in {len(inventory.groups)} coupling groups, "
        f"{len(space.domains)} search dimensions ({space.size:.3g} policies)"
    )

    # 2. Baseline and budget.
    example = task.example_inputs
    original = bench.original
    baseline_timing, tracker_timing = backend.measure_many([original, bench.tracker], rounds=5)
    baseline_ms, tracker_us = baseline_timing.median_us / 1000, tracker_timing.median_us
    try:
        baseline_metric = evaluate(task.model, task.eval_loader, task.metric)
        baseline_extra = {name: evaluate(task.model, task.eval_loader, fn) for name, fn in task.extra_metrics.items()}
    except Exception as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
        raise UserError(
            f"The task's metric failed on the original model ({type(exc).__name__}: {first}); "
            "fix the metric function, which is called as metric(outputs, targets)."
        ) from None
    budget_ms = budget.resolve(baseline_ms)
    console.print(
        f"Original model: {task.metric_name} {baseline_metric:.4f}, {baseline_ms:.3f} ms "
        f"({backend.name}, {config.threads} thread(s), batch {example[0].shape[0]})"
    )
    console.print(f"Latency budget: [bold]{budget_ms:.3f} ms[/] ({config.latency_budget})")
    if budget_ms >= baseline_ms:
        console.print(f"[yellow]The original model already meets this budget ({baseline_ms:.3f} ms); the search still looks for "
                      "smaller candidates under it. For a faster model, give a budget below that, such as 0.5x.[/]")
    sign = 1.0 if task.higher_is_better else -1.0
    metric_floor = None if config.max_metric_drop is None else baseline_metric - sign * config.max_metric_drop
    if metric_floor is not None:
        console.print(f"Metric floor: {task.metric_name} {'>=' if task.higher_is_better else '<='} {metric_floor:.4f} "
                      f"(at most {config.max_metric_drop:g} lost); candidates beyond it are infeasible and left off the front")

    def shortfall(metric: float) -> float | None:
        return metric_shortfall(metric, metric_floor, task.higher_is_better)
    check_batches = [next(iter(task.eval_loader))]

    # 3. Latency table: measured on the target, calibrated on whole models.
    t0 = time.perf_counter()
    enter_phase("table")
    if config.remeasure_table and not table.is_calibrated(inventory):  # a resumed run keeps the entries it was predicting with
        with Progress(TextColumn("measuring the latency table again"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                      console=console, transient=True) as bar:
            job = bar.add_task("remeasure", total=None)
            table.build(inventory, space, on_entry=lambda i, total: bar.update(job, completed=i, total=total), remeasure=True)
        table.save()
    with console.status("Measuring the latency table on the target ..."):
        if not table.is_calibrated(inventory):
            table.calibrate(inventory, space, bench.measure_policies, seed=config.seed, budget_s=config.calibration_seconds)
        fastest_policy, fastest_us = table.fastest(inventory, space)
        # Refuse a budget only when both the line and its local correction put it out of
        # reach: the correction borrows the bias of whatever was measured at a similar sum.
        fastest_ms = min(fastest_us, table.predict_us(inventory, fastest_policy, local=False)) / 1000
    # From here on, predictions stay at the machine speed of the calibration, and each exported
    # engine's timing is brought to it by the tracker timed beside it (`latency_at_start_us`).
    table.freeze_reference(retime=False)
    table.save()
    cal = table.calibrations[inventory.fingerprint]
    console.print(
        f"Latency table: {len(table.entries)} entries ({table.measured_now} measured now, {time.perf_counter() - t0:.1f} s); "
        f"calibration {cal.describe()}"
    )
    if budget_ms < fastest_ms:
        raise UserError(
            f"The budget {budget_ms:.3f} ms is below the fastest latency this search space reaches "
            f"({fastest_ms:.3f} ms predicted by the latency table); raise --latency-budget or widen the space."
        )

    manifest = {
        "schema": SCHEMA,
        "task": task.name,
        "task_spec": config.task,
        "task_fingerprint": task.fingerprint,
        "inventory_fingerprint": inventory.fingerprint,
        "layers": [{"name": l.name, "kind": l.kind, "out_group": l.out_group, "params": l.params} for l in inventory.layers.values()],
        "config": {**asdict(config), "distill": asdict(distill_config), "space": asdict(config.space)},
        "metric_name": task.metric_name,
        "higher_is_better": task.higher_is_better,
        "baseline": {"latency_ms": baseline_ms, "metric": baseline_metric, "extra_metrics": baseline_extra,
                     "tracker_latency_us": tracker_us},
        "budget_ms": budget_ms,
        "metric_floor": metric_floor,
        "profile": table.profile,
        "int8_weight_max": compress.int8_weight_max(),  # 64: 7-bit weights, for CPUs whose int8 kernels saturate
        "versions": _versions(),
        "command": sys.argv,
        "created": (previous or {}).get("created") or datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }
    atomic_write_json(run_dir / "run.json", manifest)

    # 4. The search loop.
    enter_phase("search")
    storage = f"sqlite:///{(run_dir / 'study.db').resolve()}"
    predict_us = functools.partial(table.predict_us, inventory)  # what every stage below asks of a policy
    try:
        searcher = make_searcher(
            config.searcher, space, storage, config.seed, task.higher_is_better, predict_us,
            budget_ms * 1000, config.objectives, run_dir,
        )
    except Exception as exc:  # SQLAlchemy's DatabaseError and kin: the file is not a whole SQLite database
        if not (run_dir / "study.db").is_file():
            raise
        raise trial_store_error(run_dir, exc) from None
    interrupted = searcher.abandon_running(retry=True)
    importance = WeightL1Importance(task.model, inventory, space) if config.repair or config.widens else None
    repair = BudgetRepair(space, predict_us, importance) if config.repair else None
    widening = FreeWidening(space, predict_us, importance) if config.widens else None

    def learn_from(policy: Policy, engine: dict) -> None:
        """Later predictions learn from an engine's timing, brought to the machine speed the
        table was calibrated at, unless its rounds ran integer and float kernels at other
        relative speeds than the run's start (``engine["uneven"]`` beyond ``UNEVEN``): the
        tracker then brings the timing there wrongly (48% median error on the 60 candidates
        of such a run, BENCHMARKS.md), and the point would pull every prediction near it."""
        engine["uneven"] = drift = uneven_rounds(engine, baseline_ms * 1000, tracker_us)
        if not is_uneven(drift):
            table.add_measurement(inventory, policy, latency_at_start_us(engine, baseline_ms * 1000, tracker_us))
            table.save_if_changed()

    def widen_proposal(policy: Policy, predicted_ms: float, attrs: dict) -> tuple[Policy, float]:
        """A within-budget proposal widened where the table predicts it costs nothing (the
        trial evaluates the widened policy; its record keeps the proposal), and its prediction.
        A widening into a policy already fine-tuned is not taken: the proposal runs as
        proposed, so widening never turns a new proposal into a repeat (under a loose budget
        on a small model most proposals widen into a few policies, and a search of repeats
        ran out of proposals with fewer trials fine-tuned than asked).
        Local or on Ray, this is the last step before a fine-tune: the entries the proposal's
        predictions measured are saved here, so a kill in the fine-tune loses none of them."""
        wide = widening(policy) if widening is not None and policy.digest not in seen else None
        table.save_if_changed()
        if wide is None or wide.policy.digest in seen:
            return policy, predicted_ms
        attrs.update({"policy": wide.policy.to_dict(), "digest": wide.policy.digest, "predicted_ms": wide.predicted_us / 1000,
                      "widened": list(wide.changes), "widened_from": {"policy": policy.to_dict(), "predicted_ms": predicted_ms}})
        return wide.policy, wide.predicted_us / 1000
    if not searcher.study.get_trials(deepcopy=False):
        seeds: list[tuple[Policy, dict]] = [(p, {}) for p in seed_policies(space)]  # the uniform baselines
        if config.sensitivity_seed and seeds:  # proposed right after int8 everywhere, before the uniform pruning
            informed = _sensitivity_seed(bench, seeds[0][0], predict_us, budget_ms * 1000,
                                         run_dir, manifest, console, distill_config.bn_batches)
            if informed is not None and all(informed != p for p, _ in seeds):
                seeds.insert(1, (informed, {"seed": "sensitivity"}))
        for policy, attrs in seeds:
            searcher.enqueue(policy, attrs)
    if interrupted:
        console.print(f"Marked {interrupted} interrupted trial(s) of the previous process as failed; their candidates are proposed again.")
    # Fine-tuned trials only: a repeat of a policy (told its original's outcome) has no metric of its own.
    completed = [t for t in searcher.study.get_trials(deepcopy=False)
                 if t.user_attrs.get("status") == "completed" and "duplicate_of" not in t.user_attrs]
    seen: dict[str, dict] = {t.user_attrs["digest"]: t.user_attrs for t in completed}
    tried = {t.user_attrs["digest"] for t in searcher.study.get_trials(deepcopy=False)
             if t.user_attrs.get("status") in ("completed", "failed") and "digest" in t.user_attrs}
    repaired_queue: list[tuple[int, Policy]] = []  # repaired proposals, evaluated next as their own trials

    def repair_proposal(policy: Policy) -> Any:
        """The repair of an over-budget proposal (or None); a policy is repaired into once."""
        fixed = repair(policy, budget_ms * 1000, tried) if repair is not None else None
        if fixed is not None:
            tried.add(fixed.policy.digest)
        return fixed
    if completed:
        console.print(f"Resuming: {len(completed)} completed trial(s) kept.")
    best: float | None = max((sign * t.user_attrs["metric"] for t in completed), default=None)
    n_done = len(completed)
    proposals = 0
    max_proposals = config.max_proposals_per_trial * config.trials
    engines_dir = run_dir / "engines"

    progress = Progress(
        TextColumn("[bold]trials"), BarColumn(), MofNCompleteColumn(), TextColumn("best under budget: {task.fields[best]}"),
        TextColumn("rejected by table: {task.fields[rejected]}"), TimeElapsedColumn(), TextColumn("left"), TimeRemainingColumn(),
        console=console, transient=False,
    )
    rejected = 0
    failures: list[str] = []
    with progress:
        bar = progress.add_task("search", total=config.trials, completed=n_done, best="-", rejected=0)

        def show_completed(trial_id: int, predicted_ms: float, attrs: dict) -> None:
            """Progress and one line for a fine-tuned trial, local or on Ray."""
            nonlocal best
            metric, measured_ms, engine = attrs["metric"], attrs["engine"]["latency_us"] / 1000, attrs["engine"]
            if budget_latency_us(engine, baseline_ms * 1000, tracker_us) <= budget_ms * 1000 * BUDGET_NOISE and (best is None or sign * metric > best):
                best = sign * metric
            progress.update(bar, advance=1, best=f"{sign * best:.4f}" if best is not None else "-")
            where = f", node {attrs['ray_node'][:8]}" if attrs.get("ray_node") else ""
            flag = "" if engine["ok"] else f" [red]engine check failed: {'; '.join(engine['problems'])}[/]"
            if attrs.get("widened"):
                where += f", {len(attrs['widened'])} choice(s) widened at no predicted cost"
            if engine.get("timed_again"):
                where += (f"; timed again {engine['timed_again']}x after a passing disturbance of the machine"
                          + (", which lasted" if engine.get("disturbed") else ""))
            if is_uneven(drift := engine.get("uneven")):
                where += (f"; [yellow]timed while the most compressed model ran {drift:+.0%} against the original "
                          "relative to the start: not used to correct the table[/]")
            console.print(
                f"  trial {trial_id:>3}: {task.metric_name} {metric:.4f}  predicted {predicted_ms:.3f} ms  "
                f"measured {measured_ms:.3f} ms  ({attrs['summary']}, {attrs['trial_s']:.0f} s{where}){flag}"
            )
        if config.ray is not None:  # the same trials as Ray Tune trials; this process records them all
            from autocompress.search._ray import WorkerSpec, resolve_task_spec, run_ray_trials

            spec = WorkerSpec(resolve_task_spec(config.task), task.fingerprint, config.space, config.threads,
                              config.calibration_batches, distill_config, config.seed, batch_size=config.batch_size,
                              int8_weight_max=compress.int8_weight_max())
            sweep = run_ray_trials(
                config.ray, searcher, lambda p: predict_us(p) / 1000, budget_ms, spec, run_dir,
                target=config.trials, completed=n_done, max_proposals=max_proposals,
                max_failures_before_success=MAX_FAILURES_BEFORE_SUCCESS, seen=seen, on_completed=show_completed,
                on_measured=learn_from,
                higher_is_better=task.higher_is_better,
                callbacks=ray_callbacks, repair=repair_proposal, shortfall=shortfall, widen=widen_proposal,
            )
            n_done, proposals, failures = sweep.completed, sweep.proposals, sweep.failures
            progress.update(bar, rejected=sweep.rejected)
            _stop_if_every_trial_failed(n_done, failures, table, run_dir)
        # a queued repair is always run
        while config.ray is None and (repaired_queue or (n_done < config.trials and proposals < max_proposals)):
            proposals += 1
            t_trial = time.perf_counter()
            is_repair = bool(repaired_queue)
            asked = repaired_queue.pop(0) if is_repair else searcher.ask()
            if asked is None:
                break
            trial_id, policy = asked
            predicted_ms = predict_us(policy) / 1000
            attrs: dict[str, Any] = {"policy": policy.to_dict(), "digest": policy.digest, "predicted_ms": predicted_ms}
            if predicted_ms > budget_ms:
                rejected += 1
                # A repair that no longer fits (the table moved meanwhile) is not repaired again.
                fixed = repair_proposal(policy) if not is_repair else None
                if fixed is not None:  # evaluated next as its own trial; the sampler still learns the budget from this one
                    repaired_id = searcher.ask_policy(fixed.policy, {"repair_of": trial_id, "repair_steps": fixed.steps})
                    repaired_queue.append((repaired_id, fixed.policy))
                    attrs["repaired_to"] = repaired_id
                searcher.record(trial_id, {**attrs, "predict_s": time.perf_counter() - t_trial})
                searcher.tell(trial_id, Outcome("infeasible", constraint=predicted_ms - budget_ms, overhead_s=time.perf_counter() - t_trial))
                progress.update(bar, rejected=rejected)
                continue
            policy, predicted_ms = widen_proposal(policy, predicted_ms, attrs)
            if policy.digest in seen:  # the sampler repeated itself: reuse, do not fine-tune again
                prev = seen[policy.digest]
                searcher.record(trial_id, {**attrs, "duplicate_of": prev.get("trial"), "measured_ms": prev.get("measured_ms")})
                searcher.tell(trial_id, Outcome("completed", prev["metric"], prev.get("measured_ms", predicted_ms), predicted_ms - budget_ms,
                                                size_bytes=prev.get("size_bytes"), overhead_s=time.perf_counter() - t_trial,
                                                metric_shortfall=shortfall(prev["metric"])))
                continue
            tried.add(policy.digest)
            overhead_s = time.perf_counter() - t_trial  # ask and predict; fine-tuning and export are not overhead
            try:
                attrs.update(train_and_export(bench, policy, trial_id, distill_config, engines_dir, check_batches, config.seed))
            except Exception as exc:  # one trial's failure must not end the search
                reason = f"{type(exc).__name__}: {str(exc).strip().splitlines()[0] if str(exc).strip() else ''}"
                searcher.record(trial_id, attrs)
                searcher.tell(trial_id, Outcome("failed", reason=reason, overhead_s=overhead_s))
                console.print(f"  trial {trial_id} failed: {reason}")
                failures.append(reason)
                _stop_if_every_trial_failed(n_done, failures, table, run_dir)
                continue
            attrs["trial_s"] = time.perf_counter() - t_trial
            metric, engine_latency_us = attrs["metric"], attrs["engine"]["latency_us"]
            t_record = time.perf_counter()
            learn_from(policy, attrs["engine"])  # before the record, which keeps whether it did
            searcher.record(trial_id, attrs)
            searcher.tell(trial_id, Outcome("completed", metric, engine_latency_us / 1000, predicted_ms - budget_ms,
                                            size_bytes=attrs["size_bytes"], overhead_s=overhead_s + time.perf_counter() - t_record,
                                            metric_shortfall=shortfall(metric)))
            seen[policy.digest] = attrs
            n_done += 1
            show_completed(trial_id, predicted_ms, attrs)
    table.save()
    if n_done < config.trials:
        console.print(
            f"[yellow]Stopped after {proposals} proposals with {n_done} of {config.trials} trials fine-tuned: "
            "most proposals were over budget or failed. Raise the budget or widen the space.[/]"
        )

    # 5. The front: re-measure candidates interleaved with the baseline, keep those within budget.
    enter_phase("front")
    result = finalize_run(run_dir, task.metric_name, console, backend, original, wall_s=time.perf_counter() - t_start, tracker=bench.tracker)
    if config.final_finetune and result.front:
        for member in result.front:
            with console.status(f"Final fine-tuning of trial {member['trial']} ({config.final_finetune} steps) ..."):
                final = export_trial(run_dir, member["trial"], "onnx", run_dir / "engines" / "final", config.final_finetune)
            metric = f"{final.metric:.4f}" if final.metric is not None else "-"
            console.print(f"  trial {member['trial']}: final engine {final.engine} ({task.metric_name} {metric}, "
                          f"{final.latency_ms:.3f} ms){'' if final.ok else ' [red]verification failed[/]'}")
        result = finalize_run(run_dir, task.metric_name, console, backend, original, wall_s=time.perf_counter() - t_start,
                              tracker=bench.tracker)
    console.print(f"Done in {time.perf_counter() - t_start:.0f} s: {result.counts}")
    enter_phase("done")
    return result


# What reading a search's run.json back relies on (report, export): each key's type, or
# object for a value only recorded and shown.
_RUN_RECORD = {"task": object, "task_spec": str, "config": dict, "metric_name": object, "higher_is_better": object,
               "baseline": dict, "budget_ms": (int, float), "profile": dict}


def read_run_record(run_dir: Path) -> dict:
    """A search's run.json, checked for what reading it back relies on: a one-line error
    naming the file when it is unreadable or incomplete."""
    path = run_dir / "run.json"
    try:
        manifest = read_json(path)
    except (OSError, ValueError) as exc:
        raise UserError(f"{str(path)!r} is unreadable ({type(exc).__name__}); restore it from a copy, or search again "
                        "with a new --run-dir.") from None
    bad = ["an object"] if not isinstance(manifest, dict) else [
        repr(k) for k, kind in _RUN_RECORD.items() if k not in manifest or not isinstance(manifest[k], kind)]
    if bad:
        raise UserError(f"{str(path)!r} is not a search's record (it lacks a valid {bad[0]}); give the --run-dir of a search, "
                        "or restore the file from a copy.")
    return manifest


def check_int8_weight_width(manifest: Mapping, run_dir: Path, to: str) -> None:
    """Refuse to go on with a run whose int8 layers trained on another weight range than
    this process gives them (``compress.int8_weight_max``): its engines would leave PyTorch."""
    recorded = manifest.get("int8_weight_max", 127)  # runs recorded before the range was chosen used 127
    now = compress.int8_weight_max()
    if recorded == now:
        return
    bits = {m: b for b, m in compress.WEIGHT_MAX_OF_BITS.items()}
    raise UserError(
        f"Run directory {str(run_dir)!r} trained its int8 layers on {bits.get(recorded, recorded)}-bit weights, not "
        f"{bits[now]}; set {compress.WEIGHT_RANGE_ENV}={bits.get(recorded, recorded)} to {to}."
    )


def load_recorded_task(manifest: Mapping) -> Task:
    """The task a run recorded, at the run's batch size; a one-line error saying it is the
    recorded task that does not load."""
    try:
        return load_task(manifest["task_spec"], manifest["config"].get("batch_size", 0))
    except UserError as exc:
        raise UserError(f"The run's recorded task {manifest['task_spec']!r} does not load: {exc}") from None


def trial_store_error(run_dir: Path, exc: BaseException) -> UserError:
    """The one-line error for a study.db that Optuna cannot open, with optuna's or SQLite's
    own reason: a locked or older-version store keeps its trials, a damaged one does not."""
    path = str(run_dir / "study.db")
    reason = one_line(exc)
    text = reason.lower()
    if "locked" in text:
        fix = "another process is using it; wait for it to finish, then run the command again"
    elif "upgrade" in text or "schema" in text or "version" in text:
        fix = "it was written by another Optuna version; run `optuna storage upgrade` on it, or use that version"
    else:
        fix = "it is damaged or holds no search: move it away to search again in this folder, or use a new --run-dir"
    return UserError(f"The trial store {path!r} cannot be opened ({reason}); {fix}.")


def open_study(run_dir: Path):
    """The run's Optuna study, or a one-line error when study.db is not one."""
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    storage = f"sqlite:///{(run_dir / 'study.db').resolve()}"
    try:
        return optuna.load_study(study_name="autocompress", storage=storage)
    except Exception as exc:  # SQLAlchemy's DatabaseError, optuna's KeyError for a store without the study, and kin
        raise trial_store_error(run_dir, exc) from None


def _load_trials(run_dir: Path) -> tuple[Any, list[dict]]:
    study = open_study(run_dir)
    trials = []
    for t in study.get_trials(deepcopy=False):
        a = dict(t.user_attrs)
        a["number"] = t.number
        a["state"] = t.state.name
        trials.append(a)
    return study, trials


def _engine_file(run_dir: Path, trial: dict) -> Path:
    """A trial's engine inside ``run_dir`` (the recorded path may name the folder before a move)."""
    return run_dir / "engines" / Path(trial["engine"]["path"]).name


def _verification_problems(run_dir: Path, trial: dict) -> list[str]:
    """The engine's recorded check failures, plus any change to its file since it was verified."""
    engine = trial["engine"]
    problems = list(engine.get("problems", []))
    path = _engine_file(run_dir, trial)
    if not path.is_file():
        problems.append(f"engine file {path.name} is missing")
    elif file_sha256(path) != engine.get("sha256"):
        problems.append(f"engine file {path.name} changed since it was verified (sha256 differs)")
    return problems


def _write_member_sidecar(run_dir: Path, manifest: dict, member: dict) -> Path | None:
    engine, path = member["engine"], run_dir / member["engine_file"]
    if not path.is_file():
        return None
    checkpoint = candidate_path(run_dir, member["trial"])
    provenance = {
        "format": engine.get("format", "onnx"), "trial": member["trial"], "policy": member["policy"], "run": str(run_dir),
        "task": manifest["task"], "task_spec": manifest.get("task_spec"), "task_fingerprint": manifest.get("task_fingerprint"),
        "metric_name": manifest["metric_name"], "target_profile": manifest["profile"], "versions": manifest.get("versions", {}),
        "checkpoint": ({"path": str(checkpoint.relative_to(run_dir)), "sha256": file_sha256(checkpoint)}
                       if checkpoint.is_file() else None),
        "finetune": {"search_steps": manifest["config"]["distill"]["steps"], "final_steps": 0},
    }
    verification = {
        "runtime": "onnxruntime", "tolerance": engine["tolerance"], "relative_error": engine["relative_error"],
        "max_abs_error": engine["max_abs_error"], "output_cosine": engine.get("output_cosine"),
        "top1_agreement": engine.get("top1_agreement"), "integer_nodes": engine.get("integer_nodes", {}),
        "int8_layers": engine.get("int8_layers"), "latency_ms": member["measured_ms"],
        "first_latency_ms": member.get("first_measured_ms"), "at_start_ms": member.get("at_start_ms"), "predicted_ms": member["predicted_ms"],
        "speedup_vs_original_same_round": member.get("speedup"),
        "latency_method": (f"{manifest['profile'].get('backend', DEFAULT_BACKEND)}, {manifest['profile'].get('threads', 1)} "
                           "thread(s), median over 5 rounds interleaved with the whole models of pareto.json's retime_speed "
                           "(the latency table's backend)"),
        "runtime_metric": engine.get("runtime_metric"), "runtime_extra_metrics": engine.get("runtime_extra_metrics", {}),
        "ok": member["verified"], "problems": member["problems"],
    }
    return write_sidecar(path, provenance, verification)


def finalize_run(
    run_dir: Path, task_metric_name: str, console: Console, backend: LatencyBackend, original: Measurable,
    wall_s: float | None = None, tracker: Measurable | None = None,
) -> RunResult:
    """Pick the front from the trial store, re-time it, and write pareto.json, each member's
    engine sidecar, and report.html. Members whose engine failed verification stay on the
    front only where no verified candidate dominates them, marked with the reasons; the
    fine-tuned weights of trials off the front are deleted when large.

    Engines are re-timed from their files interleaved with ``original`` (and ``tracker``,
    the space's most compressed model, where given); a backend that runs PyTorch modules
    (``needs_module``) cannot load them, and its front keeps the latency measured in the
    trial, compared with the baseline measured at the start. The budget holds an engine's
    latency at the machine speed of the run's start (`latency_at_start_us`, by the models
    timed beside it), which is where the budget and every prediction were set: a machine
    running 15% slow during the re-timing does not push members off the front, nor a fast
    one let slow ones on."""
    manifest = read_run_record(run_dir)
    _, trials = _load_trials(run_dir)
    budget_ms = manifest["budget_ms"]
    higher = manifest["higher_is_better"]
    exported = [t for t in trials if t.get("status") == "completed" and "engine" in t and "duplicate_of" not in t]
    for t in exported:
        t["problems"] = _verification_problems(run_dir, t)
        t["verified"] = not t["problems"]
    done = [t for t in exported if t["verified"]]
    counts = {
        "completed": sum(1 for t in trials if t.get("status") == "completed" and "duplicate_of" not in t),
        "infeasible": sum(1 for t in trials if t.get("status") == "infeasible"),
        "failed": sum(1 for t in trials if t.get("status") == "failed" and not t.get("stopped_early")),
        "duplicates": sum(1 for t in trials if "duplicate_of" in t),
        "failed_verification": len(exported) - len(done),
        "repaired": sum(1 for t in trials if "repair_of" in t and t.get("status") == "completed"),
        "widened": sum(1 for t in trials if t.get("widened") and t.get("status") == "completed" and "duplicate_of" not in t),
    }
    if any(t.get("stopped_early") for t in trials):  # a Ray scheduler stopped weak fine-tunes
        counts["stopped_early"] = sum(1 for t in trials if t.get("stopped_early"))
    metric_of, latency_of = (lambda t: t["metric"]), (lambda t: t["measured_ms"])
    floor = manifest.get("metric_floor")  # set by --max-metric-drop: what lies beyond it is not on the front
    below = lambda t: (metric_shortfall(t["metric"], floor, higher) or 0.0) > 0  # noqa: E731
    if floor is not None:
        counts["below_metric_floor"] = sum(1 for t in exported if below(t))
    base_us, tracker_us = manifest["baseline"]["latency_ms"] * 1000, manifest["baseline"].get("tracker_latency_us")
    near = [t for t in exported if budget_latency_us(t["engine"], base_us, tracker_us) <= budget_ms * 1000 * 1.25 and not below(t)
            and _engine_file(run_dir, t).is_file()]
    candidates = pareto_front(near, metric_of, latency_of, higher)
    retime_speed = None  # the whole models' timings at the re-timing over theirs at the start
    if candidates and not backend.needs_module:  # re-time interleaved with the whole models, so drift hits all alike
        feeds = original.feeds()
        engines = [Measurable.from_onnx(_engine_file(run_dir, t), feeds) for t in candidates]
        beside = [original, tracker] if tracker is not None and tracker_us else [original]
        timings = backend.measure_many([*beside, *engines], rounds=5)
        original_us = timings[0].median_us
        tracker_now_us = timings[1].median_us if len(beside) == 2 else None
        retime_speed = {"original": original_us / base_us, **({"most_compressed": tracker_now_us / tracker_us} if tracker_now_us else {})}
        for t, m in zip(candidates, timings[len(beside):]):
            t["first_measured_ms"] = t["measured_ms"]
            t["measured_ms"] = m.median_us / 1000
            t["speedup_vs_original_same_round"] = original_us / m.median_us
            retimed = {"latency_us": m.median_us, "original_latency_us": original_us, "tracker_latency_us": tracker_now_us}
            t["at_start_ms"] = budget_latency_us(retimed, base_us, tracker_us) / 1000
    for t in candidates:
        t.setdefault("speedup_vs_original_same_round", manifest["baseline"]["latency_ms"] / t["measured_ms"])
    for t in exported:  # the re-timing for the front's candidates, the trial's timing for the others
        t.setdefault("at_start_ms", budget_latency_us(t["engine"], base_us, tracker_us) / 1000)
    within = [t for t in candidates if t["at_start_ms"] <= budget_ms * BUDGET_NOISE]
    front_ids = {id(t) for t in pareto_front([t for t in within if t["verified"]], metric_of, latency_of, higher)}
    # A failed engine stays visible (marked) where no verified candidate beats it.
    front_ids |= {id(t) for t in pareto_front(within, metric_of, latency_of, higher) if not t["verified"]}
    front = sorted((t for t in within if id(t) in front_ids), key=latency_of)
    def figures(trials: list[dict], measured_ms: Callable[[dict], float]) -> dict:
        report = table_fidelity([t["predicted_ms"] for t in trials], [measured_ms(t) for t in trials])
        return {"candidates": len(trials), "median_abs_error": report.median_abs_error,
                "within_10pct": report.within_10pct, "within_5pct": report.within_5pct}

    measured = [t for t in done if t.get("measured_ms")]
    fidelity = figures(measured, lambda t: t["measured_ms"]) if measured else {}
    engine_of = lambda t: t.get("engine") or {}  # noqa: E731
    timed_beside = [t for t in measured if engine_of(t).get("original_latency_us") or engine_of(t).get("tracker_latency_us")]
    if timed_beside:  # the table's own error, apart from the machine's drift since the calibration
        fidelity["at_calibration_speed"] = figures(timed_beside, lambda t: latency_at_start_us(t["engine"], base_us, tracker_us) / 1000)
        by_tracker = bool(tracker_us) and all(engine_of(t).get("tracker_latency_us") for t in timed_beside)
        fidelity["at_calibration_speed"]["by"] = "the most compressed model" if by_tracker else "the original"
        both = [e for e in map(engine_of, timed_beside) if e.get("original_latency_us") and e.get("tracker_latency_us")]
        if both and tracker_us:  # did integer and float kernels keep their relative speeds since the start?
            fidelity["uneven"] = uneven_drift(statistics.median(e["original_latency_us"] for e in both),
                                              statistics.median(e["tracker_latency_us"] for e in both), base_us, tracker_us)
        fidelity["timed_unevenly"] = sum(1 for e in map(engine_of, timed_beside) if is_uneven(e.get("uneven")))
    members = []
    for t in front:
        engine_path = _engine_file(run_dir, t)
        member = {
            "trial": t["number"], "number": t["number"], "policy": t["policy"], "metric": t["metric"],
            "predicted_ms": t["predicted_ms"], "measured_ms": t["measured_ms"], "at_start_ms": t["at_start_ms"], "size_bytes": t["size_bytes"],
            "first_measured_ms": t.get("first_measured_ms"), "speedup": t.get("speedup_vs_original_same_round"),
            "engine": t["engine"], "engine_path": str(engine_path), "summary": t.get("summary", ""), "widened": t.get("widened", []),
            "extra_metrics": t["engine"].get("runtime_extra_metrics", {}),
            "verified": t["verified"], "problems": t["problems"],
            "engine_file": f"engines/{engine_path.name}", "sidecar_file": f"engines/{sidecar_path(engine_path).name}",
        }
        _write_member_sidecar(run_dir, manifest, member)
        final = read_sidecar(run_dir / "engines" / "final" / engine_path.name)
        if final is not None:
            member["final"] = {
                "engine_file": f"engines/final/{final['engine']}", "sidecar_file": f"engines/final/{final['engine']}.json",
                "steps": final["finetune"]["final_steps"], "metric": final["verification"].get("runtime_metric"),
                "latency_ms": final["verification"].get("latency_ms"), "verified": final["verification"].get("ok"),
                "problems": final["verification"].get("problems", []),
            }
        members.append(member)
    removed = prune_candidates(run_dir, keep={m["trial"] for m in members})
    summary = {
        "run": str(run_dir), "task": manifest["task"], "metric_name": manifest["metric_name"],
        "higher_is_better": higher, "baseline": manifest["baseline"], "budget": manifest["config"]["latency_budget"],
        "budget_ms": budget_ms, "metric_floor": floor, "profile": manifest["profile"], "counts": counts, "fidelity": fidelity,
        "layers": manifest.get("layers", []), "created": manifest.get("created"),
    }
    if wall_s is not None:
        summary["search_wall_s"] = wall_s
    if retime_speed is not None:
        summary["retime_speed"] = retime_speed
    atomic_write_json(run_dir / "pareto.json", {"schema": SCHEMA, **summary, "members": members})
    report = write_report(run_dir / "report.html", summary, trials, members)

    console.print(front_table(summary, members))
    if not members:
        console.print("[yellow]No fine-tuned candidate measured within the budget"
                      + (f" with {manifest['metric_name']} at or beyond the floor {floor:.4f}" if floor is not None else "") + ".[/]")
    if fidelity:
        console.print(
            f"Latency table on this run's {fidelity['candidates']} exported candidates: median |error| "
            f"{fidelity['median_abs_error']:.1%}, within ±10%: {fidelity['within_10pct']:.0%}"
            + (f" (at the machine speed of its calibration, by {steady.get('by', 'the original')} timed beside each: "
               f"{steady['median_abs_error']:.1%}, {steady['within_10pct']:.0%})" if (steady := fidelity.get("at_calibration_speed")) else "")
        )
    if warning := uneven_warning(fidelity.get("uneven"), "at the run's start"):
        console.print(f"[yellow]{warning}[/]")
    if note := timed_unevenly_note(fidelity.get("timed_unevenly"), fidelity.get("candidates")):
        console.print(f"[yellow]{note}[/]")
    if removed:
        console.print(f"Deleted the fine-tuned weights of {len(removed)} trial(s) off the front (kept: front members').")
    console.print(f"Report: [bold]{report}[/]   Front: {run_dir / 'pareto.json'}")
    base = manifest["baseline"]
    return RunResult(run_dir, base["latency_ms"], base["metric"], budget_ms, members, counts)


def front_table(summary: dict, members: list[dict]) -> Table:
    """The front as a terminal table, with each engine's verification status."""
    base = summary["baseline"]
    floor = summary.get("metric_floor")
    table = Table(title=f"Pareto front (budget {summary['budget_ms']:.3f} ms"
                        + (f", {summary['metric_name']} floor {floor:.4f}" if floor is not None else "") + ")",
                  caption=retime_note(summary))
    extra_names = list(base.get("extra_metrics", {}))
    at_start = retime_note(summary) is not None  # the latency the budget holds, where it differs from the timing
    for col in ("trial", summary["metric_name"], "vs original", *[f"{n} (orig {base['extra_metrics'][n]:.3f})" for n in extra_names],
                "predicted ms", "measured ms", *(["at start ms"] if at_start else []), "speedup", "KiB", "engine", "policy"):
        table.add_column(col, justify="left" if col in ("policy", "engine") else "right", overflow="fold")
    for m in members:
        extra = [f"{m['extra_metrics'][n]:.4f}" if n in m["extra_metrics"] else "-" for n in extra_names]
        verified = m.get("verified", m["engine"].get("ok", True))
        status = "verified" if verified else "[red]FAILED: " + "; ".join(m.get("problems") or m["engine"].get("problems", [])) + "[/]"
        final = m.get("final")
        if final:
            metric = f"{final['metric']:.4f}" if final.get("metric") is not None else "-"
            status += f"; final +{final['steps']} steps: {metric}" + ("" if final.get("verified") else " [red](FAILED)[/]")
        table.add_row(
            str(m["trial"]), f"{m['metric']:.4f}", f"{m['metric'] - base['metric']:+.4f}", *extra, f"{m['predicted_ms']:.3f}",
            f"{m['measured_ms']:.3f}", *([f"{m['at_start_ms']:.3f}" if m.get("at_start_ms") else "-"] if at_start else []),
            f"{m['speedup']:.2f}x" if m.get("speedup") else "-", f"{m['size_bytes'] / 1024:.0f}",
            status, m["summary"],
        )
    return table
