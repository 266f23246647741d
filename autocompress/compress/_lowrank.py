"""Low-rank factorization initialised from the truncated SVD of the original weight.

- ``Linear(in, out)`` -> ``Linear(in, r)`` then ``Linear(r, out)``.
- ``Conv2d`` 1x1 -> 1x1 conv to ``r`` channels (carrying the stride) then 1x1 conv.
- ``Conv2d`` kh x kw -> (kh x 1 conv to ``r`` channels) then (1 x kw conv): spatial SVD of
  the weight reshaped to a ``(in*kh, out*kw)`` matrix. The error before any fine-tuning is
  exactly the truncation error, ``sqrt(sum of the discarded singular values squared)``.
"""

from __future__ import annotations

import torch
from torch import nn

__all__ = ["LowRankConv2d", "LowRankLinear", "factorize", "spatial_svd_matrix"]


class LowRankLinear(nn.Sequential):
    """Two Linears whose product approximates the original weight."""


class LowRankConv2d(nn.Sequential):
    """Two convolutions (kh x 1 then 1 x kw, or 1x1 then 1x1) replacing one."""


def _split_sqrt(u: torch.Tensor, s: torch.Tensor, vh: torch.Tensor, rank: int) -> tuple[torch.Tensor, torch.Tensor]:
    root = s[:rank].sqrt()
    return u[:, :rank] * root, root[:, None] * vh[:rank]


def spatial_svd_matrix(weight: torch.Tensor) -> torch.Tensor:
    """Conv weight ``(out, in, kh, kw)`` as the ``(in*kh, out*kw)`` matrix spatial SVD factors."""
    out_c, in_c, kh, kw = weight.shape
    return weight.permute(1, 2, 0, 3).reshape(in_c * kh, out_c * kw)


@torch.no_grad()
def factorize(module: nn.Module, rank: int) -> nn.Module:
    """A new two-layer module of the given rank approximating ``module``."""
    if isinstance(module, nn.Linear):
        w = module.weight.double()
        u, s, vh = torch.linalg.svd(w, full_matrices=False)
        rank = min(rank, s.numel())
        a, b = _split_sqrt(u, s, vh, rank)  # w ~= a @ b, a: (out, r), b: (r, in)
        first = nn.Linear(module.in_features, rank, bias=False)
        second = nn.Linear(rank, module.out_features, bias=module.bias is not None)
        first.weight.copy_(b.float())
        second.weight.copy_(a.float())
        if module.bias is not None:
            second.bias.copy_(module.bias)
        return LowRankLinear(first, second)
    if not isinstance(module, nn.Conv2d):
        raise TypeError(f"cannot factorize {type(module).__name__}; only Linear and Conv2d.")
    if module.groups != 1 or module.padding_mode != "zeros" or isinstance(module.padding, str):
        raise ValueError("low-rank factorization needs groups=1, zero padding given as numbers.")
    out_c, in_c, kh, kw = module.weight.shape
    (sh, sw), (ph, pw), (dh, dw) = module.stride, module.padding, module.dilation
    bias = module.bias is not None
    if kh == 1 and kw == 1:
        w = module.weight.double().reshape(out_c, in_c)
        u, s, vh = torch.linalg.svd(w, full_matrices=False)
        rank = min(rank, s.numel())
        a, b = _split_sqrt(u, s, vh, rank)
        first = nn.Conv2d(in_c, rank, 1, stride=(sh, sw), padding=(ph, pw), bias=False)
        second = nn.Conv2d(rank, out_c, 1, bias=bias)
        first.weight.copy_(b.float().reshape(rank, in_c, 1, 1))
        second.weight.copy_(a.float().reshape(out_c, rank, 1, 1))
    else:
        m = spatial_svd_matrix(module.weight.double())
        u, s, vh = torch.linalg.svd(m, full_matrices=False)
        rank = min(rank, s.numel())
        a, b = _split_sqrt(u, s, vh, rank)  # m ~= a @ b, a: (in*kh, r), b: (r, out*kw)
        first = nn.Conv2d(in_c, rank, (kh, 1), stride=(sh, 1), padding=(ph, 0), dilation=(dh, 1), bias=False)
        second = nn.Conv2d(rank, out_c, (1, kw), stride=(1, sw), padding=(0, pw), dilation=(1, dw), bias=bias)
        first.weight.copy_(a.float().reshape(in_c, kh, rank).permute(2, 0, 1).unsqueeze(-1))
        second.weight.copy_(b.float().reshape(rank, out_c, kw).permute(1, 0, 2).unsqueeze(2))
    if bias:
        second.bias.copy_(module.bias)
    return LowRankConv2d(first, second)
