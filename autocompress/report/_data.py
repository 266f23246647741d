"""The numbers a report shows, computed from the trial store's records: search progress
(best feasible metric, hypervolume, infeasible share after each trial) and the
per-layer policy grid of a front member."""

from __future__ import annotations

from typing import Any, Mapping, Sequence

__all__ = ["hypervolume_2d", "policy_grid", "search_progress"]


def hypervolume_2d(points: Sequence[tuple[float, float]], ref_metric: float, ref_latency: float, higher_is_better: bool) -> float:
    """Area dominated by ``points`` (metric, latency) and bounded by the reference point:
    metric better than ``ref_metric``, latency below ``ref_latency``."""
    sign = 1.0 if higher_is_better else -1.0
    pts = [(lat, sign * (m - ref_metric)) for m, lat in points if lat < ref_latency and sign * (m - ref_metric) > 0]
    # A staircase: between consecutive latencies, the best gain of any point at or below.
    xs = sorted({lat for lat, _ in pts})
    area = 0.0
    for i, lat in enumerate(xs):
        upper = xs[i + 1] if i + 1 < len(xs) else ref_latency
        area += max(g for l, g in pts if l <= lat) * (upper - lat)
    return area


def search_progress(trials: Sequence[Mapping[str, Any]], budget_ms: float, higher_is_better: bool, budget_noise: float) -> list[dict]:
    """After each proposal (in trial order): the best metric measured within budget so far
    (by ``at_start_ms``, the latency the budget holds, where a trial has it),
    the hypervolume of the feasible points so far, and the share of proposals the latency
    table rejected. The hypervolume's reference is the budget and the worst metric of any
    fine-tuned candidate, so the curve only rises."""
    ordered = sorted(trials, key=lambda t: t["number"])
    done = [t for t in ordered if t.get("status") == "completed" and t.get("metric") is not None and t.get("measured_ms")]
    if not done:
        return []
    metrics = [t["metric"] for t in done]
    ref_metric = min(metrics) if higher_is_better else max(metrics)
    ref_metric -= (1e-9 if higher_is_better else -1e-9)
    ref_latency = budget_ms * budget_noise
    sign = 1.0 if higher_is_better else -1.0
    feasible: list[tuple[float, float]] = []
    best: float | None = None
    rejected = 0
    out = []
    for i, t in enumerate(ordered, start=1):
        status = t.get("status", "unknown")
        rejected += status == "infeasible"
        held = t.get("at_start_ms") or t.get("measured_ms")  # the latency the budget holds, where the run recorded it
        if status == "completed" and t.get("metric") is not None and held and held <= ref_latency:
            feasible.append((t["metric"], held))
            if best is None or sign * t["metric"] > sign * best:
                best = t["metric"]
        out.append({
            "trial": t["number"], "status": status, "best": best,
            "hypervolume": hypervolume_2d(feasible, ref_metric, ref_latency, higher_is_better),
            "infeasible_share": rejected / i,
        })
    return out


def policy_grid(policy: Mapping[str, Mapping[str, float]], layers: Sequence[Mapping[str, Any]]) -> list[dict]:
    """One column per layer: the share of its output channels pruned, its bits, its rank ratio
    and, where it is factorized, how ("svd" or "tucker2")."""
    prune, bits, rank = policy.get("prune", {}), policy.get("bits", {}), policy.get("rank", {})
    decomp = policy.get("decomp", {})
    names = [l["name"] for l in layers] or sorted(set(bits) | set(rank) | set(prune))
    groups = {l["name"]: l.get("out_group") for l in layers}
    return [{"layer": n, "prune": float(prune.get(groups.get(n) or n, 0.0)), "bits": int(bits.get(n, 32)),
             "rank": float(rank.get(n, 1.0)), "decomp": str(decomp.get(n, "svd"))} for n in names]


RETIME_DRIFT = 0.05  # a re-timing this far from the start's speed is said next to the front


def retime_note(summary: Mapping[str, Any]) -> str | None:
    """One sentence where the front was re-timed with the whole models more than
    ``RETIME_DRIFT`` off their speed at the run's start; None otherwise."""
    speed = summary.get("retime_speed") or {}
    moved = {name: s - 1 for name, s in speed.items() if abs(s - 1) > RETIME_DRIFT}
    if not moved:
        return None
    said = ", ".join(f"the {'most compressed model' if name == 'most_compressed' else name} {d:+.0%}" for name, d in moved.items())
    return (f"The front was re-timed while the machine ran {said} against the run's start: "
            "each member is held to the budget at the start's speed (its timing times a whole model's start latency "
            "over that model's latency in the same rounds).")
