"""The per-layer search space: pruning ratio per coupling group, bit width and rank per layer."""

from __future__ import annotations

from autocompress.spaces._space import (
    BITS_CHOICES,
    DECOMPOSITIONS,
    Policy,
    SearchSpace,
    SpaceConfig,
    build_space,
    is_spatial_conv,
    kept_channels,
    kept_for,
    tucker_ranks,
)

__all__ = [
    "BITS_CHOICES", "DECOMPOSITIONS", "Policy", "SearchSpace", "SpaceConfig", "build_space", "is_spatial_conv",
    "kept_channels", "kept_for", "tucker_ranks",
]
