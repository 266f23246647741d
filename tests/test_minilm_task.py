"""The built-in minilm task: real WordNet text, the packaged MiniLM, and its metrics."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from autocompress.errors import UserError
from autocompress.tasks import minilm

needs_wordnet = pytest.mark.skipif(not Path("/usr/share/wordnet/data.noun").is_file(), reason="wordnet-base is not installed")


@needs_wordnet
def test_wordnet_pairs_are_real_sentences():
    pairs = minilm.wordnet_pairs()
    assert len(pairs) > 20000
    assert len({e for e, _ in pairs}) > 0.9 * len(pairs)
    for example, definition in pairs[:200]:
        assert len(example) >= 20 and len(definition) >= 20 and '"' not in definition


def test_missing_wordnet_is_a_clear_error(monkeypatch, tmp_path):
    monkeypatch.setenv("AUTOCOMPRESS_WORDNET_DIR", str(tmp_path))
    with pytest.raises(UserError, match="apt-get install wordnet-base"):
        minilm.wordnet_pairs()


def test_metrics():
    torch.manual_seed(0)
    e = torch.nn.functional.normalize(torch.randn(10, 16), dim=-1)
    assert minilm.cosine_to_teacher(e, e) == pytest.approx(1.0)
    assert minilm.cosine_to_teacher(-e, e) == pytest.approx(-1.0)
    # Examples equal to their definitions retrieve them all; a rotation retrieves none.
    assert minilm.gloss_retrieval_accuracy(torch.cat([e, e]), torch.zeros(20)) == 1.0
    assert minilm.gloss_retrieval_accuracy(torch.cat([e, e.roll(1, dims=0)]), torch.zeros(20)) == 0.0


@needs_wordnet
def test_task_builds_and_the_original_scores_itself():
    task = minilm.build_minilm_task(train_pairs=64, eval_pairs=32)
    ids, mask = task.example_inputs
    assert ids.shape == mask.shape == (1, minilm.MAX_TOKENS) and ids.dtype == torch.int64
    (eval_ids, eval_mask), targets = next(iter(task.eval_loader))
    assert eval_ids.shape == (64, minilm.MAX_TOKENS) and targets.shape == (64, 384)
    with torch.no_grad():
        out = task.model(eval_ids, eval_mask)
    assert task.metric(out, targets) == pytest.approx(1.0, abs=1e-5)
    assert minilm.gloss_retrieval_accuracy(out, targets) > 1 / 32  # far better than chance
    assert task.distill_loss == "cosine" and task.feature_layers[-1] == "layers.5.fc2"


@needs_wordnet
def test_the_tasks_distillation_recovers_a_pruned_student():
    from autocompress import compress
    from autocompress.evaluators import DistillConfig, distill, evaluate
    from autocompress.inventory import build_inventory
    from autocompress.spaces import Policy

    torch.manual_seed(0)
    task = minilm.build_minilm_task(train_pairs=256, eval_pairs=64)
    inventory = build_inventory(task.model, task.example_inputs, task.ignored_layers)
    policy = Policy(prune={g: 0.25 for g in inventory.groups if g.endswith("fc1")})
    student = compress.apply(task.model, inventory, policy, task.example_inputs)
    before = evaluate(student, task.eval_loader, task.metric)
    config = DistillConfig(steps=12, loss=task.distill_loss, optimizer=task.distill_optimizer, lr=task.distill_lr)
    distill(student, task.model, task.train_loader, config)
    after = evaluate(student, task.eval_loader, task.metric)
    assert before < 0.9 and after > before + 0.03, (before, after)
