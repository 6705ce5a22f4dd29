"""The training config rejects impossible schedules and bad replay settings."""

import pytest
from pydantic import ValidationError

from keel.types.training import TaskConfig, TaskItem, TrainingConfig


def test_defaults_are_minirl_on_addition():
    cfg = TrainingConfig()
    assert cfg.algorithm.name == "minirl"
    assert cfg.task.name == "addition"
    assert cfg.responses_per_step == 64
    assert cfg.minibatch_size == 64


@pytest.mark.parametrize("mode", ["group_mean", "mean_std", "rloo"])
def test_group_size_one_with_group_advantage_is_rejected(mode):
    with pytest.raises(ValidationError, match="group_size=1"):
        TrainingConfig(group_size=1, algorithm={"name": "minirl", "advantage": mode})


def test_minibatches_must_divide_the_step():
    with pytest.raises(ValidationError, match="does not divide"):
        TrainingConfig(prompts_per_step=3, group_size=4, num_minibatches=5)
    assert TrainingConfig(prompts_per_step=3, group_size=4, num_minibatches=6).minibatch_size == 2


def test_unknown_fields_are_rejected():
    with pytest.raises(ValidationError):
        TrainingConfig(learning_rate=1e-5)


def test_replay_defaults_to_auto_and_its_interval_is_checked():
    cfg = TrainingConfig()
    assert (cfg.routing_replay, cfg.routing_replay_every) == ("auto", 10)
    assert TrainingConfig(routing_replay_every=0).routing_replay_every == 0
    with pytest.raises(ValidationError):
        TrainingConfig(routing_replay_every=-1)
    with pytest.raises(ValidationError):
        TrainingConfig(routing_replay="R4")


def test_dataset_task_needs_items_and_builtins_take_none():
    with pytest.raises(ValidationError, match="needs a non-empty"):
        TaskConfig(name="dataset")
    with pytest.raises(ValidationError, match="takes no 'items'"):
        TaskConfig(name="addition", items=[TaskItem(prompt="p", answer="1")] * 2)
    TaskConfig(name="dataset", items=[TaskItem(prompt="p", answer="1")] * 2)


def test_optimizer_betas_are_checked():
    with pytest.raises(ValidationError, match="betas"):
        TrainingConfig(optimizer={"betas": (0.9, 1.0)})


def test_the_model_is_a_name_or_a_checkpoint_id_never_both():
    assert TrainingConfig().model.name == "smollm2-135m-instruct"
    assert TrainingConfig().model.checkpoint_id is None
    by_id = TrainingConfig(model={"checkpoint_id": "ckpt_0123"}).model
    assert (by_id.name, by_id.checkpoint_id) == (None, "ckpt_0123")
    for model in (
        {"name": "tiny-dense", "checkpoint_id": "ckpt_0123"},
        {"name": None},
        {"name": None, "checkpoint_id": None},
    ):
        with pytest.raises(ValidationError, match="exactly one of 'name' or 'checkpoint_id'"):
            TrainingConfig(model=model)


def test_checkpoint_keep_last_keeps_at_least_one():
    assert TrainingConfig().checkpoint_keep_last is None
    assert TrainingConfig(checkpoint_keep_last=1).checkpoint_keep_last == 1
    with pytest.raises(ValidationError):
        TrainingConfig(checkpoint_keep_last=0)


def test_lora_is_off_by_default_and_its_fields_are_checked():
    assert TrainingConfig().lora is None  # full fine-tuning
    lora = TrainingConfig(lora={}).lora
    assert (lora.rank, lora.alpha, lora.dropout, lora.target_modules) == (
        16,
        32.0,
        0.0,
        "all-linear",
    )
    assert TrainingConfig(lora={"target_modules": ["q_proj"]}).lora.target_modules == ["q_proj"]
    for bad in (
        {"rank": 0},
        {"alpha": 0},
        {"dropout": 1.0},
        {"target_modules": []},
        {"target_modules": "all"},
        {"target_modules": [""]},
        {"scale": 2},
    ):
        with pytest.raises(ValidationError):
            TrainingConfig(lora=bad)
