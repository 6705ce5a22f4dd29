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
    """

    prompt_ids: list[list[int]]
    response_ids: list[list[int]]
    rollout_logprobs: list[torch.Tensor]
    finish_reasons: list[FinishReason]
    routes: list[torch.Tensor] | None
    prompt_index: list[int]

    def __len__(self) -> int:
        return len(self.response_ids)


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
