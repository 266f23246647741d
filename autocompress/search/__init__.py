"""Searchers: propose policies (ask) and learn from outcomes (tell), keyed by trial id."""

from __future__ import annotations

from autocompress.search._base import Outcome, Searcher
from autocompress.search._optuna import SAMPLERS, OptunaSearcher, make_sampler

__all__ = ["SAMPLERS", "OptunaSearcher", "Outcome", "Searcher", "make_sampler"]
