"""The rollout engine contract shared by the `hf` and `vllm` engines.

Owns `RolloutBatch` (one entry per response, responses of one prompt adjacent) and the
`RolloutEngine` protocol the training loop calls.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, Protocol

import torch

from keel.types.training import RolloutPrecision as Precision  # noqa: F401 (re-exported)

FinishReason = Literal["stop", "length"]


@dataclass
class RolloutBatch:
    """Sampled responses with what the trainer needs to correct for the engine
    (docs/concepts/algorithm.md §1).

    Attributes:
        prompt_ids: prompt token ids of each response (the same list object for the n samples
            of one prompt), without padding.
        response_ids: sampled token ids, up to and including the first EOS (if any).
        rollout_logprobs: μ_θold log-probability of each sampled token, float32 `[T_resp]`, under
            softmax(logits / temperature) of the engine's raw logits (before top-p truncation;
            temperature 0 means greedy with logprobs under softmax(logits)).
        finish_reasons: "stop" when the response ends with EOS, "length" at max_new_tokens.
        routes: MoE models only: `[T_prompt + T_resp, L, K]` expert ids (uint8, int16 above 256
            experts) of every token that was fed to the model, in sequence order. The engine runs
            one extra forward for the last sampled token so its row is the engine's real routing
            as well (it affects no logprob: nothing attends to it within the sequence).
        prompt_index: index into the prompt list passed to `generate`.
        trained_masks: per response, bool `[T_resp]`, True where the policy sampled the token;
            None (what the engines return) when every response token was sampled. A multi-turn
            sequence (an agent episode) interleaves sampled tokens with context tokens (tool
            results, user turns, template glue): the model reads those, the trainer never trains
            on them, and their `rollout_logprobs` entries (0 by convention) are ignored.
    """

    prompt_ids: list[list[int]]
    response_ids: list[list[int]]
    rollout_logprobs: list[torch.Tensor]
    finish_reasons: list[FinishReason]
    routes: list[torch.Tensor] | None
    prompt_index: list[int]
    trained_masks: list[torch.Tensor] | None = None

    def __post_init__(self) -> None:
        if self.trained_masks is None:
            return
        if len(self.trained_masks) != len(self.response_ids):
            raise ValueError(
                f"{len(self.trained_masks)} trained masks for {len(self.response_ids)} responses"
            )
        for i, (mask, ids) in enumerate(zip(self.trained_masks, self.response_ids, strict=True)):
            if mask.dtype != torch.bool or mask.shape != (len(ids),):
                raise ValueError(
                    f"response {i}: trained mask of {mask.dtype} {tuple(mask.shape)}, "
                    f"need torch.bool ({len(ids)},)"
                )

    def __len__(self) -> int:
        return len(self.response_ids)

    def sampled_lengths(self) -> list[int]:
        """Per response, the tokens the policy sampled (context tokens excluded)."""
        if self.trained_masks is None:
            return [len(ids) for ids in self.response_ids]
        return [int(mask.sum()) for mask in self.trained_masks]


class RolloutEngine(Protocol):
    """Samples responses from a copy of the policy; `load_weights` syncs that copy."""

    def generate(
        self,
        prompt_ids: list[list[int]],
        *,
        n: int,
        max_new_tokens: int,
        temperature: float,
        top_p: float,
        top_k: int,
        seed: int | None,
    ) -> RolloutBatch: ...

    def load_weights(self, model: torch.nn.Module) -> None: ...
