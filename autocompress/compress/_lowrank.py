"""Low-rank factorization initialised from the truncated SVD of the original weight.

- ``Linear(in, out)`` -> ``Linear(in, r)`` then ``Linear(r, out)``.
- ``Conv2d`` 1x1 -> 1x1 conv to ``r`` channels (carrying the stride) then 1x1 conv.
- ``Conv2d`` kh x kw -> (kh x 1 conv to ``r`` channels) then (1 x kw conv): spatial SVD of
  the weight reshaped to a ``(in*kh, out*kw)`` matrix. The error before any fine-tuning is
  exactly the truncation error, ``sqrt(sum of the discarded singular values squared)``.
- :func:`tucker2`: ``Conv2d`` kh x kw -> 1x1 (in -> r_in), kh x kw (r_in -> r_out), 1x1
  (r_out -> out), from a Tucker-2 decomposition of the weight over its channel modes.
"""

from __future__ import annotations

import torch
from torch import nn

__all__ = ["LowRankConv2d", "LowRankLinear", "TuckerConv2d", "factorize", "spatial_svd_matrix", "tucker2"]


class LowRankLinear(nn.Sequential):
    """Two Linears whose product approximates the original weight."""


class LowRankConv2d(nn.Sequential):
    """Two convolutions (kh x 1 then 1 x kw, or 1x1 then 1x1) replacing one."""


class TuckerConv2d(nn.Sequential):
    """Three convolutions (1x1, kh x kw, 1x1) replacing one: a Tucker-2 decomposition."""


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


def _leading(unfolding: torch.Tensor, rank: int) -> torch.Tensor:
    """The ``rank`` leading left singular vectors of a matrix, as columns."""
    return torch.linalg.svd(unfolding, full_matrices=False)[0][:, :rank]


@torch.no_grad()
def tucker2(conv: nn.Conv2d, rank_in: int, rank_out: int, *, hooi_iters: int = 0) -> TuckerConv2d:
    """Three convolutions approximating ``conv`` (groups=1) by a Tucker-2 decomposition.

    ``W[out, in, kh, kw] ~= core x_0 U_out x_1 U_in`` becomes a 1x1 conv (in -> rank_in,
    weight ``U_in^T``, no bias), a kh x kw conv (rank_in -> rank_out, weight ``core``, the
    original stride, padding, dilation and padding mode, no bias) and a 1x1 conv (rank_out ->
    out, weight ``U_out``, the original bias). The factors come from the HOSVD: ``U_out`` and
    ``U_in`` are the leading left singular vectors of the mode-0 and mode-1 unfoldings, and
    ``core = W x_0 U_out^T x_1 U_in^T``. ``hooi_iters > 0`` refines them with that many
    HOOI (alternating) iterations, which never increase the error; by default none are run.
    Ranks above the rank of the corresponding unfolding are lowered to it.
    """
    if not isinstance(conv, nn.Conv2d):
        raise TypeError(f"tucker2 needs a Conv2d, not {type(conv).__name__}.")
    if conv.groups != 1:
        raise ValueError("tucker2 needs groups=1.")
    if rank_in < 1 or rank_out < 1 or hooi_iters < 0:
        raise ValueError(f"ranks must be >= 1 and hooi_iters >= 0, got {rank_in}, {rank_out}, {hooi_iters}.")
    w = conv.weight.double()
    out_c, in_c, kh, kw = w.shape
    rank_out = min(rank_out, out_c, in_c * kh * kw)
    rank_in = min(rank_in, in_c, out_c * kh * kw)
    u_out = _leading(w.reshape(out_c, -1), rank_out)
    u_in = _leading(w.transpose(0, 1).reshape(in_c, -1), rank_in)
    for _ in range(hooi_iters):
        u_out = _leading(torch.einsum("oikl,is->oskl", w, u_in).reshape(out_c, -1), rank_out)
        u_in = _leading(torch.einsum("oikl,or->irkl", w, u_out).reshape(in_c, -1), rank_in)
    core = torch.einsum("oikl,or,is->rskl", w, u_out, u_in)
    first = nn.Conv2d(in_c, rank_in, 1, bias=False)
    middle = nn.Conv2d(
        rank_in, rank_out, (kh, kw), stride=conv.stride, padding=conv.padding, dilation=conv.dilation,
        bias=False, padding_mode=conv.padding_mode,
    )
    last = nn.Conv2d(rank_out, out_c, 1, bias=conv.bias is not None)
    first.weight.copy_(u_in.T.reshape(rank_in, in_c, 1, 1))
    middle.weight.copy_(core)
    last.weight.copy_(u_out.reshape(out_c, rank_out, 1, 1))
    if conv.bias is not None:
        last.bias.copy_(conv.bias)
    return TuckerConv2d(first, middle, last).to(device=conv.weight.device, dtype=conv.weight.dtype)
