"""Phase markers: which stage a search is in, visible from outside the process.

With ``AUTOCOMPRESS_PHASE_LOG=path`` set, every phase a search enters appends one line,
``<phase> <detail>``, to that file (flushed and fsynced before the phase's work starts),
so a supervisor, a crash test or ``benchmarks/reliability.py`` can tell where a killed
search was. ``AUTOCOMPRESS_PHASE_PAUSE=phase:seconds[,phase:seconds]`` makes the process
wait that long after entering those phases, which holds a kill point open for tests.
Without the variables nothing is written and nothing waits.
"""

from __future__ import annotations

import os
import time

from autocompress.errors import UserError

__all__ = ["PHASES", "enter_phase"]

PHASES = ("table", "search", "finetune", "export", "front", "done")
LOG_VARIABLE = "AUTOCOMPRESS_PHASE_LOG"
PAUSE_VARIABLE = "AUTOCOMPRESS_PHASE_PAUSE"


def _pauses(text: str) -> dict[str, float]:
    pauses: dict[str, float] = {}
    for item in filter(None, (part.strip() for part in text.split(","))):
        phase, _, seconds = item.partition(":")
        try:
            value = float(seconds)
        except ValueError:
            value = -1.0
        if phase not in PHASES or value < 0:
            raise UserError(
                f"{PAUSE_VARIABLE} must read phase:seconds[,phase:seconds] with phases from {list(PHASES)}, but got {item!r}."
            )
        pauses[phase] = value
    return pauses


def enter_phase(phase: str, detail: str = "") -> None:
    """Record that the search enters ``phase`` (one of :data:`PHASES`), then pause if asked."""
    if phase not in PHASES:
        raise ValueError(f"`phase` must be one of {list(PHASES)}, but got {phase!r}.")
    log = os.environ.get(LOG_VARIABLE)
    if log:
        with open(log, "a", encoding="utf-8") as f:  # an append-only trace, not a file the tool reads back
            f.write(f"{phase} {detail}".rstrip() + "\n")
            f.flush()
            os.fsync(f.fileno())
    pause = _pauses(os.environ.get(PAUSE_VARIABLE, "")).get(phase, 0.0)
    if pause:
        time.sleep(pause)
