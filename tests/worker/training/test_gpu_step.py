"""Training steps with the trainer on CUDA (the `hf` engine keeps sampling on the CPU)."""

from __future__ import annotations

import math

import pytest
import torch
from training_helpers import parity_reward, tiny_config

from keel_worker.training.run import train

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA"),
]


@pytest.mark.parametrize("replay", ["none", "R3"])
def test_steps_on_cuda(tmp_path, cache_dir, replay):
    config = tiny_config(routing_replay=replay, train_dtype="bf16")
    results = list(
        train(config, workdir=tmp_path, reward_fn=parity_reward, cache_dir=cache_dir, device="cuda")
    )
    metrics = results[-1].metrics
    assert math.isfinite(metrics["optim/loss"]) and metrics["optim/grad_norm"] > 0
