"""The search's trials as Ray Tune trials across a Ray cluster.

The driver (the process running ``autocompress search``) keeps the project's searcher and
the trial store. A Ray Tune :class:`Searcher` adapter asks the project's searcher for
policies, predicts each one's latency from the table first (over budget: told infeasible
on the driver, never launched) and records every finished trial in ``study.db`` itself,
so SQLite has one writer and a trial is recorded once however often Ray retried it.

Workers receive plain data only (:class:`WorkerSpec`): they rebuild the task from its spec
string (once per worker process), fine-tune, export and verify the engine, and send its
bytes back with the facts to record; the driver writes the engine into the run directory.
Every node therefore needs the same autocompress install and the task file at the same path.

Ray is imported lazily: without it, asking for a cluster is a :class:`UserError`.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import tempfile
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

from autocompress._io import atomic_write_bytes
from autocompress.errors import UserError
from autocompress.evaluators import DistillConfig
from autocompress.export import candidate_path
from autocompress.search._base import Outcome, Searcher
from autocompress.spaces import Policy, SpaceConfig

__all__ = ["RayConfig", "RaySweep", "WorkerSpec", "check_reachable", "connect", "resolve_task_spec", "run_ray_trials"]

INSTALL_HINT = "pip install 'autocompress[ray]'"
STEP = "distill_step"  # the scheduler's time axis: fine-tuning steps done
INTERMEDIATE = "intermediate_metric"  # the task's metric of the student midway through fine-tuning
CONNECT_TIMEOUT_S = 3.0


@dataclass(frozen=True)
class RayConfig:
    """Where and how trials run on Ray.

    ``address``: ``local`` (start Ray on this machine), ``auto`` (the cluster this machine
    belongs to, started with ``ray start``) or ``HOST:PORT`` of a running head node.
    ``workers``: trials fine-tuned at once. ``max_failures``: restarts of a trial whose worker
    or node died. ``early_stop``: stop weak fine-tunes early (asynchronous successive halving
    on the task's metric measured at each quarter of the fine-tuning steps).
    """

    address: str = "local"
    workers: int = 1
    max_failures: int = 2
    early_stop: bool = False

    def __post_init__(self) -> None:
        if self.workers < 1:
            raise UserError(f"--workers must be at least 1, but got {self.workers}.")
        if self.max_failures < 0:
            raise UserError(f"--ray-max-failures must be >= 0, but got {self.max_failures}.")
        if self.address not in ("local", "auto"):
            _host_port(self.address)


def _host_port(address: str) -> tuple[str, int]:
    host, _, port = address.rpartition(":")
    if not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise UserError(f"--ray-address must be local, auto or HOST:PORT of a Ray head node, but got {address!r}.")
    return host, int(port)


def _import_ray():
    os.environ.setdefault("TUNE_DISABLE_AUTO_CALLBACK_LOGGERS", "1")  # results carry engine bytes: no JSON/CSV logs
    os.environ.setdefault("TUNE_DISABLE_STRICT_METRIC_CHECKING", "1")  # a trial's first result has no metric yet
    os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")  # the search shows its own progress
    os.environ.setdefault("TUNE_DISABLE_SIGINT_HANDLER", "1")  # Ctrl-C interrupts as in a local run (re-run resumes)
    try:
        import ray
        from ray import tune  # noqa: F401
    except ImportError:
        raise UserError(f"--ray-address needs Ray Tune, which is not installed; {INSTALL_HINT}.") from None
    return ray


def check_reachable(config: RayConfig) -> None:
    """Fail fast, before any measuring: Ray must be installed, and a HOST:PORT must answer
    (Ray itself retries an address where nothing listens for about a minute)."""
    ray = _import_ray()
    if config.address == "local" or ray.is_initialized():
        return
    address = config.address
    if address == "auto":  # the address `ray start` left on this machine (or RAY_ADDRESS)
        try:
            from ray._private.services import canonicalize_bootstrap_address

            found = canonicalize_bootstrap_address("auto")
        except ImportError:  # Ray moved its helper: ray.init will say it
            return
        except ConnectionError:
            found = None
        if not found:
            raise UserError("No Ray cluster runs on this machine for --ray-address auto; start one with "
                            "`ray start --head`, give HOST:PORT of a head node, or use --ray-address local.")
        address = found
    host, port = _host_port(address)
    try:
        socket.create_connection((host, port), timeout=CONNECT_TIMEOUT_S).close()
    except OSError as exc:
        raise UserError(
            f"No Ray head node answers at {address} ({exc.strerror or exc}); start one with `ray start --head` "
            "and give its address, or use --ray-address local."
        ) from None


def connect(address: str) -> bool:
    """Connect this process to Ray at ``address``; return whether it connected now (and so
    should disconnect). A process already connected (a test's cluster) is used as it is."""
    ray = _import_ray()
    if ray.is_initialized():
        return False
    kwargs: dict[str, Any] = {"logging_level": logging.WARNING, "log_to_driver": False, "configure_logging": True}
    if address == "local":  # Ray 2.60 would turn on token auth for a new local cluster; a cluster's own setting stands
        os.environ.setdefault("RAY_AUTH_MODE", "disabled")
        ray.init(**kwargs)
        return True
    check_reachable(RayConfig(address=address))
    try:
        ray.init(address=address, **kwargs)
    except (ConnectionError, RuntimeError, ValueError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise UserError(
            f"Cannot join the Ray cluster at {address!r} ({first}); start it with `ray start --head`, "
            "or use --ray-address local."
        ) from None
    return True


@dataclass(frozen=True)
class WorkerSpec:
    """Everything a worker needs to run trials of a search: plain data, no code.

    ``task_spec`` is resolved (an absolute path where it names a file) so that every node
    finds the same file; ``task_fingerprint`` makes a worker refuse a task that differs from
    the driver's. ``evaluate_every`` > 0 reports the metric every that many steps.
    """

    task_spec: str
    task_fingerprint: str
    space: SpaceConfig
    threads: int
    calibration_batches: int
    distill: DistillConfig
    seed: int
    evaluate_every: int = 0
    batch_size: int = 0  # rows per call on the target (SearchConfig.batch_size)
    int8_weight_max: int = 127  # the driver's int8 weight range (64 where its CPU's integer kernels saturate)


def resolve_task_spec(spec: str) -> str:
    """``path/to/file.py:build`` with an absolute path; names and modules unchanged."""
    if ":" not in spec:
        return spec
    where, func = spec.rsplit(":", 1)
    if where.endswith(".py") or "/" in where or "\\" in where:
        return f"{Path(where).resolve()}:{func}"
    return spec


_WORKER_STATE: dict[WorkerSpec, tuple[Any, list]] = {}


def _worker_state(spec: WorkerSpec) -> tuple[Any, list]:
    """The workbench and check batches of ``spec``, built once per worker process."""
    if spec not in _WORKER_STATE:
        from autocompress.study import open_workbench
        from autocompress.task import load_task

        task = load_task(spec.task_spec, spec.batch_size)
        if task.fingerprint != spec.task_fingerprint:
            raise RuntimeError(
                f"task {spec.task_spec!r} built on this node has fingerprint {task.fingerprint!r}, "
                f"the driver's {spec.task_fingerprint!r}: install the same task on every node"
            )
        table_dir = Path(tempfile.mkdtemp(prefix="autocompress-worker-"))  # workers predict nothing
        bench = open_workbench(task, spec.space, spec.threads, table_dir / "latency_table.json", shared_table=False,
                               calibration_batches=spec.calibration_batches)
        _WORKER_STATE[spec] = (bench, [next(iter(task.eval_loader))])
    return _WORKER_STATE[spec]


def run_trial_on_worker(config: Mapping[str, Any], spec: WorkerSpec) -> None:
    """The Ray Tune trainable: fine-tune, export and verify one policy; report the facts to
    record and the engine's bytes. An error inside the trial is reported as a result (the
    trial is not retried: it would fail again); only a lost worker or node makes Ray retry."""
    import ray
    import torch
    from ray import tune

    from autocompress.compress import WEIGHT_MAX_OF_BITS, WEIGHT_RANGE_ENV
    from autocompress.evaluators import ProgressHook, evaluate
    from autocompress.study import train_and_export

    node = ray.get_runtime_context().get_node_id()
    tune.report({STEP: 0, "node_id": node})  # the driver learns where the trial runs
    # The driver's int8 weight range, whatever this node's CPU.
    os.environ[WEIGHT_RANGE_ENV] = str({m: b for b, m in WEIGHT_MAX_OF_BITS.items()}[spec.int8_weight_max])
    torch.set_num_threads(spec.threads)
    trial_id = int(config["trial"])
    try:
        bench, check_batches = _worker_state(spec)
    except Exception as exc:
        tune.report({STEP: spec.distill.steps, "node_id": node, "failed": _reason(exc)})
        return
    task = bench.task
    progress = None
    if spec.evaluate_every > 0:
        def report_midway(step: int, student: torch.nn.Module) -> None:
            tune.report({STEP: step, INTERMEDIATE: evaluate(student, task.eval_loader, task.metric), "node_id": node})

        progress = ProgressHook(spec.evaluate_every, report_midway)
    with tempfile.TemporaryDirectory(prefix="autocompress-engine-") as tmp:
        try:
            attrs = train_and_export(bench, Policy.from_dict(config["policy"]), trial_id, spec.distill, Path(tmp) / "engines",
                                     check_batches, spec.seed, progress)
            engine_bytes = Path(attrs["engine"]["path"]).read_bytes()
            checkpoint_bytes = Path(attrs["checkpoint"]["path"]).read_bytes()
        except Exception as exc:
            tune.report({STEP: spec.distill.steps, "node_id": node, "failed": _reason(exc)})
            return
    tune.report({STEP: spec.distill.steps, INTERMEDIATE: attrs["metric"], "node_id": node,
                 "attrs": json.dumps(attrs), "engine_bytes": engine_bytes, "checkpoint_bytes": checkpoint_bytes})


def _reason(exc: BaseException) -> str:
    text = str(exc).strip()
    return f"{type(exc).__name__}: {text.splitlines()[0] if text else ''}"


@dataclass
class RaySweep:
    """What the sweep did: fine-tunes completed, proposals asked, failure reasons."""

    completed: int
    proposals: int = 0
    rejected: int = 0
    stopped_early: int = 0
    failures: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class _Launched:
    trial_id: int
    policy: Policy
    predicted_ms: float
    started: float


def _make_adapter(base: type) -> type:
    """The Ray Tune ``Searcher`` around the project's searcher (built once Ray is imported)."""

    class ProjectSearcher(base):  # type: ignore[misc, valid-type]
        """Tune's ``suggest`` asks the project's searcher until a proposal fits the budget;
        ``on_trial_complete`` records the trial and tells the searcher."""

        def __init__(self, book: "_TrialBook") -> None:
            super().__init__()
            self.book = book

        def suggest(self, tune_trial_id: str) -> dict | str | None:
            return self.book.suggest(tune_trial_id, finished=base.FINISHED)

        def on_trial_result(self, tune_trial_id: str, result: dict) -> None:
            if result.get(STEP) == 0 and result.get("node_id"):  # an attempt started on that node
                self.book.attempts.setdefault(tune_trial_id, []).append(result["node_id"])

        def on_trial_complete(self, tune_trial_id: str, result: dict | None = None, error: bool = False) -> None:
            self.book.complete(tune_trial_id, result, error)

        def __getstate__(self) -> dict:  # Tune pickles its search algorithm for a restore; the book stays here
            return {k: v for k, v in self.__dict__.items() if k != "book"}

        def save_to_dir(self, *args: Any, **kwargs: Any) -> None:
            pass  # the trial store is the state: re-running the command resumes

        def restore_from_dir(self, *args: Any, **kwargs: Any) -> None:
            pass

    return ProjectSearcher


class _TrialBook:
    """The driver's side of the sweep: proposes feasible policies, writes engines and
    records outcomes in the trial store (the only writer), and tracks the counts."""

    def __init__(
        self, searcher: Searcher, predict_ms: Callable[[Policy], float], budget_ms: float, run_dir: Path, target: int,
        sweep: RaySweep, max_proposals: int, max_failures_before_success: int, seen: dict[str, dict],
        on_completed: Callable[[int, float, dict], None], on_measured: Callable[[Policy, dict], None],
        repair: Callable[[Policy], Any] | None = None, shortfall: Callable[[float], float | None] = lambda metric: None,
        widen: Callable[[Policy, float, dict], tuple[Policy, float]] | None = None,
    ) -> None:
        self.searcher, self.predict_ms, self.budget_ms = searcher, predict_ms, budget_ms
        self.widen = widen  # within-budget (policy, predicted ms, attrs to update) -> the policy to run and its prediction
        self.shortfall = shortfall  # metric -> its shortfall from the run's metric floor (None without one)
        self.repair = repair  # over-budget policy -> a repair (``.policy``, ``.steps``) or None
        self.engines_dir = run_dir / "engines"
        self.target, self.sweep, self.max_proposals = target, sweep, max_proposals
        self.max_failures_before_success = max_failures_before_success
        self.seen, self.on_completed, self.on_measured = seen, on_completed, on_measured
        self.live: dict[str, _Launched] = {}
        self.retries: dict[str, int] = {}
        self.attempts: dict[str, list[str]] = {}  # the node of each attempt, in order
        self.errors: dict[str, str] = {}

    def _hopeless(self) -> bool:
        return self.sweep.completed == 0 and len(self.sweep.failures) >= self.max_failures_before_success

    def suggest(self, tune_trial_id: str, finished: str) -> dict | str | None:
        if self.sweep.completed >= self.target or self._hopeless():
            return finished
        if self.sweep.completed + len(self.live) >= self.target:
            return None  # enough in flight; ask again if one fails
        while self.sweep.proposals < self.max_proposals:
            self.sweep.proposals += 1
            asked = self.searcher.ask()
            if asked is None:
                return finished if not self.live else None
            trial_id, policy = asked
            t0 = time.perf_counter()
            predicted_ms = self.predict_ms(policy)
            attrs: dict[str, Any] = {"policy": policy.to_dict(), "digest": policy.digest, "predicted_ms": predicted_ms}
            if predicted_ms > self.budget_ms:  # told on the driver: no trial, no fine-tune
                self.sweep.rejected += 1
                fixed = self.repair(policy) if self.repair is not None else None
                repaired_id = None
                if fixed is not None:  # launched as its own trial; the sampler still learns the budget from this one
                    repaired_id = self.searcher.ask_policy(fixed.policy, {"repair_of": trial_id, "repair_steps": fixed.steps})
                    attrs["repaired_to"] = repaired_id
                self.searcher.record(trial_id, {**attrs, "predict_s": time.perf_counter() - t0})
                self.searcher.tell(trial_id, Outcome("infeasible", constraint=predicted_ms - self.budget_ms))
                if repaired_id is None:
                    continue
                trial_id, policy = repaired_id, fixed.policy
                predicted_ms = self.predict_ms(policy)
                attrs = {"policy": policy.to_dict(), "digest": policy.digest, "predicted_ms": predicted_ms}
                self.searcher.record(trial_id, attrs)
                if predicted_ms > self.budget_ms:  # the table moved since the repair: not repaired again
                    self.searcher.tell(trial_id, Outcome("infeasible", constraint=predicted_ms - self.budget_ms))
                    continue
            if self.widen is not None:
                policy, predicted_ms = self.widen(policy, predicted_ms, attrs)
                if attrs.get("widened"):
                    self.searcher.record(trial_id, attrs)
            if policy.digest in self.seen:  # the sampler repeated itself: reuse, do not fine-tune again
                prev = self.seen[policy.digest]
                self.searcher.record(trial_id, {**attrs, "duplicate_of": prev.get("trial"), "measured_ms": prev.get("measured_ms")})
                self.searcher.tell(trial_id, Outcome("completed", prev["metric"], prev.get("measured_ms", predicted_ms),
                                                     predicted_ms - self.budget_ms, metric_shortfall=self.shortfall(prev["metric"])))
                continue
            self.live[tune_trial_id] = _Launched(trial_id, policy, predicted_ms, time.time())
            return {"trial": trial_id, "policy": policy.to_dict()}
        return finished if not self.live else None

    def complete(self, tune_trial_id: str, result: dict | None, error: bool) -> None:
        launched = self.live.pop(tune_trial_id, None)
        if launched is None:
            return
        trial_id, policy, predicted_ms = launched.trial_id, launched.policy, launched.predicted_ms
        attrs: dict[str, Any] = {"policy": policy.to_dict(), "digest": policy.digest, "predicted_ms": predicted_ms,
                                 "ray_retries": self.retries.get(tune_trial_id, 0), "ray_nodes": self.attempts.pop(tune_trial_id, [])}
        result = result or {}
        if result.get("node_id"):
            attrs["ray_node"] = result["node_id"]
        if "attrs" in result and not error:
            attrs.update(json.loads(result["attrs"]))
            path = self.engines_dir / f"trial-{trial_id:04d}.onnx"
            atomic_write_bytes(path, result["engine_bytes"])  # the engine moves from the worker to the run directory
            attrs["engine"]["path"] = str(path)
            if result.get("checkpoint_bytes") is not None:  # the fine-tuned weights, for later exports
                checkpoint = candidate_path(self.engines_dir.parent, trial_id)
                atomic_write_bytes(checkpoint, result["checkpoint_bytes"])
                attrs["checkpoint"]["path"] = str(checkpoint)
            attrs["trial_s"] = time.time() - launched.started
            latency_ms = attrs["engine"]["latency_us"] / 1000
            self.on_measured(policy, attrs["engine"])  # before the record: it notes in the engine whether the table learned
            self.searcher.record(trial_id, attrs)
            self.searcher.tell(trial_id, Outcome("completed", attrs["metric"], latency_ms, predicted_ms - self.budget_ms,
                                                 size_bytes=attrs.get("size_bytes"), metric_shortfall=self.shortfall(attrs["metric"])))
            self.seen[policy.digest] = attrs
            self.sweep.completed += 1
            self.on_completed(trial_id, predicted_ms, attrs)
            return
        if error:
            reason = f"lost on Ray after {attrs['ray_retries']} retries: {self.errors.get(tune_trial_id, 'worker or node died')}"
        elif "failed" in result:
            reason = result["failed"]
        elif INTERMEDIATE not in result:
            reason = "stopped by Ray before a result"
        else:  # the scheduler stopped a weak fine-tune: no engine, and it does not count as a failure to fix
            attrs.update({"stopped_early": True, STEP: result.get(STEP), INTERMEDIATE: result.get(INTERMEDIATE)})
            reason = f"stopped early by the scheduler at step {result.get(STEP)} ({INTERMEDIATE} {result.get(INTERMEDIATE)})"
            self.sweep.stopped_early += 1
        self.searcher.record(trial_id, attrs)
        self.searcher.tell(trial_id, Outcome("failed", reason=reason))
        if not attrs.get("stopped_early"):
            self.sweep.failures.append(reason)


def _make_callback(base: type, book: _TrialBook) -> Any:
    class RetryLog(base):  # type: ignore[misc, valid-type]
        """Counts each trial's restarts after a lost worker or node, and keeps its last error."""

        def __init__(self, book: _TrialBook) -> None:
            self.book = book

        def __getstate__(self) -> dict:
            return {}

        def on_trial_recover(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
            self.book.retries[trial.trial_id] = self.book.retries.get(trial.trial_id, 0) + 1

        def on_trial_error(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
            self.book.errors[trial.trial_id] = _last_error_line(trial)

    return RetryLog(book)


def _last_error_line(trial: Any) -> str:
    try:
        lines = [ln.strip() for ln in Path(trial.error_file).read_text().splitlines() if ln.strip()]
        return lines[-1][:300] if lines else "worker or node died"
    except (OSError, TypeError):
        return "worker or node died"


def run_ray_trials(
    config: RayConfig,
    searcher: Searcher,
    predict_ms: Callable[[Policy], float],
    budget_ms: float,
    spec: WorkerSpec,
    run_dir: Path,
    *,
    target: int,
    completed: int,
    max_proposals: int,
    max_failures_before_success: int,
    seen: dict[str, dict],
    on_completed: Callable[[int, float, dict], None],
    on_measured: Callable[[Policy, dict], None],
    higher_is_better: bool,
    callbacks: Sequence[Any] = (),
    repair: Callable[[Policy], Any] | None = None,
    shortfall: Callable[[float], float | None] = lambda metric: None,
    widen: Callable[[Policy, float, dict], tuple[Policy, float]] | None = None,
) -> RaySweep:
    """Run trials on Ray until ``target`` fine-tunes have completed (``completed`` already
    have), proposals run out, or the first ones all fail.

    ``predict_ms`` rejects over-budget proposals before they are launched; ``seen`` maps
    policy digests to completed trials' attributes (repeats are not fine-tuned again);
    ``on_completed(trial_id, predicted_ms, attrs)`` and ``on_measured(policy, engine)``
    are called on the driver after each completed trial is recorded. ``callbacks`` are extra
    Ray Tune callbacks. ``repair(policy)`` turns an over-budget proposal into one the table
    predicts within budget (or None), launched as its own trial linked to the proposal.
    ``widen(policy, predicted_ms, attrs)`` gives the policy a within-budget proposal runs as
    (widened where the table predicts it costs nothing, recorded in ``attrs``).
    ``shortfall(metric)`` is how far a completed trial's metric falls short of the run's
    metric floor (None without one), told to the searcher as a constraint.
    """
    ray = _import_ray()
    from ray import tune
    from ray.tune.schedulers import ASHAScheduler, FIFOScheduler
    from ray.tune.search import ConcurrencyLimiter
    from ray.tune.search import Searcher as TuneSearcher

    started_here = connect(config.address)
    sweep = RaySweep(completed=completed)
    book = _TrialBook(searcher, predict_ms, budget_ms, run_dir, target, sweep, max_proposals, max_failures_before_success,
                      seen, on_completed, on_measured, repair, shortfall, widen)
    steps = spec.distill.steps
    scheduler: Any = FIFOScheduler()
    if config.early_stop and steps >= 4:  # the metric at each quarter of the steps; halving at the rungs
        spec = replace(spec, evaluate_every=steps // 4)
        scheduler = ASHAScheduler(time_attr=STEP, metric=INTERMEDIATE, mode="max" if higher_is_better else "min",
                                  max_t=steps, grace_period=spec.evaluate_every, reduction_factor=2)
    trainable = tune.with_resources(tune.with_parameters(run_trial_on_worker, spec=spec), {"cpu": spec.threads})
    tuner = tune.Tuner(
        trainable,
        tune_config=tune.TuneConfig(
            search_alg=ConcurrencyLimiter(_make_adapter(TuneSearcher)(book), max_concurrent=config.workers),
            scheduler=scheduler, num_samples=-1, reuse_actors=True,
        ),
        run_config=tune.RunConfig(
            name=f"sweep-{time.strftime('%Y%m%d-%H%M%S')}", storage_path=str((run_dir / "ray").resolve()), verbose=0,
            failure_config=tune.FailureConfig(max_failures=config.max_failures),
            callbacks=[_make_callback(tune.Callback, book), *callbacks],
        ),
    )
    tune_logger = logging.getLogger("ray.tune")
    level = tune_logger.level
    tune_logger.setLevel(logging.ERROR)  # Tune's own result files are off: quiet its notes about them
    try:
        tuner.fit()
    finally:
        tune_logger.setLevel(level)
        if started_here:
            ray.shutdown()
    return sweep
