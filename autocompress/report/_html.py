"""A single-file HTML report: inline CSS, SVG and hand-written script, readable offline.

The page's text and tables are rendered here, every user-controlled string escaped; the
charts (interactive front, policy heatmap, predicted vs measured latency, search
progress) are drawn by the inline script from a JSON block whose ``<``, ``>`` and ``&``
are escaped, and which the script only ever writes through ``textContent`` and SVG
attributes.
"""

from __future__ import annotations

import html
import json
from pathlib import Path
from typing import Any, Mapping
from urllib.parse import quote

from autocompress._io import atomic_write_text
from autocompress.report._data import policy_grid, retime_note, search_progress

__all__ = ["report_data", "write_report"]


def _plain(obj: Any) -> Any:
    """JSON-safe copy: non-finite floats become null (JSON has no NaN)."""
    if isinstance(obj, float):
        return _finite(obj)
    if isinstance(obj, Mapping):
        return {str(k): _plain(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_plain(v) for v in obj]
    return obj


def _json_for_script(obj: Any) -> str:
    text = json.dumps(_plain(obj), allow_nan=False, default=str)
    return text.replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")


def _finite(v: Any) -> Any:
    return v if isinstance(v, (int, float)) and v == v and abs(v) != float("inf") else None


def report_data(summary: Mapping[str, Any], trials: list[Mapping], front: list[Mapping], budget_noise: float = 1.05) -> dict:
    """Everything the page's script draws, as plain JSON-able data."""
    front_trials = {m["trial"] for m in front}
    layers = list(summary.get("layers") or [])
    candidates = [
        {"trial": t["number"], "metric": _finite(t.get("metric")), "measured_ms": _finite(t.get("measured_ms")),
         "predicted_ms": _finite(t.get("predicted_ms")), "size_bytes": t.get("size_bytes"),
         "verified": bool(t.get("verified", t.get("engine", {}).get("ok", False))), "on_front": t["number"] in front_trials,
         "summary": t.get("summary", "")}
        for t in trials
        if t.get("status") == "completed" and "duplicate_of" not in t and t.get("measured_ms") and t.get("metric") is not None
    ]
    members = [
        {"trial": m["trial"], "metric": m["metric"], "predicted_ms": m["predicted_ms"], "measured_ms": m["measured_ms"],
         "size_bytes": m["size_bytes"], "speedup": _finite(m.get("speedup")), "verified": bool(m.get("verified", True)),
         "problems": list(m.get("problems", [])), "summary": m.get("summary", ""),
         "engine_file": m.get("engine_file"), "sidecar_file": m.get("sidecar_file"), "final": m.get("final"),
         "grid": policy_grid(m["policy"], layers)}
        for m in front
    ]
    return {
        "task": summary["task"], "metric_name": summary["metric_name"], "higher_is_better": summary["higher_is_better"],
        "baseline": summary["baseline"], "budget_ms": summary["budget_ms"], "fidelity": summary.get("fidelity", {}),
        "candidates": candidates, "members": members,
        "progress": search_progress(trials, summary["budget_ms"], summary["higher_is_better"], budget_noise),
    }


def _link(rel: str | None, label: str | None = None) -> str:
    if not rel:
        return "-"
    return f'<a href="{html.escape(quote(rel))}">{html.escape(label or Path(rel).name)}</a>'


def _widened(member: Mapping[str, Any]) -> str:
    """The choices a member's proposal gave up at no predicted cost, listed on hover."""
    changes = member.get("widened") or []
    if not changes:
        return ""
    return (f' <span class="sub" title="{html.escape(", ".join(changes))}">(proposal widened: {len(changes)} '
            f'choice{"s" if len(changes) > 1 else ""} the table predicted cost no latency)</span>')


def _member_rows(summary: Mapping[str, Any], front: list[Mapping]) -> str:
    base = summary["baseline"]
    rows = []
    for m in front:
        verified = m.get("verified", True)
        status = "verified" if verified else "FAILED: " + "; ".join(m.get("problems", []))
        final = m.get("final")
        final_cell = "-"
        if final:
            metric = f"{final['metric']:.4f}" if isinstance(final.get("metric"), (int, float)) else "-"
            final_cell = f"{_link(final.get('engine_file'))} ({html.escape(metric)}, +{int(final.get('steps') or 0)} steps) {_link(final.get('sidecar_file'), 'sidecar')}"
        cells = [
            str(m["trial"]), f'{m["metric"]:.4f}', f'{m["metric"] - base["metric"]:+.4f}', f'{m["predicted_ms"]:.3f}',
            f'{m["measured_ms"]:.3f}', f'{m["speedup"]:.2f}x' if m.get("speedup") else "-", f'{m["size_bytes"] / 1024:.0f} KiB',
        ]
        rows.append(
            f'<tr class="member-row{"" if verified else " failed"}" data-trial="{int(m["trial"])}">'
            + "".join(f"<td>{html.escape(c)}</td>" for c in cells)
            + f'<td class="status">{html.escape(status)}</td><td class="left">{html.escape(m.get("summary", ""))}{_widened(m)}</td>'
            + f'<td>{_link(m.get("engine_file"))}</td><td>{_link(m.get("sidecar_file"), "sidecar")}</td><td>{final_cell}</td></tr>'
        )
    return "\n".join(rows) or '<tr><td colspan="12">No candidate met the budget.</td></tr>'


def _key_values(mapping: Mapping[str, Any]) -> str:
    rows = []
    for k, v in mapping.items():
        value = v if isinstance(v, str) else json.dumps(v)
        rows.append(f'<tr><th class="left">{html.escape(str(k))}</th><td class="left">{html.escape(value)}</td></tr>')
    return "\n".join(rows)


def _floor_line(summary: Mapping[str, Any]) -> str:
    """The metric floor of a run searched with --max-metric-drop, and how many fine-tuned
    candidates fell beyond it (empty without a floor)."""
    floor = summary.get("metric_floor")
    if floor is None:
        return ""
    beyond = summary.get("counts", {}).get("below_metric_floor", 0)
    return (f"<br>{html.escape(str(summary['metric_name']))} floor <b>{floor:.4f}</b>"
            f" ({beyond} fine-tuned candidate{'s' if beyond != 1 else ''} beyond it, left off the front)")


def _retime_line(summary: Mapping[str, Any]) -> str:
    """Where the front was re-timed on a machine off its speed at the run's start (empty otherwise)."""
    note = retime_note(summary)
    return f"<br><span class=\"hint\">{html.escape(note)}</span>" if note else ""


def write_report(path: Path, summary: Mapping[str, Any], trials: list[Mapping], front: list[Mapping], budget_noise: float = 1.05) -> Path:
    """Write ``report.html`` for a run. ``summary`` holds task, baseline, budget, profile,
    counts, fidelity and the model's layers; ``trials`` are the trial store's records;
    ``front`` the members as in pareto.json."""
    from autocompress.latency_lut import timed_unevenly_note, uneven_warning  # the search's process has it loaded already

    base = summary["baseline"]
    counts = summary.get("counts", {})
    fid = summary.get("fidelity") or {}
    metric = html.escape(summary["metric_name"])
    fidelity_text = (
        f"On this run's {fid['candidates']} exported candidates the latency table's median |error| is "
        f"{fid['median_abs_error']:.1%}; {fid['within_10pct']:.0%} are within ±10% and {fid['within_5pct']:.0%} within ±5%."
        if fid else "No exported candidate to compare with."
    )
    if fid.get("at_calibration_speed"):
        steady = fid["at_calibration_speed"]
        fidelity_text += (f" At the machine speed of the table's calibration (each engine's timing scaled by "
                          f"{html.escape(steady.get('by', 'the original'))} timed beside it): median |error| {steady['median_abs_error']:.1%}, {steady['within_10pct']:.0%} "
                          f"within ±10%.")
    if warning := uneven_warning(fid.get("uneven"), "at the run's start"):
        fidelity_text += " " + warning
    if note := timed_unevenly_note(fid.get("timed_unevenly"), fid.get("candidates")):
        fidelity_text += " " + note
    extra = "".join(f", {html.escape(str(k))} {v:.4f}" for k, v in (base.get("extra_metrics") or {}).items())
    page = f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><meta name="viewport" content="width=device-width, initial-scale=1">
<title>autocompress: {html.escape(str(summary['run']))}</title>
<style>{_CSS}</style></head><body>
<header><h1>Pareto front: {html.escape(summary['task'])}</h1>
<p class="sub">Run <code>{html.escape(str(summary['run']))}</code>{f" &middot; created {html.escape(str(summary['created']))}" if summary.get('created') else ""}</p></header>
<section class="facts">
<div><b>Original model</b><br>{metric} <b>{base['metric']:.4f}</b>{extra}<br>latency <b>{base['latency_ms']:.3f} ms</b></div>
<div><b>Budget</b><br><b>{summary['budget_ms']:.3f} ms</b> (<code>{html.escape(str(summary['budget']))}</code>){_floor_line(summary)}{_retime_line(summary)}</div>
<div><b>Trials</b><br>{counts.get('completed', 0)} fine-tuned, {counts.get('infeasible', 0)} rejected by the latency table,
{counts.get('failed', 0)} failed, {counts.get('failed_verification', 0)} failed engine verification;
{counts.get('repaired', 0)} fine-tuned trials were over-budget proposals repaired to fit,
{counts.get('widened', 0)} proposals widened where compressing less was predicted to cost no latency</div>
</section>
<section><h2>Front: {metric} against measured latency</h2>
<p class="hint">Marker area is proportional to engine size. Hover a point for its numbers; click a front member to see its policy.</p>
<div class="chart-row"><div><svg id="front-chart" width="760" height="440" role="img" aria-label="Pareto front"></svg>
<div class="legend"><svg width="12" height="12"><rect width="11" height="11" fill="#2e7d32"/></svg> original model
<svg width="12" height="12"><circle cx="6" cy="6" r="5" fill="#1565c0"/></svg> front member (area: engine size)
<svg width="12" height="12"><circle cx="6" cy="6" r="4.5" fill="#fff" stroke="#c62828" stroke-width="2"/></svg> front member, verification failed
<svg width="12" height="12"><circle cx="6" cy="6" r="4" fill="#9e9e9e"/></svg> other fine-tuned candidates
<svg width="16" height="12"><line x1="8" y1="0" x2="8" y2="12" stroke="#d32f2f" stroke-dasharray="3 2"/></svg> budget</div></div>
<div id="member-detail" class="detail"><p class="hint">Click a front member.</p></div></div></section>
<section><h2>Policy across layers <span id="heatmap-title" class="sub"></span></h2>
<svg id="heatmap" width="980" height="10" role="img" aria-label="per-layer policy"></svg></section>
<section><h2>Members</h2>
<table id="members"><thead><tr><th>trial</th><th>{metric}</th><th>change</th><th>predicted ms</th><th>measured ms</th><th>speedup</th>
<th>engine size</th><th>verification</th><th>policy</th><th>engine</th><th>sidecar</th><th>final engine</th></tr></thead>
<tbody>{_member_rows(summary, front)}</tbody></table></section>
<section><h2>Predicted vs measured latency</h2><p>{html.escape(fidelity_text)}</p>
<svg id="latency-chart" width="440" height="360" role="img" aria-label="predicted against measured latency"></svg></section>
<section><h2>Search progress</h2>
<div class="chart-row"><svg id="progress-best" width="320" height="240" role="img" aria-label="best feasible metric"></svg>
<svg id="progress-hv" width="320" height="240" role="img" aria-label="hypervolume"></svg>
<svg id="progress-infeasible" width="320" height="240" role="img" aria-label="infeasible share"></svg></div></section>
<section><h2>Target profile</h2><table class="kv">{_key_values(summary.get('profile') or {})}</table></section>
<div id="tooltip" role="tooltip"></div>
<script type="application/json" id="report-data">{_json_for_script(report_data(summary, trials, front, budget_noise))}</script>
<script>{_JS}</script>
</body></html>
"""
    atomic_write_text(path, page)
    return path


_CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,sans-serif;margin:1.5em 2em;color:#222;max-width:1200px}
h1{margin:0 0 .2em}h2{font-size:1.15em;margin:1.4em 0 .4em;border-bottom:1px solid #e3e3e3;padding-bottom:.2em}
.sub{color:#666;font-weight:normal;font-size:.9em}.hint{color:#777;font-size:.85em;margin:.2em 0}
code{background:#f4f4f4;padding:1px 4px;border-radius:3px}
.facts{display:flex;gap:1em;flex-wrap:wrap}.facts div{background:#f7f9fc;border:1px solid #e0e6ef;border-radius:6px;padding:.6em 1em;min-width:200px}
table{border-collapse:collapse;font-size:.9em}td,th{border:1px solid #ddd;padding:3px 8px;text-align:right}th{background:#f0f0f0}
td.left,th.left{text-align:left}tr.member-row{cursor:pointer}tr.member-row:hover{background:#f3f7ff}
tr.selected{background:#e3edff !important}tr.failed td.status{color:#c62828;font-weight:bold}
.chart-row{display:flex;gap:1em;flex-wrap:wrap;align-items:flex-start}
.legend{font-size:.8em;color:#444;margin:.2em 0 0 60px;max-width:700px}.legend svg{vertical-align:middle;margin-left:.8em}
.detail{min-width:260px;max-width:380px;border:1px solid #e0e6ef;border-radius:6px;padding:.6em 1em;background:#fbfcfe;font-size:.9em}
.detail dt{color:#666}.detail dd{margin:0 0 .3em 0}.bad{color:#c62828}
#tooltip{position:absolute;display:none;pointer-events:none;background:rgba(33,33,33,.92);color:#fff;padding:5px 8px;border-radius:4px;font-size:12px;white-space:pre;z-index:10}
svg text{font-size:11px;fill:#333}.axis-label{font-size:12px}
circle.front-point{cursor:pointer}circle.front-point.selected{stroke:#000;stroke-width:3}
"""

_JS = r"""
(function () {
  "use strict";
  var D = JSON.parse(document.getElementById("report-data").textContent);
  var NS = "http://www.w3.org/2000/svg";
  var tip = document.getElementById("tooltip");
  var selected = null;

  function el(tag, attrs, parent, text) {
    var e = document.createElementNS(NS, tag);
    for (var k in attrs) { if (Object.prototype.hasOwnProperty.call(attrs, k)) e.setAttribute(k, attrs[k]); }
    if (text !== undefined) e.textContent = text;
    if (parent) parent.appendChild(e);
    return e;
  }
  function fmt(v, d) { return (v === null || v === undefined || isNaN(v)) ? "-" : Number(v).toFixed(d); }
  function kib(b) { return b ? (b / 1024).toFixed(0) + " KiB" : "-"; }
  function showTip(evt, text) {
    tip.textContent = text;
    tip.style.display = "block";
    tip.style.left = (evt.pageX + 12) + "px";
    tip.style.top = (evt.pageY + 12) + "px";
  }
  function hideTip() { tip.style.display = "none"; }
  function hover(node, text) {
    node.addEventListener("mousemove", function (evt) { showTip(evt, text); });
    node.addEventListener("mouseleave", hideTip);
  }
  function ticks(lo, hi, n) {
    var span = hi - lo || 1, step = Math.pow(10, Math.floor(Math.log10(span / n)));
    var err = span / n / step;
    if (err >= 7.5) step *= 10; else if (err >= 3.5) step *= 5; else if (err >= 1.5) step *= 2;
    var out = [];
    for (var v = Math.ceil(lo / step) * step; v <= hi + step * 1e-9; v += step) out.push(v);
    return out;
  }
  function range(values, pad, floorZero) {
    var lo = Math.min.apply(null, values), hi = Math.max.apply(null, values);
    var m = (hi - lo) * pad || Math.abs(hi) * 0.05 || 0.01;
    return [floorZero ? Math.min(0, lo) : lo - m, hi + m];
  }
  // Axes in an SVG; returns scale functions.
  function frame(svg, xr, yr, xlabel, ylabel, left, integerX) {
    var W = +svg.getAttribute("width"), H = +svg.getAttribute("height");
    var L = left || 62, R = 14, T = 14, B = 44;
    var X = function (v) { return L + (v - xr[0]) * (W - L - R) / ((xr[1] - xr[0]) || 1); };
    var Y = function (v) { return H - B - (v - yr[0]) * (H - T - B) / ((yr[1] - yr[0]) || 1); };
    el("rect", {x: L, y: T, width: W - L - R, height: H - T - B, fill: "#fafbfc", stroke: "#ccc"}, svg);
    ticks(xr[0], xr[1], W < 600 ? 4 : 6).filter(function (v) { return !integerX || Math.abs(v - Math.round(v)) < 1e-9; }).forEach(function (v) {
      el("line", {x1: X(v), x2: X(v), y1: T, y2: H - B, stroke: "#eee"}, svg);
      el("text", {x: X(v), y: H - B + 15, "text-anchor": "middle"}, svg, +v.toPrecision(4));
    });
    ticks(yr[0], yr[1], H < 300 ? 4 : 5).forEach(function (v) {
      el("line", {x1: L, x2: W - R, y1: Y(v), y2: Y(v), stroke: "#eee"}, svg);
      el("text", {x: L - 5, y: Y(v) + 4, "text-anchor": "end"}, svg, +v.toPrecision(4));
    });
    el("text", {x: (W + L) / 2, y: H - 8, "text-anchor": "middle", "class": "axis-label"}, svg, xlabel);
    el("text", {x: 13, y: (H - B + T) / 2, "text-anchor": "middle", "class": "axis-label",
                transform: "rotate(-90 13 " + (H - B + T) / 2 + ")"}, svg, ylabel);
    return {X: X, Y: Y, W: W, H: H, L: L, R: R, T: T, B: B};
  }

  function drawFront() {
    var svg = document.getElementById("front-chart");
    var cands = D.candidates, base = D.baseline;
    var xs = cands.map(function (c) { return c.measured_ms; }).concat([base.latency_ms]);
    var ys = cands.map(function (c) { return c.metric; }).concat([base.metric]);
    var xmax = Math.max.apply(null, xs) * 1.1;
    var budgetOnScale = D.budget_ms <= xmax * 1.6;  // a far budget would squeeze every point against the axis
    if (budgetOnScale) xmax = Math.max(xmax, D.budget_ms * 1.08);
    var f = frame(svg, [0, xmax], range(ys, 0.12), "measured latency (ms)", D.metric_name);
    var bx = budgetOnScale ? f.X(D.budget_ms) : f.W - f.R;
    el("line", {x1: bx, x2: bx, y1: f.T, y2: f.H - f.B, stroke: "#d32f2f", "stroke-dasharray": "6 4", "class": "budget-line"}, svg);
    el("text", {x: bx - 4, y: f.T + 14, fill: "#d32f2f", "text-anchor": "end"}, svg,
       "budget " + fmt(D.budget_ms, 3) + " ms" + (budgetOnScale ? "" : " (off scale) \u2192"));
    cands.forEach(function (c) {
      if (c.on_front) return;
      var p = el("circle", {cx: f.X(c.measured_ms), cy: f.Y(c.metric), r: 3.5, fill: "#9e9e9e", opacity: 0.65, "class": "candidate"}, svg);
      hover(p, "trial " + c.trial + "\n" + D.metric_name + " " + fmt(c.metric, 4) + "\nmeasured " + fmt(c.measured_ms, 3) +
        " ms (predicted " + fmt(c.predicted_ms, 3) + ")\n" + kib(c.size_bytes) + (c.verified ? "" : "\nengine verification FAILED"));
    });
    // The original under the members: a member as fast and as good as the original stays clickable.
    var o = el("rect", {x: f.X(base.latency_ms) - 6, y: f.Y(base.metric) - 6, width: 12, height: 12, fill: "#2e7d32",
                        "class": "original-point"}, svg);
    hover(o, "original model\n" + D.metric_name + " " + fmt(base.metric, 4) + "\nlatency " + fmt(base.latency_ms, 3) + " ms");
    var members = D.members.slice().sort(function (a, b) { return a.measured_ms - b.measured_ms; });
    if (members.length > 1) {
      el("polyline", {points: members.map(function (m) { return f.X(m.measured_ms) + "," + f.Y(m.metric); }).join(" "),
                      fill: "none", stroke: "#1565c0", "stroke-width": 1.5}, svg);
    }
    var maxSize = Math.max.apply(null, members.map(function (m) { return m.size_bytes; }).concat([1]));
    members.forEach(function (m) {
      var r = Math.max(4, 13 * Math.sqrt(m.size_bytes / maxSize));  // area proportional to size
      var p = el("circle", {cx: f.X(m.measured_ms), cy: f.Y(m.metric), r: r.toFixed(1), "class": "front-point",
                            "data-trial": m.trial, fill: m.verified ? "#1565c0" : "#ffffff",
                            stroke: m.verified ? "#0d47a1" : "#c62828", "stroke-width": m.verified ? 1 : 2.5,
                            "fill-opacity": m.verified ? 0.8 : 1}, svg);
      hover(p, "trial " + m.trial + (m.verified ? "" : "  (verification FAILED)") + "\n" + D.metric_name + " " + fmt(m.metric, 4) +
        " (" + (m.metric - base.metric >= 0 ? "+" : "") + fmt(m.metric - base.metric, 4) + ")\nmeasured " + fmt(m.measured_ms, 3) +
        " ms, predicted " + fmt(m.predicted_ms, 3) + " ms\nspeedup " + fmt(m.speedup, 2) + "x, " + kib(m.size_bytes) + "\n" + m.summary);
      p.addEventListener("click", function () { select(m.trial); });
    });
  }

  var BITS_COLOR = {32: "#eeeeee", 16: "#90caf9", 8: "#1e88e5", 4: "#4a148c"};
  function mix(a, b, t) {
    var pa = [1, 3, 5].map(function (i) { return parseInt(a.substr(i, 2), 16); });
    var pb = [1, 3, 5].map(function (i) { return parseInt(b.substr(i, 2), 16); });
    return "rgb(" + pa.map(function (v, i) { return Math.round(v + (pb[i] - v) * Math.max(0, Math.min(1, t))); }).join(",") + ")";
  }
  function drawHeatmap(member) {
    var svg = document.getElementById("heatmap");
    while (svg.firstChild) svg.removeChild(svg.firstChild);
    document.getElementById("heatmap-title").textContent = member ? "(trial " + member.trial + ")" : "";
    if (!member) return;
    var grid = member.grid, W = +svg.getAttribute("width"), L = 90, top = 12;
    var cw = Math.max(14, Math.min(70, (W - L - 10) / Math.max(grid.length, 1))), ch = 26;
    var rows = [["pruned", function (c) { return mix("#ffffff", "#e65100", c.prune / 0.9); },
                 function (c) { return c.prune ? Math.round(c.prune * 100) + "%" : "0"; }, function (c) { return c.prune > 0.45; }],
                ["bits", function (c) { return BITS_COLOR[c.bits] || "#fff"; }, function (c) { return String(c.bits); },
                 function (c) { return c.bits <= 8; }],
                ["rank", function (c) { return mix("#ffffff", "#2e7d32", (1 - c.rank) / 0.9); },
                 function (c) { return c.rank >= 1 ? "full" : (c.decomp === "tucker2" ? "T" : "") + String(c.rank); },
                 function (c) { return c.rank < 0.5; }]];
    rows.forEach(function (row, r) {
      el("text", {x: L - 8, y: top + r * ch + ch / 2 + 4, "text-anchor": "end"}, svg, row[0]);
      grid.forEach(function (c, i) {
        var g = el("g", {}, svg);
        el("rect", {x: L + i * cw, y: top + r * ch, width: cw - 1, height: ch - 1, fill: row[1](c), stroke: "#d0d0d0", "class": "heat-cell",
                    "data-row": row[0], "data-layer": c.layer}, g);
        if (cw >= 22) el("text", {x: L + i * cw + cw / 2, y: top + r * ch + ch / 2 + 4, "text-anchor": "middle",
                                  fill: row[3](c) ? "#fff" : "#222"}, g, row[2](c));
        hover(g, c.layer + "\npruned " + Math.round(c.prune * 100) + "% of output channels\n" + c.bits + " bits\nrank " +
          (c.rank >= 1 ? "full" : c.rank + (c.decomp === "tucker2" ? " (Tucker-2)" : "")));
      });
    });
    var labelTop = top + 3 * ch + 6, longest = 0;
    grid.forEach(function (c, i) {
      var x = L + i * cw + cw / 2;
      el("text", {x: x, y: labelTop, "text-anchor": "end", transform: "rotate(-50 " + x + " " + labelTop + ")"}, svg, c.layer);
      longest = Math.max(longest, c.layer.length);
    });
    svg.setAttribute("height", labelTop + Math.min(260, longest * 5.2) + 10);
  }

  function dl(parent, term, value, cls) {
    var dt = document.createElement("dt"); dt.textContent = term; parent.appendChild(dt);
    var dd = document.createElement("dd"); dd.textContent = value; if (cls) dd.className = cls; parent.appendChild(dd);
    return dd;
  }
  function link(parent, href, label) {
    if (!href) return;
    var a = document.createElement("a"); a.href = encodeURI(href); a.textContent = label; parent.appendChild(a);
    parent.appendChild(document.createTextNode(" "));
  }
  function drawDetail(m) {
    var box = document.getElementById("member-detail");
    while (box.firstChild) box.removeChild(box.firstChild);
    var h = document.createElement("h3"); h.textContent = "Trial " + m.trial; box.appendChild(h);
    var d = document.createElement("dl"); box.appendChild(d);
    dl(d, D.metric_name, fmt(m.metric, 4) + " (" + (m.metric - D.baseline.metric >= 0 ? "+" : "") + fmt(m.metric - D.baseline.metric, 4) + " vs original)");
    dl(d, "latency", fmt(m.measured_ms, 3) + " ms measured, " + fmt(m.predicted_ms, 3) + " ms predicted, " + fmt(m.speedup, 2) + "x");
    dl(d, "engine size", kib(m.size_bytes));
    dl(d, "policy", m.summary);
    dl(d, "verification", m.verified ? "verified" : "FAILED: " + m.problems.join("; "), m.verified ? "" : "bad");
    if (m.final) dl(d, "final fine-tune", "+" + m.final.steps + " steps: " + D.metric_name + " " + fmt(m.final.metric, 4) +
                    ", " + fmt(m.final.latency_ms, 3) + " ms" + (m.final.verified ? "" : " (verification FAILED)"));
    var links = dl(d, "files", "");
    link(links, m.engine_file, "engine");
    link(links, m.sidecar_file, "sidecar");
    if (m.final) { link(links, m.final.engine_file, "final engine"); link(links, m.final.sidecar_file, "final sidecar"); }
  }

  function select(trial) {
    var m = D.members.filter(function (x) { return x.trial === trial; })[0];
    if (!m) return;
    selected = trial;
    Array.prototype.forEach.call(document.querySelectorAll("circle.front-point"), function (c) {
      c.classList.toggle("selected", +c.getAttribute("data-trial") === trial);
    });
    Array.prototype.forEach.call(document.querySelectorAll("tr.member-row"), function (r) {
      r.classList.toggle("selected", +r.getAttribute("data-trial") === trial);
    });
    drawDetail(m);
    drawHeatmap(m);
  }

  function drawLatency() {
    var svg = document.getElementById("latency-chart");
    var pts = D.candidates.filter(function (c) { return c.predicted_ms !== null && c.measured_ms !== null; });
    if (!pts.length) return;
    var all = pts.map(function (c) { return c.predicted_ms; }).concat(pts.map(function (c) { return c.measured_ms; }));
    var hi = Math.max.apply(null, all) * 1.08, lo = Math.min.apply(null, all) * 0.92;
    var f = frame(svg, [lo, hi], [lo, hi], "measured latency (ms)", "predicted latency (ms)");
    el("line", {x1: f.X(lo), y1: f.Y(lo), x2: f.X(hi), y2: f.Y(hi), stroke: "#888", "stroke-dasharray": "4 3"}, svg);
    pts.forEach(function (c) {
      var p = el("circle", {cx: f.X(c.measured_ms), cy: f.Y(c.predicted_ms), r: 4, fill: c.on_front ? "#1565c0" : "#9e9e9e", opacity: 0.8}, svg);
      hover(p, "trial " + c.trial + "\npredicted " + fmt(c.predicted_ms, 3) + " ms\nmeasured " + fmt(c.measured_ms, 3) + " ms\nerror " +
        fmt(100 * (c.predicted_ms / c.measured_ms - 1), 1) + "%");
    });
  }

  function drawSeries(id, key, label, color) {
    var svg = document.getElementById(id), P = D.progress;
    var pts = P.filter(function (p) { return p[key] !== null && p[key] !== undefined; });
    if (!pts.length) { el("text", {x: 20, y: 40}, svg, "no feasible candidate yet"); return; }
    var xs = P.map(function (p) { return p.trial; }), ys = pts.map(function (p) { return p[key]; });
    var yr = key === "infeasible_share" ? [0, 1] : range(ys, 0.1, key === "hypervolume");
    var f = frame(svg, [Math.min.apply(null, xs), Math.max.apply(null, xs) || 1], yr, "trial", label, 66, true);
    var d = "";
    pts.forEach(function (p, i) {  // a step line: the value holds until the next trial changes it
      var x = f.X(p.trial), y = f.Y(p[key]);
      d += i === 0 ? "M" + x + "," + y : "H" + x + "V" + y;
    });
    el("path", {d: d, fill: "none", stroke: color, "stroke-width": 2, "class": "series"}, svg);
    if (key === "infeasible_share") {
      P.forEach(function (p) {
        if (p.status === "infeasible") el("line", {x1: f.X(p.trial), x2: f.X(p.trial), y1: f.H - f.B, y2: f.H - f.B - 6, stroke: "#d32f2f"}, svg);
      });
    }
  }

  drawFront();
  drawLatency();
  drawSeries("progress-best", "best", "best " + D.metric_name + " within budget", "#1565c0");
  drawSeries("progress-hv", "hypervolume", "hypervolume", "#6a1b9a");
  drawSeries("progress-infeasible", "infeasible_share", "share rejected by the table", "#d32f2f");
  Array.prototype.forEach.call(document.querySelectorAll("tr.member-row"), function (r) {
    r.addEventListener("click", function () { select(+r.getAttribute("data-trial")); });
  });
  if (D.members.length) select(D.members[0].trial);
})();
"""
