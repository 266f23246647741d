from __future__ import annotations

import random
import subprocess
import sys

import pytest

from autocompress.spaces import Policy, SpaceConfig, build_space, kept_channels
from autocompress.spaces._space import rank_for


# -- kept_channels ---------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("channels", "ratio", "multiple", "expected"),
    [
        (32, 0.0, 8, 32),
        (32, 0.25, 8, 24),
        (32, 0.5, 8, 16),
        (32, 0.75, 8, 8),
        (32, 0.95, 8, 8),  # never below one multiple
        (64, 0.3, 8, 48),  # 44.8 rounds to 48
        (64, 0.4, 8, 40),  # 38.4 rounds to 40
        (8, 0.5, 8, 8),  # no more channels than one multiple: all kept
        (6, 0.5, 8, 6),
        (8, 0.5, 4, 4),
        (16, 0.5, 1, 8),
        (10, 0.25, 1, 8),  # 7.5 rounds to 8 (half to even)
    ],
)
def test_kept_channels(channels, ratio, multiple, expected):
    assert kept_channels(channels, ratio, multiple) == expected


def test_kept_channels_invariants():
    for channels in (1, 3, 8, 12, 17, 32, 100):
        for multiple in (1, 4, 8):
            for ratio in (0.0, 0.1, 0.25, 0.5, 0.75, 0.9, 0.999):
                k = kept_channels(channels, ratio, multiple)
                assert 1 <= k <= channels
                assert k >= min(channels, multiple)
                assert k % multiple == 0 or k == channels  # a multiple, or everything
                if ratio == 0.0 and channels % multiple == 0:
                    assert k == channels


@pytest.mark.parametrize(("channels", "multiple"), [(10, 8), (17, 8), (100, 8)])
def test_kept_channels_ratio_zero_keeps_everything(channels, multiple):
    assert kept_channels(channels, 0.0, multiple) == channels


@pytest.mark.parametrize("ratio", [1.0, 1.5, -0.1, -1.0, float("nan")])
def test_kept_channels_rejects_bad_ratio(ratio):
    with pytest.raises(ValueError):
        kept_channels(32, ratio, 8)


def test_rank_for():
    assert rank_for(32, 64, 0.5, 8) == 16
    assert rank_for(32, 64, 0.01, 8) == 8  # at least one multiple
    assert rank_for(4, 64, 0.25, 8) == 4  # never above min(in, out) when that is below a multiple


# -- Policy ----------------------------------------------------------------------------------
def test_policy_equal_regardless_of_order():
    a = Policy(prune={"b": 0.5, "a": 0.25}, bits={"y": 8, "x": 8}, rank={"q": 0.5, "p": 0.25})
    b = Policy(prune={"a": 0.25, "b": 0.5}, bits={"x": 8, "y": 8}, rank={"p": 0.25, "q": 0.5})
    assert a == b
    assert a.digest == b.digest
    assert hash(a) == hash(b)
    assert len({a, b}) == 1
    c = Policy(prune={"a": 0.25, "b": 0.75}, bits={"x": 8, "y": 8}, rank={"p": 0.25, "q": 0.5})
    assert c != a and c.digest != a.digest
    assert Policy(bits={"x": 8}).digest != Policy(rank={"x": 0.5}).digest


def test_policy_canonicalises_types():
    a = Policy(prune={"g": 1 / 2}, bits={"l": 8.0}, rank={"l": 1})
    b = Policy(prune={"g": 0.5}, bits={"l": 8}, rank={"l": 1.0})
    assert a == b and a.digest == b.digest
    assert isinstance(a.bits["l"], int) and isinstance(a.prune["g"], float)


def test_policy_defaults_and_dict_round_trip():
    p = Policy(prune={"g": 0.5}, bits={"l": 8}, rank={"m": 0.25})
    assert p.prune_ratio("g") == 0.5 and p.prune_ratio("other") == 0.0 and p.prune_ratio(None) == 0.0
    assert p.bits_of("l") == 8 and p.bits_of("other") == 32
    assert p.rank_ratio("m") == 0.25 and p.rank_ratio("other") == 1.0
    assert Policy.from_dict(p.to_dict()) == p
    with pytest.raises(ValueError, match="unknown policy keys"):
        Policy.from_dict({"prune": {}, "quant": {}})


def test_policy_digest_stable_across_processes():
    p = Policy(prune={"stem.0": 0.5, "layer1.0.conv1": 0.25}, bits={"fc": 8}, rank={"layer2.0.conv2": 0.5})
    code = (
        "from autocompress.spaces import Policy;"
        "print(Policy(rank={'layer2.0.conv2': 0.5}, bits={'fc': 8},"
        " prune={'layer1.0.conv1': 0.25, 'stem.0': 0.5}).digest)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == p.digest


# -- SearchSpace -----------------------------------------------------------------------------
@pytest.fixture(scope="module")
def space(resnet_inventory):
    return build_space(resnet_inventory, SpaceConfig(channel_multiple=4))


def test_space_domains(space, resnet_inventory):
    # The output layer's group is not searchable; every layer has a bit width.
    assert "prune/fc" not in space.domains
    assert "prune/stem.0" in space.domains
    for name, layer in resnet_inventory.layers.items():
        # 4-bit weights are offered to Linear layers only.
        assert space.domains[f"bits/{name}"] == ((32, 8, 4) if layer.kind == "linear" else (32, 8))
    # Ratios that round to the same channel count are collapsed: 8 channels, multiple 4.
    assert space.domains["prune/stem.0"] == (0.0, 0.5)
    assert space.domains["prune/layer2.0.conv1"] == (0.0, 0.25, 0.5, 0.75)
    # The stem (1 input channel) cannot be factorized usefully.
    assert "rank/stem.0" not in space.domains
    assert space.domains["rank/layer3.0.conv2"][0] == 1.0
    n = 1
    for d in space.domains.values():
        n *= len(d)
    assert space.size == n


def test_to_from_params_round_trip(space):
    rng = random.Random(0)
    seen = set()
    for _ in range(50):
        policy = space.sample(rng)
        params = space.to_params(policy)
        assert set(params) == set(space.domains)
        assert all(params[k] in space.domains[k] for k in params)
        assert space.from_params(params) == policy
        assert space.to_params(space.from_params(params)) == params
        assert space.contains(policy)
        seen.add(policy.digest)
    assert len(seen) > 40  # sampling explores the space


def test_baseline_round_trip(space):
    base = space.baseline()
    assert base == Policy()
    params = space.to_params(base)
    assert all(v == (1.0 if k.startswith("rank/") else 32 if k.startswith("bits/") else 0.0) for k, v in params.items())
    assert space.from_params(params) == base


def test_from_params_rejects_out_of_domain(space):
    params = space.to_params(space.baseline())
    bad = dict(params, **{"prune/stem.0": 0.25})  # 0.25 collapsed away for 8 channels
    with pytest.raises(ValueError, match="outside its domain"):
        space.from_params(bad)
    with pytest.raises(ValueError):
        space.from_params(dict(params, **{"bits/fc": 16}))
    with pytest.raises(ValueError):
        space.from_params(dict(params, **{"rank/fc": 0.3}))
    missing = dict(params)
    del missing["bits/fc"]
    with pytest.raises(KeyError):
        space.from_params(missing)


def test_contains_rejects_foreign_policies(space):
    assert not space.contains(Policy(prune={"fc": 0.5}))  # the output group is not in the space
    assert not space.contains(Policy(prune={"stem.0": 0.25}))
    assert not space.contains(Policy(bits={"fc": 2}))
    assert not space.contains(Policy(bits={"stem.0": 4}))  # a conv cannot take 4-bit weights
    assert space.contains(Policy(prune={"stem.0": 0.5}, bits={"fc": 8}))


def test_extreme_is_in_space_and_most_aggressive(space):
    ext = space.extreme()
    assert space.contains(ext)
    params = space.to_params(ext)
    for name, domain in space.domains.items():
        if name.startswith("prune/"):
            assert params[name] == max(domain)
        else:
            assert params[name] == min(domain)
    assert ext.bits == {name: 4 if name == "fc" else 8 for name in ext.bits} and len(ext.bits) == 10


def test_uniform_precisions_put_every_layer_that_can_take_a_width_at_it(space):
    """The ResNet's ten layers take int8 and only its classifier 4 bits: one policy, every
    layer int8, nothing pruned or factorized; a width fewer than half the layers take gets none."""
    (int8,) = space.uniform_precisions()
    assert space.contains(int8)
    assert int8.bits == {name: 8 for name in space.extreme().bits} and not int8.prune and not int8.rank


def test_sample_reproducible(space):
    a = [space.sample(random.Random(42)) for _ in range(3)]
    assert a[0] == a[1] == a[2]
    r1, r2 = random.Random(7), random.Random(7)
    assert [space.sample(r1) for _ in range(10)] == [space.sample(r2) for _ in range(10)]
    assert len({space.sample(random.Random(s)).digest for s in range(5)}) > 1


@pytest.mark.parametrize(
    "kwargs",
    [
        {"prune_ratios": (0.0, 1.0)},
        {"prune_ratios": (-0.25,)},
        {"bits": (32, 2)},
        {"bits": (12,)},
        {"rank_ratios": (0.0,)},
        {"rank_ratios": (1.5,)},
        {"channel_multiple": 0},
        {"prune_ratios": ()},
        {"bits": ()},
        {"rank_ratios": ()},
    ],
)
def test_space_config_rejects_bad_values(kwargs):
    with pytest.raises(ValueError):
        SpaceConfig(**kwargs)


def test_space_config_shapes_the_space(resnet_inventory):
    fp32_only = build_space(resnet_inventory, SpaceConfig(bits=(32,), rank_ratios=(1.0,), channel_multiple=4))
    assert all(k.startswith("prune/") for k in fp32_only.domains)
    with pytest.raises(ValueError, match="empty"):
        build_space(resnet_inventory, SpaceConfig(prune_ratios=(0.0,), bits=(32,), rank_ratios=(1.0,)))


def test_decompositions_add_a_dimension_for_kxk_convs_only(resnet_inventory):
    """Tucker-2 is searched against spatial SVD on kxk convs when both are allowed; policies
    without it keep their dict (and digest); a decomposition only exists where the rank is cut."""
    both = build_space(resnet_inventory, SpaceConfig(channel_multiple=4, decompositions=("svd", "tucker2")))
    decomp = [n for n in both.domains if n.startswith("decomp/")]
    assert decomp and all(f"rank/{n[7:]}" in both.domains for n in decomp)
    assert all(resnet_inventory.layers[n[7:]].kernel_size == (3, 3) for n in decomp)
    assert "decomp" not in Policy(rank={"a": 0.5}).to_dict()
    assert Policy(decomp={"a": "tucker2"}).decomp == {}  # full rank: nothing to decompose
    assert Policy(rank={"a": 0.5}, decomp={"a": "svd"}) == Policy(rank={"a": 0.5})
    name = decomp[0][7:]
    params = {**both.to_params(both.baseline()), f"rank/{name}": 0.5, f"decomp/{name}": "tucker2"}
    policy = both.from_params(params)
    assert policy.decomp == {name: "tucker2"} and Policy.from_dict(policy.to_dict()) == policy
    assert both.to_params(policy) == params and both.contains(policy)
    only = build_space(resnet_inventory, SpaceConfig(channel_multiple=4, decompositions=("tucker2",)))
    assert not any(n.startswith("decomp/") for n in only.domains)
    assert only.from_params({**only.to_params(only.baseline()), f"rank/{name}": 0.5}).decomp == {name: "tucker2"}
    with pytest.raises(ValueError, match="decomposition"):
        Policy(rank={"a": 0.5}, decomp={"a": "cp"})
    with pytest.raises(ValueError, match="decompositions"):
        SpaceConfig(decompositions=("cp",))
