"""Checkpoints are plain HF directories plus trainer state, written atomically; retention keeps
the newest k and every pinned one."""

import json

import pytest
import torch
from training_helpers import parity_reward, tiny_config
from transformers import AutoModelForCausalLM, AutoTokenizer

from keel.types.checkpoints import TRAINER_STATE_FILE
from keel_worker.engines.models import load_model
from keel_worker.training.checkpoint import (
    TrainerState,
    WorkdirCheckpoints,
    checkpoint_dir,
    checkpoints_to_delete,
    latest_checkpoint,
    load_checkpoint,
    prune_checkpoints,
    save_checkpoint,
)
from keel_worker.training.guard_policy import StoredCheckpoint
from keel_worker.training.run import train


def _state(step: int) -> TrainerState:
    return TrainerState(step=step, policy_version=step, data_cursor=8 * step, optimizer={})


def test_save_load_gives_identical_logits(tmp_path):
    loaded = load_model("tiny-moe", cache_dir=tmp_path / "cache")
    path = save_checkpoint(
        checkpoint_dir(tmp_path, 3),
        model=loaded.model,
        tokenizer=loaded.tokenizer,
        state=_state(3),
    )
    # transformers loads the directory as-is, no keel code involved.
    plain = AutoModelForCausalLM.from_pretrained(path)
    tokenizer = AutoTokenizer.from_pretrained(path)
    assert (path / "model.safetensors").is_file()
    assert (path / "generation_config.json").is_file()
    ids = torch.tensor([tokenizer("What is 2 + 2?")["input_ids"]])
    with torch.no_grad():
        expected = loaded.model(ids).logits
        assert torch.equal(plain(ids).logits, expected)
        model, _, state = load_checkpoint(path)
        assert torch.equal(model(ids).logits, expected)
    assert (state.step, state.policy_version, state.data_cursor) == (3, 3, 24)
    assert json.loads((path / "keel.json").read_text())["step"] == 3


def test_latest_checkpoint_skips_incomplete_and_temporary_dirs(tmp_path):
    loaded = load_model("tiny-dense", cache_dir=tmp_path / "cache")
    assert latest_checkpoint(tmp_path) is None
    for step in (2, 10):
        save_checkpoint(
            checkpoint_dir(tmp_path, step),
            model=loaded.model,
            tokenizer=loaded.tokenizer,
            state=_state(step),
        )
    # A crash mid-write leaves a hidden temp dir or a dir without trainer state: never picked.
    (tmp_path / "checkpoints" / ".step_000020.tmp").mkdir()
    checkpoint_dir(tmp_path, 30).mkdir()
    assert latest_checkpoint(tmp_path) == checkpoint_dir(tmp_path, 10)
    assert not [
        p
        for p in (tmp_path / "checkpoints").iterdir()
        if p.name.startswith(".step_0000") and p.name != ".step_000020.tmp"
    ]


@pytest.mark.parametrize(
    ("steps", "keep_last", "deleted"),
    [
        ({1: False, 2: False, 3: False, 4: False}, 2, [1, 2]),  # the newest two stay
        ({1: False, 2: True, 3: False, 4: False}, 1, [1, 3]),  # pinned 2 survives keep_last=1
        ({2: False, 5: False, 9: False}, 1, [2, 5]),  # by step, not by count of saves
        ({4: True}, 1, []),  # the newest is never deleted, pinned or not
        ({4: False}, 1, []),
        ({1: False, 2: False}, 5, []),  # fewer than keep_last: nothing to do
        ({3: True, 1: True, 2: False}, 1, [2]),  # only pins keep older ones
        ({}, 3, []),
    ],
)
def test_retention_keeps_the_newest_and_every_pinned_checkpoint(steps, keep_last, deleted):
    assert checkpoints_to_delete(steps, keep_last=keep_last) == deleted


def test_retention_needs_at_least_one_kept():
    with pytest.raises(ValueError, match="at least 1"):
        checkpoints_to_delete({1: False}, keep_last=0)


def test_prune_deletes_the_files_of_old_checkpoints_under_a_workdir(tmp_path):
    loaded = load_model("tiny-dense", cache_dir=tmp_path / "cache")
    for step in (1, 2, 3):
        save_checkpoint(
            checkpoint_dir(tmp_path, step),
            model=loaded.model,
            tokenizer=loaded.tokenizer,
            state=_state(step),
        )
    assert prune_checkpoints(tmp_path, keep_last=2) == [1]
    assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir()) == [
        "step_000002",
        "step_000003",
    ]
    assert latest_checkpoint(tmp_path) == checkpoint_dir(tmp_path, 3)


def test_a_workdir_as_the_guards_store_finds_complete_checkpoints_and_drops_later_ones(tmp_path):
    for step in (0, 2, 4, 6):
        checkpoint_dir(tmp_path, step).mkdir(parents=True)
        (checkpoint_dir(tmp_path, step) / TRAINER_STATE_FILE).write_bytes(b"s")
    checkpoint_dir(tmp_path, 3).mkdir()  # no trainer state: a crash mid-write, never a target
    store = WorkdirCheckpoints(tmp_path)
    assert store.latest_at_most(3) == StoredCheckpoint(2, checkpoint_dir(tmp_path, 2))
    assert store.latest_at_most(6) == StoredCheckpoint(6, checkpoint_dir(tmp_path, 6))
    assert store.latest_at_most(-1) is None
    store.delete_after(2)
    assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir()) == [
        "step_000000",
        "step_000002",
        "step_000003",
    ]


@pytest.mark.slow
def test_train_keeps_only_the_last_checkpoints_it_is_asked_to(tmp_path, cache_dir):
    config = tiny_config(
        model={"name": "tiny-dense"},
        steps=2,
        checkpoint_every=1,
        checkpoint_keep_last=1,
        group_size=2,
        num_minibatches=1,
        rollout={"max_new_tokens": 2},
    )
    results = list(train(config, workdir=tmp_path, reward_fn=parity_reward, cache_dir=cache_dir))
    assert [r.checkpoint.name for r in results] == ["step_000001", "step_000002"]
    assert [p.name for p in (tmp_path / "checkpoints").iterdir()] == ["step_000002"]
