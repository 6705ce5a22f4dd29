"""Each prompt of a step measured against the model's context before anything is generated.

The API refuses what it can know without a tokenizer (`keel_server.platform.prompt_bounds`); for
every other model a prompt too long for the context is found here, with the model's own
tokenizer and chat template (`engines.chat.encode_prompt`, as the trainer encodes it), and fails
the job at once, naming the prompt, instead of generating for minutes into a context that cannot
hold it.
"""

from __future__ import annotations

from typing import Any

from keel.types.training import TaskItem

PREVIEW_CHARS = 60


class PromptTooLong(ValueError):
    """A prompt whose tokens leave fewer than `max_new_tokens` positions of the context."""


def check_prompt_lengths(
    items: list[TaskItem], tokenizer: Any, *, context: int, max_new_tokens: int
) -> None:
    """Raise `PromptTooLong` for the first prompt that cannot fit `context` with its answer."""
    from keel_worker.engines.chat import encode_prompt

    room = context - max_new_tokens
    for item in items:
        tokens = len(encode_prompt(tokenizer, item.prompt))
        if tokens > room:
            preview = item.prompt[:PREVIEW_CHARS] + (
                "…" if len(item.prompt) > PREVIEW_CHARS else ""
            )
            raise PromptTooLong(
                f"a prompt is {tokens} tokens ({len(item.prompt)} characters, starting "
                f"{preview!r}), but the model's context of {context} tokens leaves {max(room, 0)} "
                f"for a prompt after rollout.max_new_tokens={max_new_tokens}: shorten it, or "
                "lower max_new_tokens"
            )
