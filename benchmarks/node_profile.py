"""Whether ONNX Runtime's profiler, timing every node of each candidate in place, predicts the
candidates' end-to-end speed better than the latency table.

    .venv/bin/python benchmarks/node_profile.py --table /tmp/t/demo.json \\
        --measured benchmarks/results/table-fit-demo-mixed-seed8.json --out node-profile-demo.json
    # the figures again from the saved profiles (no timing):
    .venv/bin/python benchmarks/node_profile.py --table /tmp/t/demo.json --profiled benchmarks/results/node-profile-demo.json

The candidates and their end-to-end timings (relative to the original, two passes, profiling
off) come from a `table_fit.py` measurement. Each candidate is built and exported as the
search does and run in one ONNX Runtime session with profiling on (the backend's session
options), right after the original; every node's kernel time is kept as the median over the
runs, and sums are taken relative to the original's. The profiled run itself, the sums of
the nodes and the table's parts are each fitted to the measured speeds in sample (least
squares on relative error, with an offset) and held out (fitted on 42 candidates' first
pass, or half the set, judged on the others' second pass).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from pathlib import Path

import numpy as np

from table_fit import candidate_sums, fit_relative

RESULTS = Path(__file__).resolve().parent / "results"
CONVERSIONS = ("Transpose", "QuantizeLinear", "DequantizeLinear", "ReorderInput", "ReorderOutput")


def profile_nodes(backend, onnx_model: bytes, inputs: tuple, runs: int) -> dict:
    """Every node's kernel time (median over ``runs``), op type, output dtype and elements,
    and the median of the profiled runs end to end."""
    import onnxruntime as ort

    so = backend.session_options()
    so.enable_profiling = True
    with tempfile.TemporaryDirectory() as tmp:
        so.profile_file_prefix = os.path.join(tmp, "profile")
        session = ort.InferenceSession(onnx_model, so, providers=backend.provider_options(onnx_model))
        feeds = {i.name: t.numpy() for i, t in zip(session.get_inputs(), inputs)}
        for _ in range(runs):
            session.run(None, feeds)
        events = json.loads(Path(session.end_profiling()).read_text())
    nodes: dict[str, dict] = {}
    run_us = float(np.median([e["dur"] for e in events if e.get("name") == "model_run"]))
    for e in events:
        if e.get("cat") != "Node" or not e["name"].endswith("_kernel_time"):
            continue
        node = nodes.setdefault(e["name"][: -len("_kernel_time")], {"op": e["args"].get("op_name"), "us": []})
        node["us"].append(e["dur"])
        outputs = e["args"].get("output_type_shape") or [{}]
        node["dtype"] = next(iter(outputs[0]), "")
        node["elements"] = int(sum(np.prod(v) for o in outputs for v in o.values()))
    return {"run_us": run_us, "nodes": [{"name": n, "op": v["op"], "dtype": v.get("dtype", ""), "elements": v.get("elements", 0),
                                         "median_us": float(np.median(v["us"]))} for n, v in nodes.items()]}


def profile(measured: dict, table_path: Path, runs: int) -> list[dict]:
    """Each candidate profiled right after the original, whose node sum and run it is judged
    against: the machine's speed moves within minutes, not within a second."""
    from rich.progress import Progress

    from autocompress.latency_lut._onnx import to_onnx_bytes
    from autocompress.spaces import Policy, SpaceConfig
    from autocompress.study import open_workbench
    from autocompress.task import load_task

    bench = open_workbench(load_task(measured["task"], 0), SpaceConfig(), 1, table_path, shared_table=False)
    inputs = tuple(bench.task.example_inputs)
    original = to_onnx_bytes(bench.task.model, inputs, dynamic_batch=True)
    out = []
    with Progress(transient=True) as progress:
        bar = progress.add_task("profiling candidates", total=len(measured["policies"]))
        for p in measured["policies"]:
            onnx_model = to_onnx_bytes(bench.candidate(Policy.from_dict(p)), inputs, dynamic_batch=True)
            base = profile_nodes(bench.backend, original, inputs, runs // 2)
            out.append({**profile_nodes(bench.backend, onnx_model, inputs, runs), "original_run_us": base["run_us"],
                        "original_node_sum_us": sum(n["median_us"] for n in base["nodes"])})
            progress.advance(bar)
    return out


def fit_figures(features: np.ndarray, speed: np.ndarray) -> dict:
    """The best linear fit (with an offset) on relative error, in sample."""
    from autocompress.latency_lut import fidelity

    report = fidelity(list(fit_relative(features, speed)(features)), list(speed))
    return {"median_abs": report.median_abs_error, "within_10pct": report.within_10pct,
            "within_5pct": report.within_5pct, "spearman": report.spearman}


def held_out_figures(features: np.ndarray, first: np.ndarray, second: np.ndarray, k: int = 42, splits: int = 20) -> dict:
    """Fitted on ``k`` candidates' first pass, judged on the others' second pass; means over splits."""
    k = min(k, len(first) // 2)
    rng = np.random.default_rng(0)
    medians, within10 = [], []
    for _ in range(splits):
        order = rng.permutation(len(first))
        fit, held = order[:k], order[k:]
        err = np.abs(fit_relative(features[fit], first[fit])(features[held]) / second[held] - 1)
        medians.append(np.median(err))
        within10.append(np.mean(err <= 0.1))
    return {"held_out_median_abs": float(np.mean(medians)), "held_out_within_10pct": float(np.mean(within10))}


def evaluate(measured: dict, profiles: list[dict], table_path: Path) -> dict:

    first, second = (np.array(measured["relative"][i]) for i in (0, 1))
    speed = (first + second) / 2
    unit = np.array([c["original_node_sum_us"] for c in profiles])  # each candidate's sums relative to the original's
    total = np.array([sum(n["median_us"] for n in c["nodes"]) for c in profiles]) / unit
    conversions = np.array([sum(n["median_us"] for n in c["nodes"] if n["op"] in CONVERSIONS) for c in profiles]) / unit
    count = np.array([len(c["nodes"]) for c in profiles])
    run = np.array([c["run_us"] / c["original_run_us"] for c in profiles])
    parts = [s[2] for s in candidate_sums(measured, table_path)]
    names = sorted({k for p in parts for k in p})
    table = np.array([[p.get(k, 0.0) for k in names] for p in parts])
    kinds = sorted({(n["op"], n["dtype"]) for c in profiles for n in c["nodes"] if n["op"] in CONVERSIONS})
    converted = np.array([[sum(n["elements"] for n in c["nodes"] if (n["op"], n["dtype"]) == k) for k in kinds] for c in profiles])
    predictors = {
        "the profiled run, end to end": run[:, None],
        "sum of the nodes' times": total[:, None],
        "conversion nodes and the others apart": np.c_[conversions, total - conversions],
        "... and the number of nodes": np.c_[conversions, total - conversions, count],
        "the table's parts": table,
        "... and the conversion nodes' elements, by op and type": np.c_[table, converted / 1e3],
    }
    return {name: {**fit_figures(x, speed), **held_out_figures(x, first, second)} for name, x in predictors.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--table", required=True, help="a built table of the task (lut build --table)")
    parser.add_argument("--measured", default=None, help="a table_fit.py measurement: the candidates and their timings")
    parser.add_argument("--profiled", default=None, help="saved profiles (this script's --out) instead of profiling again")
    parser.add_argument("--runs", type=int, default=800, help="runs of each candidate's profiled session")
    parser.add_argument("--out", default=None, help="file name under benchmarks/results/ for the profiles and figures (rewritten from --profiled too)")
    args = parser.parse_args()
    if not args.measured and not args.profiled:
        parser.error("give --measured (to profile) or --profiled (saved profiles)")
    if args.profiled:
        saved = json.loads(Path(args.profiled).read_text())
        measured, profiles = saved["measured"], saved["profiles"]
    else:
        measured = json.loads(Path(args.measured).read_text())
        profiles = profile(measured, Path(args.table), args.runs)
    figures = evaluate(measured, profiles, Path(args.table))
    print(f"{measured['task']}: {len(profiles)} candidates, fitted in sample to the measured speed relative to the original")
    print("| predictor | median abs error | within ±10% | within ±5% | Spearman | held out (min(42, half) fitted): median, within ±10% |")
    print("| --- | ---: | ---: | ---: | ---: | ---: |")
    for name, f in figures.items():
        print(f"| {name} | {f['median_abs']:.1%} | {f['within_10pct']:.0%} | {f['within_5pct']:.0%} | {f['spearman']:.3f} "
              f"| {f['held_out_median_abs']:.1%}, {f['held_out_within_10pct']:.1%} |")
    if args.out:
        RESULTS.mkdir(exist_ok=True)
        (RESULTS / args.out).write_text(json.dumps({"measured": measured, "profiles": profiles, "figures": figures}))


if __name__ == "__main__":
    sys.path.append(str(Path(__file__).resolve().parents[1]))  # after PYTHONPATH: another checkout can be evaluated
    main()
