"""The headline benchmark: searches at three latency budgets, the physical floor of the best
demo engine, and how the table's build and a trial's cost grow with model size. It writes
``benchmarks/results/headline.json`` and regenerates the "Headline" section of
BENCHMARKS.md, with a note of the figures that moved since the previous regeneration.

    .venv/bin/python benchmarks/headline.py                      # every part
    .venv/bin/python benchmarks/headline.py --parts demo,floor   # some parts; the rest are kept
    .venv/bin/python benchmarks/headline.py --page-only          # the page from the saved figures

Searches run through the CLI into ``runs/headline/<task>-b<batch>-<budget>``; a finished run
there is reused (its figures are read again, not re-measured) unless ``--fresh`` is given.
The ``demo_width_*`` functions are the scaling figure's tasks (``--task
benchmarks/headline.py:demo_width_16``).
"""

from __future__ import annotations

import argparse
import json
import platform
import re
import shutil
import subprocess
import sys
import time
from datetime import datetime, timezone
from pathlib import Path
from statistics import median

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results" / "headline.json"
PAGE = ROOT / "benchmarks" / "BENCHMARKS.md"
RUNS = ROOT / "runs" / "headline"
BEGIN, END = "<!-- headline: begin (benchmarks/headline.py writes this section) -->", "<!-- headline: end -->"
BUDGETS = ("0.5x", "0.33x", "0.25x")
# (task, batch, trials, distillation steps). MiniLM trials cost about 1 s per step on 2
# cores, so its searches are shorter than demo's.
SEARCHES = {
    "demo": ("demo", 1, 20, 120),
    "minilm": ("minilm", 1, 6, 60),
    "minilm32": ("minilm", 32, 6, 60),
}
SCALING_WIDTHS = (16, 32, 48)
PARTS = ("demo", "floor", "scaling", "minilm", "minilm32")


def demo_width_16():
    from autocompress.tasks.demo import build_demo_task

    return build_demo_task(width=16)


def demo_width_32():
    from autocompress.tasks.demo import build_demo_task

    return build_demo_task(width=32)


def demo_width_48():
    from autocompress.tasks.demo import build_demo_task

    return build_demo_task(width=48)


# ---------------------------------------------------------------- searches


def _cli(*args: str, log: Path) -> tuple[int, float]:
    """Run the autocompress CLI, output to ``log``; (exit code, wall seconds)."""
    t0 = time.perf_counter()
    with log.open("w") as out:
        rc = subprocess.call([sys.executable, "-m", "autocompress", *args], stdout=out, stderr=subprocess.STDOUT, cwd=ROOT)
    return rc, time.perf_counter() - t0


def _search_command(task: str, batch: int, budget: str, trials: int, steps: int, run_dir: Path) -> list[str]:
    cmd = ["search", "--task", task, "--latency-budget", budget, "--trials", str(trials), "--run-dir", str(run_dir.relative_to(ROOT))]
    if steps != 120:
        cmd += ["--distill-steps", str(steps)]
    if batch != 1:
        cmd += ["--batch-size", str(batch)]
    return cmd


def _trials(run_dir: Path) -> list[dict]:
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.load_study(study_name="autocompress", storage=f"sqlite:///{run_dir / 'study.db'}")
    return [dict(t.user_attrs, number=t.number) for t in study.get_trials()]


def run_search_row(part: str, budget: str, fresh: bool) -> dict:
    task, batch, trials, steps = SEARCHES[part]
    run_dir = RUNS / f"{task}-b{batch}-{budget}"
    log = RUNS / f"{task}-b{batch}-{budget}.log"
    cmd = _search_command(task, batch, budget, trials, steps, run_dir)
    row: dict = {"part": part, "task": task, "batch": batch, "budget": budget, "command": "autocompress " + " ".join(cmd)}
    if fresh and run_dir.exists():
        shutil.rmtree(run_dir)
    finished = (run_dir / "pareto.json").is_file() and sum(
        1 for t in _trials(run_dir) if t.get("status") == "completed" and "duplicate_of" not in t) >= trials
    if not finished:
        RUNS.mkdir(parents=True, exist_ok=True)
        print(f"[headline] {row['command']}", flush=True)
        rc, wall = _cli(*cmd, log=log)
        if rc != 0:
            lines = [l for l in log.read_text().splitlines() if l.strip()]
            row["error"] = lines[-1] if lines else f"exit code {rc}"
            return row
        row["wall_s"] = wall
    pareto = json.loads((run_dir / "pareto.json").read_text())
    manifest = json.loads((run_dir / "run.json").read_text())
    attrs = _trials(run_dir)
    base = pareto["baseline"]
    sign = 1 if pareto["higher_is_better"] else -1
    row.update(
        metric_name=pareto["metric_name"], baseline_metric=base["metric"], baseline_ms=base["latency_ms"],
        baseline_extra=base.get("extra_metrics", {}), budget_ms=pareto["budget_ms"], created=manifest["created"],
        wall_s=row.get("wall_s", pareto.get("search_wall_s")), fidelity=pareto.get("fidelity", {}),
        proposals=len(attrs), finetunes=sum(1 for t in attrs if "finetune_s" in t or t.get("status") in ("completed", "failed")),
        rejected=pareto["counts"]["infeasible"], repaired=pareto["counts"].get("repaired", 0), failed=pareto["counts"]["failed"],
        finetune_s=sum(t.get("finetune_s", 0.0) for t in attrs), trial_s=sum(t.get("trial_s", 0.0) for t in attrs),
        front=len(pareto["members"]),
    )
    verified = [m for m in pareto["members"] if m.get("verified", True)]
    if verified:
        best = max(verified, key=lambda m: (sign * m["metric"], -m["measured_ms"]))
        row["best"] = {
            "trial": best["trial"], "metric": best["metric"], "extra_metrics": best.get("extra_metrics", {}),
            "measured_ms": best["measured_ms"], "predicted_ms": best["predicted_ms"], "speedup": best["speedup"],
            "size_bytes": best["size_bytes"], "summary": best["summary"], "policy": best["policy"],
            "engine_path": str(Path(best["engine_path"]).resolve().relative_to(ROOT)),
            "prediction_error": best["predicted_ms"] / best["measured_ms"] - 1,
        }
    return row


# ---------------------------------------------------------------- the floor


def _ort_matmul_rate(n: int, int8: bool) -> float:
    """Operations per second of one n x n x n matrix product in ONNX Runtime, 1 thread."""
    import numpy as np
    from onnx import TensorProto, helper, numpy_helper

    from autocompress.latency_lut import Measurable, OrtCpuBackend

    rng = np.random.default_rng(0)
    if int8:
        a = rng.integers(0, 255, (n, n), dtype=np.uint8)
        b = numpy_helper.from_array(rng.integers(-127, 127, (n, n), dtype=np.int8), "B")
        node = helper.make_node("MatMulInteger", ["A", "B"], ["Y"])
        a_type, y_type = TensorProto.UINT8, TensorProto.INT32
    else:
        a = rng.standard_normal((n, n), dtype=np.float32)
        b = numpy_helper.from_array(rng.standard_normal((n, n), dtype=np.float32), "B")
        node = helper.make_node("MatMul", ["A", "B"], ["Y"])
        a_type, y_type = TensorProto.FLOAT, TensorProto.FLOAT
    graph = helper.make_graph([node], "gemm", [helper.make_tensor_value_info("A", a_type, [n, n])],
                              [helper.make_tensor_value_info("Y", y_type, [n, n])], [b])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    seconds = OrtCpuBackend(threads=1).measure(Measurable.from_onnx(model.SerializeToString(), {"A": a})).median_us / 1e6
    return 2 * n**3 / seconds


def _copy_bandwidth(mib: int = 256, repeats: int = 7) -> float:
    """Bytes per second read plus written by one thread copying a large array."""
    import numpy as np

    src = np.ones(mib * 2**20 // 8)
    dst = np.empty_like(src)
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        np.copyto(dst, src)
        times.append(time.perf_counter() - t0)
    return 2 * src.nbytes / median(times)


def _work_of(model, inputs) -> dict:
    """Multiply-add FLOPs per precision and activation bytes of a candidate's conv and linear
    layers, counted on one call (2 FLOPs per multiply-add; elementwise work not counted)."""
    import torch
    from torch import nn

    from autocompress.compress._quant import DynamicQuantLinear, HalfPrecision, Int4Linear, QuantConv2d, QuantLinear

    work = {"fp32": 0, "int8": 0, "fp16": 0, "int4": 0, "activation_bytes": 0}
    half = {id(m) for h in model.modules() if isinstance(h, HalfPrecision) for m in h.modules()}

    def hook(module, args, output):
        x = args[0]
        if isinstance(module, nn.Conv2d):
            macs = output.numel() * module.in_channels // module.groups * module.kernel_size[0] * module.kernel_size[1]
        else:
            macs = output.numel() * module.in_features
        kind = ("int8" if isinstance(module, (QuantConv2d, QuantLinear, DynamicQuantLinear)) else
                "int4" if isinstance(module, Int4Linear) else "fp16" if id(module) in half else "fp32")
        work[kind] += 2 * macs
        width = {"int8": 1, "fp16": 2}.get(kind, 4)
        work["activation_bytes"] += (x.numel() + output.numel()) * width

    handles = [m.register_forward_hook(hook) for m in model.modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
    with torch.no_grad():
        model(*inputs)
    for h in handles:
        h.remove()
    return work


def run_floor(rows: list[dict]) -> dict:
    """How far the best demo engines are from this CPU's compute and memory limits."""
    from autocompress.latency_lut import Measurable, OrtCpuBackend
    from autocompress.spaces import Policy, SpaceConfig
    from autocompress.study import open_workbench
    from autocompress.task import load_task

    sizes = (512, 1024, 2048)
    peaks = {"fp32_flops_per_s": max(_ort_matmul_rate(n, int8=False) for n in sizes),
             "int8_ops_per_s": max(_ort_matmul_rate(n, int8=True) for n in sizes), "copy_bytes_per_s": _copy_bandwidth()}
    task = load_task("demo")
    backend = OrtCpuBackend(threads=1)
    out: dict = {"peaks": peaks, "gemm": "the fastest of n x n x n products for n = 512, 1024, 2048, ONNX Runtime MatMul (fp32) and MatMulInteger (u8 x s8), 1 thread",
                 "bandwidth": "numpy copy of 256 MiB, 1 thread, bytes read + written", "members": []}
    demo_rows = [r for r in rows if r["part"] == "demo" and "best" in r]
    if not demo_rows:
        return out
    config = json.loads((ROOT / "runs" / "headline" / f"demo-b1-{demo_rows[0]['budget']}" / "run.json").read_text())["config"]
    space = SpaceConfig(**{k: tuple(v) if isinstance(v, list) else v for k, v in config["space"].items()})
    tmp = RUNS / "floor-table.json"
    bench = open_workbench(task, space, 1, tmp, shared_table=False)
    original = Measurable.from_module(task.model, task.example_inputs, dynamic_batch=True)
    feeds = original.feeds()
    # (name, module, what is timed, weight bytes: fp32 parameters, or the engine file)
    entries = [("original", task.model, original, sum(p.numel() * 4 for p in task.model.parameters()))]
    for r in demo_rows:
        engine_path = ROOT / r["best"]["engine_path"]
        entries.append((f"{r['budget']} best (trial {r['best']['trial']})", bench.candidate(Policy.from_dict(r["best"]["policy"])),
                        Measurable.from_onnx(engine_path, feeds), engine_path.stat().st_size))
    timings = backend.measure_many([e[2] for e in entries], rounds=7)
    for (name, module, _, weight_bytes), timing in zip(entries, timings):
        work = _work_of(module, task.example_inputs)
        compute_s = (work["fp32"] + work["int4"] + work["fp16"]) / peaks["fp32_flops_per_s"] + work["int8"] / peaks["int8_ops_per_s"]
        memory_s = (weight_bytes + work["activation_bytes"]) / peaks["copy_bytes_per_s"]
        measured_s = timing.median_us / 1e6
        out["members"].append({
            "name": name, "measured_ms": measured_s * 1e3, "flops": work, "weight_bytes": weight_bytes,
            "compute_floor_ms": compute_s * 1e3, "memory_floor_ms": memory_s * 1e3,
            "times_floor": measured_s / max(compute_s, memory_s),
        })
    tmp.unlink(missing_ok=True)
    return out


# ---------------------------------------------------------------- scaling


def run_scaling() -> list[dict]:
    """Table build time from empty and a trial's cost, for the demo ResNet at several widths."""
    from autocompress.spaces import SpaceConfig
    from autocompress.study import open_workbench
    from autocompress.task import load_task

    rows = []
    for width in SCALING_WIDTHS:
        spec = f"benchmarks/headline.py:demo_width_{width}"
        run_dir = RUNS / "scaling" / f"w{width}"
        if run_dir.exists():
            shutil.rmtree(run_dir)
        run_dir.mkdir(parents=True)
        task = load_task(spec)  # trains and caches the teacher of this width once
        bench = open_workbench(task, SpaceConfig(), 1, run_dir / "latency_table.json", shared_table=False)
        t0 = time.perf_counter()
        entries = bench.table.build(bench.inventory, bench.space)
        t_entries = time.perf_counter() - t0
        bench.table.calibrate(bench.inventory, bench.space, bench.measure_policies)
        t_table = time.perf_counter() - t0
        bench.table.save()
        rc, wall = _cli("search", "--task", spec, "--latency-budget", "0.75x", "--trials", "4", "--run-dir",
                        str(run_dir.relative_to(ROOT)), "--no-shared-table", log=run_dir.with_suffix(".log"))
        if rc != 0:
            raise SystemExit(f"scaling search at width {width} failed; see {run_dir.with_suffix('.log')}")
        done = [t for t in _trials(run_dir) if t.get("status") == "completed"]
        rows.append({
            "width": width, "flops": bench.inventory.total_flops, "params": sum(p.numel() for p in task.model.parameters()),
            "entries": entries, "entries_s": t_entries, "table_s": t_table, "search_wall_s": wall,
            "baseline_ms": json.loads((run_dir / "run.json").read_text())["baseline"]["latency_ms"],
            "trial_s": median(t["trial_s"] for t in done), "finetune_s": median(t["finetune_s"] for t in done),
            "overhead_s": median(t.get("overhead_s", 0.0) for t in done), "trials": len(done),
        })
        print(f"[headline] scaling width {width}: {rows[-1]}", flush=True)
    return rows


# ---------------------------------------------------------------- the page


def _machine() -> dict:
    import onnxruntime

    cpu, flags = platform.processor(), set()
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name") and cpu in ("", "x86_64"):
            cpu = line.split(":", 1)[1].strip()
        if line.startswith("flags"):
            flags = set(line.split(":", 1)[1].split())
    import os

    return {"cpu": cpu, "cores": os.cpu_count(), "avx512_vnni": "avx512_vnni" in flags, "amx": "amx_tile" in flags,
            "onnxruntime": onnxruntime.__version__, "python": platform.python_version()}


def _code_version() -> str:
    """The commit measured, with "+changes" when tracked files differ from it."""
    head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True).stdout.strip()
    dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=ROOT, capture_output=True, text=True).stdout
    return (head or "unknown") + ("+changes" if dirty.strip() else "")


def _drop(row: dict) -> str:
    delta = row["best"]["metric"] - row["baseline_metric"]
    return f"{100 * delta:+.1f} pts" if row["metric_name"] == "accuracy" else f"{delta:+.4f}"


def _error_figures(fidelity: dict) -> str:
    return f"{fidelity.get('median_abs_error', float('nan')):.1%} / {fidelity.get('within_10pct', float('nan')):.0%}"


def _meets_table_target(fidelity: dict) -> bool:
    return fidelity.get("within_10pct", 0.0) >= 0.95 and fidelity.get("median_abs_error", 1.0) <= 0.05


def _search_table(rows: list[dict]) -> list[str]:
    lines = [
        "| task | batch | budget | original | best member: metric (change) | measured ms | speedup | size KiB | table error: member / run median / run ±10% | run at the calibration's speed: median / ±10% | trials, fine-tunes | rejected before fine-tune | wall |",
        "| --- | ---: | ---: | --- | --- | ---: | ---: | ---: | --- | --- | --- | ---: | ---: |",
    ]
    for r in rows:
        head = f"| {r['task']} | {r['batch']} | {r['budget']} |"
        if "error" in r:
            lines.append(f"{head} | {r['error']} | | | | | | | | |")
            continue
        orig = f"{r['baseline_metric']:.4f} @ {r['baseline_ms']:.3f} ms"
        fid = r["fidelity"]
        run_error = _error_figures(fid)
        steady = _error_figures(fid["at_calibration_speed"]) if "at_calibration_speed" in fid else "-"
        cost = f"{steady} | {r['proposals']}, {r['finetunes']} | {r['rejected'] / max(1, r['proposals']):.0%} | {r['wall_s'] / 60:.1f} min |"
        if "best" not in r:
            lines.append(f"{head} {orig} | no verified member measured within the budget | | | | - / {run_error} | {cost}")
            continue
        b = r["best"]
        extra = "".join(f", {k} {v:.3f}" for k, v in b["extra_metrics"].items())
        lines.append(
            f"{head} {orig} | {r['metric_name']} {b['metric']:.4f} ({_drop(r)}{extra}) | {b['measured_ms']:.3f} | "
            f"{b['speedup']:.2f}x | {b['size_bytes'] / 1024:.0f} | {b['prediction_error']:+.1%} / {run_error} | {cost}"
        )
    return lines


def _goals(rows: list[dict]) -> list[str]:
    """The headline goals, each with the figure that meets or misses it."""
    def best(task: str, budget: str) -> dict | None:
        return next((r for r in rows if r["task"] == task and r["batch"] == 1 and r["budget"] == budget), None)

    lines = ["Goals:"]
    for task, budget, what, ok in (
        ("demo", "0.5x", "at most 1 point of accuracy lost", lambda r: r["baseline_metric"] - r["best"]["metric"] <= 0.01),
        ("minilm", "0.5x", "cosine at least 0.98", lambda r: r["best"]["metric"] >= 0.98),
        ("demo", "0.25x", "at most 2 points lost, pruning and int8 together", lambda r: r["baseline_metric"] - r["best"]["metric"] <= 0.02),
    ):
        r = best(task, budget)
        if r is None or "best" not in r:
            lines.append(f"- {task} at {budget}, {what}: no member within the budget (missed).")
            continue
        verdict = "met" if ok(r) else "missed"
        if "int8" in what and ok(r) and "int8" not in r["best"].get("summary", ""):
            verdict = "met for accuracy, but the member runs no int8 layer, so missed as stated"
        lines.append(f"- {task} at {budget}, {what}: {r['metric_name']} {r['best']['metric']:.4f} ({_drop(r)}) at "
                     f"{r['best']['speedup']:.2f}x, {verdict}.")
    runs = [r for r in rows if r.get("fidelity")]
    for what, views in (("as measured", [r["fidelity"] for r in runs]),
                        ("at the calibration's speed", [r["fidelity"]["at_calibration_speed"] for r in runs
                                                        if "at_calibration_speed" in r["fidelity"]])):
        if not views:
            continue
        met = sum(_meets_table_target(v) for v in views)
        lines.append(f"- Latency table {what} (issue target: 95% of candidates within ±10%, median error at most 5%): "
                     f"{met} of {len(views)} runs meet it on their own exported candidates; median errors "
                     f"{min(v['median_abs_error'] for v in views):.1%} to {max(v['median_abs_error'] for v in views):.1%}, "
                     f"within ±10% {min(v['within_10pct'] for v in views):.0%} to {max(v['within_10pct'] for v in views):.0%} "
                     f"({'met on every run' if met == len(views) else 'missed on some'}).")
    return lines


ANCHORS = [
    ("AMC (He et al., 2018)", "MobileNet-V1 on ImageNet, Google Pixel 1 CPU", "1.81x measured speedup at 0.1% top-1 lost", "RL over pruning ratios, 800 episodes"),
    ("HAQ (Wang et al., 2019)", "MobileNet-V1/V2, ResNet-50; BitFusion and edge/cloud accelerators", "1.4-1.95x lower latency than fixed 8-bit at similar accuracy", "RL over per-layer bits, about 600 episodes"),
    ("PaddleSlim auto compression", "ResNet50_vd on an Intel Xeon; ViT on an NVIDIA T4 with TensorRT", "3.1x with INT8 (ResNet50_vd); 7.1x (ViT)", "distillation with quantization and sparsity"),
    ("CoFi pruning (Xia et al., 2022)", "BERT-base on MNLI, GPU", "2.1x at about 1 point of MNLI accuracy lost", "structured pruning with distillation"),
    ("nn-Meter (Zhang et al., 2021)", "latency predictor, mobile CPU (Cortex-A76)", "99.0% of models within ±10% (91.3% for a plain per-operator sum)", "kernel-level predictors"),
]


def _commits(data: dict) -> str:
    """The commit every part was measured at, or which parts were measured at which."""
    by_code: dict[str, list[str]] = {}
    for part, code in (data.get("code_of") or {}).items():
        by_code.setdefault(code, []).append(part)
    if len(by_code) <= 1:
        return data.get("code", "unknown")
    return "; ".join(f"{code} ({', '.join(parts)})" for code, parts in by_code.items())


def _machine_text(m: dict) -> str:
    return (f"{m['cpu']} ({m['cores']} cores, AVX-512 VNNI {'yes' if m['avx512_vnni'] else 'no'}, "
            f"AMX {'yes' if m['amx'] else 'no'}), ONNX Runtime {m['onnxruntime']}")


def _machines(data: dict) -> str:
    """The machine every part was measured on, or which parts were measured on which."""
    by_machine: dict[str, list[str]] = {}
    for part in PARTS:
        m = (data.get("machine_of") or {}).get(part)
        if m is not None and (data.get("searches", {}).get(part) or data.get(part)):
            by_machine.setdefault(_machine_text(m), []).append(part)
    if len(by_machine) <= 1:
        return _machine_text(data["machine"])
    return "; ".join(f"{text} ({', '.join(parts)})" for text, parts in by_machine.items())


def render(data: dict) -> str:
    out = [BEGIN, "## Headline: where autocompress stands", "",
           f"Regenerated {data['generated']} by `.venv/bin/python benchmarks/headline.py` at commit "
           f"{_commits(data)} on {_machines(data)} on CPU, 1 thread. Budgets are fractions of the original model's latency measured at "
           "the start of each search; speedups are the member's engine timed interleaved with the original in the "
           "same rounds (medians of 5 rounds). Each search's exact command is in `benchmarks/results/headline.json`.", ""]
    rows = [r for p in ("demo", "minilm", "minilm32") for r in data.get("searches", {}).get(p, [])]
    if rows:
        demo = SEARCHES["demo"]
        mini = SEARCHES["minilm"]
        mini_rows = [r for r in rows if r["task"] == "minilm" and r.get("finetunes")]
        step_s = sum(r["finetune_s"] for r in mini_rows) / max(1, sum(r["finetunes"] * mini[3] for r in mini_rows))
        out += [f"Searches: `demo` with {demo[2]} fine-tuned trials of {demo[3]} distillation steps; `minilm` with "
                f"{mini[2]} trials of {mini[3]} steps (a MiniLM distillation step took {step_s:.2f} s here), default "
                "space and searcher (TPE with budget repair). \"Rejected before fine-tune\" is the share of proposals "
                "the table predicted over budget, which cost no fine-tune (the repair of each into a proposal that fits "
                "was fine-tuned as its own trial unless already tried). Table error: the member's predicted over "
                "measured latency, then the run's median |error| and share within ±10% over all its exported "
                "candidates; then the same with each candidate's timing brought to the machine speed at which the "
                "table was calibrated, by the model timed beside it (the search's log names it).", ""]
        out += _search_table(rows) + [""]
        out += _goals(rows) + [""]
        for r in rows:
            what = f"trial {r['best']['trial']}, {r['best']['summary']}" if "best" in r else r.get("error", "no verified member measured within the budget")
            out.append(f"- {r['task']} batch {r['batch']} at {r['budget']} (`{r['command']}`): {what}.")
        out.append("")
    floor = data.get("floor")
    if floor and floor.get("members"):
        p = floor["peaks"]
        out += ["### The floor: how far the demo engines are from this CPU's limits", "",
                f"Measured in the same run: {floor['gemm']}: {p['fp32_flops_per_s'] / 1e9:.1f} GFLOP/s fp32, "
                f"{p['int8_ops_per_s'] / 1e9:.1f} GOP/s int8; {floor['bandwidth']}: {p['copy_bytes_per_s'] / 1e9:.1f} GB/s. "
                "Compute floor: each conv and linear layer's FLOPs at its precision's peak; memory floor: the engine's "
                "bytes plus every such layer's input and output read or written once. Elementwise work, "
                "layout changes and per-node overhead are not in either floor.", "",
                "| engine | measured ms | fp32 MFLOP | int8 MOP | weights KiB | compute floor ms | memory floor ms | measured / floor |",
                "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
        for e in floor["members"]:
            f = e["flops"]
            out.append(f"| {e['name']} | {e['measured_ms']:.3f} | {(f['fp32'] + f['int4'] + f['fp16']) / 1e6:.1f} | {f['int8'] / 1e6:.1f} | "
                       f"{e['weight_bytes'] / 1024:.0f} | {e['compute_floor_ms']:.4f} | {e['memory_floor_ms']:.4f} | {e['times_floor']:.1f}x |")
        out.append("")
    scaling = data.get("scaling")
    if scaling:
        out += ["### Scaling: table build and trial cost against model size", "",
                "The demo ResNet at several stem widths (default space), each with its own table measured from empty, "
                "then a 4-trial search at 0.75x on that table (0.5x is below what the narrowest model's space reaches). Trial cost: fine-tune, evaluation, export and "
                "verification of one candidate (median over the trials); overhead: ask, predict, tell and record.", "",
                "| width | MFLOPs | params | original ms | table entries | table build s (entries + calibration) | trial s | of which fine-tune s | overhead ms |",
                "| ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
        for s in scaling:
            out.append(f"| {s['width']} | {s['flops'] / 1e6:.0f} | {s['params']:,} | {s['baseline_ms']:.3f} | {s['entries']} | "
                       f"{s['table_s']:.0f} ({s['entries_s']:.0f} + {s['table_s'] - s['entries_s']:.0f}) | {s['trial_s']:.1f} | "
                       f"{s['finetune_s']:.1f} | {1000 * s['overhead_s']:.0f} |")
        out.append("")
    out += ["### Published anchors (other models and hardware: not comparable figure for figure)", "",
            "| method | setting | published result | search |", "| --- | --- | --- | --- |"]
    out += [f"| {a} | {b} | {c} | {d} |" for a, b, c, d in ANCHORS]
    out += [""]
    if data.get("moved"):
        out += ["### Moved since the previous regeneration", ""]
        if data.get("machine_changed"):
            out += [f"Measured on another machine than before: {', '.join(data['machine_changed'])}; their figures "
                    "moved with the machine as much as with the code.", ""]
        out += [f"- {line}" for line in data["moved"]] + [""]
    elif data.get("previous_generated"):
        out += [f"No figure moved by more than 5% (metrics: 0.005) since the regeneration of {data['previous_generated']}.", ""]
    out.append(END)
    return "\n".join(out)


def _figures(data: dict) -> dict[str, float]:
    """The page's comparable figures by name, for the moved-figures note."""
    flat: dict[str, float] = {}
    for part, rows in data.get("searches", {}).items():
        for r in rows:
            if "best" in r:
                key = f"{r['task']} batch {r['batch']} {r['budget']}"
                flat[f"{key} metric"] = r["best"]["metric"]
                flat[f"{key} speedup"] = r["best"]["speedup"]
                flat[f"{key} run table error"] = r["fidelity"].get("median_abs_error", float("nan"))
                if "at_calibration_speed" in r["fidelity"]:
                    flat[f"{key} run table error at the calibration's speed"] = r["fidelity"]["at_calibration_speed"]["median_abs_error"]
    for e in (data.get("floor") or {}).get("members", []):
        flat[f"floor {e['name'].split(' (')[0]} measured/floor"] = e["times_floor"]
    for s in data.get("scaling") or []:
        flat[f"scaling width {s['width']} table build s"] = s["table_s"]
        flat[f"scaling width {s['width']} trial s"] = s["trial_s"]
    return flat


def moved(old: dict, new: dict) -> list[str]:
    before, after = _figures(old), _figures(new)
    lines = []
    for name, value in after.items():
        if name not in before or before[name] != before[name] or value != value:
            continue
        was = before[name]
        if "metric" in name and abs(value - was) > 0.005 or "metric" not in name and abs(value - was) > 0.05 * abs(was):
            lines.append(f"{name}: {was:.4g} -> {value:.4g}")
    return lines


def write_page(data: dict) -> None:
    text = PAGE.read_text()
    section = render(data)
    if BEGIN in text and END in text:
        text = text[: text.index(BEGIN)] + section + text[text.index(END) + len(END):]
    else:  # first time: after the introduction, before the first section
        at = text.index("\n## ")
        text = text[:at] + "\n\n" + section + "\n" + text[at:]
    PAGE.write_text(text)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--parts", default=",".join(PARTS), help=f"comma-separated, from {','.join(PARTS)}")
    parser.add_argument("--fresh", action="store_true", help="re-run searches whose run directory is finished")
    parser.add_argument("--page-only", action="store_true", help="regenerate the page from the saved figures")
    args = parser.parse_args()
    parts = [p for p in args.parts.split(",") if p]
    unknown = sorted(set(parts) - set(PARTS))
    if unknown:
        parser.error(f"unknown part(s) {unknown}; choose from {list(PARTS)}")
    previous = json.loads(RESULTS.read_text()) if RESULTS.is_file() else {}
    data = json.loads(json.dumps(previous))  # parts not re-run keep their figures
    if not args.page_only:
        code_of = data.setdefault("code_of", {})
        for part in PARTS:  # figures kept from a regeneration that did not record its parts' commits
            if part not in code_of and (data.get("searches", {}).get(part) or data.get(part)):
                code_of[part] = previous.get("code", "unknown")
        machine_of = data.setdefault("machine_of", {})
        for part in PARTS:  # figures kept from a regeneration that did not record its parts' machines
            if part not in machine_of and (data.get("searches", {}).get(part) or data.get(part)):
                machine_of[part] = previous["machine"]
        data["machine"] = _machine()
        data["code"] = _code_version()
        data["machine_changed"] = [p for p in parts if p in machine_of and _machine_text(machine_of[p]) != _machine_text(data["machine"])]
        for part in parts:
            if part in SEARCHES:
                data.setdefault("searches", {})[part] = []
                for budget in BUDGETS:
                    data["searches"][part].append(run_search_row(part, budget, args.fresh))
                    RESULTS.write_text(json.dumps(data, indent=1))  # nothing already measured is lost
            elif part == "floor":
                data["floor"] = run_floor(data.get("searches", {}).get("demo", []))
            elif part == "scaling":
                data["scaling"] = run_scaling()
            data.setdefault("code_of", {})[part] = data["code"]
            machine_of[part] = data["machine"]
            RESULTS.write_text(json.dumps(data, indent=1))
        data["generated"] = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
        data["previous_generated"] = previous.get("generated")
        data["moved"] = moved(previous, data) if previous else []
        RESULTS.write_text(json.dumps(data, indent=1))
    write_page(data)
    print(f"[headline] wrote {RESULTS.relative_to(ROOT)} and the Headline section of {PAGE.relative_to(ROOT)}")


if __name__ == "__main__":
    sys.path.insert(0, str(ROOT))
    main()
