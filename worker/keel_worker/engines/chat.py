"""Prompt encoding: a user turn through the model's chat template when it has one."""

from __future__ import annotations

from typing import Any


def encode_prompt(tokenizer: Any, text: str) -> list[int]:
    """Token ids of `text` as one user turn, followed by the assistant generation prompt.

    Without a chat template the raw text is tokenized with the tokenizer's own special tokens.
    """
    if getattr(tokenizer, "chat_template", None):
        rendered = tokenizer.apply_chat_template(
            [{"role": "user", "content": text}], add_generation_prompt=True, tokenize=False
        )
        # The template already holds every special token it needs (BOS included).
        return list(tokenizer(rendered, add_special_tokens=False)["input_ids"])
    return list(tokenizer(text)["input_ids"])
