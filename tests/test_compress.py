from __future__ import annotations

import pytest
import torch
from torch import nn

from autocompress import compress
from autocompress.compress import (
    ActFakeQuant,
    LowRankConv2d,
    LowRankLinear,
    QuantConv2d,
    QuantLinear,
    factorize,
    fold_batchnorm,
    spatial_svd_matrix,
)
from autocompress.spaces import Policy, SpaceConfig, build_space
from conftest import RESNET_MIXED_PRUNE_AND_RANK, RESNET_CONVS

CONVS = RESNET_CONVS
ALL_LAYERS = [*CONVS, "fc"]
MULTIPLE = 4


@pytest.fixture(scope="module")
def space(resnet_inventory):
    return build_space(resnet_inventory, SpaceConfig(channel_multiple=MULTIPLE))


def _policy(space, **overrides) -> Policy:
    """A policy of the space: the baseline with some dimensions overridden (and checked to exist)."""
    params = space.to_params(space.baseline())
    for name in overrides:
        assert name in space.domains, name
    params.update(overrides)
    return space.from_params(params)


@pytest.fixture(scope="module")
def mixed_policy(space) -> Policy:
    """Prunes (coupled and single groups), quantizes most layers and factorizes 3x3, 1x1 and linear layers."""
    overrides = {
        **RESNET_MIXED_PRUNE_AND_RANK,
    }
    overrides.update({f"bits/{n}": 8 for n in ALL_LAYERS if n != "layer1.0.conv1"})
    return _policy(space, **overrides)


def _snapshot(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def _count(model: nn.Module, types) -> int:
    return sum(isinstance(m, types) for m in model.modules())


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).norm() / b.norm())


# -- (1) the input model is not modified ------------------------------------------------------
def test_apply_does_not_mutate_input(resnet, resnet_inventory, resnet_input, mixed_policy, space):
    assert space.contains(mixed_policy)
    assert mixed_policy.prune and mixed_policy.bits and mixed_policy.rank
    before = _snapshot(resnet)
    with torch.no_grad():
        out_before = resnet(resnet_input)
    module_types = [type(m) for m in resnet.modules()]

    candidate = compress.apply(resnet, resnet_inventory, mixed_policy, (resnet_input,), channel_multiple=MULTIPLE)

    after = resnet.state_dict()
    assert list(after) == list(before)
    for k, v in before.items():
        assert after[k].shape == v.shape, k
        assert torch.equal(after[k], v), k
    assert [type(m) for m in resnet.modules()] == module_types
    assert resnet.stem[0].out_channels == 8
    with torch.no_grad():
        assert torch.equal(resnet(resnet_input), out_before)
    # The candidate owns its parameters.
    ids = {id(p) for p in resnet.parameters()}
    assert not ids & {id(p) for p in candidate.parameters()}


# -- (2) pruning -------------------------------------------------------------------------------
def _row_indices(pruned: torch.Tensor, original: torch.Tensor) -> list[int]:
    """Index into ``original``'s first dimension of every slice of ``pruned``."""
    idx = []
    for row in pruned:
        hits = [i for i in range(original.shape[0]) if torch.equal(original[i], row)]
        assert len(hits) == 1, "a pruned layer's kept channel is not an unmodified original channel"
        idx.append(hits[0])
    return idx


def test_pruning_coupled_group_exact_channels(resnet, resnet_inventory, resnet_input, space):
    policy = _policy(space, **{"prune/stem.0": 0.5})
    assert policy == Policy(prune={"stem.0": 0.5})
    cand = compress.apply(resnet, resnet_inventory, policy, (resnet_input,), channel_multiple=MULTIPLE)

    sub = cand.get_submodule
    assert sub("stem.0").out_channels == 4
    assert sub("layer1.0.conv2").out_channels == 4  # coupled through the residual add
    assert sub("layer1.0.conv1").in_channels == 4
    assert sub("layer2.0.conv1").in_channels == 4
    assert sub("layer2.0.shortcut.0").in_channels == 4
    assert sub("stem.1").num_features == 4 and sub("layer1.0.bn2").num_features == 4
    # Layers of other groups keep their width.
    assert sub("layer1.0.conv1").out_channels == 8
    assert sub("layer2.0.conv1").out_channels == 16

    # Coupled layers lose exactly the same channels, and kept channels are untouched.
    orig = dict(resnet.named_modules())
    idx = _row_indices(sub("stem.0").weight.detach(), orig["stem.0"].weight.detach())
    assert idx == sorted(idx) and len(set(idx)) == 4
    assert torch.equal(sub("layer1.0.conv2").weight, orig["layer1.0.conv2"].weight[idx])
    assert torch.equal(sub("layer1.0.conv1").weight, orig["layer1.0.conv1"].weight[:, idx])
    assert torch.equal(sub("layer2.0.shortcut.0").weight, orig["layer2.0.shortcut.0"].weight[:, idx])
    assert torch.equal(sub("stem.1").running_mean, orig["stem.1"].running_mean[idx])
    assert torch.equal(sub("layer1.0.bn2").running_var, orig["layer1.0.bn2"].running_var[idx])

    with torch.no_grad():
        out = cand(resnet_input)
    assert out.shape == (1, 10) and torch.isfinite(out).all()


@pytest.mark.parametrize(("group", "ratio", "kept"), [("layer2.0.conv1", 0.25, 12), ("layer3.0.shortcut.0", 0.75, 8)])
def test_pruning_single_and_shortcut_groups(resnet, resnet_inventory, resnet_input, space, group, ratio, kept):
    cand = compress.apply(
        resnet, resnet_inventory, _policy(space, **{f"prune/{group}": ratio}), (resnet_input,), channel_multiple=MULTIPLE
    )
    g = resnet_inventory.groups[group]
    for name in g.layers:
        assert cand.get_submodule(name).out_channels == kept, name
    for name in g.consumers:
        m = cand.get_submodule(name)
        assert (m.in_channels if isinstance(m, nn.Conv2d) else m.in_features) == kept, name
    with torch.no_grad():
        assert cand(resnet_input).shape == (1, 10)


def test_apply_rejects_bad_policies(resnet, resnet_inventory, resnet_input):
    with pytest.raises(ValueError, match="lacks"):
        compress.apply(resnet, resnet_inventory, Policy(bits={"nope": 8}), (resnet_input,))
    with pytest.raises(ValueError, match="cannot be pruned"):
        compress.apply(resnet, resnet_inventory, Policy(prune={"fc": 0.5}), (resnet_input,))


# -- (3) the baseline is the model -------------------------------------------------------------
def test_baseline_reproduces_output(resnet, resnet_inventory, space, mlp, mlp_inventory):
    cand = compress.apply(resnet, resnet_inventory, space.baseline(), (torch.randn(1, 1, 28, 28),))
    assert _count(cand, (QuantConv2d, QuantLinear, ActFakeQuant, LowRankConv2d, LowRankLinear)) == 0
    x = torch.randn(4, 1, 28, 28, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        torch.testing.assert_close(cand(x), resnet(x), atol=1e-5, rtol=1e-5)

    cand = compress.apply(mlp, mlp_inventory, Policy(), (torch.randn(1, 16),))
    x = torch.randn(5, 16)
    with torch.no_grad():
        torch.testing.assert_close(cand(x), mlp(x), atol=1e-5, rtol=1e-5)


# -- (4) low-rank factorization ----------------------------------------------------------------
def _discarded(matrix: torch.Tensor, rank: int) -> float:
    s = torch.linalg.svdvals(matrix.double())
    return float(s[rank:].square().sum().sqrt())


def _effective_conv_weight(lr: LowRankConv2d) -> torch.Tensor:
    """The kh x kw kernel equal to the kh x 1 conv followed by the 1 x kw conv."""
    first, second = lr[0].weight.double(), lr[1].weight.double()  # (r, in, kh, 1), (out, r, 1, kw)
    return torch.einsum("orw,rih->oihw", second[:, :, 0, :], first[..., 0])


@pytest.mark.parametrize("rank", [1, 4, 9])
def test_factorize_linear_error_is_truncation_error(rank):
    torch.manual_seed(0)
    linear = nn.Linear(24, 16)
    lr = factorize(linear, rank)
    assert isinstance(lr, LowRankLinear)
    w1, w2 = lr[0].weight.double(), lr[1].weight.double()
    assert w1.shape == (rank, 24) and w2.shape == (16, rank)
    err = float((linear.weight.double() - w2 @ w1).norm())
    assert err == pytest.approx(_discarded(linear.weight, rank), rel=1e-4)
    assert lr[0].bias is None and torch.equal(lr[1].bias, linear.bias)
    x = torch.randn(3, 24)
    with torch.no_grad():
        expected = (x.double() @ (w2 @ w1).T + linear.bias.double()).float()
        torch.testing.assert_close(lr(x), expected, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize(("stride", "padding", "rank"), [(1, 1, 2), (2, 1, 5), (1, 0, 11)])
def test_factorize_conv3x3_spatial_svd_error(stride, padding, rank):
    torch.manual_seed(1)
    conv = nn.Conv2d(6, 10, 3, stride=stride, padding=padding, bias=True)
    lr = factorize(conv, rank)
    assert isinstance(lr, LowRankConv2d)
    assert lr[0].kernel_size == (3, 1) and lr[1].kernel_size == (1, 3)
    assert lr[0].out_channels == rank and lr[1].in_channels == rank

    m = spatial_svd_matrix(conv.weight.detach())
    assert m.shape == (6 * 3, 10 * 3)
    assert m[2 * 3 + 1, 7 * 3 + 2] == conv.weight[7, 2, 1, 2]  # (in, kh) rows, (out, kw) columns

    w_eff = _effective_conv_weight(lr)
    err = float((conv.weight.double() - w_eff).norm())
    assert err == pytest.approx(_discarded(m, rank), rel=1e-4)

    # The two convolutions, run, compute exactly the reconstructed kernel (stride and padding included).
    x = torch.randn(2, 6, 11, 13)
    with torch.no_grad():
        got = lr(x)
        expected = nn.functional.conv2d(x.double(), w_eff, conv.bias.double(), stride, padding).float()
    assert got.shape == conv(x).shape
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)


def test_factorize_conv3x3_effective_kernel_by_delta_input():
    """Independently of the weight layout: the response to a unit impulse is the kernel itself."""
    torch.manual_seed(2)
    conv = nn.Conv2d(3, 4, 3, padding=1, bias=False)
    lr = factorize(conv, 9)  # full rank of the (3*3, 4*3) matrix
    for i in range(3):
        x = torch.zeros(1, 3, 5, 5)
        x[0, i, 2, 2] = 1.0
        with torch.no_grad():
            got, ref = lr(x), conv(x)
        # conv output around the impulse is the flipped kernel of input channel i.
        torch.testing.assert_close(ref[0, :, 1:4, 1:4], conv.weight[:, i].flip(-1, -2).detach())
        torch.testing.assert_close(got, ref, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("rank", [1, 3, 6])
def test_factorize_conv1x1_error(rank):
    torch.manual_seed(3)
    conv = nn.Conv2d(12, 8, 1, stride=2, bias=True)
    lr = factorize(conv, rank)
    assert isinstance(lr, LowRankConv2d)
    assert lr[0].kernel_size == (1, 1) and lr[1].kernel_size == (1, 1)
    assert lr[0].stride == (2, 2) and lr[1].stride == (1, 1)
    w = conv.weight.detach().reshape(8, 12)
    w_eff = lr[1].weight.double()[:, :, 0, 0] @ lr[0].weight.double()[:, :, 0, 0]
    err = float((w.double() - w_eff).norm())
    assert err == pytest.approx(_discarded(w, rank), rel=1e-4)
    x = torch.randn(2, 12, 9, 9)
    with torch.no_grad():
        expected = nn.functional.conv2d(x.double(), w_eff[:, :, None, None], conv.bias.double(), 2).float()
        torch.testing.assert_close(lr(x), expected, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize(
    ("module", "shape", "rank"),
    [
        (lambda: nn.Linear(12, 7), (4, 12), 7),
        (lambda: nn.Linear(12, 7), (4, 12), 100),  # above the full rank: clamped
        (lambda: nn.Conv2d(5, 6, 3, stride=2, padding=1), (2, 5, 9, 9), 15),
        (lambda: nn.Conv2d(5, 6, (3, 5), padding=(1, 2)), (2, 5, 8, 8), 15),
        (lambda: nn.Conv2d(5, 6, 1), (2, 5, 4, 4), 5),
    ],
)
def test_factorize_full_rank_is_exact(module, shape, rank):
    torch.manual_seed(4)
    m = module()
    lr = factorize(m, rank)
    x = torch.randn(*shape)
    with torch.no_grad():
        torch.testing.assert_close(lr(x), m(x), atol=1e-5, rtol=1e-4)


def test_factorize_rejects_unsupported():
    with pytest.raises(TypeError):
        factorize(nn.ReLU(), 2)
    with pytest.raises(ValueError):
        factorize(nn.Conv2d(4, 4, 3, groups=2), 2)


def test_apply_factorizes_layers(resnet, resnet_inventory, resnet_input, space):
    policy = _policy(space, **{"rank/layer3.0.conv2": 0.5, "rank/layer2.0.shortcut.0": 0.5, "rank/fc": 0.5})
    cand = compress.apply(resnet, resnet_inventory, policy, (resnet_input,), channel_multiple=MULTIPLE)
    first, second = cand.get_submodule("layer3.0.conv2.0"), cand.get_submodule("layer3.0.conv2.1")
    assert (first.kernel_size, first.out_channels) == ((3, 1), 16)  # rank_for(32, 32, 0.5, 4)
    assert (second.kernel_size, second.out_channels) == ((1, 3), 32)
    assert cand.get_submodule("layer2.0.shortcut.0.0").out_channels == 4  # rank_for(8, 16, 0.5, 4)
    assert cand.get_submodule("fc.0").out_features == 4 and cand.get_submodule("fc.1").out_features == 10
    with torch.no_grad():
        out, ref = cand(resnet_input), resnet(resnet_input)
    assert out.shape == ref.shape and torch.isfinite(out).all()
    assert not torch.allclose(out, ref, atol=1e-6)  # truncation changes the function


# -- (5) int8 ----------------------------------------------------------------------------------
def test_int8_all_layers(resnet, resnet_inventory, resnet_input, space):
    policy = _policy(space, **{f"bits/{n}": 8 for n in ALL_LAYERS})
    gen = torch.Generator().manual_seed(5)
    calib = [(torch.randn(8, 1, 28, 28, generator=gen),) for _ in range(2)]
    cand = compress.apply(resnet, resnet_inventory, policy, (resnet_input,), calib, channel_multiple=MULTIPLE)
    assert _count(cand, QuantConv2d) == 9
    assert _count(cand, QuantLinear) == 1
    quantizers = [m for m in cand.modules() if isinstance(m, ActFakeQuant)]
    assert len(quantizers) >= 10
    for q in quantizers:
        assert not q.observing
        assert float(q.scale) > 0 and 0 <= int(q.zero_point) <= 255
    for name in CONVS:
        assert isinstance(cand.get_submodule(name), QuantConv2d), name

    x = torch.randn(16, 1, 28, 28, generator=gen)
    with torch.no_grad():
        out, ref = cand(x), resnet(x)
    assert torch.isfinite(out).all()
    assert not torch.equal(out, ref)  # quantization is really simulated
    assert _rel(out, ref) < 0.2


@pytest.mark.parametrize(("width", "weight_max"), [("8", 127), ("7", 64)])
def test_int8_weights_on_the_range_the_cpu_kernels_take(monkeypatch, resnet, resnet_inventory, resnet_input, space,
                                                          width, weight_max):
    """Without VNNI, ONNX Runtime's u8 x s8 kernels saturate int16 pair sums past |w| = 64:
    weights then train and export on 7 bits, ORT's reduce_range grid."""
    monkeypatch.setenv("AUTOCOMPRESS_INT8_WEIGHTS", width)
    policy = _policy(space, **{f"bits/{n}": 8 for n in ALL_LAYERS})
    cand = compress.apply(resnet, resnet_inventory, policy, (resnet_input,), [(resnet_input,)], channel_multiple=MULTIPLE)
    layers = [m for m in cand.modules() if isinstance(m, (QuantConv2d, QuantLinear))]
    assert len(layers) == 10
    for m in layers:
        assert m.weight_max == weight_max
        steps = m._quant_weight() / m.weight_scale.view(-1, *[1] * (m.weight.dim() - 1))
        torch.testing.assert_close(steps, steps.round(), atol=1e-4, rtol=0)  # on the grid
        assert float(steps.abs().amax()) == pytest.approx(weight_max)  # the largest weight at its edge


def test_int8_weight_width_rejects_other_values(monkeypatch):
    from autocompress.compress import int8_weight_max
    from autocompress.errors import UserError

    monkeypatch.setenv("AUTOCOMPRESS_INT8_WEIGHTS", "6")
    with pytest.raises(UserError, match="AUTOCOMPRESS_INT8_WEIGHTS='6' is not a weight width; set it to 8 or 7"):
        int8_weight_max()
    monkeypatch.delenv("AUTOCOMPRESS_INT8_WEIGHTS")
    assert int8_weight_max() in (64, 127)


def test_int8_mixed_policy_forward(resnet, resnet_inventory, resnet_input, mixed_policy):
    cand = compress.apply(resnet, resnet_inventory, mixed_policy, (resnet_input,), channel_multiple=MULTIPLE)
    # Factorized int8 layers are quantized part by part.
    assert isinstance(cand.get_submodule("layer3.0.conv2.0"), QuantConv2d)
    assert isinstance(cand.get_submodule("fc.1"), QuantLinear)
    assert type(cand.get_submodule("layer1.0.conv1")) is nn.Conv2d  # left at fp32
    assert cand.get_submodule("stem.0").out_channels == 4
    with torch.no_grad():
        out = cand(torch.randn(4, 1, 28, 28))
    assert out.shape == (4, 10) and torch.isfinite(out).all()


# -- (6) BatchNorm folding ---------------------------------------------------------------------
def _assert_folds(model: nn.Module, x: torch.Tensor) -> nn.Module:
    assert _count(model, nn.modules.batchnorm._BatchNorm) > 0
    state = _snapshot(model)
    folded = fold_batchnorm(model)
    assert _count(folded, nn.modules.batchnorm._BatchNorm) == 0
    assert not folded.training
    with torch.no_grad():
        torch.testing.assert_close(folded(x), model.eval()(x), atol=1e-4, rtol=1e-4)
    for k, v in model.state_dict().items():  # the input is not modified
        assert torch.equal(v, state[k]), k
    return folded


def test_fold_batchnorm_float(resnet):
    with torch.no_grad():  # negative BN scales too
        resnet.layer1[0].bn1.weight[::2] *= -1
        resnet.layer2[0].shortcut[1].weight[1::3] *= -1
    _assert_folds(resnet, torch.randn(4, 1, 28, 28, generator=torch.Generator().manual_seed(6)))


def test_fold_batchnorm_linear_bn1d():
    torch.manual_seed(7)
    model = nn.Sequential(nn.Linear(8, 6), nn.BatchNorm1d(6), nn.ReLU(), nn.Linear(6, 3))
    with torch.no_grad():
        model[1].running_mean.uniform_(-1, 1)
        model[1].running_var.uniform_(0.5, 2)
        model[1].weight.uniform_(-1.5, 1.5)
    _assert_folds(model.eval(), torch.randn(5, 8))


def test_fold_batchnorm_int8_candidate(resnet, resnet_inventory, resnet_input, space):
    policy = _policy(space, **{f"bits/{n}": 8 for n in ALL_LAYERS})
    cand = compress.apply(resnet, resnet_inventory, policy, (resnet_input,), channel_multiple=MULTIPLE)
    folded = _assert_folds(cand, resnet_input)
    assert _count(folded, QuantConv2d) == 9 and _count(folded, QuantLinear) == 1
    assert _count(folded, ActFakeQuant) == _count(cand, ActFakeQuant)


def test_fold_batchnorm_mixed_candidate(resnet, resnet_inventory, resnet_input, mixed_policy):
    cand = compress.apply(resnet, resnet_inventory, mixed_policy, (resnet_input,), channel_multiple=MULTIPLE)
    _assert_folds(cand, resnet_input)
