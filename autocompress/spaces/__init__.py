"""The per-layer search space: pruning ratio per coupling group, bit width and rank per layer."""

from __future__ import annotations

from autocompress.spaces._space import BITS_CHOICES, Policy, SearchSpace, SpaceConfig, build_space, kept_channels, kept_for

__all__ = ["BITS_CHOICES", "Policy", "SearchSpace", "SpaceConfig", "build_space", "kept_channels", "kept_for"]
