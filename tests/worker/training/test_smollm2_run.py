"""A real run: SmolLM2-135M-Instruct on the addition task, a few small steps (slow)."""

from __future__ import annotations

import math

import pytest
import torch

from keel.types.training import TrainingConfig
from keel_worker.engines.models import load_model
from keel_worker.training.checkpoint import load_checkpoint
from keel_worker.training.run import train

pytestmark = pytest.mark.slow


def test_smollm2_addition_steps(tmp_path, cache_dir):
    config = TrainingConfig(
        model={"name": "smollm2-135m-instruct"},
        prompts_per_step=2,
        group_size=4,
        micro_batch_size=8,
        rollout={"max_new_tokens": 24},
        optimizer={"lr": 1e-5},
        steps=2,
        eval_every=2,
        eval_size=4,
        train_dtype="bf16",
    )
    initial = {
        n: p.detach().clone()
        for n, p in load_model(config.model.name, cache_dir=cache_dir).model.named_parameters()
    }
    results = list(train(config, workdir=tmp_path, cache_dir=cache_dir))

    assert [r.step for r in results] == [1, 2]
    for r in results:
        m = r.metrics
        for key in (
            "optim/loss",
            "optim/grad_norm",
            "reward/mean",
            "train/entropy",
            "mismatch/kl_k1",
            "response/length_mean",
            "time/generate_s",
            "time/update_s",
        ):
            assert math.isfinite(m[key]), key
        assert 0.0 <= m["reward/mean"] <= 1.0
    assert 0.0 <= results[0].metrics["eval/accuracy"] <= 1.0
    assert 0.0 <= results[-1].metrics["eval/accuracy_final"] <= 1.0
    # fp32 engine vs the trainer's bf16 autocast: a small but real mismatch is measured.
    assert results[0].metrics["mismatch/kl_k3"] > 0
    final, _, _ = load_checkpoint(results[-1].checkpoint)
    moved = sum(not torch.equal(p, initial[n]) for n, p in final.named_parameters())
    # Steps whose every group has equal rewards give no gradient; a moved model needs one that
    # did not, which 2 prompts × 4 samples at a 0.3 pass rate give with near certainty.
    assert moved > 0
