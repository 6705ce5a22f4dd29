"""`config.logging` in the library entry point `train()`: the TensorBoard event files hold each
step's metrics exactly as `train()` yields them; a tracker whose package is missing fails with the
extra to install."""

from __future__ import annotations

import re
import sys

import pytest
from tracker_files import tensorboard_scalars
from training_helpers import parity_reward, tiny_config

from keel.types.training import LoggingConfig
from keel_worker.training.run import train
from keel_worker.training.trackers import StepTrackers


@pytest.mark.slow
def test_train_writes_what_it_yields_to_tensorboard(tmp_path, cache_dir):
    config = tiny_config(logging={"tensorboard": True})
    results = list(
        train(config, workdir=tmp_path / "run", reward_fn=parity_reward, cache_dir=cache_dir)
    )
    scalars = tensorboard_scalars(tmp_path / "run" / "tensorboard")
    assert [r.step for r in results] == [1, 2]
    for result in results:
        for name, value in result.metrics.items():
            assert scalars[name][result.step] == pytest.approx(value, rel=1e-6, nan_ok=True), name


@pytest.mark.parametrize(
    ("logging", "module", "extra"),
    [
        ({"tensorboard": True}, "tensorboardX", "tensorboard"),
        ({"wandb": {"project": "p", "mode": "offline"}}, "wandb", "wandb"),
    ],
)
def test_a_missing_extra_fails_naming_it(tmp_path, monkeypatch, logging, module, extra):
    monkeypatch.setitem(sys.modules, module, None)  # what `import` sees without the package
    with pytest.raises(RuntimeError, match=re.escape(f"pip install 'keel-rl[{extra}]'")):
        StepTrackers.open(
            LoggingConfig.model_validate(logging), logdir=tmp_path, run_id="r", config={}
        )
