"""The run's answer: the Pareto front as JSON, a self-contained HTML page, a local
server for the run directory, and run listings."""

from __future__ import annotations

from autocompress.report._data import hypervolume_2d, policy_grid, retime_note, search_progress
from autocompress.report._front import pareto_front
from autocompress.report._html import report_data, write_report
from autocompress.report._runs import RunRow, list_runs, load_front
from autocompress.report._server import RunDirHandler, make_server

__all__ = [
    "RunDirHandler", "RunRow", "hypervolume_2d", "list_runs", "load_front", "make_server", "pareto_front", "policy_grid",
    "report_data", "retime_note", "search_progress", "write_report",
]
