"""Conformance suites that every implementation of a contract must pass."""

from __future__ import annotations

__all__: list[str] = []
