"""Routing-replay index logic: recorded per-response routes → the training forward's positions.

The rollout engine records, for response i, the top-k experts of every MoE layer at every
position it FED through the model: the P_i prompt tokens (prefill) and the first R_i − 1 response
tokens (decode). The last sampled token is never fed, so its row (the engine's tensor has
P_i + R_i rows, the last one a placeholder) holds no real routing. The training forward feeds all
P_i + R_i tokens of each response, placed in a padded [B, T] batch from column ``offsets[i]``
(0 with right padding). R3 (paper §3.2, spec §2.4) replays the recorded routes in that forward.

Positions without a recorded route (the last token and padding) get the experts 0..K−1: a valid,
duplicate-free top-k set, so replay code never indexes out of range. Their routing cannot change
the loss: the last token's output would predict a token after the response, and padding is
masked out of attention and loss. ``recorded_B_T`` marks the real rows (use it to mask routing
diagnostics).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor


@dataclass(frozen=True)
class AlignedRoutes:
    """Routes on the training forward's grid, and where they are real recordings."""

    routes_B_T_L_K: Tensor
    recorded_B_T: Tensor


def _offsets(offsets: Sequence[int] | None, rows: int) -> list[int]:
    if offsets is None:
        return [0] * rows
    if len(offsets) != rows:
        raise ValueError(f"got {len(offsets)} offsets for {rows} responses")
    return list(offsets)


def align_routes(
    routes: Sequence[Tensor],
    *,
    prompt_lens: Sequence[int],
    response_lens: Sequence[int],
    seq_len: int,
    offsets: Sequence[int] | None = None,
) -> AlignedRoutes:
    """Place each response's recorded routes ``[≥ P_i + R_i − 1, L, K]`` on a [B, T] grid.

    Args:
        routes: one tensor per response (integer dtype, kept), rows in token order from the
            first prompt token.
        prompt_lens, response_lens: P_i and R_i (R_i ≥ 1).
        seq_len: T, the padded width of the training batch.
        offsets: column of each response's first prompt token; None means right padding (0).
    """
    rows = len(routes)
    if rows == 0 or len(prompt_lens) != rows or len(response_lens) != rows:
        raise ValueError("routes, prompt_lens and response_lens must be non-empty, equal length")
    starts = _offsets(offsets, rows)
    _, layers, top_k = routes[0].shape
    fill_K = torch.arange(top_k, dtype=routes[0].dtype, device=routes[0].device)
    out_B_T_L_K = fill_K.expand(rows, seq_len, layers, top_k).clone()
    recorded_B_T = torch.zeros(rows, seq_len, dtype=torch.bool, device=routes[0].device)
    for i, (route_S_L_K, p_len, r_len, start) in enumerate(
        zip(routes, prompt_lens, response_lens, starts, strict=True)
    ):
        fed = p_len + r_len - 1  # every token but the last sampled one went through the model
        if r_len < 1 or p_len < 0 or start < 0 or start + p_len + r_len > seq_len:
            raise ValueError(
                f"response {i}: prompt {p_len} + response {r_len} tokens at offset {start} "
                f"do not fit in {seq_len} columns"
            )
        if route_S_L_K.shape[0] < fed or route_S_L_K.shape[1:] != (layers, top_k):
            raise ValueError(
                f"response {i}: routes of shape {tuple(route_S_L_K.shape)}, need at least "
                f"({fed}, {layers}, {top_k})"
            )
        out_B_T_L_K[i, start : start + fed] = route_S_L_K[:fed]
        recorded_B_T[i, start : start + fed] = True
    return AlignedRoutes(routes_B_T_L_K=out_B_T_L_K, recorded_B_T=recorded_B_T)


def response_mask(
    *,
    prompt_lens: Sequence[int],
    response_lens: Sequence[int],
    seq_len: int,
    offsets: Sequence[int] | None = None,
) -> Tensor:
    """Bool [B, T]: True at the response tokens in the same layout as :func:`align_routes`."""
    rows = len(prompt_lens)
    starts = torch.tensor(_offsets(offsets, rows)) + torch.tensor(list(prompt_lens))
    ends = starts + torch.tensor(list(response_lens))
    columns_1_T = torch.arange(seq_len).unsqueeze(0)
    return (columns_1_T >= starts.unsqueeze(1)) & (columns_1_T < ends.unsqueeze(1))
