from __future__ import annotations

import math

import pytest
import torch

from keel_worker.engines.sampling import sample_tokens, truncate


def test_logprob_is_under_softmax_of_logits_over_temperature() -> None:
    # logits [0, ln 3]: at T=1 the probabilities are 1/4, 3/4; at T=0.5 the logits double to
    # [0, 2 ln 3], so the probabilities are 1/10, 9/10.
    logits = torch.tensor([[0.0, math.log(3.0)]]).repeat(4000, 1)
    generator = torch.Generator().manual_seed(0)
    for temperature, probs in ((1.0, (0.25, 0.75)), (0.5, (0.1, 0.9))):
        tokens, logprobs = sample_tokens(logits, temperature, 1.0, generator)
        expected = torch.log(torch.tensor(probs))[tokens]
        torch.testing.assert_close(logprobs, expected)
        assert abs(tokens.float().mean().item() - probs[1]) < 0.03


def test_greedy_reports_logprob_under_plain_softmax() -> None:
    tokens, logprobs = sample_tokens(torch.tensor([[0.0, math.log(3.0)]]), 0.0, 1.0, None)
    assert tokens.tolist() == [1]
    assert logprobs.item() == pytest.approx(math.log(0.75))


def test_top_p_draws_only_from_the_nucleus_and_never_a_zero_probability_token() -> None:
    # softmax([0, 1, 2, -inf]) = [0.090, 0.245, 0.665, 0]: top_p 0.8 keeps tokens 2 and 1.
    logits = torch.tensor([[0.0, 1.0, 2.0, -float("inf")]]).repeat(20000, 1)
    generator = torch.Generator().manual_seed(1)
    tokens, _ = sample_tokens(logits, 1.0, 0.8, generator)
    counts = torch.bincount(tokens, minlength=4).float() / tokens.numel()
    assert counts[0] == 0 and counts[3] == 0
    assert abs(counts[2].item() - 0.665 / (0.665 + 0.245)) < 0.02
    tokens, _ = sample_tokens(logits, 1.0, 1.0, generator)
    assert (tokens != 3).all() and (tokens == 0).any()


def test_seeded_draws_repeat() -> None:
    logits = torch.randn(8, 50)
    first, _ = sample_tokens(logits, 1.0, 1.0, torch.Generator().manual_seed(7))
    second, _ = sample_tokens(logits, 1.0, 1.0, torch.Generator().manual_seed(7))
    assert torch.equal(first, second)


def test_top_k_truncates_the_draw_but_reports_the_raw_logprob() -> None:
    # softmax([0, 1, 2, 3]) = [0.032, 0.087, 0.237, 0.644]; top_k 2 draws only tokens 3 and 2
    # in proportion 0.644 : 0.237, while the reported μ stays the full-distribution logprob.
    logits = torch.tensor([[0.0, 1.0, 2.0, 3.0]]).repeat(20000, 1)
    full = torch.log_softmax(logits[0], dim=-1)
    tokens, logprobs = sample_tokens(logits, 1.0, 1.0, torch.Generator().manual_seed(2), top_k=2)
    counts = torch.bincount(tokens, minlength=4).float() / tokens.numel()
    assert counts[0] == 0 and counts[1] == 0
    assert abs(counts[3].item() - 0.644 / (0.644 + 0.237)) < 0.02
    torch.testing.assert_close(logprobs, full[tokens])


def test_top_p_after_top_k_is_relative_to_the_remaining_mass() -> None:
    # After top_k 3 the weights [0.087, 0.237, 0.644] (sum 0.968): top_p 0.9 of that is 0.871,
    # reached only with tokens 3 and 2 (0.644 + 0.237 = 0.881); token 1 goes too.
    probs = torch.softmax(torch.tensor([[0.0, 1.0, 2.0, 3.0]]), dim=-1)
    kept = truncate(probs, top_p=0.9, top_k=3)
    assert (kept[0] > 0).tolist() == [False, False, True, True]
    assert torch.equal(truncate(probs, top_p=1.0, top_k=0), probs)
    with pytest.raises(ValueError, match="top_k"):
        sample_tokens(probs, 1.0, 1.0, None, top_k=-1)
