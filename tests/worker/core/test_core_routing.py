"""Routing-replay index logic: recorded routes land on the right training positions."""

from __future__ import annotations

import pytest
import torch

from keel_worker.core.routing import align_routes, response_mask

L, K = 2, 2


def _routes(rows: int, base: int) -> torch.Tensor:
    # Row p of response i holds experts (base + p, base + p + 50): recognisable, never 0..K−1.
    values = torch.arange(rows, dtype=torch.int16) + base
    return torch.stack([values, values + 50], dim=-1).unsqueeze(1).expand(rows, L, K).clone()


def test_right_padding_places_fed_positions_and_fills_the_rest():
    # Response 0: prompt 2 + response 3 → 4 fed positions; row 4 is the engine's placeholder.
    # Response 1: prompt 1 + response 1 → only the prompt token was fed.
    r0, r1 = _routes(5, 10), _routes(2, 20)
    aligned = align_routes([r0, r1], prompt_lens=[2, 1], response_lens=[3, 1], seq_len=6)
    out, recorded = aligned.routes_B_T_L_K, aligned.recorded_B_T
    assert out.shape == (2, 6, L, K) and out.dtype == torch.int16
    torch.testing.assert_close(out[0, :4], r0[:4])
    torch.testing.assert_close(out[1, :1], r1[:1])
    fill = torch.arange(K, dtype=torch.int16).expand(L, K)
    for row, col in [(0, 4), (0, 5), (1, 1), (1, 5)]:  # last sampled token and padding
        torch.testing.assert_close(out[row, col], fill)
    assert recorded.tolist() == [
        [True, True, True, True, False, False],
        [True, False, False, False, False, False],
    ]


def test_left_offsets_and_routes_without_the_placeholder_row():
    # Engines may omit the placeholder row: P + R − 1 rows are enough.
    r0, r1 = _routes(4, 10), _routes(1, 20)
    aligned = align_routes(
        [r0, r1], prompt_lens=[2, 1], response_lens=[3, 1], seq_len=6, offsets=[1, 4]
    )
    torch.testing.assert_close(aligned.routes_B_T_L_K[0, 1:5], r0)
    torch.testing.assert_close(aligned.routes_B_T_L_K[1, 4], r1[0])
    assert aligned.recorded_B_T.tolist() == [
        [False, True, True, True, True, False],
        [False, False, False, False, True, False],
    ]


@pytest.mark.parametrize("offsets", [None, [1, 0, 5]])  # right or left padding
def test_every_response_token_is_predicted_from_recorded_routes(offsets):
    # The log-prob of the response token at column c comes from the forward at c − 1 and the
    # positions before it: all of them must replay real recordings.
    prompt_lens, response_lens = [3, 1, 2], [4, 7, 1]
    routes = [_routes(p + r, 0) for p, r in zip(prompt_lens, response_lens, strict=True)]
    kw = {"prompt_lens": prompt_lens, "response_lens": response_lens, "seq_len": 8}
    aligned = align_routes(routes, **kw, offsets=offsets)
    resp = response_mask(**kw, offsets=offsets)
    predicting = torch.zeros_like(resp)
    predicting[:, :-1] = resp[:, 1:]
    assert (aligned.recorded_B_T | ~predicting).all()
    assert resp.sum(dim=1).tolist() == response_lens
    # and nothing beyond the last fed token is marked as recorded
    assert aligned.recorded_B_T.sum(dim=1).tolist() == [
        p + r - 1 for p, r in zip(prompt_lens, response_lens, strict=True)
    ]


def test_invalid_layouts_raise():
    with pytest.raises(ValueError, match="do not fit"):
        align_routes([_routes(5, 0)], prompt_lens=[2], response_lens=[3], seq_len=4)
    with pytest.raises(ValueError, match="need at least"):
        align_routes([_routes(2, 0)], prompt_lens=[2], response_lens=[3], seq_len=8)
    with pytest.raises(ValueError, match="offsets"):
        align_routes([_routes(5, 0)], prompt_lens=[2], response_lens=[3], seq_len=8, offsets=[0, 1])
