"""Shared fixtures: small seeded models, their inventories, and an isolated cache folder."""

from __future__ import annotations

from typing import Callable

import pytest
import torch
from torch import nn

from autocompress.inventory import LayerInventory, build_inventory
from autocompress.tasks.models import DemoResNet


# DemoResNet's compressible layers in graph order; the last one is the classifier.
RESNET_LAYERS = [
    "stem.0",
    "layer1.0.conv1",
    "layer1.0.conv2",
    "layer2.0.conv1",
    "layer2.0.conv2",
    "layer2.0.shortcut.0",
    "layer3.0.conv1",
    "layer3.0.conv2",
    "layer3.0.shortcut.0",
    "fc",
]
RESNET_CONVS = RESNET_LAYERS[:-1]
# Pruning of coupled and single groups, and factorization of 3x3, 1x1 and linear layers.
RESNET_MIXED_PRUNE_AND_RANK = {
        "prune/stem.0": 0.5,
        "prune/layer2.0.conv1": 0.5,
        "prune/layer3.0.conv1": 0.25,
        "rank/layer3.0.conv2": 0.5,
        "rank/layer2.0.shortcut.0": 0.5,
        "rank/fc": 0.5,
}


@pytest.fixture(scope="session", autouse=True)
def isolated_cache(tmp_path_factory: pytest.TempPathFactory):
    """Every test writes its cache (teachers, shared latency tables) under a temporary folder."""
    root = tmp_path_factory.mktemp("autocompress-cache")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("AUTOCOMPRESS_CACHE", str(root))
        yield root


@pytest.fixture(scope="session", autouse=True)
def unpaused_reference_gauge():
    """Tables in the test process time the reference's first timings back to back: the
    pause between them serves real measurements, not the tests' assertions."""
    from autocompress.latency_lut import LatencyTable

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(LatencyTable, "settle_pause_s", 0.0)
        yield


def randomize_batchnorm(model: nn.Module, seed: int = 0) -> nn.Module:
    """Give every BatchNorm non-trivial affine parameters and running statistics, as a trained
    model has (a fresh BatchNorm is the identity in eval mode, which hides folding mistakes)."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm):
                n = m.num_features
                m.weight.copy_(0.5 + torch.rand(n, generator=gen))
                m.bias.copy_(0.4 * torch.rand(n, generator=gen) - 0.2)
                m.running_mean.copy_(0.4 * torch.rand(n, generator=gen) - 0.2)
                m.running_var.copy_(0.5 + 1.5 * torch.rand(n, generator=gen))
    return model


def make_resnet(width: int = 8, seed: int = 0) -> nn.Module:
    """A seeded DemoResNet in eval mode with realistic BatchNorm statistics."""
    torch.manual_seed(seed)
    return randomize_batchnorm(DemoResNet(width=width), seed).eval()


def make_mlp(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, 4)).eval()


@pytest.fixture(scope="session")
def resnet_factory() -> Callable[..., nn.Module]:
    return make_resnet


@pytest.fixture
def resnet() -> nn.Module:
    return make_resnet(8)


@pytest.fixture
def resnet_input() -> torch.Tensor:
    return torch.randn(1, 1, 28, 28, generator=torch.Generator().manual_seed(1))


@pytest.fixture(scope="session")
def resnet_inventory() -> LayerInventory:
    """Inventory of DemoResNet(width=8) (architecture only: valid for every seed)."""
    x = torch.randn(1, 1, 28, 28, generator=torch.Generator().manual_seed(1))
    return build_inventory(make_resnet(8), (x,))


@pytest.fixture
def mlp() -> nn.Module:
    return make_mlp()


@pytest.fixture
def mlp_input() -> torch.Tensor:
    return torch.randn(1, 16, generator=torch.Generator().manual_seed(2))


@pytest.fixture(scope="session")
def mlp_inventory() -> LayerInventory:
    x = torch.randn(1, 16, generator=torch.Generator().manual_seed(2))
    return build_inventory(make_mlp(), (x,))


MLP_TASK = f"{__import__('pathlib').Path(__file__).resolve().parent / 'fixtures' / 'mlp_task.py'}:build"


@pytest.fixture(scope="session")
def mlp_run(tmp_path_factory: pytest.TempPathFactory, isolated_cache):
    """A real finished search on the tiny MLP task (3 trials, a small space): run.json,
    study.db, engines with sidecars, candidate weights, pareto.json and report.html.
    Tests that change it work on a copy."""
    import io

    from rich.console import Console

    from autocompress.evaluators import DistillConfig
    from autocompress.spaces import SpaceConfig
    from autocompress.study import SearchConfig, run_search

    run_dir = tmp_path_factory.mktemp("mlp-run") / "run"
    config = SearchConfig(
        task=MLP_TASK, latency_budget="10ms", trials=3, run_dir=str(run_dir), seed=0, distill=DistillConfig(steps=5),
        space=SpaceConfig(prune_ratios=(0.0, 0.5), bits=(32, 8), rank_ratios=(1.0,)), calibration_batches=1, share_table=False,
        calibration_seconds=0.0,
    )
    run_search(config, console=Console(file=io.StringIO()))
    return run_dir
