"""Where 4-bit weights pay on this CPU: ONNX Runtime's MatMulNBits against float32 MatMul and
dynamic int8 (DynamicQuantizeLinear + MatMulInteger, as the project exports Linear layers
over token sequences), on MiniLM's MLP shapes (384 -> 1536 -> 384, three times: six layers),
at 1, 8 and 32 rows (tokens x batch).

    python benchmarks/int4_kernels.py

Each graph runs in its own session at 1 thread; median of 300 timed runs after 30 warm-up
runs, the graphs timed one after another per row count. MatMulNBits is timed at block sizes
32 (what the project exports) and 128, and at accuracy levels 0 (float compute) and 4 (int8
compute). Prints a Markdown table and writes ``benchmarks/results/int4-kernels.json``.
"""

from __future__ import annotations

import json
import logging
import tempfile
import time
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper

K, N, LAYERS = 384, 1536, 6


def _graph(rows: int, rng: np.random.Generator) -> onnx.ModelProto:
    up = (rng.standard_normal((K, N)) / 20).astype(np.float32)
    down = (rng.standard_normal((N, K)) / 40).astype(np.float32)
    nodes, inits, cur = [], [], "x"
    for i in range(LAYERS):
        inits.append(numpy_helper.from_array(up if i % 2 == 0 else down, f"w{i}"))
        out = "y" if i == LAYERS - 1 else f"h{i}"
        nodes.append(helper.make_node("MatMul", [cur, f"w{i}"], [out], name=f"mm{i}"))
        cur = out
    graph = helper.make_graph(nodes, "mlp", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [rows, K])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [rows, K])], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def _median_ms(model: onnx.ModelProto, rows: int, rng: np.random.Generator) -> float:
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    session = ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
    feeds = {"x": rng.standard_normal((rows, K)).astype(np.float32)}
    for _ in range(30):
        session.run(None, feeds)
    times = []
    for _ in range(300):
        t0 = time.perf_counter()
        session.run(None, feeds)
        times.append(time.perf_counter() - t0)
    return float(np.median(times) * 1000)


def _int8(model: onnx.ModelProto) -> onnx.ModelProto:
    from onnxruntime.quantization import QuantType, quantize_dynamic

    with tempfile.TemporaryDirectory() as tmp:
        onnx.save(model, f"{tmp}/f.onnx")
        quantize_dynamic(f"{tmp}/f.onnx", f"{tmp}/q.onnx", weight_type=QuantType.QInt8, per_channel=True,
                         extra_options={"MatMulConstBOnly": True})
        return onnx.load(f"{tmp}/q.onnx")


def _int4(model: onnx.ModelProto, block: int, accuracy_level: int) -> onnx.ModelProto:
    from onnxruntime.quantization.matmul_nbits_quantizer import DefaultWeightOnlyQuantConfig, MatMulNBitsQuantizer

    quantizer = MatMulNBitsQuantizer(model, algo_config=DefaultWeightOnlyQuantConfig(
        block_size=block, is_symmetric=True, accuracy_level=accuracy_level))
    quantizer.process()
    return quantizer.model.model


def main() -> None:
    logging.disable(logging.WARNING)
    ort.set_default_logger_severity(3)
    rng = np.random.default_rng(0)
    variants = {"fp32": lambda m: m, "int8 dynamic": _int8}
    for block in (32, 128):
        for level in (0, 4):
            variants[f"int4 block {block}, accuracy {level}"] = lambda m, b=block, a=level: _int4(m, b, a)
    results = {}
    for rows in (1, 8, 32):
        base = _graph(rows, rng)
        results[rows] = {name: _median_ms(make(onnx.ModelProto.FromString(base.SerializeToString())), rows, rng)
                         for name, make in variants.items()}
    print(f"ONNX Runtime {ort.__version__}, 1 thread; {LAYERS} MatMuls {K}x{N}/{N}x{K}; median ms\n")
    print("| rows | " + " | ".join(variants) + " |")
    print("| ---: | " + " | ".join("---:" for _ in variants) + " |")
    for rows, by_name in results.items():
        print(f"| {rows} | " + " | ".join(f"{by_name[n]:.3f}" for n in variants) + " |")
    out = Path(__file__).parent / "results" / "int4-kernels.json"
    out.write_text(json.dumps({"onnxruntime": ort.__version__, "shapes": [K, N, LAYERS], "median_ms": results}, indent=1))


if __name__ == "__main__":
    main()
