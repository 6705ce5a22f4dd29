"""`config.logging` in the library entry point `train()`: the TensorBoard event files hold each
step's metrics exactly as `train()` yields them."""

from __future__ import annotations

import pytest
from tracker_files import tensorboard_scalars
from training_helpers import parity_reward, tiny_config

from keel_worker.training.run import train


@pytest.mark.slow
def test_train_writes_what_it_yields_to_tensorboard(tmp_path, cache_dir):
    config = tiny_config(logging={"tensorboard": True})
    results = list(train(config, workdir=tmp_path / "run", reward_fn=parity_reward,
                         cache_dir=cache_dir))  # fmt: skip
    scalars = tensorboard_scalars(tmp_path / "run" / "tensorboard")
    assert [r.step for r in results] == [1, 2]
    for result in results:
        for name, value in result.metrics.items():
            assert scalars[name][result.step] == pytest.approx(value, rel=1e-6, nan_ok=True), name
