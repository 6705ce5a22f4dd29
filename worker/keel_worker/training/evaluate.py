"""Held-out evaluation on the task's held-out split, scored by its verifier: greedy by default,
or the mean over `samples` responses per prompt at `temperature` (the paper's avg@k)."""

from __future__ import annotations

from keel.types import metric_names as metric
from keel.types.training import TrainingConfig
from keel_worker.engines.base import RolloutEngine
from keel_worker.engines.chat import encode_prompt
from keel_worker.training.tasks import Task


def evaluate(
    engine: RolloutEngine, tokenizer, task: Task, config: TrainingConfig
) -> dict[str, float]:
    """Accuracy (mean verifier reward) on the first `config.eval_size` held-out items."""
    items = task.eval_items[: config.eval_size]
    prompt_ids = [encode_prompt(tokenizer, item.prompt) for item in items]
    batch = engine.generate(
        prompt_ids,
        n=config.eval_samples,
        max_new_tokens=config.rollout.max_new_tokens,
        temperature=config.eval_temperature,
        top_p=1.0,
        seed=0,
    )
    texts = tokenizer.batch_decode(batch.response_ids, skip_special_tokens=True)
    pairs = zip(texts, batch.prompt_index, strict=True)
    rewards = [task.reward(text, items[i]) for text, i in pairs]
    lengths = [len(r) for r in batch.response_ids]
    return {
        metric.EVAL_ACCURACY: sum(rewards) / len(rewards),
        metric.EVAL_LENGTH_MEAN: sum(lengths) / len(lengths),
        metric.EVAL_SIZE: float(len(items)),
    }
