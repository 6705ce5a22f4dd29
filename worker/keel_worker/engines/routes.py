"""Assembles the engine's recorded routes into one `[T_prompt + T_resp, L, K]` tensor per response.

Owns the bookkeeping between `RoutingReplay.record()` (one `[rows, T_call, L, K]` tensor per
forward call) and `RolloutBatch.routes`: the shared prefill of each prompt (left padded) and the
per-step decode rows of a batch that shrinks as responses finish.
"""

from __future__ import annotations

import torch

from keel_worker.engines.routing_replay import RouteRecording


class RouteCollector:
    """Collects routes during one `HFEngine.generate` call; inactive (no-op) for dense models."""

    def __init__(
        self,
        recording: RouteRecording | None,
        prompt_ids: list[list[int]] | None = None,
        n: int = 1,
        max_new_tokens: int = 0,
    ) -> None:
        self.recording = recording
        self.active = recording is not None
        self.prompt_ids = prompt_ids or []
        self.n = n
        self.max_new_tokens = max_new_tokens
        self.prefill_P_S_L_K: torch.Tensor | None = None
        self.response_B_T_L_K: torch.Tensor | None = None

    def take_prefill(self) -> None:
        if not self.active:
            return
        self.prefill_P_S_L_K = self.recording.calls.pop()
        _, _, layers, top_k = self.prefill_P_S_L_K.shape
        shape = (len(self.prompt_ids) * self.n, self.max_new_tokens, layers, top_k)
        self.response_B_T_L_K = torch.zeros(shape, dtype=self.prefill_P_S_L_K.dtype)

    def take_step(self, response_R: torch.Tensor, feeding_R: torch.Tensor, step: int) -> None:
        """Routes of the token sampled at `step`, fed in the forward that just ran."""
        if not self.active:
            return
        call_R_1_L_K = self.recording.calls.pop()
        self.response_B_T_L_K[response_R[feeding_R], step] = call_R_1_L_K[feeding_R, 0]

    def per_response(self, lengths: list[int]) -> list[torch.Tensor]:
        width = self.prefill_P_S_L_K.shape[1]
        out = []
        for i, length in enumerate(lengths):
            prompt = i // self.n
            prompt_L_K = self.prefill_P_S_L_K[prompt, width - len(self.prompt_ids[prompt]) :]
            out.append(torch.cat([prompt_L_K, self.response_B_T_L_K[i, :length]], dim=0))
        return out
