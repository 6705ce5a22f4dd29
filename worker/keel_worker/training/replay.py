"""Routing Replay and π_old inside the training step (docs/concepts/algorithm.md §2.2–2.4).

`replay_hooks` gives an MoE policy its record/replay hooks. Which routes each forward of the step
replays, by the mode the step runs with (`training.replay_auto` resolves `auto`):

    π_old recompute   R3: the engine's routes (e^μ_old); else none (the natural routes, recorded)
    update            R3: the engine's; R2: the ones π_old chose (recorded in the recompute, or,
                      in mini-batch 1, where θ = θ_old, its own natural routes); none: none

`OldPolicy` keeps, per response row, log π_old of its tokens and π_old's natural routes, filled by
the recompute of mini-batches 2..N and by mini-batch 1's own update forward.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from keel.types.routing import (
    ResolvedReplay,
    dense_replay_message,
    missing_routes_message,
    unsupported_moe_message,
)
from keel.types.training import RoutingReplayMode, TrainingConfig
from keel_worker.engines.base import RolloutBatch
from keel_worker.engines.routing_replay import RoutingReplay, RoutingReplayError
from keel_worker.training.batching import MicroBatch, fed_lengths, pad_routes
from keel_worker.training.forward import ForwardOutput


@dataclass
class OldPolicy:
    """Per response row: log π_old of its tokens (0 at context tokens, which are never trained)
    and, for MoE models, π_old's natural routes."""

    logprobs: dict[int, torch.Tensor] = field(default_factory=dict)
    routes: dict[int, torch.Tensor] = field(default_factory=dict)

    def remember(self, mb: MicroBatch, out: ForwardOutput) -> None:
        """Keep what a forward at θ = θ_old computed for `mb`'s rows."""
        lp = out.logprobs_B_T.detach()
        n_resp = mb.response_lengths_B.tolist()
        n_in = mb.input_lengths
        for i, r in enumerate(mb.rows):
            self.logprobs[r] = lp[i, : n_resp[i]]
            if out.natural_routes_B_S_L_K is not None:
                self.routes[r] = out.natural_routes_B_S_L_K[i, : n_in[i]]

    def routes_of(self, mb: MicroBatch) -> torch.Tensor | None:
        """π_old's routes of `mb`'s rows laid out like its inputs; None unless every row has
        them."""
        if not all(r in self.routes for r in mb.rows):
            return None
        return pad_routes([self.routes[r] for r in mb.rows], mb.input_lengths)


def replay_hooks(
    model: torch.nn.Module, config: TrainingConfig, *, is_moe: bool
) -> RoutingReplay | None:
    """Record/replay hooks for an MoE model (also without replay, so routing disagreement is
    reported); None for a dense model, or for an MoE family keel cannot hook when the job asked
    for no replay. Anything else that cannot replay raises `RoutingReplayError`."""
    mode, name = config.routing_replay, config.model.label
    if not is_moe:
        if mode in ("R2", "R3"):
            raise RoutingReplayError(dense_replay_message(mode, name))
        return None
    try:
        return RoutingReplay(model.get_decoder())
    except RoutingReplayError:
        if mode == "none":
            return None
        family = getattr(getattr(model, "config", None), "model_type", type(model).__name__)
        raise RoutingReplayError(unsupported_moe_message(mode, name, family)) from None


def check_rollout_routes(
    replay: RoutingReplay | None, mode: RoutingReplayMode, batch: RolloutBatch
) -> None:
    """Replay never runs silently without routes: R3 replays the engine's and `auto` measures
    with them, so their absence or a wrong shape fails the step."""
    if replay is None:
        return
    if batch.routes is None:
        if mode in ("R3", "auto"):
            raise RoutingReplayError(missing_routes_message(mode))
        return
    replay.check_rollout_routes(batch.routes, fed_lengths(batch))


def recompute_routes(mode: ResolvedReplay, mb: MicroBatch) -> torch.Tensor | None:
    """The routes the π_old recompute of `mb` replays."""
    return mb.routes_B_S_L_K if mode == "R3" else None


def update_routes(mode: ResolvedReplay, mb: MicroBatch, old: OldPolicy) -> torch.Tensor | None:
    """The routes the update forward of `mb` replays."""
    if mode == "R3":
        return mb.routes_B_S_L_K
    if mode == "R2":
        # Mini-batches 2..N replay the routes recorded in the π_old recompute. In mini-batch 1
        # the natural routes ARE the π_old routes, so recording them there is exact replay.
        return old.routes_of(mb)
    return None
