"""Tinker data as keel's training micro-batches.

A Tinker datum is already aligned: position i of its tokens is scored against target i. As a
`training.batching.MicroBatch` that is a row whose "prompt" is its first token and whose
"response" is its N targets (`response_lengths_B` = N, positions 0..N−1), so
`training.forward.PolicyForward` computes log π of every target through the same code as keel's
step, including its shared-prefix path when rows start with the same token.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from keel_worker.tinker.batch import Datum
from keel_worker.tinker.losses import TARGET_TOKENS
from keel_worker.training.batching import MicroBatch, length_mask


def datum_micro_batch(data: Sequence[Datum], rows: list[int], *, pad_id: int) -> MicroBatch:
    """The right-padded micro-batch of `data[rows]`; every position is scored."""
    lengths = [len(data[r].tokens) for r in rows]
    B, T = len(rows), max(lengths)
    input_ids_B_S = torch.full((B, T), pad_id, dtype=torch.long)
    targets_B_T = torch.full((B, T), pad_id, dtype=torch.long)
    for i, r in enumerate(rows):
        input_ids_B_S[i, : lengths[i]] = torch.tensor(data[r].tokens, dtype=torch.long)
        targets_B_T[i, : lengths[i]] = torch.from_numpy(
            np.asarray(data[r].inputs[TARGET_TOKENS], dtype=np.int64)
        )
    mask_B_T = length_mask(lengths, T)
    return MicroBatch(
        rows=rows,
        input_ids_B_S=input_ids_B_S,
        attention_mask_B_S=mask_B_T.long(),
        positions_B_T=torch.where(mask_B_T, torch.arange(T)[None, :], 0),
        targets_B_T=targets_B_T,
        mask_B_T=mask_B_T,
        response_lengths_B=torch.tensor(lengths),
        rollout_logprobs_B_T=torch.zeros((B, T)),
        advantages_B=torch.zeros(B),
        routes_B_S_L_K=None,
    )


def padded_inputs(
    data: Sequence[Datum], rows: list[int], width: int, *, skip: str
) -> dict[str, torch.Tensor]:
    """Each float input of `data[rows]` (all but `skip`) as a `[B, width]` float32 tensor,
    0 in padding."""
    names = [n for n in data[rows[0]].inputs if n != skip]
    out = {name: torch.zeros((len(rows), width)) for name in names}
    for i, r in enumerate(rows):
        for name in names:
            values = np.asarray(data[r].inputs[name], dtype=np.float32)
            out[name][i, : values.shape[0]] = torch.from_numpy(values)
    return out
