"""int8 weights on 8 bits or on 7 (ONNX Runtime's reduce_range): what each does to an
engine's agreement with PyTorch and to the task metric, on this CPU.

    python benchmarks/int8_weight_width.py --task demo     # then --task minilm

Every layer of the task's original model goes int8, with no fine-tuning (activation ranges
calibrated on 4 training batches), once per weight width. Each engine is exported and
checked as a search checks it (relative error and mean cosine against PyTorch on 4
evaluation batches), its metric is computed from ONNX Runtime's outputs on the whole
evaluation set beside PyTorch's, and it is timed interleaved with the original (5 rounds).
Without VNNI, ONNX Runtime's u8 x s8 kernels sum pairs of products in int16, which
saturates on 8-bit weights. Writes ``benchmarks/results/int8-weight-width-<task>.json``.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import tempfile
from pathlib import Path

import onnxruntime as ort
import torch

from autocompress import compress
from autocompress.compress import int8_weight_max
from autocompress.evaluators import evaluate
from autocompress.export import export_engine
from autocompress.inventory import build_inventory
from autocompress.latency_lut import Measurable, OrtCpuBackend
from autocompress.latency_lut._backend import cpu_description
from autocompress.spaces import Policy
from autocompress.task import load_task

RESULTS = Path(__file__).resolve().parent / "results"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--task", default="demo")
    args = parser.parse_args()
    torch.manual_seed(0)
    task = load_task(args.task)
    x = task.example_inputs
    inventory = build_inventory(task.model, x)
    calibration = [b[0] if isinstance(b[0], tuple) else (b[0],) for b in itertools.islice(task.train_loader, 4)]
    checks = list(itertools.islice(task.eval_loader, 4))
    backend = OrtCpuBackend(threads=1)
    original = Measurable.from_module(task.model, x, dynamic_batch=True)
    policy = Policy(bits={name: 8 for name in inventory.layers})
    cpu, flags = cpu_description()
    report = {"task": args.task, "cpu": cpu, "cpu_flags": flags, "onnxruntime": ort.__version__,
              "original_metric": evaluate(task.model, task.eval_loader, task.metric), "widths": []}
    print(f"{args.task} on {cpu} ({', '.join(flags)}), ONNX Runtime {ort.__version__}; "
          f"original {task.metric_name} {report['original_metric']:.4f}")
    print("| weights | relative error | mean cosine | engine ok | PyTorch metric | engine metric | engine us | original us |")
    print("| --- | ---: | ---: | --- | ---: | ---: | ---: | ---: |")
    for width in ("8", "7"):
        os.environ["AUTOCOMPRESS_INT8_WEIGHTS"] = width
        student = compress.apply(task.model, inventory, policy, x, calibration)
        torch_metric = evaluate(student, task.eval_loader, task.metric)
        with tempfile.TemporaryDirectory() as tmp:
            engine = export_engine(student, x, Path(tmp) / "engine.onnx", backend, checks, task.metric, task.eval_loader,
                                   original=original)
        row = {"bits": int(width), "weight_max": int8_weight_max(), "relative_error": engine.relative_error,
               "output_cosine": engine.output_cosine, "ok": engine.ok, "problems": list(engine.problems),
               "torch_metric": torch_metric, "engine_metric": engine.runtime_metric,
               "latency_us": engine.latency_us, "original_latency_us": engine.original_latency_us}
        report["widths"].append(row)
        print(f"| {width} bits (at most {row['weight_max']}) | {row['relative_error']:.4f} | {row['output_cosine']:.5f} | "
              f"{'yes' if row['ok'] else 'no'} | {torch_metric:.4f} | {row['engine_metric']:.4f} | "
              f"{row['latency_us']:.0f} | {row['original_latency_us']:.0f} |")
    RESULTS.mkdir(exist_ok=True)
    out = RESULTS / f"int8-weight-width-{args.task}.json"
    out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
