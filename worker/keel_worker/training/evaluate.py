"""Held-out evaluation: greedy decoding on the task's held-out split, scored by its verifier."""

from __future__ import annotations

from keel_worker.engines.base import RolloutEngine
from keel_worker.engines.chat import encode_prompt
from keel_worker.training.tasks import Task


def evaluate(
    engine: RolloutEngine, tokenizer, task: Task, *, size: int, max_new_tokens: int
) -> dict[str, float]:
    """Greedy accuracy (mean verifier reward) on the first `size` held-out items."""
    items = task.eval_items[:size]
    prompt_ids = [encode_prompt(tokenizer, item.prompt) for item in items]
    batch = engine.generate(
        prompt_ids, n=1, max_new_tokens=max_new_tokens, temperature=0.0, top_p=1.0, seed=0
    )
    texts = tokenizer.batch_decode(batch.response_ids, skip_special_tokens=True)
    pairs = zip(texts, batch.prompt_index, strict=True)
    rewards = [task.reward(text, items[i]) for text, i in pairs]
    lengths = [len(r) for r in batch.response_ids]
    return {
        "eval/accuracy": sum(rewards) / len(rewards),
        "eval/length_mean": sum(lengths) / len(lengths),
        "eval/size": float(len(items)),
    }
