from __future__ import annotations

from pathlib import Path
from typing import Callable, Sequence

from autocompress.search._amc import AMCSearcher
from autocompress.search._optuna import OptunaSearcher, make_sampler, sampler_names
from autocompress.spaces import Policy, SearchSpace

__all__ = ["AMC_STATE_FILE", "make_searcher", "searcher_names", "validate_searcher_name"]

AMC_STATE_FILE = "amc_state.pt"


def searcher_names() -> list[str]:
    """Every name ``make_searcher`` accepts."""
    return sampler_names()


def validate_searcher_name(name: str) -> None:
    """Raise UserError for a name ``make_searcher`` would refuse, before anything is measured."""
    if name != "amc":
        make_sampler(name, 0)


def make_searcher(
    name: str, space: SearchSpace, storage: str | None, seed: int, higher_is_better: bool,
    latency_us: Callable[[Policy], float], budget_us: float, objectives: Sequence[str] = ("metric", "latency"),
    run_dir: Path | None = None,
) -> OptunaSearcher | AMCSearcher:
    """The searcher called ``name`` over ``space``, keeping its trials in the Optuna study at
    ``storage`` (None: in memory). ``latency_us`` (the table's prediction) and ``budget_us``
    are for searchers that plan with latency (amc); ``run_dir`` is where a searcher with state
    beyond the study saves it. Unknown names raise UserError listing the valid ones."""
    if name == "amc":
        state_path = run_dir / AMC_STATE_FILE if run_dir is not None else None
        return AMCSearcher.create(space, storage, latency_us, budget_us, higher_is_better, seed, objectives, state_path)
    return OptunaSearcher.create(space, storage, name, seed, higher_is_better, objectives)
