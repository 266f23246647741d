"""Conformance suites that implementations of the project's contracts must pass (needs pytest)."""

from __future__ import annotations

__all__: list[str] = []
