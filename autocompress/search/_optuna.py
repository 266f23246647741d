from __future__ import annotations

import math
import warnings
from typing import Any, Callable, Mapping, Sequence

import optuna
from optuna.samplers._lazy_random_state import LazyRandomState
from optuna.trial import TrialState

from autocompress.errors import UserError
from autocompress.search._base import OBJECTIVES, Outcome
from autocompress.spaces import Policy, SearchSpace

__all__ = ["OPTUNA_CLASSES", "SAMPLERS", "OptunaSearcher", "TrialStore", "make_sampler", "parse_objectives"]

CONSTRAINT = "latency_over_budget_ms"  # predicted latency minus budget: positive is infeasible
METRIC_CONSTRAINT = "metric_below_floor"  # the metric's shortfall from the accepted floor: positive is infeasible
STUDY_NAME = "autocompress"


def _tpe(seed: int) -> optuna.samplers.BaseSampler:
    return optuna.samplers.TPESampler(seed=seed, n_startup_trials=8, multivariate=True)


# Short names; each sampler reads the budget constraint set with ``Trial.set_constraint``
# where it supports constraints, and every one handles categorical and multi-objective studies.
SAMPLERS: dict[str, Callable[[int], optuna.samplers.BaseSampler]] = {
    "tpe": _tpe,
    "nsga2": lambda seed: optuna.samplers.NSGAIISampler(seed=seed, population_size=16),
    "nsga3": lambda seed: optuna.samplers.NSGAIIISampler(seed=seed, population_size=16),
    "gp": lambda seed: optuna.samplers.GPSampler(seed=seed, n_startup_trials=8),
    "random": lambda seed: optuna.samplers.RandomSampler(seed=seed),
}
# ``optuna:<ClassName>``: the sampler classes of ``optuna.samplers`` that take a seed alone
# and work on categorical, multi-objective studies.
OPTUNA_CLASSES = ("GPSampler", "NSGAIISampler", "NSGAIIISampler", "RandomSampler", "TPESampler")
# Why the other classes are refused, so the error can say so.
_REFUSED = {
    "CmaEsSampler": "it handles single-objective studies over numerical parameters only",
    "QMCSampler": "it samples numerical parameters only, and every dimension here is categorical (it would be random)",
    "BruteForceSampler": "it stops the study once the space is exhausted, which Optuna allows only inside study.optimize",
    "GridSampler": "it needs an explicit grid, and the space is too large to enumerate",
    "PartialFixedSampler": "it wraps another sampler with fixed values; name that sampler instead",
    "BaseSampler": "it is abstract",
    "BaseGASampler": "it is abstract",
}
_ALIASES = {"qmc": "QMCSampler", "cmaes": "CmaEsSampler", "grid": "GridSampler"}


def sampler_names() -> list[str]:
    return [*SAMPLERS, "amc", *(f"optuna:{c}" for c in OPTUNA_CLASSES)]


def make_sampler(name: str, seed: int) -> optuna.samplers.BaseSampler:
    """The Optuna sampler called ``name`` (a short name or ``optuna:<ClassName>``), seeded."""
    cls_name = name.split(":", 1)[1] if name.startswith("optuna:") else _ALIASES.get(name)
    if name in SAMPLERS or cls_name in OPTUNA_CLASSES:
        with warnings.catch_warnings():  # NSGA-III and GP are marked experimental; they are chosen on purpose
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            return SAMPLERS[name](seed) if name in SAMPLERS else getattr(optuna.samplers, cls_name)(seed=seed)
    if cls_name in _REFUSED:
        raise UserError(f"Searcher {name!r} cannot search this space: {_REFUSED[cls_name]}; choose one of {sampler_names()}.")
    raise UserError(f"Unknown searcher {name!r}; choose one of {sampler_names()}.")


def parse_objectives(text: str | Sequence[str]) -> tuple[str, ...]:
    """``metric,latency[,size]`` -> a tuple; the metric and latency are always objectives."""
    names = tuple(v.strip() for v in (text.split(",") if isinstance(text, str) else text) if v.strip())
    unknown = [n for n in names if n not in OBJECTIVES]
    if unknown or names[:2] != ("metric", "latency") or len(set(names)) != len(names):
        raise UserError(f"--objectives must be 'metric,latency' or 'metric,latency,size' (from {list(OBJECTIVES)}), but got {','.join(names)!r}.")
    return names


def _reseed(sampler: optuna.samplers.BaseSampler, seed: int, depth: int = 0) -> None:
    """Reseed every random state a sampler (and the samplers inside it) owns.

    Seeding from (seed, trial number) before each proposal makes a sampler a function of the
    study's history, so a resumed process proposes what the interrupted one would have."""
    for value in list(vars(sampler).values()):
        if isinstance(value, LazyRandomState):
            value.rng.seed(seed % 2**32)
        elif isinstance(value, optuna.samplers.BaseSampler) and depth < 3:
            _reseed(value, seed + 1, depth + 1)


class TrialStore:
    """The Optuna study every searcher keeps its trials in, whatever proposes them.

    Opens trials (sampled by the study's sampler, or with fixed parameters), records user
    attributes, and finishes them with the budget as a constraint: infeasible proposals are
    PRUNED with a positive constraint, failures FAIL, completed trials get their values.
    """

    def __init__(self, study: optuna.Study, space: SearchSpace, objectives: Sequence[str] = ("metric", "latency")) -> None:
        self.study = study
        self.space = space
        self.objectives = tuple(objectives)
        self._live: dict[int, optuna.Trial] = {}

    @staticmethod
    def open_study(storage: str | None, sampler: optuna.samplers.BaseSampler, higher_is_better: bool, objectives: Sequence[str]) -> optuna.Study:
        optuna.logging.set_verbosity(optuna.logging.WARNING)
        directions = ["maximize" if higher_is_better else "minimize"] + ["minimize"] * (len(objectives) - 1)
        study = optuna.create_study(storage=storage, study_name=STUDY_NAME, sampler=sampler, directions=directions, load_if_exists=True)
        if [d.name.lower() for d in study.directions] != directions:
            raise UserError(
                f"The trial store holds a study with {len(study.directions)} objectives, not {list(objectives)}; "
                "use the run's original --objectives or a new --run-dir."
            )
        return study

    def _suggest(self, trial: optuna.Trial) -> Policy:
        params = {name: trial.suggest_categorical(name, list(domain)) for name, domain in self.space.domains.items()}
        self._live[trial.number] = trial
        return self.space.from_params(params)

    def open_sampled(self) -> tuple[int, Policy]:
        """A trial whose parameters the study's sampler chooses (queued trials first)."""
        trial = self.study.ask()
        return trial.number, self._suggest(trial)

    def open_fixed(self, policy: Policy, attrs: Mapping[str, Any] = {}) -> int:
        """A trial for ``policy`` now, ahead of anything queued."""
        template = optuna.trial.create_trial(state=TrialState.WAITING, system_attrs={"fixed_params": self.space.to_params(policy)})
        trial_id = self.study._storage.create_new_trial(self.study._study_id, template_trial=template)
        self.study._storage.set_trial_state_values(trial_id, state=TrialState.RUNNING)
        trial = optuna.Trial(self.study, trial_id)
        for k, v in attrs.items():
            trial.set_user_attr(k, v)
        got = self._suggest(trial)
        assert got == policy, "fixed parameters must round-trip"
        return trial.number

    def has_queued(self) -> bool:
        return bool(self.study.get_trials(deepcopy=False, states=(TrialState.WAITING,)))

    def enqueue(self, policy: Policy, attrs: Mapping[str, Any] = {}) -> None:
        """Have ``policy`` proposed before the sampler's own choices; ``attrs`` are recorded
        on its trial (where it came from)."""
        self.study.enqueue_trial(self.space.to_params(policy), user_attrs=dict(attrs) or None, skip_if_exists=True)

    def record(self, trial_id: int, attrs: Mapping[str, Any]) -> None:
        trial = self._live[trial_id]
        for k, v in attrs.items():
            trial.set_user_attr(k, v)

    def finish(self, trial_id: int, outcome: Outcome, overhead_s: float) -> None:
        trial = self._live.pop(trial_id)
        if outcome.status != "failed":
            trial.set_constraint(CONSTRAINT, float(outcome.constraint))
        if outcome.status == "completed" and outcome.metric_shortfall is not None and math.isfinite(outcome.metric_shortfall):
            trial.set_constraint(METRIC_CONSTRAINT, float(outcome.metric_shortfall))
        trial.set_user_attr("status", outcome.status)
        trial.set_user_attr("overhead_s", outcome.overhead_s + overhead_s)
        if outcome.reason:
            trial.set_user_attr("reason", outcome.reason[:2000])
        if outcome.status == "completed":
            by_name = {"metric": outcome.metric, "latency": outcome.latency_ms, "size": outcome.size_bytes}
            values = [by_name[o] for o in self.objectives]
            if all(v is not None and math.isfinite(v) for v in values):
                self.study.tell(trial, values)  # type: ignore[arg-type]
                return
            trial.set_user_attr("reason", f"non-finite objective values {values}")
            self.study.tell(trial, state=TrialState.FAIL)
        elif outcome.status == "infeasible":
            self.study.tell(trial, state=TrialState.PRUNED)
        else:
            self.study.tell(trial, state=TrialState.FAIL)

    def abandon_running(self, retry: bool = False) -> int:
        """Settle trials left RUNNING by an interrupted process; return how many were interrupted.

        A trial whose outcome was recorded but not yet told (the process died between the
        two writes) is told now with its recorded values. Any other is marked failed with
        reason "interrupted"; with ``retry`` its policy is enqueued to be proposed again."""
        n = 0
        for t in self.study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
            attrs = t.user_attrs
            by_name = {"metric": attrs.get("metric"), "latency": attrs.get("measured_ms"), "size": attrs.get("size_bytes")}
            values = [by_name[o] for o in self.objectives]
            if attrs.get("status") == "completed" and all(isinstance(v, (int, float)) and math.isfinite(v) for v in values):
                self.study.tell(t.number, values)
                continue
            self.study._storage.set_trial_user_attr(t._trial_id, "status", "failed")
            self.study._storage.set_trial_user_attr(t._trial_id, "reason", "interrupted")
            self.study._storage.set_trial_state_values(t._trial_id, TrialState.FAIL)
            if retry and t.params:
                self.study.enqueue_trial(dict(t.params), user_attrs={"retry_of": t.number})
            n += 1
        return n


class OptunaSearcher(TrialStore):
    """An Optuna sampler over the flat space; the Optuna storage is the trial store.

    The study maximizes (or minimizes) the metric and minimizes latency (and size when
    asked), with the latency budget as a constraint, so constrained samplers learn where the
    budget lies without any fine-tuning spent on infeasible proposals. The sampler is
    reseeded from (seed, trial number) before each proposal: its whole state lives in the
    study, and a resumed run proposes what an uninterrupted one would have.
    """

    def __init__(self, study: optuna.Study, space: SearchSpace, name: str, seed: int, objectives: Sequence[str] = ("metric", "latency")) -> None:
        super().__init__(study, space, objectives)
        self.name = name
        self.seed = seed

    @classmethod
    def create(
        cls, space: SearchSpace, storage: str | None, sampler: str, seed: int, higher_is_better: bool,
        objectives: Sequence[str] = ("metric", "latency"),
    ) -> "OptunaSearcher":
        study = cls.open_study(storage, make_sampler(sampler, seed), higher_is_better, objectives)
        return cls(study, space, sampler, seed, objectives)

    def ask(self) -> tuple[int, Policy] | None:
        _reseed(self.study.sampler, self.seed * 1_000_003 + len(self.study.get_trials(deepcopy=False)))
        return self.open_sampled()

    def ask_policy(self, policy: Policy, attrs: Mapping[str, Any] = {}) -> int:
        return self.open_fixed(policy, attrs)

    def tell(self, trial_id: int, outcome: Outcome) -> None:
        self.finish(trial_id, outcome, 0.0)

    def state_dict(self) -> dict[str, Any]:
        return {"searcher": self.name, "seed": self.seed, "objectives": list(self.objectives)}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        if state.get("searcher") != self.name or state.get("seed") != self.seed:
            raise UserError(
                f"The saved searcher state is for {state.get('searcher')!r} (seed {state.get('seed')}), "
                f"not {self.name!r} (seed {self.seed}); resume with the same --searcher and --seed."
            )

