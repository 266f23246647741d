"""The latency lookup table: per-layer latencies measured on the target, summed and calibrated.

A layer's entry is keyed by what the runtime executes: op, input shape, output channels,
kernel, stride, padding, groups, the fused activation, the bit width and the rank. Each
entry is measured as a small ONNX graph built by the very code that builds candidates
(so it carries the same folding, QDQ placement and factorization) and timed on the target.

Entries are measured on demand and kept: in the run's table and in a table shared by every
run on the same target profile, so a second run on the same model measures nothing new.
Each layer's graph pays the layout conversions at its input and output that a chain of
layers in one precision does not (ONNX Runtime's blocked NCHWc layout for float convs, the
NHWC transposes and quantize/dequantize around integer ones): junction entries measure that
conversion per tensor and precision, and the sum gives back what a tensor whose layers all
share one precision does not pay. The sum still misses what no policy changes (pooling,
runtime overhead); a linear correction fitted to whole-model measurements covers it, and its
data are kept with the table.
"""

from __future__ import annotations

import itertools
import json
import math
import os
import random
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Callable, Iterable, Mapping

import numpy as np
import torch
from torch import nn

from autocompress._io import atomic_write_json, cache_dir, make_folder
from autocompress.errors import UserError
from autocompress.inventory import Elementwise, Group, Layer, LayerInventory, is_depthwise
from autocompress.latency_lut._backend import LatencyBackend, Measurable, Measurement, Runner, profile_id
from autocompress.spaces import Policy, SearchSpace, kept_for

__all__ = [
    "Calibration", "ElementwiseChoiceShape", "JunctionShape", "LatencyTable", "LayerChoiceShape", "effective_elementwise",
    "calibration_policies", "effective_bits", "effective_layers", "add_precisions", "junction_groups", "runs_as_int8",
    "check_table_path", "read_table_file",
]

SCHEMA = 1
RAW_VERSION = 5  # what a calibration point's raw_us and parts sum (2: junction savings subtracted; 3: with int_share; 4: junctions per tensor, adds by precision; 5: conversions a part apart)
CALIBRATION_BUDGET_S = 30.0  # seconds a calibration may spend on more whole models than its first batch
CALIBRATION_MAX_RANDOM = 40  # random whole models at most


@dataclass(frozen=True)
class LayerChoiceShape:
    """A layer as a policy leaves it: its shapes after pruning, its precision and rank, and
    how it is factorized when its rank is below 1."""

    layer: Layer
    in_channels: int
    out_channels: int
    bits: int
    rank_ratio: float
    decomp: str = "svd"

    @property
    def groups(self) -> int:
        """A depthwise conv keeps one group per (remaining) channel."""
        return self.out_channels if is_depthwise(self.layer) else self.layer.groups

    @property
    def key(self) -> str:
        l = self.layer
        shape = list(l.input_shape)
        shape[1 if l.kind == "conv" else -1] = self.in_channels
        return "|".join([
            l.kind, "x".join(map(str, shape)), f"o{self.out_channels}", f"k{l.kernel_size[0]}x{l.kernel_size[1]}",
            f"s{l.stride[0]}x{l.stride[1]}", f"p{l.padding[0]}x{l.padding[1]}", f"g{self.groups}",
            f"a{l.activation or 'none'}", f"b{self.bits}", f"r{self.rank_ratio:g}",
        ] + ([f"d{self.decomp}"] if self.decomp != "svd" and self.rank_ratio < 1.0 else []))


@dataclass(frozen=True)
class ElementwiseChoiceShape:
    """An element-wise op as a policy leaves it: its channel count after pruning."""

    op: Elementwise
    channels: int

    @property
    def shape(self) -> tuple[int, ...]:
        shape = list(self.op.shape)
        shape[channel_axis(shape)] = self.channels
        return tuple(shape)

    @property
    def key(self) -> str:
        dims = "x".join(map(str, self.shape))
        if self.op.kind == "attention":  # (batch, tokens, kept heads * head_dim), masked key positions
            return f"attention|{dims}|d{self.op.head_dim}" + (f"|m{self.op.masked_keys}" if self.op.masked_keys else "")
        return f"{self.op.kind}|{dims}|a{self.op.activation or 'none'}"


@dataclass(frozen=True)
class JunctionShape:
    """A conv's tensor in one precision: half the layout conversion (in plus out) that a lone
    layer's graph pays and a chain of layers in that precision does not."""

    batch: int
    channels: int
    spatial: tuple[int, int]
    bits: int

    @property
    def key(self) -> str:
        return f"junction|{self.batch}x{self.channels}x{self.spatial[0]}x{self.spatial[1]}|b{self.bits}"


Site = tuple[list[tuple[str, str]], bool, tuple[str, ...]]


def junction_groups(inventory: LayerInventory) -> list[Site]:
    """Per tensor that a conv layer writes or reads: the conv layers meeting there as
    (layer, "out" or "in"), the writer first where a layer writes it; whether something
    else touches it (a linear layer, a concatenation, pooling, the model's output or
    input), which needs the plain layout; and the residual adds that write or read it,
    which need the plain layout unless ONNX Runtime computes them inside a conv or on the
    quantized tensors (see `add_precisions`). A layer's result and the sum it flows into
    are different tensors. Where a layer's result has other readers besides adds, only
    conv layers are told apart: any other reader counts as plain."""
    convs = {name for name, layer in inventory.layers.items() if layer.kind == "conv"}
    summed_by: dict[str, list[str]] = {}
    for add, link in inventory.add_links.items():
        for source in link.inputs:
            summed_by.setdefault(source, []).append(add)
    add_of_result = {link.result: add for add, link in inventory.add_links.items()}
    out: list[Site] = []
    unwritten: dict[str, list[str]] = {}  # a tensor no layer writes -> the convs reading it
    for name, link in inventory.links.items():
        if name not in convs:
            continue
        readers = [f for f in link.feeds if f in convs]
        adds = tuple(summed_by.get(name, ()))
        plain = inventory.layers[name].is_output or (link.feeds_other and not adds) or len(readers) != len(link.feeds)
        out.append(([(name, "out"), *((f, "in") for f in readers)], plain, adds))
        if link.reads is None:
            unwritten.setdefault(link.source or name, []).append(name)
    for source, names in unwritten.items():
        add = add_of_result.get(source)
        plain = add is None or inventory.add_links[add].other_readers
        out.append(([(name, "in") for name in names], plain, (add,) if add else ()))
    return out


def add_precisions(inventory: LayerInventory, bits: Mapping[str, int]) -> dict[str, int]:
    """The precision ONNX Runtime computes each residual add in, from the precisions the
    layers run in: 32 where every operand is a float conv's result or such a sum (the
    blocked-layout conv takes the other operand as a sum input, with the ReLU after it:
    the add costs nothing apart and its result stays blocked); 8 where every operand is
    an int8 layer's result or such a sum and only int8 layers or such sums read it (a
    QLinearAdd on the quantized tensors, its ReLU absorbed by the quantization); else 0,
    a float add in the plain layout, with conversions at its operands and result."""
    readers: dict[str, list[str]] = {}
    for name, link in inventory.links.items():
        if link.source is not None:
            readers.setdefault(link.source, []).append(name)
    summed_into: dict[str, list[str]] = {}
    for add, link in inventory.add_links.items():
        for source in link.inputs:
            summed_into.setdefault(source, []).append(add)
    floats: set[str] = set()
    ints: set[str] = set()  # every operand int8
    for name, link in inventory.add_links.items():  # in graph order: operands come first
        if link.inputs and all(i in floats or (bits.get(i) == 32 and inventory.layers[i].kind == "conv") for i in link.inputs):
            floats.add(name)
        if link.inputs and all(i in ints or (i in inventory.layers and bits.get(i) == 8) for i in link.inputs):
            ints.add(name)
    out = {}
    for name, link in inventory.add_links.items():
        quantized_readers = (not link.other_readers and all(bits.get(r) == 8 for r in readers.get(link.result, ()))
                             and all(a in ints for a in summed_into.get(name, ())))
        out[name] = 32 if name in floats else 8 if name in ints and quantized_readers else 0
    return out


def _side_junction(choice: "LayerChoiceShape", side: str) -> JunctionShape:
    l = choice.layer
    shape = l.output_shape if side == "out" else l.input_shape
    channels = choice.out_channels if side == "out" else choice.in_channels
    return JunctionShape(int(shape[0]), channels, (int(shape[2]), int(shape[3])), choice.bits)


def junction_saving_us(groups: list[tuple], entry_us: Callable[[JunctionShape], float]) -> float:
    """What the layers' graphs paid for conversions that the whole model does not: every
    side's half conversion, less one per precision where a tensor's sides differ in
    precision or the plain layout is needed (the runtime converts once per layout).

    A group is (sides, plain) or (sides, plain, unpaid): ``unpaid`` sides take part in the
    tensor's layouts without a layer's graph having paid for them (a float sum written in
    the blocked layout)."""
    charged, converted = junction_costs_us(groups, entry_us)
    return charged - converted


def junction_costs_us(groups: list[tuple], entry_us: Callable[[JunctionShape], float]) -> tuple[float, float]:
    """The two terms of `junction_saving_us`: the half conversions the layers' graphs paid,
    and the conversions the whole model still makes where precisions or layouts meet."""
    charged = converted = 0.0
    for sides, plain, *rest in groups:
        per_bits: dict[int, float] = {}
        for junction in sides:
            us = entry_us(junction)
            charged += us
            per_bits.setdefault(junction.bits, us)
        for junction in rest[0] if rest else ():
            per_bits.setdefault(junction.bits, entry_us(junction))
        converted += 0.0 if len(per_bits) == 1 and not plain else sum(per_bits.values())
    return charged, converted


def channel_axis(shape: tuple[int, ...] | list[int]) -> int:
    """Channels are axis 1 of an (N, C, H, W) tensor and the last axis of a (batch, tokens,
    features) or (batch, features) one."""
    return 1 if len(shape) == 4 else len(shape) - 1


def effective_elementwise(inventory: LayerInventory, policy: Policy, channel_multiple: int) -> list[ElementwiseChoiceShape]:
    out = []
    for op in inventory.elementwise.values():
        group = inventory.groups.get(op.group) if op.group else None
        full = op.shape[channel_axis(op.shape)]
        channels = kept_for(group, policy.prune_ratio(group.name), channel_multiple) if group else full
        out.append(ElementwiseChoiceShape(op, channels))
    return out


def input_groups(inventory: LayerInventory) -> dict[str, list[Group]]:
    """Layer name -> the groups whose pruning removes some of its input channels: one, or
    several where its input concatenates the outputs of several groups."""
    out: dict[str, list[Group]] = {}
    for group in inventory.groups.values():
        for name in group.consumers:
            out.setdefault(name, []).append(group)
    return out


def runs_as_int8(inventory: LayerInventory, policy: Policy, name: str) -> bool:
    """A float, unfactorized layer that reads an int8 layer's result directly and whose result
    only int8 layers read: its input and output are quantized tensors, and ONNX Runtime
    quantizes its weights too (WeightBiasQuantization), so it runs as an integer kernel."""
    link = inventory.links.get(name)
    if link is None or policy.bits_of(name) != 32 or policy.rank_ratio(name) < 1.0:
        return False
    return (link.reads is not None and policy.bits_of(link.reads) == 8 and bool(link.feeds) and not link.feeds_other
            and all(policy.bits_of(f) == 8 for f in link.feeds))


def effective_bits(inventory: LayerInventory, policy: Policy, name: str) -> int:
    """The precision the runtime executes a layer in."""
    return 8 if runs_as_int8(inventory, policy, name) else policy.bits_of(name)


def effective_layers(inventory: LayerInventory, policy: Policy, channel_multiple: int) -> list[LayerChoiceShape]:
    kept: dict[str, int] = {
        g.name: kept_for(g, policy.prune_ratio(g.name), channel_multiple) for g in inventory.groups.values()
    }
    feeding = input_groups(inventory)
    out = []
    for layer in inventory.layers.values():
        c_out = kept[layer.out_group] if layer.out_group in kept else layer.out_channels
        if is_depthwise(layer):
            c_in = c_out
        elif layer.groups == 1:  # every concatenated piece loses its own group's channels
            c_in = layer.in_channels - sum(g.channels - kept[g.name] for g in feeding.get(layer.name, ()))
        else:
            c_in = layer.in_channels
        out.append(LayerChoiceShape(layer, c_in, c_out, effective_bits(inventory, policy, layer.name), policy.rank_ratio(layer.name),
                                    policy.decomposition(layer.name)))
    return out


def _micro_model(choice: LayerChoiceShape, channel_multiple: int) -> tuple[nn.Module, tuple[torch.Tensor, ...]]:
    """The single layer in its fused context, compressed exactly as a candidate would be."""
    from autocompress import compress
    from autocompress.inventory import build_inventory

    l = choice.layer
    if l.kind == "conv":
        core: nn.Module = nn.Conv2d(choice.in_channels, choice.out_channels, l.kernel_size, l.stride, l.padding, groups=choice.groups)
        shape = (l.input_shape[0], choice.in_channels, *l.input_shape[2:])
    else:
        core = nn.Linear(choice.in_channels, choice.out_channels)
        shape = (*l.input_shape[:-1], choice.in_channels)
    activation = {"relu": [nn.ReLU()], "gelu": [nn.GELU()]}.get(l.activation or "", [])
    model = nn.Sequential(core, *activation)
    gen = torch.Generator().manual_seed(0)
    x = torch.rand(shape, generator=gen)
    if choice.bits == 32 and choice.rank_ratio >= 1.0:
        return model.eval(), (x,)
    inv = build_inventory(model, (x,))
    policy = Policy(bits={"0": choice.bits} if choice.bits != 32 else {}, rank={"0": choice.rank_ratio} if choice.rank_ratio < 1 else {},
                    decomp={"0": choice.decomp})
    return compress.apply(model, inv, policy, (x,), [(x,)], channel_multiple=channel_multiple), (x,)


REFERENCE_KEY = "conv|1x32x28x28|o32|k3x3|s1x1|p1x1|g1|arelu|b32|r1"
REFERENCE_MAX_AGE_S = 10.0  # the reference is timed again when its newest timing is older
REFERENCE_WINDOW_S = 60.0  # ... and the machine's speed is the median of the timings this recent
REFERENCE_MIN_TIMINGS = 3  # ... of at least this many, the missing ones timed at once, a pause apart
BRACKET_SHARE = 0.3  # the reference's short timings around each new entry, as a share of an entry's timing
BRACKET_REUSE_S = 0.5  # a timing after one entry this recent is the timing before the next


def conv_choice(c_in: int, c_out: int, kernel: int, stride: int, size: int, bits: int = 32, name: str = "conv") -> LayerChoiceShape:
    """A square conv with ReLU on a ``size`` x ``size`` input, "same" padding, as an entry's shape."""
    out = size // stride
    layer = Layer(name, "conv", c_in, c_out, (kernel, kernel), (stride, stride), (kernel // 2, kernel // 2), 1, (1, c_in, size, size),
                  (1, c_out, out, out), "relu", 0, 0, None, None, False)
    return LayerChoiceShape(layer, c_in, c_out, bits, 1.0)


def _reference_choice() -> LayerChoiceShape:
    """A fixed float 3x3 conv, timed beside the entries: the machine's speed at that moment."""
    return conv_choice(32, 32, 3, 1, 28, name="reference")


class _AddModel(nn.Module):
    def __init__(self, relu: bool) -> None:
        super().__init__()
        self.relu = relu

    def forward(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        y = a + b
        return torch.relu(y) if self.relu else y


class _AttentionCore(nn.Module):
    """Scores, mask, softmax and weighted sum of multi-head attention, between the
    projections (the operations `tasks.transformer.MultiHeadSelfAttention` runs)."""

    def __init__(self, head_dim: int) -> None:
        super().__init__()
        self.head_dim = head_dim

    def forward(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask_bias: torch.Tensor) -> torch.Tensor:
        b, s = q.shape[0], q.shape[1]
        shape = (b, s, -1, self.head_dim)
        q, k, v = (t.view(shape).transpose(1, 2) for t in (q, k, v))
        scores = torch.matmul(q, k.transpose(-1, -2)) * (1.0 / math.sqrt(self.head_dim)) + mask_bias
        return torch.matmul(torch.softmax(scores, dim=-1), v).transpose(1, 2).reshape(b, s, -1)


def _conv_chain(junction: JunctionShape, n: int, channel_multiple: int) -> tuple[nn.Module, tuple[torch.Tensor, ...]]:
    """``n`` 1x1 convs (with ReLU) on the junction's tensor, in its precision."""
    from autocompress import compress
    from autocompress.inventory import build_inventory

    c = junction.channels
    model = nn.Sequential(*[m for _ in range(n) for m in (nn.Conv2d(c, c, 1), nn.ReLU())]).eval()
    x = torch.rand((junction.batch, c, *junction.spatial), generator=torch.Generator().manual_seed(0))
    if junction.bits == 32:
        return model, (x,)
    inv = build_inventory(model, (x,))
    policy = Policy(bits={name: junction.bits for name in inv.layers})
    return compress.apply(model, inv, policy, (x,), [(x,)], channel_multiple=channel_multiple), (x,)


class _Relu(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.relu(x)


def _micro_elementwise(choice: ElementwiseChoiceShape) -> tuple[nn.Module, tuple[torch.Tensor, ...]]:
    shape = choice.shape
    gen = torch.Generator().manual_seed(0)
    if choice.op.kind == "attention":
        qkv = tuple(torch.randn(shape, generator=gen) for _ in range(3))
        mask = torch.zeros(shape[0], 1, 1, shape[1])
        if choice.op.masked_keys:  # the last key positions, as padding is masked
            mask[..., shape[1] - choice.op.masked_keys:] = -10000.0
        return _AttentionCore(choice.op.head_dim).eval(), (*qkv, mask)
    return _AddModel(choice.op.activation == "relu").eval(), (torch.randn(shape, generator=gen), torch.randn(shape, generator=gen))


@dataclass
class Calibration:
    """measured_us ~= scale * sum_of_layer_entries_us + offset_us, fitted on whole models;
    then, where the points record the sum by part (layers per precision, element-wise ops,
    the half conversions the layers' graphs paid, the conversions the whole model still
    makes), one scale per part, shrunk toward the common scale; then corrected
    locally: the model times the mean measured/model ratio of the points near the query,
    shrunk toward 1 by a prior worth ``LOCAL_PRIOR`` points (``LOCAL_PRIOR_BY_PARTS``
    where the scales per part already model the precisions: what is left near a query is
    mostly noise). Near means a similar sum
    (Gaussian weights of width ``LOCAL_WIDTH`` of the sum) and, where the points record
    it, a similar share of the sum in integer layers (width ``LOCAL_INT_WIDTH``). A
    search's measured candidates gather where it searches, so its predictions there learn
    the bias the fit leaves.

    Scales per part: an isolated layer's graph runs float and int8 kernels at different
    distances from what they cost inside a whole model, so one line leaves all-int8 and
    all-float candidates on opposite sides (on demo, 30 float-only and 30 int8-only random
    candidates fitted by one line: 7.7% median error; by part: 1.6%). The scales minimize
    the relative error, the error a budget is judged by, so the fastest models weigh as
    much as the slowest. ``PART_PRIOR`` is the ridge strength, in points: how many whole
    models' worth of evidence a part's scale needs to move away from the common one. Fitted
    on 42 random mixed demo models, relative errors and a weak prior (0.01) predict all-int8
    candidates 94-100% within ±10% where absolute errors and a prior of 0.1 reached 51-77%,
    and mixed ones as well as before (`benchmarks/table_fit.py`)."""

    LOCAL_WIDTH = 0.1
    LOCAL_INT_WIDTH = 0.1
    LOCAL_PRIOR = 0.5
    LOCAL_PRIOR_BY_PARTS = 2.0
    PART_PRIOR = 0.01

    scale: float = 1.0
    offset_us: float = 0.0
    points: list[dict] = field(default_factory=list)  # {"policy": digest, "raw_us", "int_share", "parts", "measured_us", "ref_us"}
    part_scales: dict[str, float] = field(default_factory=dict)  # empty: the line alone
    parts_offset_us: float = 0.0

    def line(self, raw_us: float) -> float:
        return self.scale * raw_us + self.offset_us

    def speed(self, reference_us: float | None) -> float:
        """How much slower the machine runs at the reference latency ``reference_us`` than
        when the points were measured (the median of the references their sums were taken
        at); 1.0 where the points do not record it."""
        key = (id(self.points), len(self.points))  # points are only ever appended
        if getattr(self, "_reference_cache", (None,))[0] != key:
            refs = [p["ref_us"] for p in self.points if p.get("ref_us")]
            self._reference_cache = (key, float(np.median(refs)) if refs else None)
        points_ref = self._reference_cache[1]
        return reference_us / points_ref if points_ref and reference_us else 1.0

    def describe(self) -> str:
        """The fit in one line, as `lut build` and `lut show` print it."""
        text = f"{self.scale:.3f} x sum {self.offset_us:+.0f} us on {len(self.points)} whole models"
        if self.part_scales:
            scales = ", ".join(f"{k} {v:.3f}" for k, v in sorted(self.part_scales.items()))
            text += f"; by part: {scales} x their sums {self.parts_offset_us:+.0f} us"
        return text

    def model(self, raw_us: float, parts: Mapping[str, float] | None = None) -> float:
        """The fit before the local correction: by part where fitted and given, else the line."""
        if not self.part_scales or parts is None:
            return self.line(raw_us)
        return sum(self.part_scales.get(k, self.scale) * v for k, v in parts.items()) + self.parts_offset_us

    def apply(self, raw_us: float, int_share: float | None = None, parts: Mapping[str, float] | None = None) -> float:
        """The calibrated latency of a model whose entries sum to ``raw_us``, of which
        ``int_share`` is in integer layers (``None``: weigh the points by their sums only),
        split by part as ``parts`` (``None``: the line)."""
        base = self.model(raw_us, parts)
        if not self.points or raw_us <= 0:
            return base
        raw, share, ratio = self._ratios(by_parts=parts is not None)
        distance = ((raw - raw_us) / (self.LOCAL_WIDTH * raw_us)) ** 2
        if int_share is not None:
            distance = distance + np.where(np.isnan(share), 0.0, ((share - int_share) / self.LOCAL_INT_WIDTH) ** 2)
        weight = np.exp(-distance)
        prior = self.LOCAL_PRIOR_BY_PARTS if self.part_scales and parts is not None else self.LOCAL_PRIOR
        return base * float((np.sum(weight * ratio) + prior) / (np.sum(weight) + prior))

    def _ratios(self, by_parts: bool) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """The points' sums, integer shares (NaN where not recorded) and measured/model ratios,
        computed once per set of points and fit (predictions ask thousands of times a search)."""
        key = (id(self.points), len(self.points), self.scale, self.offset_us, self.parts_offset_us, by_parts)
        if getattr(self, "_cached", (None,))[0] != key:  # points are only ever appended
            raw = np.array([p["raw_us"] for p in self.points])
            share = np.array([p.get("int_share", np.nan) for p in self.points], dtype=float)
            model = np.array([self.model(p["raw_us"], p.get("parts") if by_parts else None) for p in self.points])
            ratio = np.array([p["measured_us"] for p in self.points]) / np.maximum(model, 1e-9)
            self._cached = (key, raw, share, ratio)
        return self._cached[1], self._cached[2], self._cached[3]

    def fit(self) -> None:
        self.part_scales, self.parts_offset_us = {}, 0.0
        if not self.points:
            return
        raw = np.array([p["raw_us"] for p in self.points])
        meas = np.array([p["measured_us"] for p in self.points])
        ratio = float(np.median(meas / raw))
        self.scale, self.offset_us = ratio, 0.0
        if len(self.points) >= 3 and np.ptp(raw) > 0:
            scale, offset = np.polyfit(raw, meas, 1)
            # A slope far from the plain ratio means the points are noise, not a trend.
            if 0.5 * ratio <= scale <= 2.0 * ratio:
                self.scale, self.offset_us = float(scale), float(offset)
            self._fit_parts(meas)  # parts can explain what one line cannot: its own check is on the scales

    def _fit_parts(self, meas: np.ndarray) -> None:
        """Ridge regression of the measurements on the parts, centred on the line, on
        relative errors (each point's row divided by its measurement)."""
        if not all(p.get("parts") for p in self.points):
            return
        names = sorted({k for p in self.points for k in p["parts"]})
        # Dimensionless sums and measurements (about 1), so the prior's strength does not
        # depend on the model's speed or on the units of the measurements.
        n_raw = float(np.median([p["raw_us"] for p in self.points]))
        n_meas = float(np.median(meas))
        x = np.array([[p["parts"].get(k, 0.0) for k in names] for p in self.points]) / n_raw
        a = np.c_[x, np.ones(len(x))]
        prior = np.r_[np.full(len(names), self.scale * n_raw / n_meas), self.offset_us / n_meas]
        ridge = self.PART_PRIOR * np.eye(len(prior))
        ridge[-1, -1] = 0.0  # the offset is not shrunk: the line fixes it only jointly with the scale
        a = a * (n_meas / meas)[:, None]  # the measurements become ones
        coef = prior + np.linalg.solve(a.T @ a + ridge, a.T @ (1.0 - a @ prior))
        if np.all(coef[:-1] > 0):  # a negative scale is a fit to noise
            self.part_scales = {k: float(c * n_meas / n_raw) for k, c in zip(names, coef[:-1])}
            self.parts_offset_us = float(coef[-1] * n_meas)


class LatencyTable:
    """Per-layer latencies for one target profile; ``predict`` gives a whole model's latency.

    Args:
        path: The run's table file (JSON, written atomically).
        backend: Measures missing entries on the target.
        shared_path: A table reused across runs on the same profile (``None``: no sharing).

    While entries are being measured, the table is saved at least every ``checkpoint_s``
    seconds, so a process killed while building it loses at most that much measuring.
    """

    checkpoint_s: float = 30.0
    settle_pause_s: float = 1.0  # between the timings that give the gauge its first median

    def __init__(self, path: Path, backend: LatencyBackend, shared_path: Path | None = None, channel_multiple: int = 8) -> None:
        self.path = Path(path)
        self.backend = backend
        self.profile = backend.profile()
        self.profile_id = profile_id(self.profile)
        self.shared_path = Path(shared_path) if shared_path is not None else None
        self.channel_multiple = channel_multiple
        self.entries: dict[str, dict] = {}
        self.calibrations: dict[str, Calibration] = {}
        self.measured_now = 0
        self.on_measure: Callable[[str], None] | None = None
        self._saved_at = time.monotonic()
        self._unsaved = False  # entries or calibration points not yet on disk
        self._reference: tuple[float, float] | None = None  # (measured at, us)
        self._reference_history: list[tuple[float, float]] = []
        self._reference_run: Runner | None = None  # the reference, prepared once
        self._last_bracket: tuple[float, float] | None = None  # (timed at, us): the reference's newest short timing
        self._junctions: dict[str, list[Site]] = {}

    @classmethod
    def default_shared_path(cls, backend: LatencyBackend) -> Path:
        return cache_dir() / "lut" / f"{backend.name}-{profile_id(backend.profile())}.json"

    @classmethod
    def open(
        cls, path: Path, backend: LatencyBackend, shared_path: Path | None = None, allow_other_profile: bool = False, channel_multiple: int = 8
    ) -> "LatencyTable":
        check_table_path(Path(path), option="--table (or --run-dir for a search)")
        table = cls(path, backend, shared_path, channel_multiple)
        if table.shared_path is not None and table.shared_path.is_file():
            table._merge(table.shared_path, allow_other_profile=True, take_calibrations=False)
        if table.path.is_file():
            table._merge(table.path, allow_other_profile=allow_other_profile, take_calibrations=True)
        return table

    def _merge(self, path: Path, allow_other_profile: bool, take_calibrations: bool) -> None:
        data = read_table_file(path)
        if data.get("profile") != self.profile:
            if not allow_other_profile:
                raise UserError(
                    f"Latency table {str(path)!r} was measured on another target ({_profile_diff(data.get('profile') or {}, self.profile)}); "
                    "delete it, give another table (--table; --run-dir for a search), or pass --allow-other-profile to reuse it on purpose."
                )
            if path == self.shared_path:
                return  # a shared table of another profile is simply not used
        self.entries.update(data["entries"])
        if take_calibrations:
            for fp, c in (data.get("calibrations") or {}).items():
                if c.get("raw_version", 1) == RAW_VERSION:  # older points summed differently: calibrate again
                    calibration = Calibration(c["scale"], c["offset_us"], list(c.get("points", [])))
                    if calibration.points and all("parts" in p for p in calibration.points):
                        calibration.fit()  # the scales per part follow from the points
                    self.calibrations[fp] = calibration

    def to_dict(self, with_calibrations: bool = True) -> dict:
        return {
            "schema": SCHEMA,
            "profile": self.profile,
            "profile_id": self.profile_id,
            "entries": self.entries,
            "calibrations": {
                fp: {"scale": c.scale, "offset_us": c.offset_us, "part_scales": c.part_scales, "parts_offset_us": c.parts_offset_us,
                     "points": c.points, "raw_version": RAW_VERSION}
                for fp, c in self.calibrations.items()
            } if with_calibrations else {},
        }

    def save(self) -> None:
        self._saved_at = time.monotonic()
        self._unsaved = False
        try:
            atomic_write_json(self.path, self.to_dict())
        except OSError as exc:
            raise UserError(f"Cannot write the latency table {str(self.path)!r} ({exc.strerror or type(exc).__name__}); "
                            "give --table (or --run-dir for a search) a writable path.") from None
        if self.shared_path is not None:
            shared = {}
            if Path(self.shared_path).is_file():
                try:
                    data = json.loads(Path(self.shared_path).read_text())
                    if isinstance(data, dict) and data.get("profile") == self.profile and isinstance(data.get("entries"), dict):
                        shared = data["entries"]
                except (OSError, ValueError):
                    shared = {}
            merged = self.to_dict(with_calibrations=False)
            merged["entries"] = {**shared, **self.entries}
            atomic_write_json(self.shared_path, merged)

    # -- measurement -------------------------------------------------------------------
    def _measure_choice(self, choice: LayerChoiceShape | ElementwiseChoiceShape | JunctionShape) -> Measurement:
        if isinstance(choice, JunctionShape):
            return self._measure_junction(choice)
        if isinstance(choice, ElementwiseChoiceShape):
            model, inputs = _micro_elementwise(choice)
        else:
            model, inputs = _micro_model(choice, self.channel_multiple)
        return self.backend.measure(Measurable.from_module(model, inputs))

    def _measure_entry(self, choice: LayerChoiceShape | ElementwiseChoiceShape | JunctionShape) -> dict:
        """An entry's timing, with the reference's latency around it: the mean of a short
        timing just before (the previous entry's timing after, when that is recent) and one
        just after. On a shared machine the speed moves by a few percent within seconds
        (`benchmarks/entry_noise.py`); a reference timed next to the entry follows that,
        where the smoothed reference of `reference_us` cannot."""
        last, bracket_s = self._last_bracket, BRACKET_SHARE * self.backend.timing.min_time_s
        before = last[1] if last is not None and time.monotonic() - last[0] <= BRACKET_REUSE_S else self._time_reference(bracket_s)
        m = self._measure_choice(choice)
        after = self._time_reference(bracket_s)
        return {**m.to_dict(), "ref_us": (before + after) / 2}

    def _time_reference(self, min_time_s: float | None = None) -> float:
        """The reference's latency now, timed on one session kept for the table's life."""
        if self._reference_run is None:
            self._reference_run = self.backend.prepare(Measurable.from_module(*_micro_model(_reference_choice(), self.channel_multiple)))
            self.backend.time_prepared(self._reference_run, warmup=self.backend.timing.warmup, min_time_s=0.0)
        us = self.backend.time_prepared(self._reference_run, min_time_s=min_time_s).median_us
        self._last_bracket = (time.monotonic(), us)
        return us

    def _measure_junction(self, junction: JunctionShape) -> Measurement:
        """Half of (in + out) conversion = (2 t(one conv) - t(two convs) - t(an empty call)) / 2:
        a second conv in the same precision adds its compute but no conversion."""
        one, two = (Measurable.from_module(*_conv_chain(junction, n, self.channel_multiple)) for n in (1, 2))
        empty = Measurable.from_module(_Relu().eval(), (torch.zeros(1, 4),))
        t1, t2, t0 = (m.median_us for m in self.backend.measure_many([one, two, empty], rounds=3))
        half = max(0.0, (2 * t1 - t2 - t0) / 2)
        return Measurement(half, half, half, 1)

    def reference_us(self, refresh: bool = False) -> float:
        """The reference graph's latency now (re-timed when older than a few seconds).

        Shared machines drift by tens of percent between minutes; every entry keeps the
        reference measured beside it, and predictions rescale entries to the reference of
        the moment, so entries measured in other sessions stay comparable. The speed of the
        moment is the median of the reference's timings in the last minute: one timing
        follows second-to-second jitter that the next measurement does not share, and on
        this project's machines smoothing cut the median prediction error from 5.5% to 4.1%.

        The median is never of fewer than ``REFERENCE_MIN_TIMINGS`` timings: where the last
        minute holds fewer (the first prediction, a refresh, a minute without one), the
        missing ones are timed now, ``settle_pause_s`` apart. On the AVX2 EPYC one
        timing in 30 to 40 reads 15% fast, alone among its neighbours a second away; as the only
        timing of a `lut validate` run's first predictions, one put its first 4 of 40 minilm
        candidates 8-16% low (benchmarks/BENCHMARKS.md)."""
        now = time.monotonic()
        if refresh or self._reference is None or now - self._reference[0] > REFERENCE_MAX_AGE_S:
            recent = [] if refresh else [(t, v) for t, v in self._reference_history if now - t <= REFERENCE_WINDOW_S]
            recent.append((now, self._time_reference()))
            while len(recent) < REFERENCE_MIN_TIMINGS:
                time.sleep(self.settle_pause_s)
                recent.append((time.monotonic(), self._time_reference()))
            self._reference_history = recent[-7:]
            self._reference = (recent[-1][0], float(np.median([v for _, v in self._reference_history])))
        return self._reference[1]

    def freeze_reference(self, retime: bool = True) -> float:
        """Use one machine speed until the next explicit refresh: the reference timed now, or
        (``retime=False``) the speed the last predictions used, so that a calibration just
        fitted keeps predicting in the units its points were measured in."""
        us = self.reference_us(refresh=retime)
        self._reference = (float("inf"), us)
        return us

    def entry_us(self, choice: LayerChoiceShape | ElementwiseChoiceShape | JunctionShape) -> float:
        """The entry's latency at the machine speed of the current reference."""
        key = choice.key
        if key not in self.entries:
            if self.on_measure is not None:
                self.on_measure(key)
            self.entries[key] = self._measure_entry(choice)
            self.reference_us()  # the speed predictions rescale to, kept a few seconds
            self.measured_now += 1
            self._unsaved = True
            if time.monotonic() - self._saved_at >= self.checkpoint_s:  # a crash mid-table keeps what was measured
                self.save()
        entry = self.entries[key]
        us = float(entry["median_us"])
        ref = entry.get("ref_us")
        return us * (self._reference[1] / ref) if ref and self._reference is not None else us

    def reachable_choices(
        self, inventory: LayerInventory, space: SearchSpace
    ) -> list[LayerChoiceShape | ElementwiseChoiceShape | JunctionShape]:
        """Every distinct layer configuration some policy of ``space`` can produce."""
        cfg = space.config

        def counts(group: str | None, full: int) -> list[int]:
            domain = space.domains.get(f"prune/{group}") if group else None
            return sorted({kept_for(inventory.groups[group], r, cfg.channel_multiple) for r in domain}) if domain else [full]

        feeding = input_groups(inventory)

        def in_counts(layer: Layer) -> list[int]:
            if layer.groups != 1:
                return [layer.in_channels]
            removed = [[g.channels - c for c in counts(g.name, g.channels)] for g in feeding.get(layer.name, ())]
            return sorted({layer.in_channels - sum(r) for r in itertools.product(*removed)})

        def bits_of(name: str) -> tuple[int, ...]:
            return tuple(space.domains.get(f"bits/{name}", (32,)))

        def reachable_bits(name: str) -> list[int]:
            """The layer's own bit widths, and int8 where its neighbours can make it run as int8."""
            link = inventory.links.get(name)
            own = list(bits_of(name))
            if (link and link.reads and link.feeds and not link.feeds_other and 32 in own and 8 not in own
                    and all(8 in bits_of(n) for n in (link.reads, *link.feeds))):
                own.append(8)
            return own

        seen: dict[str, LayerChoiceShape | ElementwiseChoiceShape | JunctionShape] = {}
        for layer in inventory.layers.values():
            ins = in_counts(layer)
            outs = counts(layer.out_group, layer.out_channels)
            pairs = [(c, c) for c in outs] if is_depthwise(layer) else [(i, o) for i in ins for o in outs]
            for c_in, c_out in pairs:
                for bits in reachable_bits(layer.name):
                    for rank in space.domains.get(f"rank/{layer.name}", (1.0,)):
                        for decomp in space.decompositions(layer.name) if rank < 1.0 else ("svd",):
                            choice = LayerChoiceShape(layer, c_in, c_out, bits, rank, decomp)
                            seen.setdefault(choice.key, choice)
        for op in inventory.elementwise.values():
            group = inventory.groups.get(op.group) if op.group else None
            for c in counts(op.group, group.channels) if group else [op.shape[channel_axis(op.shape)]]:
                e = ElementwiseChoiceShape(op, c)
                seen.setdefault(e.key, e)
        by_name = {c.layer.name: c for c in seen.values() if isinstance(c, LayerChoiceShape)}
        for sides, _, _ in junction_groups(inventory):
            for name, side in sides:
                layer = by_name[name].layer
                channels = counts(layer.out_group, layer.out_channels) if side == "out" else in_counts(layer)
                for c in channels:
                    for bits in reachable_bits(name):
                        for b in {bits, 32}:  # a float sum's blocked layout meets the readers of its result
                            j = _side_junction(LayerChoiceShape(layer, c, c, b, 1.0), side)
                            seen.setdefault(j.key, j)
        return list(seen.values())

    def build(self, inventory: LayerInventory, space: SearchSpace, on_entry: Callable[[int, int], None] | None = None,
              remeasure: bool = False) -> int:
        """Measure every entry the space can reach that the table lacks (``remeasure``: every
        one, again, in one go); return how many. Entries measured together agree with each
        other better than entries gathered over earlier runs: on the AVX2 EPYC, a table built
        in one go predicted a search's 20 engines with a third of the spread of that search's
        own table (2.2% against 6.9%, `benchmarks/search_candidates_retimed.py`)."""
        reachable = self.reachable_choices(inventory, space)
        if remeasure:
            for choice in reachable:
                self.entries.pop(choice.key, None)
        missing = [c for c in reachable if c.key not in self.entries]
        for i, choice in enumerate(missing):
            self.entry_us(choice)
            if on_entry is not None:
                on_entry(i + 1, len(missing))
        return len(missing)

    def add_measurement(self, inventory: LayerInventory, policy: Policy, measured_us: float) -> None:
        """Add a whole-model measurement to the calibration of this model and refit it.

        Every exported candidate of a search is measured anyway; feeding those back makes
        later predictions of the same run better without measuring anything more."""
        calibration = self.calibrations.setdefault(inventory.fingerprint, Calibration())
        calibration.points.append(self._point(inventory, policy, measured_us))
        calibration.fit()
        self._unsaved = True

    def save_if_changed(self) -> None:
        """Save what was measured or learned since the last save: a search calls this before
        each trial's fine-tuning and after it learns from an engine, so a kill loses neither."""
        if self._unsaved:
            self.save()

    def _point(self, inventory: LayerInventory, policy: Policy, measured_us: float) -> dict:
        raw, share, parts = self.sums(inventory, policy)
        return {"policy": policy.digest, "raw_us": raw, "int_share": share, "parts": parts, "measured_us": float(measured_us),
                "ref_us": self._reference[1] if self._reference is not None else None}

    def raw_us(self, inventory: LayerInventory, policy: Policy) -> float:
        """Plain sum of the layers' table entries (measuring what is missing), at the
        machine speed of the current reference."""
        return self.raw_and_int_share(inventory, policy)[0]

    def raw_and_int_share(self, inventory: LayerInventory, policy: Policy) -> tuple[float, float]:
        """The sum, and the share of it in layers that run integer kernels (8 bits or fewer)."""
        return self.sums(inventory, policy)[:2]

    def sums(self, inventory: LayerInventory, policy: Policy) -> tuple[float, float, dict[str, float]]:
        """The sum, the share of it in layers that run integer kernels (8 bits or fewer), and
        the sum by part: layers per precision ("b32", "b8", ...), "elementwise" ops,
        "junctions" (the half conversions the layers' graphs paid, negative) and
        "conversions" (those the whole model still makes where precisions or layouts meet)."""
        self.reference_us()
        layers, elementwise, junctions = self.choices(inventory, policy)
        parts: dict[str, float] = {}
        integer = 0.0
        for c in layers:
            us = self.entry_us(c)
            parts[f"b{c.bits}"] = parts.get(f"b{c.bits}", 0.0) + us
            integer += us if c.bits <= 8 else 0.0
        if elementwise:
            parts["elementwise"] = sum(self.entry_us(c) for c in elementwise)
        if junctions:
            charged, converted = junction_costs_us(junctions, self.entry_us)
            parts["junctions"] = -charged
            if converted:
                parts["conversions"] = converted
        raw = sum(parts.values())
        return raw, (integer / raw if raw > 0 else 0.0), parts

    def choices(
        self, inventory: LayerInventory, policy: Policy
    ) -> tuple[list[LayerChoiceShape], list[ElementwiseChoiceShape], list[tuple[list[JunctionShape], bool, list[JunctionShape]]]]:
        """What a prediction of ``policy`` sums: its layers, its element-wise ops (less the
        adds a float conv computes), and per tensor the junctions of the convs meeting
        there, whether it needs the plain layout, and the side of a sum that writes it in
        the blocked or quantized layout (no layer's graph paid for it)."""
        layers = effective_layers(inventory, policy, self.channel_multiple)
        by_name = {c.layer.name: c for c in layers}
        add_bits = add_precisions(inventory, {name: c.bits for name, c in by_name.items()})
        junctions = []
        for sides, plain, adds in self._junction_groups(inventory):
            shapes = [_side_junction(by_name[name], side) for name, side in sides]
            sum_bits = [add_bits[a] for a in adds if add_bits[a]] if sides[0][1] == "in" else []  # a sum writes it
            unpaid = [replace(shapes[0], bits=sum_bits[0])] if sum_bits else []
            junctions.append((shapes, plain or any(not add_bits[a] for a in adds), unpaid))
        elementwise = [e for e in effective_elementwise(inventory, policy, self.channel_multiple) if add_bits.get(e.op.name) != 32]
        return layers, elementwise, junctions

    def _junction_groups(self, inventory: LayerInventory) -> list[Site]:
        if inventory.fingerprint not in self._junctions:
            self._junctions[inventory.fingerprint] = junction_groups(inventory)
        return self._junctions[inventory.fingerprint]

    def predict_us(self, inventory: LayerInventory, policy: Policy, local: bool = True) -> float:
        """Calibrated whole-model latency of the candidate ``policy`` describes, in microseconds
        (``local=False``: the fit alone, without the local correction)."""
        raw, share, parts = self.sums(inventory, policy)
        calibration = self.calibrations.get(inventory.fingerprint)
        if calibration is None:
            return raw
        # The whole prediction follows the machine's speed, not the sum alone: a fit's offset
        # is time too, and a ratio of two predictions should not move with the speed.
        speed = calibration.speed(self._reference[1] if self._reference is not None else None)
        raw, parts = raw / speed, {k: v / speed for k, v in parts.items()}
        return speed * (calibration.apply(raw, share, parts) if local else calibration.model(raw, parts))

    def fastest(self, inventory: LayerInventory, space: SearchSpace, passes: int = 2) -> tuple[Policy, float]:
        """The fastest policy the space offers by the table, and its predicted latency (us);
        see ``SearchSpace.fastest``."""
        return space.fastest(lambda p: self.predict_us(inventory, p), passes)

    def is_calibrated(self, inventory: LayerInventory) -> bool:
        return inventory.fingerprint in self.calibrations

    def calibrate(
        self,
        inventory: LayerInventory,
        space: SearchSpace,
        measure_policies: Callable[[list[Policy]], list[float]],
        n_random: int = 8,
        seed: int = 0,
        extra: Iterable[Policy] = (),
        budget_s: float = CALIBRATION_BUDGET_S,
        max_random: int = CALIBRATION_MAX_RANDOM,
    ) -> Calibration:
        """Fit the whole-model correction on the baseline, the most aggressive policy, the
        uniform precisions and random ones (`calibration_policies`); ``measure_policies``
        builds, exports and times policies (in us each), interleaved so that a passing
        disturbance of the machine cannot skew one of them.

        The first batch has ``n_random`` random models. While its cost per model says more
        fit in ``budget_s`` seconds, a second batch adds random models up to ``max_random``
        in all: small models are cheap to measure, and the line is pinned by more of them
        (`benchmarks/table_fit.py` on demo: 84% of held-out candidates within ±10% with 10
        models, 89% with 48). The second batch times the most aggressive policy again and its
        timings are scaled by that model's ratio between the batches, so the machine's drift
        between them does not move its points: a compressed model's speed moves with the
        random models', where a float baseline's can move apart (`benchmarks/drift_trackers.py`)."""
        extra = list(extra)
        n_drawn = max(n_random, max_random) if budget_s > 0 else n_random
        policies = calibration_policies(space, n_drawn, seed, extra)
        fixed = len(policies) - n_drawn  # baseline, most aggressive, uniform precisions, extra
        first, rest = policies[:fixed + n_random], policies[fixed + n_random:]
        t0 = time.perf_counter()
        measured = list(measure_policies(first))
        spent = time.perf_counter() - t0
        n_more = min(len(rest), int((budget_s - spent) / max(spent / len(first), 1e-6))) if rest and budget_s > spent else 0
        measured_policies = list(first)
        if n_more > 0:
            tracker_again, *timed = measure_policies([first[1], *rest[:n_more]])
            drift = measured[1] / tracker_again
            measured_policies += rest[:n_more]
            measured += [us * drift for us in timed]
        calibration = Calibration()
        for policy, us in zip(measured_policies, measured, strict=True):
            calibration.points.append(self._point(inventory, policy, us))
        calibration.fit()
        self.calibrations[inventory.fingerprint] = calibration
        return calibration


def calibration_policies(space: SearchSpace, n_random: int = 8, seed: int = 0, extra: Iterable[Policy] = ()) -> list[Policy]:
    """The whole models a calibration measures: the baseline, the most aggressive policy,
    every layer at each lower bit width (`SearchSpace.uniform_precisions`), ``extra``, and
    ``n_random`` random ones from their own stream (not the draws of `lut validate --seed`,
    which must be unseen).

    The uniform precisions pin each precision's scale where that precision is most of the
    model: random models mix precisions layer by layer, so on minilm their int8 layers were a
    tenth of their sums or less, and an all-int8 candidate, a search's first proposal at a tight
    budget, was predicted 30% slow."""
    rng = random.Random(f"calibration-{seed}")
    return [space.baseline(), space.extreme(), *space.uniform_precisions(), *extra, *(space.sample(rng) for _ in range(n_random))]


def check_table_path(path: Path, option: str = "--table") -> None:
    """A one-line error, before any measuring, when a table cannot be written at ``path``
    (which ``option`` names)."""
    if path.is_dir():
        raise UserError(f"Latency table path {str(path)!r} is a directory; give {option} a .json file path.")
    if path.exists() and not os.access(path, os.W_OK):
        raise UserError(f"Latency table {str(path)!r} is not writable; give {option} a writable file.")
    make_folder(path.parent, create=False, option=option)


def read_table_file(path: Path) -> dict:
    """A table file's contents, checked for what reading it relies on: a one-line error
    naming the file when it is unreadable or not a table of this version."""
    try:
        data = json.loads(path.read_text())
        if not isinstance(data, dict):
            raise ValueError(f"a JSON {type(data).__name__}, not an object")
        if data.get("schema") != SCHEMA:
            raise ValueError(f"schema {data.get('schema')!r}, not {SCHEMA}")
        if not isinstance(data.get("profile"), dict):
            raise ValueError("no target profile")
        entries = data.get("entries")
        if not isinstance(entries, dict) or not all(
                isinstance(e, dict) and isinstance(e.get("median_us"), (int, float)) for e in entries.values()):
            raise ValueError("entries without a median")
        calibrations = data.get("calibrations") or {}
        if not isinstance(calibrations, dict):
            raise ValueError("calibrations that are not a mapping")
        # Only calibrations of this version are read; older ones are measured again.
        calibrations = {fp: c for fp, c in calibrations.items() if not isinstance(c, dict) or c.get("raw_version", 1) == RAW_VERSION}
        if not all(
                isinstance(c, dict) and all(isinstance(c.get(k), (int, float)) for k in ("scale", "offset_us"))
                and isinstance(c.get("points", []), list) and isinstance(c.get("parts_offset_us", 0.0), (int, float))
                and isinstance(c.get("part_scales") or {}, dict)
                and all(isinstance(v, (int, float)) for v in (c.get("part_scales") or {}).values())
                for c in calibrations.values()):
            raise ValueError("a calibration without its scale and offset")
        if not all(isinstance(p, dict) and all(isinstance(p.get(k), (int, float)) for k in ("raw_us", "measured_us"))
                   and isinstance(p.get("parts", {}), dict) for c in calibrations.values() for p in c.get("points", [])):
            raise ValueError("a calibration point without its sum and measurement")
        data["calibrations"] = calibrations
    except (OSError, ValueError) as exc:
        raise UserError(f"Latency table {str(path)!r} is unreadable or corrupted ({exc}); delete it to re-measure.") from None
    return data


def _profile_diff(a: Mapping, b: Mapping) -> str:
    keys = sorted(k for k in set(a) | set(b) if a.get(k) != b.get(k))
    return ", ".join(f"{k}: {a.get(k)!r} != {b.get(k)!r}" for k in keys[:3]) or "unknown difference"
