"""TensorRT engines: the parts before TensorRT (ONNX preparation, per-layer precisions)
run everywhere; building and timing an engine runs only where TensorRT and a GPU exist."""

from __future__ import annotations

import importlib.util

import onnx
import pytest
import torch

from autocompress import compress
from autocompress.errors import UserError
from autocompress.export._tensorrt import layer_precisions, module_layer_order, node_precisions, prepare_onnx, require_tensorrt
from autocompress.latency_lut import to_onnx_bytes
from autocompress.spaces import Policy

from conftest import RESNET_LAYERS

HAS_TENSORRT = importlib.util.find_spec("tensorrt") is not None
MIXED = Policy({}, {"layer1.0.conv1": 8, "layer2.0.conv2": 16, "fc": 8}, {"layer3.0.conv2": 0.5})


def _exported(model, inventory, policy, x, tmp_path, name="candidate.onnx"):
    candidate = compress.apply(model, inventory, policy, (x,), None, 4)
    path = tmp_path / name
    path.write_bytes(to_onnx_bytes(candidate, (x,), dynamic_batch=True))
    return candidate, path


def test_layer_precisions_name_each_layers_bits():
    precisions = layer_precisions(MIXED, RESNET_LAYERS)
    assert precisions["layer1.0.conv1"] == "int8" and precisions["layer2.0.conv2"] == "fp16" and precisions["fc"] == "int8"
    assert precisions["stem.0"] == "fp32" and set(precisions) == set(RESNET_LAYERS)


def test_onnx_nodes_get_their_layers_precision(resnet, resnet_inventory, resnet_input, tmp_path):
    candidate, path = _exported(resnet, resnet_inventory, MIXED, resnet_input, tmp_path)
    order = module_layer_order(candidate, RESNET_LAYERS)
    assert order.count("layer3.0.conv2") == 2  # factorized into kx1 then 1xk
    assert len(order) == len(RESNET_LAYERS) + 1
    prepared = prepare_onnx(path, candidate, layer_precisions(MIXED, RESNET_LAYERS))
    assert prepared.has_qdq and prepared.has_fp16
    assert [i["name"] for i in prepared.inputs] == ["input_0"] and prepared.inputs[0]["shape"][1:] == [1, 28, 28]
    graph = onnx.load(str(path)).graph
    computes = [n for n in graph.node if n.op_type in ("Conv", "Gemm")]
    assert len(prepared.node_precisions) == len(computes)
    by_precision = {p: [name for name, q in prepared.node_precisions.items() if q == p] for p in ("int8", "fp16", "fp32")}
    assert len(by_precision["int8"]) == 2 and len(by_precision["fp16"]) == 1
    fp16_node = next(n for n in graph.node if n.name == by_precision["fp16"][0])
    # The float16 conv is the one the exporter fenced with casts.
    producers = {o: n for n in graph.node for o in n.output}
    assert any(producers.get(i) is not None and producers[i].op_type == "Cast" for i in fp16_node.input)
    gemm = next(n for n in computes if n.op_type == "Gemm")
    assert prepared.node_precisions[gemm.name] == "int8"  # the classifier


def test_node_map_refuses_a_graph_of_another_candidate(resnet, resnet_inventory, resnet_input, tmp_path):
    candidate, path = _exported(resnet, resnet_inventory, MIXED, resnet_input, tmp_path)
    other, _ = _exported(resnet, resnet_inventory, Policy(), resnet_input, tmp_path, "original.onnx")
    with pytest.raises(ValueError, match="weight-carrying nodes"):
        node_precisions(onnx.load(str(path)), other, layer_precisions(MIXED, RESNET_LAYERS))


def test_run_time_quantized_layers_are_refused_with_the_fix(mlp, mlp_inventory, mlp_input, tmp_path):
    layers = list(mlp_inventory.layers)
    policy = Policy({}, {layers[0]: 4}, {})
    candidate, path = _exported(mlp, mlp_inventory, policy, mlp_input, tmp_path)
    with pytest.raises(UserError, match="MatMulNBits.*--bits 32,16,8"):
        prepare_onnx(path, candidate, layer_precisions(policy, layers))


@pytest.mark.skipif(HAS_TENSORRT and torch.cuda.is_available(), reason="TensorRT and a GPU are present here")
def test_missing_tensorrt_is_a_one_line_user_error():
    with pytest.raises(UserError) as info:
        require_tensorrt()
    assert "\n" not in str(info.value) and ("TensorRT" in str(info.value) or "GPU" in str(info.value))


@pytest.mark.skipif(not HAS_TENSORRT, reason="TensorRT's Python package is not installed (it needs an NVIDIA GPU)")
@pytest.mark.skipif(not torch.cuda.is_available(), reason="TensorRT needs an NVIDIA GPU with CUDA")
def test_tensorrt_engine_matches_pytorch(resnet, resnet_inventory, resnet_input, tmp_path):
    from autocompress.export._tensorrt import build_and_verify

    candidate, path = _exported(resnet, resnet_inventory, MIXED, resnet_input, tmp_path)
    batches = [(torch.randn(8, 1, 28, 28, generator=torch.Generator().manual_seed(3)), None)]
    engine = build_and_verify(path, tmp_path / "candidate.plan", candidate, (resnet_input,), batches,
                              layer_precisions(MIXED, RESNET_LAYERS))
    assert engine.ok, engine.problems
    assert (tmp_path / "candidate.plan").stat().st_size == engine.size_bytes and engine.latency_ms > 0
