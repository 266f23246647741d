"""Tucker-2 factorization of convolutions: exactness, HOSVD error bounds, shapes, ONNX."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from autocompress.compress import tucker2


def _conv(in_c: int = 6, out_c: int = 8, k: int = 3, seed: int = 0, **kwargs) -> nn.Conv2d:
    torch.manual_seed(seed)
    return nn.Conv2d(in_c, out_c, k, **kwargs).eval()


def _effective_weight(seq: nn.Sequential) -> torch.Tensor:
    """The single kh x kw kernel equal to the 1x1, kh x kw, 1x1 chain."""
    first, middle, last = (m.weight.double() for m in seq)
    return torch.einsum("or,rskl,si->oikl", last[:, :, 0, 0], middle, first[:, :, 0, 0])


def _tails(w: torch.Tensor, rank_in: int, rank_out: int) -> tuple[float, float]:
    """Discarded squared singular values of the mode-0 and mode-1 unfoldings."""
    w = w.double()
    s0 = torch.linalg.svdvals(w.reshape(w.shape[0], -1))
    s1 = torch.linalg.svdvals(w.transpose(0, 1).reshape(w.shape[1], -1))
    return float(s0[rank_out:].square().sum()), float(s1[rank_in:].square().sum())


def test_full_rank_is_exact():
    conv = _conv(padding=1)
    seq = tucker2(conv, rank_in=6, rank_out=8)
    assert [m.weight.shape for m in seq] == [(6, 6, 1, 1), (8, 6, 3, 3), (8, 8, 1, 1)]
    x = torch.randn(2, 6, 9, 9)
    with torch.no_grad():
        torch.testing.assert_close(seq(x), conv(x), atol=1e-4, rtol=0)


@pytest.mark.parametrize("rank_in, rank_out", [(1, 1), (3, 5), (6, 2), (2, 8)])
def test_hosvd_error_within_theoretical_bounds(rank_in, rank_out):
    conv = _conv(seed=1)
    seq = tucker2(conv, rank_in, rank_out)
    err2 = float((conv.weight.double() - _effective_weight(seq)).square().sum())
    tail_out, tail_in = _tails(conv.weight, rank_in, rank_out)
    assert err2 <= (tail_out + tail_in) * (1 + 1e-5) + 1e-10
    assert err2 >= max(tail_out, tail_in) * (1 - 1e-5) - 1e-10


def test_hooi_does_not_increase_error():
    conv = _conv(8, 10, seed=2)
    w = conv.weight.double()
    hosvd = float((w - _effective_weight(tucker2(conv, 3, 4))).square().sum())
    hooi = float((w - _effective_weight(tucker2(conv, 3, 4, hooi_iters=5))).square().sum())
    assert hooi <= hosvd * (1 + 1e-6)
    assert hooi >= max(_tails(w, 3, 4)) * (1 - 1e-5)


def test_truncated_output_matches_effective_kernel():
    conv = _conv(padding=1, seed=3)
    seq = tucker2(conv, 3, 4)
    x = torch.randn(2, 6, 7, 7)
    with torch.no_grad():
        expected = nn.functional.conv2d(x.double(), _effective_weight(seq), conv.bias.double(), padding=1).float()
        torch.testing.assert_close(seq(x), expected, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("stride, padding", [(2, 1), (2, 0), (1, 1), ((2, 1), (1, 0))])
def test_stride_and_padding_preserved(stride, padding):
    conv = _conv(stride=stride, padding=padding, seed=4)
    seq = tucker2(conv, 3, 4)
    middle = seq[1]
    assert middle.stride == conv.stride and middle.padding == conv.padding and middle.dilation == conv.dilation
    assert seq[0].stride == seq[2].stride == (1, 1) and seq[0].padding == seq[2].padding == (0, 0)
    x = torch.randn(1, 6, 11, 10)
    with torch.no_grad():
        assert seq(x).shape == conv(x).shape
        full = tucker2(conv, 6, 8)
        torch.testing.assert_close(full(x), conv(x), atol=1e-4, rtol=0)


@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("rank_in, rank_out", [(2, 3), (6, 8), (4, 1)])
def test_parameter_count(bias, rank_in, rank_out):
    in_c, out_c, k = 6, 8, 3
    conv = _conv(in_c, out_c, k, bias=bias)
    seq = tucker2(conv, rank_in, rank_out)
    expected = in_c * rank_in + rank_in * rank_out * k * k + rank_out * out_c + (out_c if bias else 0)
    assert sum(p.numel() for p in seq.parameters()) == expected
    assert seq[0].bias is None and seq[1].bias is None and (seq[2].bias is not None) == bias
    if bias:
        assert torch.equal(seq[2].bias, conv.bias)


def test_ranks_above_unfolding_rank_are_lowered():
    conv = _conv(2, 32, 1, seed=5)  # mode-0 unfolding is 32 x 2: rank at most 2
    seq = tucker2(conv, rank_in=8, rank_out=16)
    assert seq[0].out_channels == 2 and seq[1].out_channels == 2
    x = torch.randn(1, 2, 4, 4)
    with torch.no_grad():
        torch.testing.assert_close(seq(x), conv(x), atol=1e-4, rtol=0)


def test_rejects_unsupported():
    with pytest.raises(TypeError):
        tucker2(nn.Linear(4, 4), 2, 2)
    with pytest.raises(ValueError):
        tucker2(nn.Conv2d(4, 4, 3, groups=2), 2, 2)
    with pytest.raises(ValueError):
        tucker2(nn.Conv2d(4, 4, 3), 0, 2)


def test_onnx_export_matches_torch(tmp_path):
    ort = pytest.importorskip("onnxruntime")
    conv = _conv(padding=1, stride=2, seed=6)
    seq = tucker2(conv, 3, 5).eval()
    x = torch.randn(2, 6, 12, 12)
    path = tmp_path / "tucker2.onnx"
    torch.onnx.export(seq, (x,), str(path), dynamo=False, opset_version=17, input_names=["x"], output_names=["y"])
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    (got,) = sess.run(None, {"x": x.numpy()})
    with torch.no_grad():
        torch.testing.assert_close(torch.from_numpy(got), seq(x), atol=1e-4, rtol=0)


def test_tucker2_as_a_policy_choice_builds_the_decomposition():
    """A policy choosing Tucker-2 for a kxk conv gets exactly compress.tucker2 at the ranks the
    space gives (before fine-tuning its error is the decomposition's), and spatial SVD otherwise."""
    from autocompress import compress
    from autocompress.inventory import build_inventory
    from autocompress.spaces import Policy, tucker_ranks

    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 32, 3, padding=1), nn.ReLU(), nn.Conv2d(32, 32, 3, padding=1)).eval()
    x = torch.randn(2, 3, 12, 12)
    inv = build_inventory(model, (x,))
    tucker = compress.apply(model, inv, Policy(rank={"2": 0.5}, decomp={"2": "tucker2"}), (x,), channel_multiple=8)
    svd = compress.apply(model, inv, Policy(rank={"2": 0.5}), (x,), channel_multiple=8)
    def kernels(gm):  # the traced candidate keeps the parts, not their classes
        return [m.kernel_size for m in gm.get_submodule("2").modules() if isinstance(m, nn.Conv2d)]

    assert kernels(tucker) == [(1, 1), (3, 3), (1, 1)] and kernels(svd) == [(3, 1), (1, 3)]
    r_in, r_out = tucker_ranks(32, 32, 0.5, 8)
    assert (r_in, r_out) == (16, 16)
    expected = nn.Sequential(model[0], model[1], tucker2(model[2], r_in, r_out))
    assert torch.allclose(tucker(x), expected(x), atol=1e-5)
    with pytest.raises(ValueError, match="convolutions only"):
        lin = nn.Sequential(nn.Linear(16, 16)).eval()
        xi = torch.randn(1, 16)
        compress.apply(lin, build_inventory(lin, (xi,)), Policy(rank={"0": 0.5}, decomp={"0": "tucker2"}), (xi,))
