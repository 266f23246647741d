"""Random valid policies on each architecture family: the candidate runs, shrinks as the
policy says, keeps coupled channels equal, matches the latency table's shapes, and exports
to an ONNX engine equal to PyTorch that runs integer kernels where int8 was chosen."""

from __future__ import annotations

import random

import pytest
import torch
from torch import nn

from autocompress import compress
from autocompress.export import export_engine
from autocompress.inventory import build_inventory
from autocompress.latency_lut import OrtCpuBackend, effective_layers
from autocompress.spaces import SpaceConfig, build_space
from autocompress.tasks.models import DemoResNet, DenseBlockNet, MobileNetV2Small, VGGSmall
from autocompress.tasks.transformer import ViTSmall, bert_from_hf
from conftest import randomize_batchnorm


def _bert_from_config() -> nn.Module:
    from transformers import BertConfig, BertModel

    config = BertConfig(vocab_size=200, hidden_size=64, num_hidden_layers=2, num_attention_heads=4, intermediate_size=128)
    return bert_from_hf(BertModel(config).eval())


ARCHITECTURES = {
    "resnet": lambda: DemoResNet(width=8),
    "mobilenetv2": lambda: MobileNetV2Small(width=8),
    "densenet": lambda: DenseBlockNet(width=8, growth=8),
    "vgg": lambda: VGGSmall(width=8),
    "vit": lambda: ViTSmall(hidden=32, num_heads=4, mlp_hidden=64),
    "bert": _bert_from_config,
}
MULTIPLE = 4


def _inputs(arch: str, batch: int, seed: int) -> tuple[torch.Tensor, ...]:
    gen = torch.Generator().manual_seed(seed)
    if arch == "bert":
        ids = torch.randint(0, 200, (batch, 12), generator=gen)
        mask = torch.ones(batch, 12, dtype=torch.int64)
        mask[:, 9:] = (torch.arange(batch) % 2).unsqueeze(1)  # some rows padded
        return ids, mask
    return (torch.randn(batch, 1, 28, 28, generator=gen),)


def _model(name: str) -> nn.Module:
    torch.manual_seed(0)
    return randomize_batchnorm(ARCHITECTURES[name](), seed=1).eval()  # folding mistakes show


@pytest.mark.parametrize("arch", sorted(ARCHITECTURES))
def test_random_policies_build_shrink_and_export(arch, tmp_path):
    model = _model(arch)
    x = _inputs(arch, 1, 2)
    inv = build_inventory(model, x)
    space = build_space(inv, SpaceConfig(channel_multiple=MULTIPLE, decompositions=("svd", "tucker2")))
    assert any(n.startswith("prune/") for n in space.domains), "every family has prunable groups"
    extreme = space.to_params(space.extreme())
    tucker = space.from_params({**extreme, **{n: "tucker2" for n in space.domains if n.startswith("decomp/")}})
    backend = OrtCpuBackend(threads=1, warmup=1, min_runs=3, min_time_s=0.0)
    rng = random.Random(0)
    full_params = sum(p.numel() for p in model.parameters())
    calib = [_inputs(arch, 16, 3)]
    check = [(_inputs(arch, 32, 4), None)]
    policies = [space.extreme()] + ([tucker] if tucker.decomp else []) + [space.sample(rng) for _ in range(2)]
    for i, policy in enumerate(policies):
        student = compress.apply(model, inv, policy, x, calib, channel_multiple=MULTIPLE)
        out = student(*x)
        assert out.shape == model(*x).shape and torch.isfinite(out).all()
        if any(r > 0 for r in policy.prune.values()):
            assert sum(p.numel() for p in student.parameters()) < full_params

        modules = dict(student.named_modules())
        for name in policy.decomp:  # Tucker-2: 1x1, kxk, 1x1 in place of the layer
            kernels = [m.kernel_size for n, m in modules.items() if n.startswith(name + ".") and isinstance(m, nn.Conv2d)]
            assert len(kernels) == 3 and kernels[0] == kernels[2] == (1, 1), (name, kernels)
        # Coupled layers keep equal channel counts, and the table sees the shapes the candidate has.
        for group in inv.prunable_groups():
            widths = {modules[n].out_channels if isinstance(modules[n], nn.Conv2d) else modules[n].out_features
                      for n in group.layers if isinstance(modules.get(n), (nn.Conv2d, nn.Linear))}
            assert len(widths) <= 1, (group.name, widths)
        for choice in effective_layers(inv, policy, MULTIPLE):
            mod = modules[choice.layer.name]
            if isinstance(mod, nn.Conv2d):
                assert (mod.in_channels, mod.out_channels, mod.groups) == (choice.in_channels, choice.out_channels, choice.groups)
            elif isinstance(mod, nn.Linear):
                assert (mod.in_features, mod.out_features) == (choice.in_channels, choice.out_channels)

        engine = export_engine(student, x, tmp_path / f"{arch}-{i}.onnx", backend, check)
        assert engine.ok, engine.problems
        assert engine.relative_error <= engine.tolerance
        integer = sum(1 for b in policy.bits.values() if b in (8, 4))
        if integer:
            assert sum(engine.integer_nodes.values()) >= engine.int8_layers >= integer
        else:
            assert not engine.integer_nodes
        if any(b == 4 for b in policy.bits.values()):
            assert engine.integer_nodes.get("MatMulNBits", 0) >= sum(1 for b in policy.bits.values() if b == 4)
