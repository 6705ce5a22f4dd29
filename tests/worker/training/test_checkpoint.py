"""Checkpoints are plain HF directories plus trainer state, written atomically."""

import json

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from keel_worker.engines.models import load_model
from keel_worker.training.checkpoint import (
    TrainerState,
    checkpoint_dir,
    latest_checkpoint,
    load_checkpoint,
    save_checkpoint,
)


def _state(step: int) -> TrainerState:
    return TrainerState(step=step, policy_version=step, data_cursor=8 * step, optimizer={})


def test_save_load_gives_identical_logits(tmp_path):
    loaded = load_model("tiny-moe", cache_dir=tmp_path / "cache")
    path = save_checkpoint(
        checkpoint_dir(tmp_path, 3), model=loaded.model, tokenizer=loaded.tokenizer,
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
            checkpoint_dir(tmp_path, step), model=loaded.model, tokenizer=loaded.tokenizer,
            state=_state(step),
        )
    # A crash mid-write leaves a hidden temp dir or a dir without trainer state: never picked.
    (tmp_path / "checkpoints" / ".step_000020.tmp").mkdir()
    checkpoint_dir(tmp_path, 30).mkdir()
    assert latest_checkpoint(tmp_path) == checkpoint_dir(tmp_path, 10)
    assert not [p for p in (tmp_path / "checkpoints").iterdir() if p.name.startswith(".step_0000")
                and p.name != ".step_000020.tmp"]
