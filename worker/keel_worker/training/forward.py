"""The training engine's forward: log π(y_t|·) of the sampled tokens, entropy, natural routes.

Only the positions that score a response token go through the LM head (the prompt positions'
vocabulary projection is never needed), so the full `[B, S, V]` logits are never built. Logits are
divided by the sampling temperature so that π is the same distribution the engine sampled μ from
(paper-spec §1.1: the ratio π/μ compares like with like).

Routing Replay (paper-spec §2.2) is applied here: with `replay_routes` every MoE layer uses those
experts (gate weights recomputed from live logits); either way the routes the routers would pick
naturally are returned, so the step can report routing disagreement without a second forward.
"""

from __future__ import annotations

from contextlib import nullcontext
from dataclasses import dataclass

import torch
from torch import nn

from keel_worker.core.diagnostics import entropy_from_logits
from keel_worker.engines.hardware import device_profile
from keel_worker.engines.precision import EmulatedBf16
from keel_worker.engines.routing_replay import RoutingReplay
from keel_worker.training.batching import MicroBatch


@dataclass
class ForwardOutput:
    logprobs_B_T: torch.Tensor  # zero at padding; carries the gradient when grad is enabled
    entropy_sum: torch.Tensor  # detached, summed over response tokens
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
    ) -> None:
        """`bf16` computes the forwards in bf16: torch.autocast where the device does so
        natively, else `EmulatedBf16` (the same roundings, in float32); `bf16_native` None
        measures the model's device (`engines.hardware.device_profile`)."""
        self.model = model
        self.decoder = model.get_decoder()
        self.head = model.get_output_embeddings()
        self.temperature = temperature
        self.bf16 = bf16
        self.bf16_native = bf16_native
        self.replay = replay

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
        with routing as recording, self._compute_context(device):
            hidden_B_S_H = self.decoder(
                input_ids=mb.input_ids_B_S.to(device),
                attention_mask=mb.attention_mask_B_S.to(device),
                use_cache=False,
            ).last_hidden_state
            mask_B_T = mb.mask_B_T.to(device)
            width = hidden_B_S_H.shape[-1]
            index_B_T_H = mb.positions_B_T.to(device)[..., None].expand(-1, -1, width)
            hidden_N_H = hidden_B_S_H.gather(1, index_B_T_H)[mask_B_T]
            logits_N_V = self.head(hidden_N_H)
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
