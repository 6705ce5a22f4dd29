"""Coalescing of pending agent generations into batched `engine.generate` calls.

Owns `GenerationRequest`, `GenerationResult` and `generate_batched`. The engine takes one set of
sampling parameters and one `max_new_tokens` per call, so requests are grouped by (temperature,
top_p, top_k) and each group runs as one call with the group's largest `max_new_tokens`; each
result is then cut to its own request. A cut changes nothing that was sampled: the tokens a
request keeps were drawn from the same logits, with the same μ logprobs, as in a call of its own
(up to the float noise of a different batch), since rows of one batch never see each other.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from keel_worker.engines.base import FinishReason, RolloutBatch, RolloutEngine


@dataclass(frozen=True)
class GenerationRequest:
    """One pending generation: a rendered prompt and its sampling parameters.

    `stop_ids`: tokens that end this response (kept, like the engine's EOS) besides the engine's
    EOS ids; the engine still decodes the batch on, the response is cut at the first one.
    """

    prompt_ids: list[int]
    max_new_tokens: int
    temperature: float
    top_p: float
    top_k: int
    stop_ids: frozenset[int] | None = None

    def __post_init__(self) -> None:
        # Checked here so that one bad request fails alone, not the batch it would join.
        if not self.prompt_ids or self.max_new_tokens < 1:
            raise ValueError("a generation needs a non-empty prompt and max_new_tokens >= 1")
        if self.temperature < 0 or not 0.0 < self.top_p <= 1.0 or self.top_k < 0:
            raise ValueError(
                "need temperature >= 0, 0 < top_p <= 1, top_k >= 0; got "
                f"{self.temperature}, {self.top_p}, {self.top_k}"
            )

    @property
    def sampling(self) -> tuple[float, float, int]:
        return (self.temperature, self.top_p, self.top_k)


@dataclass
class GenerationResult:
    """What the engine sampled for one request.

    Attributes:
        sampled_ids: the response's token ids, up to and including its stop token (if any).
        logprobs: μ logprob of each sampled token (`RolloutBatch.rollout_logprobs`).
        finish_reason: "stop" at an EOS or stop id, "length" at the request's max_new_tokens.
        routes: MoE models only: `[T_prompt + len(sampled_ids), L, K]` expert ids of the tokens
            fed to the engine (`RolloutBatch.routes`, cut alongside the response).
    """

    sampled_ids: list[int]
    logprobs: list[float]
    finish_reason: FinishReason
    routes: torch.Tensor | None = None


def generate_batched(
    engine: RolloutEngine, requests: list[GenerationRequest]
) -> list[GenerationResult]:
    """One `engine.generate` call per set of equal sampling parameters; results in request order."""
    groups: dict[tuple[float, float, int], list[int]] = {}
    for i, request in enumerate(requests):
        groups.setdefault(request.sampling, []).append(i)
    results: list[GenerationResult | None] = [None] * len(requests)
    for (temperature, top_p, top_k), members in groups.items():
        batch = engine.generate(
            [requests[i].prompt_ids for i in members],
            n=1,
            max_new_tokens=max(requests[i].max_new_tokens for i in members),
            temperature=temperature,
            top_p=top_p,
            top_k=top_k,
            seed=None,
        )
        for row, i in enumerate(members):
            results[i] = _cut(batch, row, requests[i])
    return results  # type: ignore[return-value]  # every index belongs to one group


def _cut(batch: RolloutBatch, row: int, request: GenerationRequest) -> GenerationResult:
    """Row `row` of `batch` ended where `request` ends: at its first stop id, else at its
    max_new_tokens."""
    response = batch.response_ids[row]
    keep = min(len(response), request.max_new_tokens)
    finish: FinishReason = "length" if len(response) > keep else batch.finish_reasons[row]
    stop_at = next(
        (t for t, token in enumerate(response[:keep]) if token in (request.stop_ids or ())), None
    )
    if stop_at is not None:
        keep, finish = stop_at + 1, "stop"
    routes = None
    if batch.routes is not None:
        routes = batch.routes[row][: len(request.prompt_ids) + keep]
    return GenerationResult(
        sampled_ids=response[:keep],
        logprobs=batch.rollout_logprobs[row][:keep].tolist(),
        finish_reason=finish,
        routes=routes,
    )
