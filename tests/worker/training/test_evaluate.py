"""Held-out evaluation: greedy by default, the mean over k sampled responses when asked."""

from __future__ import annotations

import pytest
from pydantic import ValidationError
from training_helpers import tiny_config

from keel.types.training import TaskItem
from keel_worker.engines.hf import HFEngine
from keel_worker.engines.models import load_model
from keel_worker.training.evaluate import evaluate
from keel_worker.training.tasks import Task

HELD_OUT = tuple(TaskItem(prompt=f"What is {a} + 2?", answer=str(a + 2)) for a in range(3))


def _scored(config, cache_dir) -> tuple[dict[str, float], list[tuple[str, str]]]:
    """The eval's metrics and every (completion, answer) pair its verifier scored."""
    seen: list[tuple[str, str]] = []

    def every_other(text: str, answer: str) -> float:
        seen.append((text, answer))
        return float(len(seen) % 2 == 0)

    loaded = load_model(config.model.name, cache_dir=cache_dir)
    engine = HFEngine(loaded.model, loaded.tokenizer, precision="fp32")
    task = Task("held", train_items=HELD_OUT[:1], eval_items=HELD_OUT, verifier=every_other)
    return evaluate(engine, loaded.tokenizer, task, config), seen


def test_greedy_by_default_scores_one_response_per_prompt(cache_dir):
    metrics, seen = _scored(tiny_config(eval_size=2), cache_dir)
    assert [answer for _, answer in seen] == ["2", "3"]
    assert metrics["eval/accuracy"] == 0.5 and metrics["eval/size"] == 2.0


def test_sampled_eval_averages_k_responses_per_prompt(cache_dir):
    config = tiny_config(eval_size=3, eval_samples=4, eval_temperature=1.0)
    metrics, seen = _scored(config, cache_dir)
    assert sorted(answer for _, answer in seen) == ["2"] * 4 + ["3"] * 4 + ["4"] * 4
    assert metrics["eval/accuracy"] == 0.5  # 6 of the 12 responses scored 1
    # Sampled at temperature 1 on an untrained model, a prompt's 4 responses are not one.
    first_prompt = {text for text, answer in seen if answer == "2"}
    assert len(first_prompt) > 1


def test_several_greedy_samples_are_refused():
    with pytest.raises(ValidationError, match="eval_samples=4 with eval_temperature=0"):
        tiny_config(eval_samples=4)
