"""What a padding mask does to the attention core's latency in ONNX Runtime.

    python benchmarks/attention_mask.py

The attention core the latency table times for each transformer layer (scores, additive
mask, softmax, weighted sum; ``latency_lut._table._AttentionCore``), at minilm's shape (1
sentence, 32 tokens, 12 heads of 32), with random q, k, v and these masks: none (zeros),
the minilm example sentence's padding at -1e4 (what the task's model adds), and the same
positions at -1e30 and -inf. 1 thread; median of 2000 runs after 100 warm-up runs. Prints
one line per mask and writes ``benchmarks/results/attention-mask.json``.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import onnxruntime as ort
import torch

from autocompress.latency_lut import feeds_for, to_onnx_bytes
from autocompress.latency_lut._table import _AttentionCore
from autocompress.task import load_task


def _median_us(data: bytes, feeds: dict, runs: int = 2000) -> float:
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    session = ort.InferenceSession(data, options, providers=["CPUExecutionProvider"])
    for _ in range(100):
        session.run(None, feeds)
    times = []
    for _ in range(runs):
        t0 = time.perf_counter()
        session.run(None, feeds)
        times.append(time.perf_counter() - t0)
    return float(np.median(times) * 1e6)


def main() -> None:
    task = load_task("minilm")
    keep = task.example_inputs[1][:1, None, None, :].float()  # 1 for tokens, 0 for padding
    tokens = keep.shape[-1]
    gen = torch.Generator().manual_seed(0)
    qkv = tuple(torch.randn(1, tokens, 12 * 32, generator=gen) for _ in range(3))
    masks = {"none": torch.zeros_like(keep)}
    for label, value in (("-1e4", -1e4), ("-1e30", -1e30), ("-inf", float("-inf"))):
        masks[f"padding at {label}"] = torch.where(keep > 0, torch.zeros_like(keep), torch.full_like(keep, value))
    data = to_onnx_bytes(_AttentionCore(32).eval(), (*qkv, masks["none"]))
    results = {name: _median_us(data, feeds_for((*qkv, mask))) for name, mask in masks.items()}
    masked = int((keep == 0).sum())
    print(f"attention core, 1 x {tokens} tokens, 12 heads of 32, {masked} padded positions; ONNX Runtime {ort.__version__}, 1 thread")
    for name, us in results.items():
        print(f"  mask {name}: {us:.1f} us")
    out = Path(__file__).parent / "results" / "attention-mask.json"
    out.write_text(json.dumps({"onnxruntime": ort.__version__, "tokens": tokens, "padded": masked, "median_us": results}, indent=1))


if __name__ == "__main__":
    main()
