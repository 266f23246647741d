"""Searchers: propose policies (ask) and learn from outcomes (tell), keyed by trial id.

Every searcher keeps its trials in one Optuna study (the run's trial store). ``make_searcher``
builds one by name: Optuna samplers (tpe, nsga2, nsga3, gp, random, ``optuna:<Class>``) or
the AMC-style DDPG agent (amc). ``BudgetRepair`` moves over-budget proposals within budget;
``FreeWidening`` undoes compression the table says costs no latency;
``sensitivity_seed`` builds a first proposal from each group's cost before fine-tuning.
"""

from __future__ import annotations

from autocompress.search._amc import AMCConfig, AMCSearcher
from autocompress.search._base import OBJECTIVES, Outcome, Searcher
from autocompress.search._factory import AMC_STATE_FILE, make_searcher, searcher_names, validate_searcher_name
from autocompress.search._optuna import SAMPLERS, OptunaSearcher, TrialStore, make_sampler, parse_objectives
from autocompress.search._repair import BudgetRepair, FreeWidening, ImportanceProxy, Repair, WeightL1Importance, Widening
from autocompress.search._sensitivity import group_costs, sensitivity_seed

__all__ = [
    "AMC_STATE_FILE", "AMCConfig", "AMCSearcher", "BudgetRepair", "FreeWidening", "ImportanceProxy", "OBJECTIVES", "OptunaSearcher",
    "Outcome", "Repair", "SAMPLERS", "Searcher", "TrialStore", "WeightL1Importance", "Widening", "group_costs", "make_sampler",
    "make_searcher", "parse_objectives", "searcher_names", "sensitivity_seed", "validate_searcher_name",
]
