"""Prompts longer than the model's context, refused at submission where the API can know it.

A prompt of `n` tokens leaves the model `context - n` positions to answer in; one that leaves
fewer than `rollout.max_new_tokens` cannot be served as configured (a 20,000-character prompt
took 127 s and 1.8 GB before this check). The API has no tokenizer (it never imports torch), so
it refuses only what it knows for sure: the built-in tiny models spend one token per UTF-8 byte
(a byte-level tokenizer) in a context of `BYTE_LEVEL_CONTEXT` tokens, so a prompt of more bytes
than the context leaves for the answer is too long whatever else the template adds. For every
other model the worker checks each prompt with the model's own tokenizer before it generates
(`keel_worker.jobrunner.prompt_length`) and fails the job naming the prompt.
"""

from __future__ import annotations

from collections.abc import Iterable

from keel.types.training import TrainingConfig

# name -> context in tokens (a contract test keeps it equal to the worker's tiny model configs)
BYTE_LEVEL_CONTEXT: dict[str, int] = {"tiny-dense": 1024, "tiny-moe": 1024, "tiny-moe-deep": 1024}


def longest_prompt_bytes(config: TrainingConfig) -> int | None:
    """The most UTF-8 bytes a prompt of this job may have, when the API can know; else None."""
    context = BYTE_LEVEL_CONTEXT.get(config.model.name or "")
    if context is None:
        return None
    return context - config.rollout.max_new_tokens


def first_too_long(config: TrainingConfig, texts: Iterable[str]) -> tuple[int, str] | None:
    """(index, reason) of the first prompt that cannot fit the model's context, if any."""
    limit = longest_prompt_bytes(config)
    if limit is None:
        return None
    for index, text in enumerate(texts):
        size = len(text.encode("utf-8"))
        if size > limit:
            return index, (
                f"the prompt is {size} tokens at least (model {config.model.name!r} spends one "
                f"per UTF-8 byte), but the model's context of "
                f"{BYTE_LEVEL_CONTEXT[config.model.name or '']} tokens leaves {max(limit, 0)} "
                f"for a prompt after rollout.max_new_tokens={config.rollout.max_new_tokens}"
            )
    return None
