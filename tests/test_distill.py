from __future__ import annotations

import copy
import subprocess
import sys
import textwrap

import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from autocompress.evaluators import DistillConfig, DivergedError, accuracy, distill, evaluate, recalibrate_batchnorm


def _data(n: int = 96, classes: int = 4, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 16, generator=g)
    y = (x[:, :classes]).argmax(1)
    return x, y


def test_distillation_moves_student_toward_teacher():
    x, y = _data()
    torch.manual_seed(0)
    teacher = nn.Sequential(nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, 4))
    opt = torch.optim.Adam(teacher.parameters(), 1e-2)
    for _ in range(200):
        opt.zero_grad()
        nn.functional.cross_entropy(teacher(x), y).backward()
        opt.step()
    student = nn.Sequential(nn.Linear(16, 8), nn.ReLU(), nn.Linear(8, 4))
    loader = DataLoader(TensorDataset(x, y), batch_size=32, shuffle=True, generator=torch.Generator().manual_seed(0))
    losses = distill(student, teacher.eval(), loader, DistillConfig(steps=150, lr=0.05, temperature=2.0))
    assert len(losses) == 150
    assert sum(losses[-10:]) < 0.5 * sum(losses[:10])
    assert evaluate(student, loader, accuracy) > 0.8


def test_non_finite_loss_raises_diverged():
    x, y = _data()
    teacher = nn.Linear(16, 4)
    student = nn.Linear(16, 4)
    with torch.no_grad():
        student.weight.fill_(float("nan"))
    loader = DataLoader(TensorDataset(x, y), batch_size=32)
    with pytest.raises(DivergedError):
        distill(student, teacher, loader, DistillConfig(steps=3))


def test_config_rejects_bad_values():
    with pytest.raises(ValueError, match="temperature"):
        DistillConfig(temperature=0)
    with pytest.raises(ValueError, match="steps"):
        DistillConfig(steps=-1)


def test_odd_last_batches_do_not_reach_the_onednn_crash():
    """torch 2.13.0+cpu can abort in strided 1x1 conv backward on channels_last inputs with
    odd batch sizes at 2 threads. distill() trims batches to a multiple of 8; run it in a
    subprocess (a crash there fails this test instead of killing pytest)."""
    code = textwrap.dedent(
        """
        import torch
        from torch import nn
        from torch.utils.data import DataLoader, TensorDataset
        from autocompress.evaluators import DistillConfig, distill
        torch.set_num_threads(2)
        torch.manual_seed(0)
        def net():
            return nn.Sequential(nn.Conv2d(1, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 16, 1, stride=2, bias=False),
                                 nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(16, 4))
        x = torch.randn(61, 1, 32, 32)  # grayscale: channels_last is picked; batches of 32 then 29
        loader = DataLoader(TensorDataset(x, torch.zeros(61, dtype=torch.long)), batch_size=32)
        seen = []
        class Spy(nn.Module):
            def __init__(self, m):
                super().__init__(); self.m = m
            def forward(self, x):
                seen.append(x.shape[0]); return self.m(x)
        distill(Spy(net()), net().eval(), loader, DistillConfig(steps=60))
        assert all(n % 8 == 0 for n in seen), seen
        print("ok", sorted(set(seen)))
        """
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "ok [24, 32]" in proc.stdout


def test_feature_distillation_maps_pruned_widths_and_matches_features():
    from autocompress import compress
    from autocompress.evaluators._distill import _FeatureTaps
    from autocompress.inventory import build_inventory
    from autocompress.spaces import Policy

    torch.manual_seed(0)
    teacher = nn.Sequential(nn.Conv2d(1, 16, 3, padding=1), nn.ReLU(), nn.Conv2d(16, 16, 3, padding=1), nn.ReLU(),
                            nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(16, 4)).eval()
    x = torch.randn(64, 1, 8, 8)
    inv = build_inventory(teacher, (x[:1],))
    student = compress.apply(teacher, inv, Policy(prune={"0": 0.5}), (x[:1],), channel_multiple=4)
    loader = [(x[i : i + 16], torch.zeros(16)) for i in range(0, 64, 16)]
    config = DistillConfig(steps=40, lr=0.05, feature_layers=("0", "2"), feature_weight=1.0)

    taps = _FeatureTaps(student, teacher, config.feature_layers)
    with torch.no_grad():
        teacher(x), student(x)
        before = float(taps.loss())
    assert set(taps.maps) == {"0"} and taps.maps["0"].in_features == 8  # only the pruned layer needs a map
    taps.close()

    distill(student, teacher, loader, config)
    taps = _FeatureTaps(student, teacher, ("2",))
    with torch.no_grad():
        teacher(x), student(x)
        after = float(taps.loss())
    taps.close()
    assert after < before
    # Hooks are removed: running the models again stores nothing.
    assert not teacher[0]._forward_hooks and not any(m._forward_hooks for m in student.modules())


def test_feature_distillation_rejects_unknown_layers():
    teacher = nn.Sequential(nn.Linear(4, 4)).eval()
    with pytest.raises(ValueError, match="feature layer"):
        distill(copy.deepcopy(teacher), teacher, [(torch.randn(8, 4), torch.zeros(8))],
                DistillConfig(steps=1, feature_layers=("nope",), feature_weight=1.0))
    with pytest.raises(ValueError, match="needs feature_layers"):
        distill(copy.deepcopy(teacher), teacher, [(torch.randn(8, 4), torch.zeros(8))], DistillConfig(steps=1, feature_weight=1.0))
    with pytest.raises(ValueError):
        DistillConfig(feature_weight=-1.0)


def test_progress_hook_sees_the_student_midway_in_eval_mode():
    from autocompress.evaluators import ProgressHook

    x, y = _data()
    torch.manual_seed(0)
    teacher = nn.Sequential(nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, 4)).eval()
    student = nn.Sequential(nn.Linear(16, 8), nn.ReLU(), nn.Linear(8, 4))
    loader = DataLoader(TensorDataset(x, y), batch_size=32, shuffle=True, generator=torch.Generator().manual_seed(0))
    seen = []

    def look(step, model):
        assert model is student and not model.training
        seen.append((step, evaluate(model, loader, accuracy)))

    losses = distill(student, teacher, loader, DistillConfig(steps=10), ProgressHook(every=3, callback=look))
    assert [s for s, _ in seen] == [3, 6, 9]  # every 3 steps, never after the last one
    assert len(losses) == 10 and not student.training
    with pytest.raises(ValueError, match="every"):
        ProgressHook(every=0, callback=look)


def _bn_net() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(), nn.Conv2d(8, 4, 1), nn.BatchNorm2d(4))


def test_batchnorm_statistics_are_re_estimated_from_the_batches_with_the_current_weights():
    net = _bn_net()
    x = torch.randn(48, 3, 6, 6, generator=torch.Generator().manual_seed(1)) * 3 + 2
    loader = DataLoader(TensorDataset(x, torch.zeros(48)), batch_size=16)
    assert float(net[1].running_mean.abs().max()) == 0.0  # fresh statistics describe nothing yet
    net[1].momentum = 0.3
    assert recalibrate_batchnorm(net, loader, batches=3) == 2
    with torch.no_grad():
        pre = net[0](x)
    # the plain average of the three batches' means: the mean over all 48 samples
    torch.testing.assert_close(net[1].running_mean, pre.mean(dim=(0, 2, 3)), rtol=1e-4, atol=1e-4)
    assert net[1].momentum == 0.3 and net[4].momentum == 0.1  # each layer's own momentum is back
    assert not net.training and not any(m.training for m in net.modules())
    # in eval mode the first BatchNorm now normalizes what it sees: mean about 0, variance about 1
    with torch.no_grad():
        out = net[1](pre)
    assert float(out.mean(dim=(0, 2, 3)).abs().max()) < 1e-3
    assert float((out.var(dim=(0, 2, 3)) - 1).abs().max()) < 0.1


def test_batchnorm_re_estimation_can_be_turned_off_and_skips_batches_of_one():
    net = _bn_net()
    net[1].running_mean.fill_(0.5)
    before = copy.deepcopy(net.state_dict())
    loader = DataLoader(TensorDataset(torch.randn(5, 3, 6, 6), torch.zeros(5)), batch_size=1)
    assert recalibrate_batchnorm(net, loader, batches=0) == 0
    assert recalibrate_batchnorm(net, loader, batches=4) == 0  # every batch has one sample: nothing to average
    for name, tensor in net.state_dict().items():
        torch.testing.assert_close(tensor, before[name])  # the statistics it had are kept
    assert recalibrate_batchnorm(nn.Linear(3, 2), loader, batches=4) == 0  # no BatchNorm: nothing to do


def test_distillation_ends_with_statistics_of_the_final_weights():
    """After the steps, the running averages trail the last weights; the re-estimate replaces them."""
    x, y = _data()
    teacher = nn.Sequential(nn.Linear(16, 4))
    torch.manual_seed(0)
    student = nn.Sequential(nn.Linear(16, 12), nn.BatchNorm1d(12), nn.ReLU(), nn.Linear(12, 4))
    loader = DataLoader(TensorDataset(x, y), batch_size=32)
    distill(student, teacher, loader, DistillConfig(steps=5, lr=0.5, bn_batches=3))
    with torch.no_grad():
        expected = student[0](x).mean(0)
    torch.testing.assert_close(student[1].running_mean, expected, rtol=1e-4, atol=1e-4)
    student_off = copy.deepcopy(student)
    student_off[1].reset_running_stats()
    distill(student_off, teacher, loader, DistillConfig(steps=0, bn_batches=0))
    assert float(student_off[1].running_mean.abs().max()) == 0.0  # off: left as it was
    with pytest.raises(ValueError, match="bn_batches"):
        DistillConfig(bn_batches=-1)
