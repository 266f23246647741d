"""Model -> LayerInventory: the compressible layers, their shapes, and their coupling groups.

Shapes, FLOPs and the activation fused after each layer come from a torch.fx trace with
shape propagation; channel coupling (residual adds, concatenations, depthwise convs) comes
from Torch-Pruning's dependency graph. The unit of pruning is the group: every layer whose
output channels are coupled loses the same channels.
"""

from __future__ import annotations

import hashlib
import json
import operator
from dataclasses import asdict, dataclass, field
from functools import cached_property
from typing import Iterable, Mapping, Sequence

import torch
import torch.fx
import torch_pruning as tp
from torch import nn
from torch.fx.passes.shape_prop import ShapeProp

from autocompress.errors import UserError

__all__ = ["AddLink", "Elementwise", "Group", "Layer", "LayerInventory", "LayerLink", "attention_modules", "build_dependency_graph", "build_inventory", "fused_output", "is_depthwise", "trace"]

LAYER_TYPES = (nn.Conv2d, nn.Linear)
_RELU_FUNCS = {torch.relu, nn.functional.relu, torch.relu_}
_GELU_FUNCS = {nn.functional.gelu}


@dataclass(frozen=True)
class Layer:
    """One compressible layer as the example inputs exercise it."""

    name: str
    kind: str  # "conv" or "linear"
    in_channels: int
    out_channels: int
    kernel_size: tuple[int, int]
    stride: tuple[int, int]
    padding: tuple[int, int]
    groups: int
    input_shape: tuple[int, ...]
    output_shape: tuple[int, ...]
    activation: str | None  # "relu" or "gelu" when the layer's only consumer (after BN) is one
    flops: int
    params: int
    in_group: str | None  # the group whose pruning removes this layer's input channels
    out_group: str | None  # the group whose pruning removes this layer's output channels
    is_output: bool  # feeds the model output without another layer in between


@dataclass(frozen=True)
class Group:
    """Layers whose output channels must be pruned together, and the layers consuming them."""

    name: str
    layers: tuple[str, ...]
    consumers: tuple[str, ...]
    channels: int
    prunable: bool
    reason: str = ""
    unit: int = 1  # channels are removed in blocks of this size (an attention head's width)


@dataclass(frozen=True)
class Elementwise:
    """An operation between layers whose size follows a group's channel count, so that
    pruning the group shrinks it too: a residual add (with its ReLU when one follows), or
    the core of multi-head attention (scores, softmax, weighted sum: it loses whole heads)."""

    name: str
    kind: str  # "add" or "attention"
    shape: tuple[int, ...]  # attention: the (batch, tokens, heads * head_dim) of its q, k and v
    activation: str | None
    group: str | None  # the group whose pruning sets its channel count
    head_dim: int = 0  # attention only
    # attention only: key positions the example inputs' mask blocks. Softmax over masked
    # scores runs about twice as long in ONNX Runtime as over unmasked ones.
    masked_keys: int = 0


@dataclass(frozen=True)
class LayerLink:
    """Which layers meet a layer's tensors directly (through a sole BatchNorm and ReLU only):
    the layer whose result it reads, the layers reading its result, and whether anything
    else reads it. A float layer between two int8 layers reads and writes quantized tensors,
    and ONNX Runtime then runs it as an integer kernel too. ``source`` names the tensor it
    reads (the graph node), so layers reading one tensor that no layer writes (a residual
    sum, the model input) are known to share it."""

    reads: str | None
    feeds: tuple[str, ...]
    feeds_other: bool
    source: str | None = None


@dataclass(frozen=True)
class AddLink:
    """What a residual add sums and where its result goes: ``inputs`` names the layer or
    add whose result reaches each operand through BatchNorm and ReLU only ("" for anything
    else), and ``result`` the graph node of its result (after a ReLU it is fused with),
    which the layers reading it name as their ``LayerLink.source``. ONNX Runtime adds into
    a float conv's output when every operand is a float conv's result, so whether the add
    and its layout conversions cost anything depends on the precisions around it."""

    inputs: tuple[str, ...]
    result: str
    other_readers: bool  # something besides layers reads the result (pooling, the output)


@dataclass(frozen=True)
class LayerInventory:
    layers: Mapping[str, Layer]
    groups: Mapping[str, Group]
    elementwise: Mapping[str, Elementwise] = field(default_factory=dict)
    links: Mapping[str, LayerLink] = field(default_factory=dict)  # not part of the fingerprint
    add_links: Mapping[str, AddLink] = field(default_factory=dict)  # keyed like ``elementwise``; not part of the fingerprint

    @cached_property
    def fingerprint(self) -> str:
        """Stable digest of the architecture (layer shapes and coupling), not of the weights;
        computed once (every prediction asks: on minilm, recomputing it took 95% of a
        prediction's 16 ms)."""
        blob = json.dumps(
            {"layers": [asdict(l) for l in self.layers.values()], "groups": [asdict(g) for g in self.groups.values()],
             "elementwise": [{k: v for k, v in asdict(e).items() if k != "masked_keys" or v} for e in self.elementwise.values()]},
            sort_keys=True,
        )
        return hashlib.sha256(blob.encode()).hexdigest()[:16]

    @property
    def total_flops(self) -> int:
        return sum(l.flops for l in self.layers.values())

    def prunable_groups(self) -> list[Group]:
        return [g for g in self.groups.values() if g.prunable]


class _Tracer(torch.fx.Tracer):
    def __init__(self, leaf_types: tuple[type, ...]) -> None:
        super().__init__()
        self.leaf_types = leaf_types

    def is_leaf_module(self, m: nn.Module, module_qualified_name: str) -> bool:
        return isinstance(m, self.leaf_types) or super().is_leaf_module(m, module_qualified_name)


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def _failing_module(model: nn.Module, exc: BaseException) -> str:
    """Where in the user's code tracing failed: the innermost forward of a submodule of
    ``model`` on the traceback, as "layer 'name' (Class, file.py:line: `source`)"."""
    import linecache
    import os

    names = {id(m): n for n, m in model.named_modules()}
    torch_dir = os.path.dirname(torch.__file__)
    found = ""
    tb = exc.__traceback__
    while tb is not None:
        frame = tb.tb_frame
        owner = frame.f_locals.get("self")
        if id(owner) in names and not frame.f_code.co_filename.startswith(torch_dir):
            source = linecache.getline(frame.f_code.co_filename, tb.tb_lineno).strip()
            name = names[id(owner)] or "(the model itself)"
            found = (f"layer {name!r} ({type(owner).__name__}, {os.path.basename(frame.f_code.co_filename)}:{tb.tb_lineno}"
                     + (f": `{source}`" if source else "") + ")")
        tb = tb.tb_next
    return found


def trace(model: nn.Module, leaf_types: tuple[type, ...] = ()) -> torch.fx.GraphModule:
    """Symbolically trace ``model`` (``leaf_types`` are kept as single calls), or raise a
    UserError that names the layer and source line that failed, and why."""
    try:
        tracer = _Tracer(leaf_types)
        graph = tracer.trace(model)
        name = model.__class__.__name__ if isinstance(model, nn.Module) else model.__name__
        return torch.fx.GraphModule(tracer.root, graph, name)
    except Exception as exc:  # fx raises many types; all mean "not traceable"
        where = _failing_module(model, exc) if isinstance(model, nn.Module) else ""
        control_flow = "control flow" in str(exc) or "iterate" in str(exc)
        why = ("its forward branches or loops on tensor values (data-dependent Python control flow), which a symbolic "
               "trace cannot follow; compute both branches and select with torch.where, or move the condition out of forward"
               if control_flow else "rewrite that forward with plain tensor operations")
        raise UserError(
            f"The model cannot be traced by torch.fx{' at ' + where if where else ''} "
            f"({type(exc).__name__}: {_first_line(exc)}): {why}."
        ) from None


def _masked_keys(model: nn.Module, attention: Mapping[str, nn.Module], example_inputs: tuple[torch.Tensor, ...]) -> dict[str, int]:
    """Per attention block, how many key positions the additive mask it receives on the
    example inputs blocks (a large negative bias) in the first row of the batch."""
    seen: dict[str, int] = {}

    def hook(name: str):
        def record(module: nn.Module, args: tuple, kwargs: dict) -> None:
            bias = kwargs.get("mask_bias", args[1] if len(args) > 1 else None)
            if isinstance(bias, torch.Tensor) and bias.dim() >= 1 and bias.numel() > 0:
                seen[name] = int((bias.reshape(-1, bias.shape[-1])[0] < -1.0).sum())
        return record

    handles = [m.register_forward_pre_hook(hook(n), with_kwargs=True) for n, m in attention.items()]
    try:
        with torch.no_grad():
            model(*example_inputs)
    finally:
        for h in handles:
            h.remove()
    return seen


def attention_modules(model: nn.Module) -> dict[str, nn.Module]:
    """Multi-head attention blocks whose heads can be pruned: modules with ``num_heads``,
    ``head_dim`` and ``nn.Linear`` projections ``q``, ``k``, ``v`` and ``o``."""
    found = {}
    for name, m in model.named_modules():
        if all(isinstance(getattr(m, p, None), nn.Linear) for p in "qkvo") and isinstance(getattr(m, "head_dim", None), int):
            found[name] = m
    return found


def _is_grouped_not_depthwise(module: nn.Module) -> bool:
    groups = getattr(module, "groups", 1)
    return groups > 1 and not (groups == module.in_channels == module.out_channels)


def is_depthwise(layer: "Layer") -> bool:
    return layer.kind == "conv" and layer.groups > 1 and layer.groups == layer.in_channels == layer.out_channels


def build_dependency_graph(model: nn.Module, example_inputs: tuple[torch.Tensor, ...]) -> tp.DependencyGraph:
    """Torch-Pruning's dependency graph (it traces with autograd, so grad must be enabled)."""
    with torch.enable_grad():
        return tp.DependencyGraph().build_dependency(model, example_inputs=list(example_inputs))


def _is_relu(node: torch.fx.Node, modules: Mapping[str, nn.Module]) -> bool:
    if node.op == "call_function" and node.target in _RELU_FUNCS:
        return True
    if node.op == "call_method" and node.target in ("relu", "relu_"):
        return True
    return node.op == "call_module" and isinstance(modules.get(str(node.target)), nn.ReLU)


def _is_gelu(node: torch.fx.Node, modules: Mapping[str, nn.Module]) -> bool:
    if node.op == "call_function" and node.target in _GELU_FUNCS:
        return node.kwargs.get("approximate", "none") == "none"
    return node.op == "call_module" and isinstance(modules.get(str(node.target)), nn.GELU) and modules[str(node.target)].approximate == "none"


def fused_activation(node: torch.fx.Node, modules: Mapping[str, nn.Module]) -> str | None:
    """The activation a runtime executes together with the layer (after a sole BatchNorm):
    'relu' or 'gelu' (ONNX Runtime fuses MatMul + bias + Gelu), else None. Latency table
    entries are measured with it, since it shrinks with the layer's pruned width."""
    point, activation = fused_output(node, modules)
    if activation is None and len(point.users) == 1 and _is_gelu(next(iter(point.users)), modules):
        return "gelu"
    return activation


def fused_output(node: torch.fx.Node, modules: Mapping[str, nn.Module]) -> tuple[torch.fx.Node, str | None]:
    """Where a layer's result leaves its fused group (after a sole BatchNorm, then a sole
    ReLU), and 'relu' when that ReLU is part of the group."""
    point = node
    if len(point.users) == 1:
        (user,) = point.users
        if user.op == "call_module" and isinstance(modules.get(str(user.target)), nn.modules.batchnorm._BatchNorm):
            point = user
    if len(point.users) == 1:
        (user,) = point.users
        if _is_relu(user, modules):
            return user, "relu"
    return point, None


def _feeds_output(node: torch.fx.Node, modules: Mapping[str, nn.Module]) -> bool:
    seen, stack = set(), list(node.users)
    while stack:
        n = stack.pop()
        if n in seen:
            continue
        seen.add(n)
        if n.op == "output":
            return True
        if n.op == "call_module" and isinstance(modules.get(str(n.target)), LAYER_TYPES):
            continue
        stack.extend(n.users)
    return False


def _pair(v: int | Sequence[int]) -> tuple[int, int]:
    return (int(v), int(v)) if isinstance(v, int) else (int(v[0]), int(v[1]))


def _propagate_shapes(gm: torch.fx.GraphModule, example_inputs: tuple[torch.Tensor, ...]) -> None:
    """Record every node's output shape, or raise a UserError naming the layer that
    rejects the example inputs, the shape it expects and the shape it got."""
    import contextlib
    import io

    try:
        with torch.no_grad(), contextlib.redirect_stderr(io.StringIO()):  # ShapeProp prints a traceback
            ShapeProp(gm).propagate(*example_inputs)
        return
    except Exception as exc:
        cause = exc.__cause__ or exc
        shapes = [tuple(t.shape) for t in example_inputs]
        failing = next((n for n in gm.graph.nodes if n.op.startswith("call") and "tensor_meta" not in n.meta), None)
    where = ""
    if failing is not None:
        inputs = [a for a in failing.args if isinstance(a, torch.fx.Node)]
        got = None
        if inputs:
            first = inputs[0]
            meta = first.meta.get("tensor_meta")
            if meta is not None and hasattr(meta, "shape"):
                got = tuple(meta.shape)
            elif first.op == "placeholder":
                placeholders = [n for n in gm.graph.nodes if n.op == "placeholder"]
                got = shapes[placeholders.index(first)] if placeholders.index(first) < len(shapes) else None
        module = gm.get_submodule(failing.target) if failing.op == "call_module" else None
        if isinstance(module, nn.Linear):
            expects = f"expects inputs whose last dimension is {module.in_features}"
        elif isinstance(module, nn.Conv2d):
            expects = f"expects inputs of shape (N, {module.in_channels}, H, W)"
        else:
            expects = ""
        label = f"layer {failing.target!r} ({type(module).__name__})" if module is not None else f"operation {failing.name!r}"
        where = f" at {label}" + (f", which {expects}" if expects else "") + (f" and got {got}" if got is not None else "")
    raise UserError(
        f"The model fails on its example inputs of shape {shapes}{where} ({type(cause).__name__}: {_first_line(cause)}); "
        "give example_inputs the shape one deployment call uses."
    ) from None


def build_inventory(
    model: nn.Module, example_inputs: tuple[torch.Tensor, ...], ignored_layers: Iterable[str] = ()
) -> LayerInventory:
    """Find every Conv2d and Linear layer of ``model`` and group them by channel coupling."""
    ignored = set(ignored_layers)
    model = model.eval()
    modules = dict(model.named_modules())
    unknown = sorted(ignored - set(modules))
    if unknown:
        raise UserError(f"ignored_layers names modules the model does not have: {unknown}; use names from model.named_modules().")
    gm = trace(model)
    _propagate_shapes(gm, example_inputs)
    gm_modules = dict(gm.named_modules())

    # Coupling groups from Torch-Pruning's dependency graph.
    name_of = {m: n for n, m in model.named_modules()}
    dg = build_dependency_graph(model, example_inputs)
    out_group: dict[str, str] = {}
    in_group: dict[str, str] = {}
    groups: dict[str, Group] = {}
    output_layers = set()
    for node in gm.graph.nodes:
        if node.op == "call_module" and isinstance(gm_modules.get(str(node.target)), LAYER_TYPES):
            if _feeds_output(node, gm_modules):
                output_layers.add(str(node.target))
    attention = attention_modules(model)
    head_layers = {f"{a}.{p}": a for a in attention for p in "qkv"}
    for group in dg.get_all_groups(root_module_types=list(LAYER_TYPES)):
        outs, ins = [], []
        norms = any(isinstance(dep.target.module, (nn.LayerNorm, nn.Embedding)) for dep, _ in group)
        channels = len(group[0][1])
        for dep, _idxs in group:
            module = dep.target.module
            if not isinstance(module, LAYER_TYPES):
                continue
            name = name_of[module]
            fn = dep.handler
            if fn in (tp.prune_conv_out_channels, tp.prune_linear_out_channels, tp.prune_depthwise_conv_out_channels):
                outs.append(name)
            elif fn in (tp.prune_conv_in_channels, tp.prune_linear_in_channels, tp.prune_depthwise_conv_in_channels):
                ins.append(name)
        if not outs:
            continue
        gname = outs[0]
        outs, ins = sorted(set(outs)), sorted(set(ins))
        unit = 1
        if set(outs) & set(head_layers):  # q, k, v: whole heads go, the output projection follows
            owner = head_layers[next(n for n in outs if n in head_layers)]
            gname, unit = f"{owner}.heads", attention[owner].head_dim
            outs = [f"{owner}.{p}" for p in "qkv"]
            ins, channels = [f"{owner}.o"], attention[owner].num_heads * unit
        reason = ""
        if set(outs) & set(head_layers) and len(outs) != 3:
            reason = "attention projections coupled beyond their own block"
        elif output_layers & set(outs):
            reason = "produces the model output"
        elif ignored & (set(outs) | set(ins)):
            reason = "touches an ignored layer"
        elif any(_is_grouped_not_depthwise(modules[n]) for n in outs + ins):
            reason = "grouped (not depthwise) convolution"
        elif norms and unit == 1:
            reason = "residual width of a transformer (shared with LayerNorm and embeddings)"
        groups[gname] = Group(gname, tuple(outs), tuple(ins), channels, prunable=not reason, reason=reason, unit=unit)
        for n in outs:
            out_group[n] = gname
        for n in ins:
            in_group[n] = gname

    layers: dict[str, Layer] = {}
    for node in gm.graph.nodes:
        if node.op != "call_module":
            continue
        name = str(node.target)
        module = gm_modules.get(name)
        if not isinstance(module, LAYER_TYPES) or name in ignored:
            continue
        in_meta = node.args[0].meta.get("tensor_meta") if node.args else None
        out_meta = node.meta.get("tensor_meta")
        if in_meta is None or out_meta is None:
            continue
        in_shape, out_shape = tuple(in_meta.shape), tuple(out_meta.shape)
        params = sum(p.numel() for p in module.parameters())
        if isinstance(module, nn.Conv2d):
            k, s, p = _pair(module.kernel_size), _pair(module.stride), _pair(module.padding)
            macs = out_shape[0] * out_shape[2] * out_shape[3] * module.out_channels * (module.in_channels // module.groups) * k[0] * k[1]
            layers[name] = Layer(
                name, "conv", module.in_channels, module.out_channels, k, s, p, module.groups, in_shape, out_shape,
                fused_activation(node, gm_modules), 2 * macs, params, in_group.get(name), out_group.get(name),
                name in output_layers,
            )
        else:
            rows = int(torch.tensor(in_shape[:-1]).prod()) if len(in_shape) > 1 else 1
            macs = rows * module.in_features * module.out_features
            layers[name] = Layer(
                name, "linear", module.in_features, module.out_features, (1, 1), (1, 1), (0, 0), 1, in_shape, out_shape,
                fused_activation(node, gm_modules), 2 * macs, params, in_group.get(name), out_group.get(name),
                name in output_layers,
            )
    if not layers:
        raise UserError("The model has no Conv2d or Linear layer that its example inputs reach; nothing to compress.")
    elementwise = _elementwise_ops(gm, gm_modules, layers)
    masked = _masked_keys(model, attention, example_inputs) if attention else {}
    for owner, module in attention.items():  # the attention core shrinks with head pruning
        q = layers.get(f"{owner}.q")
        if q is not None:
            group = f"{owner}.heads" if f"{owner}.heads" in groups else None
            elementwise[f"{owner}.core"] = Elementwise(f"{owner}.core", "attention", q.output_shape, None, group, module.head_dim,
                                                       masked.get(owner, 0))
    return LayerInventory(layers=layers, groups=groups, elementwise=elementwise, links=_layer_links(gm, gm_modules, layers),
                          add_links=_add_links(gm, gm_modules, layers, elementwise))


def _layer_links(gm: torch.fx.GraphModule, modules: Mapping[str, nn.Module], layers: Mapping[str, Layer]) -> dict[str, LayerLink]:
    nodes = {str(n.target): n for n in gm.graph.nodes if n.op == "call_module" and str(n.target) in layers}
    layer_nodes = set(nodes.values())
    point_of = {name: fused_output(node, modules)[0] for name, node in nodes.items()}
    writer = {point: name for name, point in point_of.items()}
    links = {}
    for name, node in nodes.items():
        users = point_of[name].users
        feeds = tuple(sorted(str(u.target) for u in users if u in layer_nodes))
        source = node.args[0] if node.args else None
        node_source = source if isinstance(source, torch.fx.Node) else None
        links[name] = LayerLink(writer.get(node_source) if node_source is not None else None, feeds,
                                any(u not in layer_nodes for u in users), node_source.name if node_source is not None else None)
    return links


def _add_links(
    gm: torch.fx.GraphModule, modules: Mapping[str, nn.Module], layers: Mapping[str, Layer], elementwise: Mapping[str, Elementwise]
) -> dict[str, AddLink]:
    layer_nodes = {n for n in gm.graph.nodes if n.op == "call_module" and str(n.target) in layers}

    def producer(node: object) -> str:
        """The layer or add whose result reaches ``node`` through BatchNorm and ReLU only."""
        while isinstance(node, torch.fx.Node):
            if node in layer_nodes:
                return str(node.target)
            if node.name in elementwise:
                return node.name
            bn = node.op == "call_module" and isinstance(modules.get(str(node.target)), (nn.modules.batchnorm._BatchNorm, nn.ReLU))
            if not (bn or _is_relu(node, modules)):
                return ""
            node = node.args[0] if node.args else None
        return ""

    links = {}
    for node in gm.graph.nodes:
        if node.name not in elementwise or elementwise[node.name].kind != "add":
            continue
        result = node
        if len(node.users) == 1 and _is_relu(next(iter(node.users)), modules):
            result = next(iter(node.users))
        links[node.name] = AddLink(tuple(producer(a) for a in node.args if isinstance(a, torch.fx.Node)), result.name,
                                   any(u not in layer_nodes for u in result.users))
    return links


def _source_layer(node: torch.fx.Node, modules: Mapping[str, nn.Module], layers: Mapping[str, Layer]) -> str | None:
    """The layer whose output reaches ``node`` through BatchNorm, ReLU or other adds only."""
    seen = set()
    stack = [node]
    while stack:
        n = stack.pop()
        if not isinstance(n, torch.fx.Node) or n in seen:
            continue
        seen.add(n)
        if n.op == "call_module" and str(n.target) in layers:
            return str(n.target)
        if n.op == "call_module" and isinstance(modules.get(str(n.target)), (nn.modules.batchnorm._BatchNorm, nn.ReLU)):
            stack.append(n.args[0])
        elif _is_relu(n, modules) or (n.op == "call_function" and n.target in (operator.add, torch.add)):
            stack.extend(a for a in n.args if isinstance(a, torch.fx.Node))
    return None


def _elementwise_ops(gm: torch.fx.GraphModule, modules: Mapping[str, nn.Module], layers: Mapping[str, Layer]) -> dict[str, Elementwise]:
    ops: dict[str, Elementwise] = {}
    for node in gm.graph.nodes:
        if not (node.op == "call_function" and node.target in (operator.add, torch.add)):
            continue
        args = [a for a in node.args if isinstance(a, torch.fx.Node)]
        meta = node.meta.get("tensor_meta")
        if len(args) != 2 or meta is None or len(meta.shape) < 2:
            continue
        source = next((s for s in (_source_layer(a, modules, layers) for a in args) if s), None)
        activation = "relu" if len(node.users) == 1 and _is_relu(next(iter(node.users)), modules) else None
        ops[node.name] = Elementwise(node.name, "add", tuple(meta.shape), activation, layers[source].out_group if source else None)
    return ops
