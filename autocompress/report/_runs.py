"""Run directories as rows: what `autocompress runs list` and `runs show` print."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from autocompress._io import read_json
from autocompress.errors import UserError

__all__ = ["RunRow", "list_runs", "load_front"]


@dataclass(frozen=True)
class RunRow:
    """One run: where it is, what it searched, and its best verified metric within budget."""

    path: str
    task: str
    target: str
    budget: str
    budget_ms: float | None
    trials: int | None
    best_metric: float | None
    metric_name: str
    created: str


def _target(profile: dict) -> str:
    if not isinstance(profile, dict):
        return "?"
    device = profile.get("device") or profile.get("cpu") or "?"
    return f"{profile.get('runtime', '?')} {profile.get('runtime_version', '')} {device} x{profile.get('threads', '?')}".replace("  ", " ")


def _row(run_dir: Path) -> RunRow | None:
    try:
        manifest = read_json(run_dir / "run.json")
    except (OSError, ValueError):
        return None
    if not isinstance(manifest, dict):
        return None
    pareto = None
    if (run_dir / "pareto.json").is_file():
        try:
            pareto = load_front(run_dir)
        except UserError:
            pareto = None
    best = trials = None
    if pareto is not None:
        sign = 1.0 if pareto.get("higher_is_better", True) else -1.0
        verified = [m["metric"] for m in pareto["members"]
                    if isinstance(m.get("metric"), (int, float)) and m.get("verified", (m.get("engine") or {}).get("ok", True))]
        best = max(verified, key=lambda v: sign * v) if verified else None
        counts = pareto.get("counts")
        trials = counts.get("completed") if isinstance(counts, dict) else None
    config = manifest.get("config") if isinstance(manifest.get("config"), dict) else {}
    budget_ms = manifest.get("budget_ms") if isinstance(manifest.get("budget_ms"), (int, float)) else None
    return RunRow(
        path=str(run_dir), task=str(manifest.get("task", "?")), target=_target(manifest.get("profile") or {}),
        budget=str(config.get("latency_budget", "?")), budget_ms=budget_ms, trials=trials, best_metric=best,
        metric_name=str(manifest.get("metric_name", "metric")), created=str(manifest.get("created", "")),
    )


def list_runs(root: Path | str) -> list[RunRow]:
    """Every run directory (a folder with run.json) directly under ``root``, newest first."""
    root = Path(root)
    if not root.is_dir():
        raise UserError(f"No runs folder at {str(root)!r}; give --root the folder that holds run directories (default runs).")
    rows = [r for d in sorted(root.iterdir()) if d.is_dir() and (d / "run.json").is_file() and (r := _row(d)) is not None]
    return sorted(rows, key=lambda r: r.created, reverse=True)


def load_front(run_dir: Path | str) -> dict:
    """A run's pareto.json, or a one-line UserError saying how to get one."""
    run_dir = Path(run_dir)
    if not (run_dir / "run.json").is_file():
        raise UserError(f"{str(run_dir)!r} is not a run directory (no run.json); see `autocompress runs list`.")
    if not (run_dir / "pareto.json").is_file():
        raise UserError(f"Run {str(run_dir)!r} has no pareto.json yet; run `autocompress report {run_dir}` to build it.")
    try:
        front = read_json(run_dir / "pareto.json")
    except (OSError, ValueError):
        front = None
    if not (isinstance(front, dict) and isinstance(front.get("members"), list) and all(isinstance(m, dict) for m in front["members"])
            and isinstance(front.get("baseline"), dict) and isinstance(front.get("metric_name"), str)
            and isinstance(front.get("budget_ms"), (int, float))):
        raise UserError(f"{str(run_dir / 'pareto.json')!r} is unreadable; rebuild it with `autocompress report {run_dir}`.")
    return front
