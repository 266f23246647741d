"""The one error type users see: a one-line message naming the problem and the fix."""

from __future__ import annotations

__all__ = ["UserError"]


class UserError(Exception):
    """Bad input from the user. The CLI prints it on one line and exits with status 2."""
