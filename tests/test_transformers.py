"""Transformers: the BERT copy is exact, heads prune whole, and every precision reaches the
runtime kernel it promises (dynamic int8, 4-bit MatMulNBits, float16 casts)."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from torch import nn

from autocompress import compress
from autocompress.compress import DynamicQuantLinear, HalfPrecision, Int4Linear, int4_block_weight
from autocompress.export import export_engine
from autocompress.inventory import build_inventory
from autocompress.latency_lut import OrtCpuBackend, to_onnx_bytes
from autocompress.spaces import Policy, SpaceConfig, build_space
from autocompress.tasks.transformer import BertEncoder, ViTSmall, bert_from_hf, mean_pool

VOCAB, HIDDEN, HEADS, LAYERS, MLP = 120, 64, 4, 2, 128


def _hf_bert():
    from transformers import BertConfig, BertModel

    torch.manual_seed(0)
    config = BertConfig(vocab_size=VOCAB, hidden_size=HIDDEN, num_hidden_layers=LAYERS, num_attention_heads=HEADS, intermediate_size=MLP)
    return BertModel(config).eval()


def _inputs(batch: int = 2, tokens: int = 10, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, VOCAB, (batch, tokens), generator=gen)
    mask = torch.ones(batch, tokens, dtype=torch.int64)
    mask[0, tokens // 2 :] = 0  # the first sentence is padded
    return ids, mask


@pytest.fixture(scope="module")
def bert() -> BertEncoder:
    return bert_from_hf(_hf_bert())


def _backend() -> OrtCpuBackend:
    return OrtCpuBackend(threads=1, warmup=1, min_runs=3, min_time_s=0.0)


def test_bert_copy_matches_transformers():
    hf = _hf_bert()
    ours = bert_from_hf(hf)
    ids, mask = _inputs()
    with torch.no_grad():
        expected = nn.functional.normalize(mean_pool(hf(input_ids=ids, attention_mask=mask).last_hidden_state, mask), dim=-1)
        got = ours(ids, mask)
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)


def test_inventory_groups_heads_and_mlp(bert):
    inv = build_inventory(bert, _inputs(1))
    for i in range(LAYERS):
        heads = inv.groups[f"layers.{i}.attn.heads"]
        assert heads.prunable and heads.unit == HIDDEN // HEADS and heads.channels == HIDDEN
        assert set(heads.layers) == {f"layers.{i}.attn.{p}" for p in "qkv"} and heads.consumers == (f"layers.{i}.attn.o",)
        assert inv.groups[f"layers.{i}.fc1"].prunable
    # The residual width is shared with the embeddings and LayerNorms: not searched.
    residual = [g for g in inv.groups.values() if "layers.0.attn.o" in g.layers]
    assert residual and not residual[0].prunable



def test_the_attention_entry_is_timed_with_the_example_inputs_padding(bert):
    """Softmax over masked key positions runs about twice as long in ONNX Runtime (MiniLM:
    100 against 48 us per layer), so the attention core's entry carries the example's mask."""
    from autocompress.latency_lut._table import _micro_elementwise, effective_elementwise

    padded = build_inventory(bert, _inputs(1))  # 5 of its 10 tokens are padding
    cores = [e for e in padded.elementwise.values() if e.kind == "attention"]
    assert cores and all(e.masked_keys == 5 for e in cores)
    core = next(e for e in effective_elementwise(padded, Policy(), 8) if e.op.kind == "attention")
    assert core.key.endswith("|m5")
    _, (*_, mask) = _micro_elementwise(core)
    assert mask.shape == (1, 1, 1, 10) and int((mask < -1).sum()) == 5 and bool((mask[..., :5] == 0).all())

    ids, full = _inputs(1)
    unpadded = build_inventory(bert, (ids, torch.ones_like(full)))
    assert all(e.masked_keys == 0 for e in unpadded.elementwise.values())
    assert "|m" not in next(e for e in effective_elementwise(unpadded, Policy(), 8) if e.op.kind == "attention").key
    assert unpadded.fingerprint != padded.fingerprint


def test_latency_table_sees_attention_core_and_gelu(bert, tmp_path):
    """What head and MLP pruning shrink besides the projections is in the table: the
    attention core (scores, softmax, weighted sum) and the GELU fused after fc1."""
    from autocompress.latency_lut import LatencyTable
    from autocompress.latency_lut._table import effective_elementwise, effective_layers

    inv = build_inventory(bert, _inputs(1))
    assert {inv.layers[f"layers.{i}.fc1"].activation for i in range(LAYERS)} == {"gelu"}
    cores = {n: e for n, e in inv.elementwise.items() if e.kind == "attention"}
    assert sorted(cores) == [f"layers.{i}.attn.core" for i in range(LAYERS)]
    assert all(e.group == f"layers.{i}.attn.heads" and e.head_dim == HIDDEN // HEADS for i, e in enumerate(cores.values()))

    policy = Policy(prune={"layers.0.attn.heads": 0.5, "layers.1.fc1": 0.5})
    ops = {e.op.name: e for e in effective_elementwise(inv, policy, 8)}
    assert ops["layers.0.attn.core"].shape == (1, 10, HIDDEN // 2)  # two of four heads kept
    assert ops["layers.1.attn.core"].shape == (1, 10, HIDDEN)
    # Residual adds of (batch, tokens, hidden) keep their token axis.
    assert all(e.shape[:2] == (1, 10) for e in ops.values() if e.op.kind == "add" and len(e.shape) == 3)

    table = LatencyTable(tmp_path / "t.json", _backend())
    assert table.entry_us(ops["layers.0.attn.core"]) > 0 and table.entry_us(ops["layers.1.attn.core"]) > 0
    fc1 = next(c for c in effective_layers(inv, policy, 8) if c.layer.name == "layers.1.fc1")
    assert "|agelu|" in fc1.key and fc1.out_channels == MLP // 2
    from autocompress.latency_lut._table import _micro_model

    model, inputs = _micro_model(fc1, 8)
    graph = onnx.load_from_string(to_onnx_bytes(model, inputs)).graph
    assert any(n.op_type in ("Gelu", "Erf") for n in graph.node)

def test_head_pruning_removes_whole_heads(bert):
    x = _inputs(1)
    inv = build_inventory(bert, x)
    # 4 heads; 0.5 keeps 2 whole heads (the least important pair goes).
    student = compress.apply(bert, inv, Policy(prune={"layers.0.attn.heads": 0.5}), x)
    q, o = student.get_submodule("layers.0.attn.q"), student.get_submodule("layers.0.attn.o")
    assert q.out_features == 2 * (HIDDEN // HEADS) and o.in_features == q.out_features
    # Whole heads: the kept rows of q are two contiguous blocks of the original's.
    orig_q = bert.layers[0].attn.q.weight
    dh = HIDDEN // HEADS
    kept = [h for h in range(HEADS) if any(torch.equal(orig_q[h * dh : (h + 1) * dh], q.weight[j * dh : (j + 1) * dh]) for j in range(2))]
    assert len(kept) == 2
    assert student(*_inputs()).shape == (2, HIDDEN)
    # Space: ratios round to whole heads.
    space = build_space(inv, SpaceConfig(prune_ratios=(0.0, 0.25, 0.3, 0.5)))
    assert space.domains["prune/layers.0.attn.heads"] == (0.0, 0.25, 0.5)


def _ops(data: bytes, backend: OrtCpuBackend, tmp_path: Path) -> Counter:
    out = tmp_path / "opt.onnx"
    backend.session(data, optimized_model_path=out)
    return Counter(n.op_type for n in onnx.load(str(out)).graph.node)


def test_dynamic_int8_linear_runs_integer_kernels(bert, tmp_path):
    x = _inputs(1)
    inv = build_inventory(bert, x)
    policy = Policy(bits={n: 8 for n in inv.layers})
    student = compress.apply(bert, inv, policy, x)
    assert sum(isinstance(m, DynamicQuantLinear) for m in student.modules()) == len(inv.layers)
    engine = export_engine(student, x, tmp_path / "int8.onnx", _backend(), [(_inputs(8, seed=1), None)])
    assert engine.ok, engine.problems
    dynamic = engine.integer_nodes.get("DynamicQuantizeMatMul", 0) + engine.integer_nodes.get("MatMulIntegerToFloat", 0)
    assert dynamic == len(inv.layers)
    assert engine.output_cosine > 0.999


@pytest.mark.parametrize(("width", "weight_max"), [("8", 127), ("7", 64)])
def test_dynamic_int8_weights_keep_their_grid_in_the_engine(monkeypatch, width, weight_max):
    """ONNX Runtime's re-quantization of the dynamic layers lands on the grid they trained on,
    7 bits (reduce_range) included."""
    monkeypatch.setenv("AUTOCOMPRESS_INT8_WEIGHTS", width)
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, 8)).eval()
    x = (torch.randn(1, 5, 16),)
    student = compress.apply(model, build_inventory(model, x), Policy(bits={"0": 8, "2": 8}), x)
    layers = [m for m in student.modules() if isinstance(m, DynamicQuantLinear)]
    assert len(layers) == 2 and all(m.weight_max == weight_max for m in layers)
    graph = onnx.load_from_string(to_onnx_bytes(student, x)).graph
    arrays = {t.name: onnx.numpy_helper.to_array(t) for t in graph.initializer}
    weights = {name: w for name, w in arrays.items() if w.dtype == np.int8 and w.ndim == 2}
    assert sorted(w.shape for w in weights.values()) == [(16, 32), (32, 8)]
    for name, w in weights.items():
        assert int(np.abs(w.astype(int)).max()) == weight_max
        layer = layers[0] if w.shape == (16, 32) else layers[1]
        scale = arrays[name.removesuffix("_quantized") + "_scale"]
        # exact: the engine's weights are the ones the layer trained with
        np.testing.assert_allclose(w * scale, layer.export_weight().T.numpy(), rtol=1e-6, atol=1e-7)


def test_int4_grid_is_idempotent_and_blockwise():
    torch.manual_seed(0)
    w = torch.randn(16, 80)
    q = int4_block_weight(w)
    torch.testing.assert_close(int4_block_weight(q), q)
    # Each block of 32 inputs (the last one 16 wide) holds at most 16 levels of one scale.
    for block in q.split(32, dim=1):
        for row in block:
            levels = torch.unique(row)
            assert len(levels) <= 16
            scale = row.abs().max() / 8
            torch.testing.assert_close(row / scale, torch.round(row / scale), atol=1e-4, rtol=0)


def test_int4_exports_matmulnbits_for_exactly_its_layers(bert, tmp_path):
    x = _inputs(1)
    inv = build_inventory(bert, x)
    policy = Policy(bits={"layers.0.fc1": 4, "layers.1.fc2": 4})
    student = compress.apply(bert, inv, policy, x)
    assert sum(isinstance(m, Int4Linear) for m in student.modules()) == 2
    engine = export_engine(student, x, tmp_path / "int4.onnx", _backend(), [(_inputs(8, seed=1), None)])
    assert engine.ok, engine.problems
    assert engine.integer_nodes == {"MatMulNBits": 2}


def test_fp16_layers_export_half_precision_math(bert, tmp_path):
    x = _inputs(1)
    inv = build_inventory(bert, x)
    student = compress.apply(bert, inv, Policy(bits={n: 16 for n in inv.layers}), x)
    assert sum(isinstance(m, HalfPrecision) for m in student.modules()) == len(inv.layers)
    graph = onnx.load_from_string(to_onnx_bytes(student, x)).graph
    # Every weight is stored in float16, and inputs are cast to it (q, k and v share one cast).
    half_weights = [t for t in graph.initializer if t.data_type == onnx.TensorProto.FLOAT16 and len(t.dims) == 2]
    assert len(half_weights) == len(inv.layers)
    to_half = [n for n in graph.node if n.op_type == "Cast" and any(a.name == "to" and a.i == onnx.TensorProto.FLOAT16 for a in n.attribute)]
    assert len(to_half) == 4 * LAYERS
    engine = export_engine(student, x, tmp_path / "fp16.onnx", _backend(), [(_inputs(8, seed=1), None)])
    assert engine.ok, engine.problems
    assert engine.tolerance == 1e-2


def test_vit_inventory_and_joint_policy(tmp_path):
    torch.manual_seed(0)
    model = ViTSmall(hidden=32, num_heads=4, mlp_hidden=64).eval()
    x = (torch.randn(1, 1, 28, 28),)
    inv = build_inventory(model, x)
    assert inv.layers["patch_embed"].kind == "conv"
    assert inv.groups["layers.0.attn.heads"].prunable and inv.groups["layers.1.fc1"].prunable
    policy = Policy(prune={"layers.0.attn.heads": 0.5, "layers.1.fc1": 0.5},
                    bits={"layers.0.fc1": 8, "layers.1.fc2": 4, "head": 8}, rank={"layers.1.attn.o": 0.5})
    student = compress.apply(model, inv, policy, x, [(torch.randn(16, 1, 28, 28),)])
    engine = export_engine(student, x, tmp_path / "vit.onnx", _backend(), [(torch.randn(8, 1, 28, 28), None)])
    assert engine.ok, engine.problems
    assert engine.integer_nodes.get("MatMulNBits") == 1


@pytest.mark.slow
def test_random_policies_on_the_real_minilm(tmp_path):
    """The pretrained all-MiniLM-L6-v2 itself: random valid policies build, export and run
    the integer kernels they name."""
    import random

    from autocompress.tasks.minilm import load_minilm

    model, tokenizer = load_minilm()
    enc = tokenizer.encode_batch(["the oceans are teeming with life", "a grammatical rule"])
    ids = torch.tensor([e.ids for e in enc])
    mask = torch.tensor([e.attention_mask for e in enc])
    x = (ids[:1], mask[:1])
    inv = build_inventory(model, x)
    space = build_space(inv)
    rng = random.Random(0)
    for i in range(2):
        policy = space.sample(rng)
        student = compress.apply(model, inv, policy, x, [(ids, mask)])
        engine = export_engine(student, x, tmp_path / f"minilm-{i}.onnx", _backend(), [((ids, mask), None)])
        assert engine.ok, engine.problems
        integer = sum(1 for b in policy.bits.values() if b in (8, 4))
        assert sum(engine.integer_nodes.values()) >= integer
