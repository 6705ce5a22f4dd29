"""Micro-batch packing: routes and response tokens land on the training forward's positions.

These are the cases of the former `core/routing.py` twin, run against the one live layout
(`pad_routes` inside `make_micro_batch`): right padding, the input of a response is
`prompt + response[:-1]`, the engine's last route row (the last sampled token) is unused.
"""

from __future__ import annotations

import pytest
import torch

from keel_worker.training.batching import make_micro_batch, pad_routes

L, K = 2, 2
PAD_ID = 0


def _routes(rows: int, base: int) -> torch.Tensor:
    # Row p of response i holds experts (base + p, base + p + 50): recognisable, never 0..K−1.
    values = torch.arange(rows, dtype=torch.int16) + base
    return torch.stack([values, values + 50], dim=-1).unsqueeze(1).expand(rows, L, K).clone()


def _micro_batch(prompt_lens, response_lens, routes):
    prompts = [list(range(1, p + 1)) for p in prompt_lens]
    responses = [list(range(100, 100 + r)) for r in response_lens]
    n = len(prompts)
    return make_micro_batch(
        list(range(n)),
        prompt_ids=prompts,
        response_ids=responses,
        rollout_logprobs=[torch.zeros(r) for r in response_lens],
        advantages_PG=torch.zeros(n),
        routes=routes,
        pad_id=PAD_ID,
    )


def test_right_padding_places_fed_positions_and_fills_the_rest():
    # Response 0: prompt 2 + response 3 → 4 fed positions; row 4 is the engine's placeholder.
    # Response 1: prompt 1 + response 1 → only the prompt token was fed.
    r0, r1 = _routes(5, 10), _routes(2, 20)
    out = pad_routes([r0, r1], [4, 1])
    assert out.shape == (2, 4, L, K) and out.dtype == torch.int16
    torch.testing.assert_close(out[0, :4], r0[:4])
    torch.testing.assert_close(out[1, :1], r1[:1])
    fill = torch.arange(K, dtype=torch.int16).expand(L, K)
    for col in (1, 2, 3):  # padding: a valid, duplicate-free top-k set
        torch.testing.assert_close(out[1, col], fill)


def test_routes_without_the_placeholder_row_are_enough():
    # Engines may omit the placeholder row: P + R − 1 rows are enough.
    r0, r1 = _routes(4, 10), _routes(1, 20)
    mb = _micro_batch([2, 1], [3, 1], [r0, r1])
    torch.testing.assert_close(mb.routes_B_S_L_K[0], r0)
    torch.testing.assert_close(mb.routes_B_S_L_K[1, 0], r1[0])


def test_every_response_token_is_predicted_from_recorded_routes():
    # The log-prob of response token t comes from the forward at positions_B_T[t] and the
    # positions before it: all of them must be real inputs carrying the engine's routes.
    prompt_lens, response_lens = [3, 1, 2], [4, 7, 1]
    routes = [_routes(p + r, 0) for p, r in zip(prompt_lens, response_lens, strict=True)]
    mb = _micro_batch(prompt_lens, response_lens, routes)
    fed_B = mb.attention_mask_B_S.sum(dim=1)
    assert fed_B.tolist() == [p + r - 1 for p, r in zip(prompt_lens, response_lens, strict=True)]
    fed_B_T = fed_B[:, None].expand_as(mb.mask_B_T)
    assert (mb.positions_B_T[mb.mask_B_T] < fed_B_T[mb.mask_B_T]).all()
    for i, n in enumerate(fed_B.tolist()):
        torch.testing.assert_close(mb.routes_B_S_L_K[i, :n], routes[i][:n])
    assert mb.mask_B_T.sum(dim=1).tolist() == response_lens


def test_too_few_route_rows_raise():
    with pytest.raises(ValueError, match="need at least"):
        pad_routes([_routes(2, 0)], [4])
    with pytest.raises(ValueError, match="need at least"):
        pad_routes([_routes(5, 0), torch.zeros(5, L + 1, K, dtype=torch.int16)], [4, 4])
