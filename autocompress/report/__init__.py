"""The run's answer: the Pareto front as JSON and a self-contained HTML page."""

from __future__ import annotations

from autocompress.report._front import pareto_front
from autocompress.report._html import write_report

__all__ = ["pareto_front", "write_report"]
