from __future__ import annotations

import math
from typing import Any, Mapping

import optuna
from optuna.trial import TrialState

from autocompress.errors import UserError
from autocompress.search._base import Outcome
from autocompress.spaces import Policy, SearchSpace

__all__ = ["SAMPLERS", "OptunaSearcher", "make_sampler"]

SAMPLERS = ("tpe", "nsga2", "random")
CONSTRAINT = "latency_over_budget_ms"  # predicted latency minus budget: positive is infeasible


def make_sampler(name: str, seed: int) -> optuna.samplers.BaseSampler:
    """Constrained samplers read each trial's constraint set with ``Trial.set_constraint``."""
    if name == "tpe":
        return optuna.samplers.TPESampler(seed=seed, n_startup_trials=8, multivariate=True)
    if name == "nsga2":
        return optuna.samplers.NSGAIISampler(seed=seed, population_size=16)
    if name == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    raise UserError(f"Unknown searcher {name!r}; choose one of {list(SAMPLERS)}.")


class OptunaSearcher:
    """Optuna ask/tell over the flat space; the Optuna storage is the trial store.

    The study maximizes (or minimizes) the metric and minimizes predicted latency, with the
    latency budget as a constraint. Infeasible proposals are told as PRUNED trials with a
    positive constraint, so constrained samplers learn where the budget lies without any
    fine-tuning spent on them.
    """

    def __init__(self, study: optuna.Study, space: SearchSpace) -> None:
        self.study = study
        self.space = space
        self._live: dict[int, optuna.Trial] = {}

    @classmethod
    def create(cls, space: SearchSpace, storage: str, study_name: str, sampler: str, seed: int, higher_is_better: bool) -> "OptunaSearcher":
        optuna.logging.set_verbosity(optuna.logging.WARNING)
        study = optuna.create_study(
            storage=storage,
            study_name=study_name,
            sampler=make_sampler(sampler, seed),
            directions=["maximize" if higher_is_better else "minimize", "minimize"],
            load_if_exists=True,
        )
        return cls(study, space)

    def ask(self) -> tuple[int, Policy] | None:
        trial = self.study.ask()
        params = {name: trial.suggest_categorical(name, list(domain)) for name, domain in self.space.domains.items()}
        self._live[trial.number] = trial
        return trial.number, self.space.from_params(params)

    def enqueue(self, policy: Policy) -> None:
        """Have ``policy`` proposed before the sampler's own choices."""
        self.study.enqueue_trial(self.space.to_params(policy), skip_if_exists=True)

    def record(self, trial_id: int, attrs: Mapping[str, Any]) -> None:
        trial = self._live[trial_id]
        for k, v in attrs.items():
            trial.set_user_attr(k, v)

    def tell(self, trial_id: int, outcome: Outcome) -> None:
        trial = self._live.pop(trial_id)
        if outcome.status != "failed":
            trial.set_constraint(CONSTRAINT, float(outcome.constraint))
        trial.set_user_attr("status", outcome.status)
        if outcome.reason:
            trial.set_user_attr("reason", outcome.reason[:2000])
        if outcome.status == "completed":
            values = [outcome.metric, outcome.latency_ms]
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
            values = [attrs.get("metric"), attrs.get("measured_ms")]
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
