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
    return {
        "id": f"chatcmpl-{call_id}",
        "object": "chat.completion",
        "created": int(time.time()),
        "model": model,
        "choices": [choice],
        "usage": _usage(prompt_tokens, len(keel["token_ids"])),
        "keel": keel,
    }


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
    choice: dict[str, Any] = {"index": 0, "text": text, "finish_reason": finish_reason}
    choice["logprobs"] = None
    if token_strings is not None:
        choice["logprobs"] = {
            "tokens": token_strings,
            "token_logprobs": keel["logprobs"],
            "top_logprobs": None,
            "text_offset": _offsets(token_strings),
        }
    return {
        "id": f"cmpl-{call_id}",
        "object": "text_completion",
        "created": int(time.time()),
        "model": model,
        "choices": [choice],
        "usage": _usage(prompt_tokens, len(keel["token_ids"])),
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


def _usage(prompt_tokens: int, completion_tokens: int) -> dict[str, int]:
    return {
        "prompt_tokens": prompt_tokens,
        "completion_tokens": completion_tokens,
        "total_tokens": prompt_tokens + completion_tokens,
    }
