"""The rollout engine a CPU `TrainingSession` builds: an fp32 `hf` engine holds the trainer's
own weights, so every optimizer step and every rollback reaches it without a second copy."""

from __future__ import annotations

import torch
from training_helpers import parity_reward, tiny_config

from keel.types.training import TaskItem
from keel_worker.training.session import TrainingSession

ITEMS = [TaskItem(prompt=f"What is {a} + 1?", answer=str(a + 1)) for a in range(2)]
IDS = torch.tensor([[1, 72, 105, 33, 40, 41]])


def _open(tmp_path, cache_dir, **overrides) -> TrainingSession:
    config = tiny_config(model={"name": "tiny-dense"}, **overrides)
    return TrainingSession.open(
        config, workdir=tmp_path, cache_dir=cache_dir, device="cpu", resume=False
    )


def _logits(model: torch.nn.Module) -> torch.Tensor:
    with torch.no_grad():
        return model(IDS).logits


def _aliased(run: TrainingSession) -> bool:
    """Whether every engine parameter is one of the trainer's tensors."""
    trainer = {p.data_ptr() for p in run.model.parameters()}
    return all(p.data_ptr() in trainer for p in run.engine.model.parameters())


def test_engine_logits_equal_the_trainers_after_each_step_and_a_rollback(tmp_path, cache_dir):
    run = _open(tmp_path, cache_dir)
    assert _aliased(run)
    initial = _logits(run.model)
    run.trainer.step(ITEMS, parity_reward, seed=1)
    after_one = _logits(run.model)
    assert not torch.equal(after_one, initial)  # the step moved the policy
    assert torch.equal(_logits(run.engine.model), after_one)
    path, _ = run.save(1, data_cursor=2, rng={}, summary={})

    run.trainer.step(ITEMS, parity_reward, seed=2)
    assert torch.equal(_logits(run.engine.model), _logits(run.model))
    run.restore(path)

    assert _aliased(run)
    assert torch.equal(_logits(run.model), after_one)
    assert torch.equal(_logits(run.engine.model), after_one)


def test_a_low_precision_engine_keeps_its_own_weights(tmp_path, cache_dir):
    run = _open(tmp_path, cache_dir, rollout={"precision": "bf16"})
    trainer = {p.data_ptr() for p in run.model.parameters()}
    assert not any(p.data_ptr() in trainer for p in run.engine.model.parameters())
