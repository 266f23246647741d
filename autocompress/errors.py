"""The one error type users see: a one-line message naming the problem and the fix."""

from __future__ import annotations

__all__ = ["UserError", "one_line"]


class UserError(Exception):
    """Bad input from the user. The CLI prints it on one line and exits with status 2."""


def one_line(exc: BaseException, limit: int = 200) -> str:
    """``Type: first line of the message`` (with the line number of a syntax error), for
    naming another library's error inside a UserError."""
    text = str(exc).strip().splitlines()[0][:limit] if str(exc).strip() else ""
    if isinstance(exc, SyntaxError) and exc.lineno is not None:
        text = f"{exc.msg}, line {exc.lineno}"
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__
