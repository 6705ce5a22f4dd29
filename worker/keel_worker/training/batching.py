"""Pack rollouts into padded training micro-batches, bucketed by length.

A response's training input is `prompt + response[:-1]`: the last sampled token is only ever a
target, never an input, so it needs no route either (the engine's last route row is unused).
Sequences are right-padded, so positions 0..n-1 of every row are its real tokens and the default
position ids are correct; the logits at position `len(prompt) - 1 + j` score response token `j`.

In a multi-turn sequence (`RolloutBatch.trained_masks`) the response interleaves sampled tokens
with context tokens: every response token is an input and a target as above, but only the sampled
ones are in `mask_B_T`, so context tokens get no loss, no IS weight and no place in any count.

Micro-batches are built by sorting a mini-batch by length and cutting it into runs of
`micro_batch_size`, so each micro-batch pads only to its own longest row (no padding waste
worth the name).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from keel_worker.engines.base import RolloutBatch


@dataclass(frozen=True)
class MicroBatch:
    """Tensors for one forward/backward over `rows` (indices into the step's responses).

    S = longest input in the micro-batch, T = longest response.
    """

    rows: list[int]
    input_ids_B_S: torch.Tensor
    attention_mask_B_S: torch.Tensor
    positions_B_T: torch.Tensor  # input position whose logits score response token t
    targets_B_T: torch.Tensor
    mask_B_T: torch.Tensor  # bool, the response tokens the policy sampled: the trained ones
    response_lengths_B: torch.Tensor  # response tokens per row, context tokens included
    rollout_logprobs_B_T: torch.Tensor
    advantages_B: torch.Tensor
    routes_B_S_L_K: torch.Tensor | None  # engine routes laid out like input_ids_B_S (R3)

    @property
    def num_tokens(self) -> int:
        return int(self.attention_mask_B_S.sum())

    @property
    def input_lengths(self) -> list[int]:
        """Per row, its input length (`prompt + response[:-1]`)."""
        return self.attention_mask_B_S.sum(dim=1).tolist()


def fed_lengths(batch: RolloutBatch) -> list[int]:
    """Per response, the tokens the engine fed the model: the prompt and all but the last."""
    return [
        len(p) + max(len(r) - 1, 0)
        for p, r in zip(batch.prompt_ids, batch.response_ids, strict=True)
    ]


def length_mask(lengths: list[int], width: int | None = None) -> torch.Tensor:
    """`[B, width]` bool, True at the first `lengths[b]` positions of row b (width: the
    longest)."""
    width = width if width is not None else max(1, *lengths)
    return torch.arange(width)[None, :] < torch.tensor(lengths)[:, None]


def trained_mask(
    rows: Sequence[int],
    response_ids: Sequence[Sequence[int]],
    trained_masks: Sequence[torch.Tensor] | None,
    width: int | None = None,
) -> torch.Tensor:
    """`[B, width]` bool, True at the response tokens of `rows` that the policy sampled: all of
    a row's tokens when `trained_masks` is None, else those its mask marks."""
    lengths = [len(response_ids[r]) for r in rows]
    mask_B_T = length_mask(lengths, width)
    if trained_masks is not None:
        for i, r in enumerate(rows):
            mask_B_T[i, : lengths[i]] &= trained_masks[r]
    return mask_B_T


def bucket_by_length(
    rows: Sequence[int], lengths: Sequence[int], micro_batch_size: int
) -> list[list[int]]:
    """Cut `rows` (sorted longest first) into runs of at most `micro_batch_size`."""
    ordered = sorted(rows, key=lambda r: -lengths[r])
    return [ordered[i : i + micro_batch_size] for i in range(0, len(ordered), micro_batch_size)]


def pad_routes(routes: Sequence[torch.Tensor], lengths: Sequence[int]) -> torch.Tensor:
    """Stack per-response routes `[≥n_i, L, K]`, keeping the first `n_i` rows, into `[B, S, L, K]`.

    `n_i` is the response's input length (`prompt + response[:-1]`, every token the engine fed);
    the engine's extra placeholder row for the last sampled token may be there or not. Padding
    rows get the experts 0..K−1, a valid duplicate-free top-k set: they sit after every real
    token of their row, so under causal attention they never influence a real token's output.
    """
    first = routes[0]
    _, layers, top_k = first.shape
    fill_K = torch.arange(top_k, dtype=first.dtype)
    out = fill_K.expand(len(routes), max(lengths), layers, top_k).clone()
    for i, (r, n) in enumerate(zip(routes, lengths, strict=True)):
        if r.shape[0] < n or r.shape[1:] != (layers, top_k):
            raise ValueError(
                f"response {i}: routes of shape {tuple(r.shape)}, need at least "
                f"({n}, {layers}, {top_k})"
            )
        out[i, :n] = r[:n]
    return out


def make_micro_batch(
    rows: list[int],
    *,
    prompt_ids: Sequence[Sequence[int]],
    response_ids: Sequence[Sequence[int]],
    rollout_logprobs: Sequence[torch.Tensor],
    advantages_PG: torch.Tensor,
    routes: Sequence[torch.Tensor] | None,
    pad_id: int,
    trained_masks: Sequence[torch.Tensor] | None = None,
) -> MicroBatch:
    """Build the padded tensors of `rows` (an empty response contributes no token);
    `trained_masks` as in `RolloutBatch` (None: every response token was sampled)."""
    inputs = [list(prompt_ids[r]) + list(response_ids[r][:-1]) for r in rows]
    n_prompt = [len(prompt_ids[r]) for r in rows]
    n_resp = [len(response_ids[r]) for r in rows]
    B, S, T = len(rows), max(map(len, inputs)), max(1, *n_resp)

    input_ids_B_S = torch.full((B, S), pad_id, dtype=torch.long)
    attention_mask_B_S = torch.zeros((B, S), dtype=torch.long)
    targets_B_T = torch.full((B, T), pad_id, dtype=torch.long)
    rollout_B_T = torch.zeros((B, T), dtype=torch.float32)
    for i, r in enumerate(rows):
        input_ids_B_S[i, : len(inputs[i])] = torch.tensor(inputs[i])
        attention_mask_B_S[i, : len(inputs[i])] = 1
        targets_B_T[i, : n_resp[i]] = torch.tensor(response_ids[r])
        rollout_B_T[i, : n_resp[i]] = rollout_logprobs[r].float()

    t_T = torch.arange(T)
    response_B_T = length_mask(n_resp, T)
    # Padded response slots point at position 0; they are masked out everywhere.
    positions_B_T = torch.where(response_B_T, torch.tensor(n_prompt)[:, None] - 1 + t_T[None, :], 0)
    routes_B_S_L_K = None
    if routes is not None:
        routes_B_S_L_K = pad_routes([routes[r] for r in rows], [len(x) for x in inputs])
    return MicroBatch(
        rows=rows,
        input_ids_B_S=input_ids_B_S,
        attention_mask_B_S=attention_mask_B_S,
        positions_B_T=positions_B_T,
        targets_B_T=targets_B_T,
        mask_B_T=trained_mask(rows, response_ids, trained_masks, T),
        response_lengths_B=torch.tensor(n_resp),
        rollout_logprobs_B_T=rollout_B_T,
        advantages_B=advantages_PG[rows],
        routes_B_S_L_K=routes_B_S_L_K,
    )


def gather_rows(per_row: dict[int, torch.Tensor], rows: Sequence[int], width: int) -> torch.Tensor:
    """Right-pad the per-response 1-D tensors of `rows` to `[B, width]` (zeros beyond length)."""
    out = torch.zeros((len(rows), width), dtype=torch.float32)
    for i, r in enumerate(rows):
        v = per_row[r]
        out[i, : v.shape[0]] = v
    return out
