"""The training engine's forward: log π(y_t|·) of the sampled tokens, entropy, natural routes.

Only the positions that score a trained response token (`MicroBatch.mask_B_T`: the sampled ones,
not a multi-turn sequence's context tokens) go through the LM head (the other positions'
vocabulary projection is never needed), so the full `[B, S, V]` logits are never built. Logits are
divided by the sampling temperature so that π is the same distribution the engine sampled μ from
(docs/concepts/algorithm.md §1.1: the ratio π/μ compares like with like).

Routing Replay (docs/concepts/algorithm.md §2.4) is applied here: with `replay_routes` every MoE
layer uses those experts (gate weights recomputed from live logits); either way the routes the
routers would pick naturally are returned, so the step can report routing disagreement without a
second forward.

Under FSDP2 (`distributed.sharding`) the decoder and the head run inside the sharded root's
registered forward method (`root_call`), which gathers the root's parameters around them, and
every micro-batch takes one decoder pass (no shared-prompt prefix): each decoder call gathers
every block's parameters, so ranks running different micro-batches must make the same calls.
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from transformers import DynamicCache

from keel_worker.core.diagnostics import entropy_from_logits
from keel_worker.engines.hardware import device_profile
from keel_worker.engines.kv_cache import cache_kwarg
from keel_worker.engines.precision import EmulatedBf16
from keel_worker.engines.routing_replay import RoutingReplay
from keel_worker.training.batching import MicroBatch


@dataclass
class ForwardOutput:
    logprobs_B_T: torch.Tensor  # zero outside mask_B_T; carries the gradient when grad is enabled
    entropy_sum: torch.Tensor  # detached, summed over the trained response tokens
    natural_routes_B_S_L_K: torch.Tensor | None  # on the CPU, compact dtype


class PolicyForward:
    """Callable computing `ForwardOutput` for a micro-batch with the model's current weights."""

    def __init__(
        self,
        model: nn.Module,
        *,
        temperature: float,
        bf16: bool,
        replay: RoutingReplay | None,
        bf16_native: bool | None = None,
        root_call: Callable[..., Any] | None = None,
        share_prompts: bool = True,
    ) -> None:
        """`bf16` computes the forwards in bf16: torch.autocast where the device does so
        natively, else `EmulatedBf16` (the same roundings, in float32); `bf16_native` None
        measures the model's device (`engines.hardware.device_profile`). `root_call(fn, *args)`
        runs the decoder and head of a sharded model (`distributed.sharding.shard_policy`), which
        also wants `share_prompts=False`."""
        self.model = model
        self.decoder = model.get_decoder()
        self.head = model.get_output_embeddings()
        self.temperature = temperature
        self.bf16 = bf16
        self.bf16_native = bf16_native
        self.replay = replay
        self.root_call = root_call or _call
        self.share_prompts = share_prompts

    def _compute_context(self, device: torch.device):
        if not self.bf16:
            return nullcontext()
        if self.bf16_native is None:
            self.bf16_native = device_profile(str(device)).bf16_native
        if self.bf16_native:
            return torch.autocast(device.type, dtype=torch.bfloat16)
        return EmulatedBf16(linear=True)

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    def __call__(
        self, mb: MicroBatch, *, replay_routes_B_S_L_K: torch.Tensor | None = None
    ) -> ForwardOutput:
        device = self.device
        if replay_routes_B_S_L_K is not None:
            assert self.replay is not None, "replay routes given for a model without replay"
            routing = self.replay.replay(replay_routes_B_S_L_K)
        elif self.replay is not None:
            routing = self.replay.record()
        else:
            routing = nullcontext(None)
        mask_B_T = mb.mask_B_T.to(device)
        shared = shared_prompts(mb) if self.replay is None and self.share_prompts else None
        with routing as recording, self._compute_context(device):
            logits_N_V = self.root_call(self._trained_logits, mb, shared, mask_B_T, device)
        scaled_N_V = logits_N_V.float() / self.temperature
        targets_N = mb.targets_B_T.to(device)[mask_B_T]
        # log softmax at the target only: z_target − logsumexp(z), no [N, V] log-prob tensor.
        logprobs_N = scaled_N_V.gather(1, targets_N[:, None]).squeeze(1) - torch.logsumexp(
            scaled_N_V, dim=-1
        )
        logprobs_B_T = torch.zeros(mask_B_T.shape, device=device).masked_scatter(
            mask_B_T, logprobs_N
        )
        all_N = torch.ones((1, scaled_N_V.shape[0]), dtype=torch.bool, device=device)
        entropy_sum, _ = entropy_from_logits(scaled_N_V.detach()[None], all_N)
        natural = recording.routes_B_S_L_K if recording is not None else None
        return ForwardOutput(logprobs_B_T, entropy_sum, natural)

    def _trained_logits(
        self, mb: MicroBatch, shared, mask_B_T: torch.Tensor, device
    ) -> torch.Tensor:
        """The head's logits at the positions that score a trained token, `[N, V]`."""
        if shared is not None:
            hidden_B_T_H = self._hidden_shared_prompts(mb, *shared, device)
        else:
            hidden_B_T_H = self._hidden(mb, device)
        return self.head(hidden_B_T_H[mask_B_T])

    def _hidden(self, mb: MicroBatch, device: torch.device) -> torch.Tensor:
        """The final hidden state that scores each response token, one forward per row."""
        hidden_B_S_H = self.decoder(
            input_ids=mb.input_ids_B_S.to(device),
            attention_mask=mb.attention_mask_B_S.to(device),
            use_cache=False,
        ).last_hidden_state
        width = hidden_B_S_H.shape[-1]
        index_B_T_H = mb.positions_B_T.to(device)[..., None].expand(-1, -1, width)
        return hidden_B_S_H.gather(1, index_B_T_H)

    def _hidden_shared_prompts(
        self,
        mb: MicroBatch,
        prompts: list[list[int]],
        prompt_of_B: torch.Tensor,
        n_prompt_B: torch.Tensor,
        device: torch.device,
    ) -> torch.Tensor:
        """`_hidden` with each distinct prompt run once (the G samples of a group share it).

        The prompts go through the decoder left-padded, as the engine's prefill does; their KV
        cache is indexed out to the rows (differentiable, so each row's gradient reaches the
        shared prompt) and the rows' `response[:-1]` continue from it at their own positions.
        The attention sees the same keys at the same positions as `_hidden`'s causal forward
        of `prompt + response[:-1]`, so the logprobs and gradients are the same up to float
        reassociation (`tests/worker/training/test_forward.py`); the prompt tokens are computed
        once per prompt instead of once per response.
        """
        width = max(map(len, prompts))
        prompt_U_P = torch.zeros((len(prompts), width), dtype=torch.long)  # 0: any id, masked
        prompt_mask_U_P = torch.zeros((len(prompts), width), dtype=torch.long)
        for u, prompt in enumerate(prompts):
            prompt_U_P[u, width - len(prompt) :] = torch.tensor(prompt)
            prompt_mask_U_P[u, width - len(prompt) :] = 1
        cache = DynamicCache(config=self.model.config)
        out = self.decoder(
            input_ids=prompt_U_P.to(device),
            attention_mask=prompt_mask_U_P.to(device),
            position_ids=(prompt_mask_U_P.cumsum(-1) - 1).clamp(min=0).to(device),
            **{cache_kwarg(self.decoder): cache},
            use_cache=True,
        )
        prompt_of_B = prompt_of_B.to(device)
        # Response token 0 is scored by the prompt's last position.
        first_B_1_H = out.last_hidden_state[:, -1:][prompt_of_B]
        n_fed_B = mb.response_lengths_B - 1  # response[:-1]
        fed = int(n_fed_B.max())
        if fed <= 0:
            return first_B_1_H
        cache.batch_select_indices(prompt_of_B)
        t_R = torch.arange(fed)
        columns_B_R = (n_prompt_B[:, None] + t_R[None, :]).clamp(max=mb.input_ids_B_S.shape[1] - 1)
        fed_mask_B_R = (t_R[None, :] < n_fed_B[:, None]).long()
        fed_B_R = torch.where(fed_mask_B_R.bool(), mb.input_ids_B_S.gather(1, columns_B_R), 0)
        rest_B_R_H = self.decoder(
            input_ids=fed_B_R.to(device),
            attention_mask=torch.cat(
                [prompt_mask_U_P.to(device)[prompt_of_B], fed_mask_B_R.to(device)], dim=1
            ),
            position_ids=(n_prompt_B[:, None] + t_R[None, :]).to(device),
            **{cache_kwarg(self.decoder): cache},
            use_cache=True,
        ).last_hidden_state
        return torch.cat([first_B_1_H, rest_B_R_H], dim=1)


def _call(fn: Callable[..., Any], *args: Any) -> Any:
    return fn(*args)


def shared_prompts(mb: MicroBatch) -> tuple[list[list[int]], torch.Tensor, torch.Tensor] | None:
    """(the distinct prompts, each row's prompt index, each row's prompt length) when some rows
    of `mb` share a prompt, else None. A row's input is `prompt + response[:-1]`."""
    n_input_B = mb.attention_mask_B_S.sum(dim=1)
    n_prompt_B = n_input_B - (mb.response_lengths_B - 1).clamp(min=0)
    index: dict[tuple[int, ...], int] = {}
    prompt_of = []
    for ids, n in zip(mb.input_ids_B_S.tolist(), n_prompt_B.tolist(), strict=True):
        prompt_of.append(index.setdefault(tuple(ids[:n]), len(index)))
    if len(index) == len(prompt_of):
        return None
    return [list(p) for p in index], torch.tensor(prompt_of), n_prompt_B
