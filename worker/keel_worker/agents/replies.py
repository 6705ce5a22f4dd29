"""The OpenAI-shaped answers of an episode's model calls, with keel's own `keel` object.

Pure: the caller passes what was sampled (ids, μ logprobs, finish) and the parsed reply; these
functions only lay it out as OpenAI's chat.completion / text_completion objects.
"""

from __future__ import annotations

import time
from typing import Any


def chat_completion(
    *,
    call_id: str,
    model: str,
    message: dict[str, Any],
    finish_reason: str,
    prompt_tokens: int,
    token_strings: list[str] | None,
    keel: dict[str, Any],
) -> dict[str, Any]:
    """`token_strings` is given when the caller asked for `logprobs` (one per sampled id)."""
    choice: dict[str, Any] = {"index": 0, "message": message, "finish_reason": finish_reason}
    if token_strings is not None:
        choice["logprobs"] = {"content": _token_logprobs(token_strings, keel["logprobs"])}
    return _answer(f"chatcmpl-{call_id}", "chat.completion", model, choice, prompt_tokens, keel)


def text_completion(
    *,
    call_id: str,
    model: str,
    text: str,
    finish_reason: str,
    prompt_tokens: int,
    token_strings: list[str] | None,
    keel: dict[str, Any],
) -> dict[str, Any]:
    choice: dict[str, Any] = {
        "index": 0,
        "text": text,
        "finish_reason": finish_reason,
        "logprobs": None,
    }
    if token_strings is not None:
        choice["logprobs"] = {
            "tokens": token_strings,
            "token_logprobs": keel["logprobs"],
            "top_logprobs": None,
            "text_offset": _offsets(token_strings),
        }
    return _answer(f"cmpl-{call_id}", "text_completion", model, choice, prompt_tokens, keel)


def _answer(
    answer_id: str,
    kind: str,
    model: str,
    choice: dict[str, Any],
    prompt_tokens: int,
    keel: dict[str, Any],
) -> dict[str, Any]:
    """OpenAI's envelope around one choice, with its usage and keel's object."""
    completion_tokens = len(keel["token_ids"])
    return {
        "id": answer_id,
        "object": kind,
        "created": int(time.time()),
        "model": model,
        "choices": [choice],
        "usage": {
            "prompt_tokens": prompt_tokens,
            "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens,
        },
        "keel": keel,
    }


def _token_logprobs(tokens: list[str], logprobs: list[float]) -> list[dict[str, Any]]:
    return [
        {"token": t, "logprob": lp, "bytes": list(t.encode()), "top_logprobs": []}
        for t, lp in zip(tokens, logprobs, strict=True)
    ]


def _offsets(tokens: list[str]) -> list[int]:
    offsets, at = [], 0
    for t in tokens:
        offsets.append(at)
        at += len(t)
    return offsets
