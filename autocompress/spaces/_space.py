from __future__ import annotations

import hashlib
import json
import random
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping

from autocompress.inventory import Group, Layer, LayerInventory

__all__ = ["BITS_CHOICES", "DECOMPOSITIONS", "Policy", "SearchSpace", "SpaceConfig", "build_space", "is_spatial_conv", "kept_channels", "kept_for", "tucker_ranks"]

# 32: float32; 16: float16; 8: int8 (weights per channel, activations per tensor: static
# ranges, or per call over token sequences); 4: 4-bit weights in blocks (Linear layers only).
BITS_CHOICES = (32, 16, 8, 4)
IMPORTANCE_CRITERIA = ("l1", "l2", "taylor")
# How a kh x kw conv is factorized at a rank ratio below 1: "svd" (spatial SVD, kh x 1 then
# 1 x kw) or "tucker2" (1x1, kh x kw, 1x1). Linear and 1x1 layers always take a plain SVD.
DECOMPOSITIONS = ("svd", "tucker2")
FULL_RANK = 1.0


def kept_channels(channels: int, prune_ratio: float, multiple: int) -> int:
    """Channels left after pruning ``prune_ratio`` of ``channels``, rounded to ``multiple``.

    Rounding to a multiple keeps shapes on the fast paths of real kernels; at least one
    multiple (or all channels, if fewer) is always kept.
    """
    if not 0.0 <= prune_ratio < 1.0:
        raise ValueError(f"`prune_ratio` must be in [0, 1), but got {prune_ratio!r}.")
    if channels <= multiple or prune_ratio == 0.0:
        return channels
    kept = round(channels * (1.0 - prune_ratio) / multiple) * multiple
    return int(min(channels, max(multiple, kept)))


def kept_for(group: Group, prune_ratio: float, multiple: int) -> int:
    """Channels a group keeps: rounded to ``multiple`` channels, or to whole units (attention
    heads) when the group prunes in units."""
    if group.unit > 1:
        return group.unit * kept_channels(group.channels // group.unit, prune_ratio, 1)
    return kept_channels(group.channels, prune_ratio, multiple)


def rank_for(layer_in: int, layer_out: int, ratio: float, multiple: int) -> int:
    """Rank used for a factorized layer: ``ratio`` of min(in, out), rounded to ``multiple``."""
    base = min(layer_in, layer_out)
    return int(max(min(multiple, base), round(base * ratio / multiple) * multiple))


def tucker_ranks(layer_in: int, layer_out: int, ratio: float, multiple: int) -> tuple[int, int]:
    """Tucker-2 ranks (input side, output side) of a conv: ``ratio`` of each channel count,
    rounded to ``multiple``."""
    return rank_for(layer_in, layer_in, ratio, multiple), rank_for(layer_out, layer_out, ratio, multiple)


def is_spatial_conv(layer: Layer) -> bool:
    """A kh x kw conv (kh, kw > 1) of one group: where Tucker-2 is an alternative to spatial SVD."""
    return layer.kind == "conv" and layer.groups == 1 and min(layer.kernel_size) > 1


@dataclass(frozen=True)
class SpaceConfig:
    """Which choices the search may make. Ratios are fractions of the original width."""

    prune_ratios: tuple[float, ...] = (0.0, 0.25, 0.5, 0.75)
    bits: tuple[int, ...] = (32, 8, 4)
    rank_ratios: tuple[float, ...] = (1.0, 0.5, 0.25)
    channel_multiple: int = 8
    importance: str = "l1"  # which channels pruning removes: "l1", "l2" or "taylor" (data-aware)
    decompositions: tuple[str, ...] = ("svd",)  # for kh x kw convs: "svd" (spatial), "tucker2", or both to search

    def __post_init__(self) -> None:
        for r in self.prune_ratios:
            if not 0.0 <= r < 1.0:
                raise ValueError(f"prune ratios must be in [0, 1), but got {r!r}.")
        for b in self.bits:
            if b not in BITS_CHOICES:
                raise ValueError(f"bit widths must be among {list(BITS_CHOICES)}, but got {b!r}.")
        for r in self.rank_ratios:
            if not 0.0 < r <= 1.0:
                raise ValueError(f"rank ratios must be in (0, 1], but got {r!r}.")
        if self.importance not in IMPORTANCE_CRITERIA:
            raise ValueError(f"importance must be one of {list(IMPORTANCE_CRITERIA)}, but got {self.importance!r}.")
        if self.channel_multiple < 1:
            raise ValueError(f"`channel_multiple` must be >= 1, but got {self.channel_multiple!r}.")
        for d in self.decompositions:
            if d not in DECOMPOSITIONS:
                raise ValueError(f"decompositions must be among {list(DECOMPOSITIONS)}, but got {d!r}.")
        if not self.prune_ratios or not self.bits or not self.rank_ratios or not self.decompositions:
            raise ValueError("prune ratios, bits, rank ratios and decompositions each need at least one value.")


@dataclass(frozen=True)
class Policy:
    """One candidate: pruning ratio per group, bit width and rank ratio per layer, and for
    factorized kh x kw convs the decomposition.

    Groups and layers absent from the mappings are left as they are (ratio 0, fp32, full
    rank, spatial SVD). ``digest`` is stable across processes, for caching and de-duplication.
    """

    prune: Mapping[str, float] = field(default_factory=dict)
    bits: Mapping[str, int] = field(default_factory=dict)
    rank: Mapping[str, float] = field(default_factory=dict)
    decomp: Mapping[str, str] = field(default_factory=dict)  # layer -> "tucker2" (factorized layers only)

    def __post_init__(self) -> None:
        # Freeze canonical, sorted copies so equal policies compare and hash equal.
        object.__setattr__(self, "prune", dict(sorted((k, float(v)) for k, v in self.prune.items())))
        object.__setattr__(self, "bits", dict(sorted((k, int(v)) for k, v in self.bits.items())))
        object.__setattr__(self, "rank", dict(sorted((k, float(v)) for k, v in self.rank.items())))
        for name, how in self.decomp.items():
            if how not in DECOMPOSITIONS:
                raise ValueError(f"decomposition of {name!r} must be among {list(DECOMPOSITIONS)}, but got {how!r}.")
        # Only a factorized layer has a decomposition, and spatial SVD is the default.
        object.__setattr__(self, "decomp", dict(sorted(
            (k, str(v)) for k, v in self.decomp.items() if v != "svd" and self.rank.get(k, FULL_RANK) < FULL_RANK)))

    def prune_ratio(self, group: str | None) -> float:
        return self.prune.get(group, 0.0) if group else 0.0

    def bits_of(self, layer: str) -> int:
        return self.bits.get(layer, 32)

    def rank_ratio(self, layer: str) -> float:
        return self.rank.get(layer, FULL_RANK)

    def decomposition(self, layer: str) -> str:
        return self.decomp.get(layer, "svd")

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"prune": dict(self.prune), "bits": dict(self.bits), "rank": dict(self.rank)}
        if self.decomp:  # absent when empty, so policies without Tucker-2 keep their digests
            out["decomp"] = dict(self.decomp)
        return out

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "Policy":
        unknown = set(data) - {"prune", "bits", "rank", "decomp"}
        if unknown:
            raise ValueError(f"unknown policy keys {sorted(unknown)}; valid keys are ['bits', 'decomp', 'prune', 'rank'].")
        return cls(dict(data.get("prune", {})), dict(data.get("bits", {})), dict(data.get("rank", {})),
                   dict(data.get("decomp", {})))

    @property
    def digest(self) -> str:
        return hashlib.sha256(json.dumps(self.to_dict(), sort_keys=True).encode()).hexdigest()[:16]

    def __hash__(self) -> int:
        return hash(self.digest)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Policy) and self.to_dict() == other.to_dict()


@dataclass(frozen=True)
class SearchSpace:
    """Discrete domains, one per searchable dimension, named ``prune/<group>``,
    ``bits/<layer>``, ``rank/<layer>`` and ``decomp/<layer>`` (the flat form searchers see).
    A ``decomp`` dimension matters only where its layer's rank is below 1."""

    inventory: LayerInventory
    config: SpaceConfig
    domains: Mapping[str, tuple]

    def to_params(self, policy: Policy) -> dict[str, Any]:
        params: dict[str, Any] = {}
        for name in self.domains:
            kind, target = name.split("/", 1)
            if kind == "prune":
                params[name] = policy.prune_ratio(target)
            elif kind == "bits":
                params[name] = policy.bits_of(target)
            elif kind == "decomp":
                params[name] = policy.decomposition(target)
            else:
                params[name] = policy.rank_ratio(target)
        return params

    def from_params(self, params: Mapping[str, Any]) -> Policy:
        prune, bits, rank, decomp = {}, {}, {}, {}
        for name, domain in self.domains.items():
            if name not in params:
                raise KeyError(f"parameter {name!r} missing; a policy needs every dimension of the space.")
            value = params[name]
            if value not in domain:
                raise ValueError(f"{name} = {value!r} is outside its domain {list(domain)}.")
            kind, target = name.split("/", 1)
            if kind == "prune" and value:
                prune[target] = value
            elif kind == "bits" and value != 32:
                bits[target] = value
            elif kind == "rank" and value != FULL_RANK:
                rank[target] = value
            elif kind == "decomp":
                decomp[target] = value
        for name in rank:  # a layer without a decomp dimension takes its one decomposition
            if f"decomp/{name}" not in self.domains:
                decomp[name] = self.decompositions(name)[0]
        return Policy(prune, bits, rank, decomp)

    def decompositions(self, layer: str) -> tuple[str, ...]:
        """The decompositions ``layer`` can take when factorized: its ``decomp/`` domain, or
        the one the config allows (Tucker-2 for kh x kw convs only when it alone is allowed)."""
        domain = self.domains.get(f"decomp/{layer}")
        if domain is not None:
            return tuple(domain)
        only_tucker = self.config.decompositions == ("tucker2",) and is_spatial_conv(self.inventory.layers[layer])
        return ("tucker2",) if only_tucker else ("svd",)

    def sample(self, rng: random.Random) -> Policy:
        return self.from_params({n: rng.choice(d) for n, d in self.domains.items()})

    def baseline(self) -> Policy:
        return Policy()

    def extreme(self) -> Policy:
        """Most aggressive choice everywhere: highest pruning, fewest bits, lowest rank."""
        params = {n: (max(d) if n.startswith("prune/") else min(d)) for n, d in self.domains.items()}
        return self.from_params(params)

    def uniform_precisions(self) -> list[Policy]:
        """Per bit width below 32 that at least half the layers with a choice of bit width can
        take: those layers at that width, nothing pruned or factorized (widest first)."""
        dims = [n for n in self.domains if n.startswith("bits/")]
        base = self.to_params(self.baseline())
        out = []
        for width in sorted({v for n in dims for v in self.domains[n]} - {32}, reverse=True):
            able = [n for n in dims if width in self.domains[n]]
            if 2 * len(able) >= len(dims):
                out.append(self.from_params({**base, **{n: width for n in able}}))
        return out

    def fastest(self, latency_us: Callable[[Policy], float], passes: int = 2) -> tuple[Policy, float]:
        """The fastest policy by ``latency_us`` (a table's prediction), and its latency.

        Latency is not monotone in the choices (int8 on a few channels can be slower than
        fp32; 4-bit MatMulNBits is slower than int8 at 32 rows on a CPU with AMX), so the most
        aggressive policy is only one start of a coordinate descent that tries every value of
        every dimension. One flipped layer among others of one precision pays the conversions
        on both sides, so the descent also starts from the most aggressive policy at each
        single bit width; the fastest end point wins.
        """
        extreme = self.to_params(self.extreme())
        widths = sorted({v for n, d in self.domains.items() if n.startswith("bits/") for v in d})
        starts = [extreme] + [{n: (w if n.startswith("bits/") and w in self.domains[n] else v) for n, v in extreme.items()}
                              for w in widths]
        found: list[tuple[float, dict[str, Any]]] = []
        for start in {tuple(sorted(p.items())): p for p in starts}.values():
            params, best = start, latency_us(self.from_params(start))
            for _ in range(passes):
                improved = False
                for name, domain in self.domains.items():
                    for value in domain:
                        if value == params[name]:
                            continue
                        trial = {**params, name: value}
                        us = latency_us(self.from_params(trial))
                        if us < best:
                            params, best, improved = trial, us, True
                if not improved:
                    break
            found.append((best, params))
        best, params = min(found, key=lambda f: f[0])
        return self.from_params(params), best

    def contains(self, policy: Policy) -> bool:
        try:
            return self.from_params(self.to_params(policy)) == policy
        except (KeyError, ValueError):
            return False

    @property
    def size(self) -> int:
        n = 1
        for d in self.domains.values():
            n *= len(d)
        return n


def _rank_choices(layer: Layer, config: SpaceConfig) -> tuple[float, ...]:
    """Rank ratios that cut the layer's FLOPs by at least a quarter at full width."""
    if layer.groups != 1 or min(layer.in_channels, layer.out_channels) < 2 * config.channel_multiple:
        return (FULL_RANK,)
    kh, kw = layer.kernel_size
    choices = [FULL_RANK]
    for ratio in sorted(set(config.rank_ratios) - {FULL_RANK}, reverse=True):
        r = rank_for(layer.in_channels, layer.out_channels, ratio, config.channel_multiple)
        if layer.kind == "conv" and kh > 1 and kw > 1:
            costs = []
            if "svd" in config.decompositions:  # spatial SVD kx1 then 1xk
                costs.append(kh * layer.in_channels * r + kw * r * layer.out_channels)
            if "tucker2" in config.decompositions:  # 1x1, kxk, 1x1
                r_in, r_out = tucker_ranks(layer.in_channels, layer.out_channels, ratio, config.channel_multiple)
                costs.append(layer.in_channels * r_in + kh * kw * r_in * r_out + r_out * layer.out_channels)
            cost = min(costs)
            full = kh * kw * layer.in_channels * layer.out_channels
        else:
            cost = r * (layer.in_channels + layer.out_channels)
            full = layer.in_channels * layer.out_channels
        if cost <= 0.75 * full:
            choices.append(ratio)
    return tuple(choices)


def bits_choices(layer: Layer, config: SpaceConfig) -> tuple[int, ...]:
    """The bit widths ``layer`` can take: 4-bit weights are for Linear layers only."""
    return tuple(sorted((b for b in config.bits if b != 4 or layer.kind == "linear"), reverse=True))


def build_space(inventory: LayerInventory, config: SpaceConfig = SpaceConfig()) -> SearchSpace:
    domains: dict[str, tuple] = {}
    for group in inventory.prunable_groups():
        counts: dict[int, float] = {}
        for ratio in sorted(config.prune_ratios):
            counts.setdefault(kept_for(group, ratio, config.channel_multiple), ratio)
        if len(counts) > 1:
            domains[f"prune/{group.name}"] = tuple(sorted(counts.values()))
    for layer in inventory.layers.values():
        bits = bits_choices(layer, config)
        if len(bits) > 1:
            domains[f"bits/{layer.name}"] = bits
        ranks = _rank_choices(layer, config)
        if len(ranks) > 1:
            domains[f"rank/{layer.name}"] = ranks
            if len(config.decompositions) > 1 and is_spatial_conv(layer):
                domains[f"decomp/{layer.name}"] = tuple(d for d in DECOMPOSITIONS if d in config.decompositions)
    if not domains:
        raise ValueError("the search space is empty: no prunable group, bit width or rank choice applies to this model.")
    return SearchSpace(inventory, config, domains)
