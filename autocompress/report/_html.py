"""A single-file HTML report: inline SVG, no scripts from the network, readable offline."""

from __future__ import annotations

import html
import json
from pathlib import Path
from typing import Any, Mapping

from autocompress._io import atomic_write_text

__all__ = ["write_report"]

W, H, PAD = 740, 420, 80


def _scale(v: float, lo: float, hi: float, a: float, b: float) -> float:
    return a if hi == lo else a + (v - lo) * (b - a) / (hi - lo)


def _svg(trials: list[Mapping], front: list[Mapping], baseline: Mapping, budget_ms: float, metric_name: str) -> str:
    pts = [(t["measured_ms"], t["metric"]) for t in trials if t.get("measured_ms") is not None]
    pts.append((baseline["latency_ms"], baseline["metric"]))
    xs = [p[0] for p in pts] + [budget_ms]
    ys = [p[1] for p in pts]
    x0, x1 = 0.0, max(xs) * 1.08
    y0, y1 = min(ys), max(ys)
    margin = (y1 - y0) * 0.1 or 0.01
    y0, y1 = y0 - margin, y1 + margin
    X = lambda v: _scale(v, x0, x1, PAD, W - 20)  # noqa: E731
    Y = lambda v: _scale(v, y0, y1, H - PAD, 20)  # noqa: E731
    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{W}" height="{H}" role="img" aria-label="Pareto front">',
             f'<rect x="{PAD}" y="20" width="{W - PAD - 20}" height="{H - PAD - 20}" fill="#fafafa" stroke="#ccc"/>']
    for i in range(6):
        xv = x0 + (x1 - x0) * i / 5
        yv = y0 + (y1 - y0) * i / 5
        parts.append(f'<text x="{X(xv):.1f}" y="{H - PAD + 18}" font-size="11" text-anchor="middle">{xv:.3g}</text>')
        parts.append(f'<text x="{PAD - 6}" y="{Y(yv) + 4:.1f}" font-size="11" text-anchor="end">{yv:.4g}</text>')
    parts.append(f'<text x="{(W + PAD) / 2}" y="{H - 12}" font-size="13" text-anchor="middle">measured latency (ms)</text>')
    parts.append(f'<text x="16" y="{H / 2}" font-size="13" text-anchor="middle" transform="rotate(-90 16 {H / 2})">{html.escape(metric_name)}</text>')
    parts.append(f'<line x1="{X(budget_ms):.1f}" y1="20" x2="{X(budget_ms):.1f}" y2="{H - PAD}" stroke="#d33" stroke-dasharray="6 4"/>')
    parts.append(f'<text x="{X(budget_ms) + 4:.1f}" y="34" font-size="11" fill="#d33">budget {budget_ms:.3g} ms</text>')
    front_ids = {t["number"] for t in front}
    for t in trials:
        if t.get("measured_ms") is None or t["number"] in front_ids:
            continue
        parts.append(f'<circle cx="{X(t["measured_ms"]):.1f}" cy="{Y(t["metric"]):.1f}" r="3.5" fill="#999" opacity="0.6"><title>trial {t["number"]}: {t["metric"]:.4f} at {t["measured_ms"]:.3f} ms</title></circle>')
    line = " ".join(f'{X(t["measured_ms"]):.1f},{Y(t["metric"]):.1f}' for t in front)
    if line:
        parts.append(f'<polyline points="{line}" fill="none" stroke="#1565c0" stroke-width="1.5"/>')
    for t in front:
        parts.append(f'<circle class="front-point" cx="{X(t["measured_ms"]):.1f}" cy="{Y(t["metric"]):.1f}" r="6" fill="#1565c0"><title>trial {t["number"]}: {t["metric"]:.4f} at {t["measured_ms"]:.3f} ms</title></circle>')
    parts.append(f'<rect x="{X(baseline["latency_ms"]) - 6:.1f}" y="{Y(baseline["metric"]) - 6:.1f}" width="12" height="12" fill="#2e7d32"><title>original model</title></rect>')
    legend = [("#2e7d32", "original model"), ("#1565c0", "Pareto front"), ("#999", "other fine-tuned candidates")]
    for i, (color, label) in enumerate(legend):
        y = H - PAD - 16 - 16 * (len(legend) - 1 - i)
        parts.append(f'<circle cx="{W - 210}" cy="{y - 4}" r="5" fill="{color}"/><text x="{W - 200}" y="{y}" font-size="11">{label}</text>')
    parts.append("</svg>")
    return "\n".join(parts)


def write_report(path: Path, summary: Mapping[str, Any], trials: list[Mapping], front: list[Mapping]) -> Path:
    """Write ``report.html`` for a run. ``summary`` holds task, baseline, budget, profile."""
    base = summary["baseline"]
    rows = []
    for m in front:
        engine = Path(m["engine"]["path"]).name if m.get("engine") else ""
        rows.append(
            "<tr>" + "".join(f"<td>{html.escape(str(c))}</td>" for c in (
                m["number"], f'{m["metric"]:.4f}', f'{m["metric"] - base["metric"]:+.4f}', f'{m["predicted_ms"]:.3f}',
                f'{m["measured_ms"]:.3f}', f'{m["speedup"]:.2f}x' if m.get("speedup") else "", f'{m["size_bytes"] / 1024:.0f} KiB',
            )) + f'<td><a href="engines/{html.escape(engine)}">{html.escape(engine)}</a></td></tr>'
        )
    counts = summary.get("counts", {})
    page = f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>autocompress: {html.escape(summary['run'])}</title>
<style>body{{font-family:system-ui,sans-serif;margin:2em;max-width:1000px;color:#222}}
table{{border-collapse:collapse}}td,th{{border:1px solid #ddd;padding:4px 10px;text-align:right}}
th{{background:#f0f0f0}}code{{background:#f4f4f4;padding:1px 4px}}</style></head><body>
<h1>Pareto front: {html.escape(summary['task'])}</h1>
<p>Original model: {html.escape(summary['metric_name'])} <b>{base['metric']:.4f}</b> at <b>{base['latency_ms']:.3f} ms</b>.
Budget <b>{summary['budget_ms']:.3f} ms</b> (<code>{html.escape(summary['budget'])}</code>).
Trials: {counts.get('completed', 0)} fine-tuned, {counts.get('infeasible', 0)} rejected by the latency table before any fine-tune,
{counts.get('failed', 0)} failed; {counts.get('repaired', 0)} fine-tuned trials were over-budget proposals repaired to fit.</p>
{_svg(trials, front, base, summary['budget_ms'], summary['metric_name'])}
<h2>Members</h2>
<table><tr><th>trial</th><th>{html.escape(summary['metric_name'])}</th><th>change</th><th>predicted ms</th><th>measured ms</th><th>speedup</th><th>engine size</th><th>engine</th></tr>
{''.join(rows) or '<tr><td colspan="8">No candidate met the budget.</td></tr>'}</table>
<h2>Latency table fidelity</h2><pre>{html.escape(json.dumps(summary.get('fidelity', {}), indent=2))}</pre>
<h2>Target</h2><pre>{html.escape(json.dumps(summary.get('profile', {}), indent=2))}</pre>
</body></html>
"""
    atomic_write_text(path, page)
    return path
