"""Loss aggregation: hand values, the global normalizer, and micro-batch invariance."""

from __future__ import annotations

import pytest
import torch

from keel_worker.core.aggregation import LOSS_AGGREGATIONS, aggregate, loss_normalizer
from keel_worker.core.objectives import OBJECTIVES
from keel_worker.core.types import PolicyBatch

# Per-token terms of three responses with lengths 3, 1, 2 (padding holds NaN on purpose):
#   row 0: 1, 2, 3   (sum 6, mean 2)
#   row 1: 4         (sum 4, mean 4)
#   row 2: 5, 6      (sum 11, mean 5.5)
NAN = float("nan")
TERMS = torch.tensor([[1.0, 2.0, 3.0], [4.0, NAN, NAN], [5.0, 6.0, NAN]], dtype=torch.float64)
MASK = torch.tensor([[True, True, True], [True, False, False], [True, True, False]])
EMPTY_ROW_MASK = torch.cat([MASK, torch.zeros(1, 3, dtype=torch.bool)])


@pytest.mark.parametrize(
    ("loss_agg", "normalizer", "expected"),
    [
        ("seq_mean_token_sum", 3.0, (6 + 4 + 11) / 3),  # Σ_i Σ_t / N_resp
        ("token_mean", 6.0, 21 / 6),  # Σ_i Σ_t / Σ_i |y_i|
        ("seq_mean_token_mean", 3.0, (2 + 4 + 5.5) / 3),  # Σ_i mean_t / N_resp
        ("seq_mean_token_sum_norm", 30.0, 21 / 30),  # Σ_i Σ_t / (N_resp · C), C = 10
    ],
)
def test_aggregation_hand_values(loss_agg, normalizer, expected):
    # An empty row (padding only) is not a response: it adds nothing and is not counted.
    assert loss_normalizer(loss_agg, mask_B_T=EMPTY_ROW_MASK, constant=10.0).item() == normalizer
    terms = torch.cat([TERMS, torch.full((1, 3), NAN, dtype=torch.float64)])
    value = aggregate(terms, EMPTY_ROW_MASK, loss_agg=loss_agg, normalizer=normalizer)
    assert value.item() == pytest.approx(expected, abs=1e-12)


def test_normalizer_of_an_empty_batch_is_one_and_bad_inputs_raise():
    empty = torch.zeros(2, 3, dtype=torch.bool)
    assert loss_normalizer("token_mean", mask_B_T=empty, constant=1.0).item() == 1.0
    with pytest.raises(ValueError, match="unknown loss_agg"):
        loss_normalizer("token_sum", mask_B_T=MASK, constant=1.0)
    with pytest.raises(ValueError, match="constant"):
        loss_normalizer("seq_mean_token_sum_norm", mask_B_T=MASK, constant=0.0)


HYPER = {
    "minirl": {
        "eps_low": 0.2,
        "eps_high": 0.27,
        "use_clip": True,
        "clip_anchor": "pi_old",
        "is_correction": {"mode": "seq_truncate", "cap": 2.0},
        "is_scope": "full",
        "length_norm": False,
    },
    "reinforce": {},
    "grpo": {"eps_low": 0.2, "eps_high": 0.27, "is_correction": None},
    "dr_grpo": {"eps_low": 0.2, "eps_high": 0.2, "is_correction": None},
    "dapo": {"eps_low": 0.2, "eps_high": 0.28, "is_correction": None},
    "cispo": {"eps_low": 1.0, "eps_high": 0.27, "is_correction": None},
    "gspo": {"eps_low": 0.05, "eps_high": 0.08, "is_correction": None},
    "gspo_token": {"eps_low": 0.05, "eps_high": 0.08, "is_correction": None},
    "decoupled_ppo_tis": {
        "eps_low": 0.2,
        "eps_high": 0.2,
        "is_correction": {"mode": "token_mask", "lower": 0.5, "upper": 2.0},
    },
    "dppo_tv": {"divergence": "tv", "delta_low": 0.1, "delta_high": 0.15, "is_cap": 2.0},
    "dppo_kl": {"divergence": "kl", "delta_low": 0.02, "delta_high": 0.03, "is_cap": 2.0},
}


def _slice(batch: PolicyBatch, rows: slice) -> PolicyBatch:
    return PolicyBatch(
        logprobs_B_T=batch.logprobs_B_T[rows],
        old_logprobs_B_T=batch.old_logprobs_B_T[rows],
        rollout_logprobs_B_T=batch.rollout_logprobs_B_T[rows],
        advantages_B=batch.advantages_B[rows],
        mask_B_T=batch.mask_B_T[rows],
    )


@pytest.mark.parametrize("loss_agg", LOSS_AGGREGATIONS)
@pytest.mark.parametrize("name", sorted(HYPER))
def test_micro_batches_sum_to_the_mini_batch_loss_and_gradient(random_batch, name, loss_agg):
    hyper = HYPER[name] | {"loss_agg": loss_agg}
    whole = random_batch(7, rows=7, tokens=6, spread=0.3)
    normalizer = loss_normalizer(loss_agg, mask_B_T=whole.mask_B_T, constant=6.0)
    whole_out = OBJECTIVES[name](whole, normalizer=normalizer, **hyper)
    whole_out.loss.backward()

    split = random_batch(7, rows=7, tokens=6, spread=0.3)  # same values, fresh leaf
    micro_losses = []
    for rows in (slice(0, 2), slice(2, 3), slice(3, 7)):  # uneven on purpose
        out = OBJECTIVES[name](_slice(split, rows), normalizer=normalizer, **hyper)
        out.loss.backward()  # gradients accumulate in the shared leaf, like accumulation steps
        micro_losses.append(out.loss.detach())

    torch.testing.assert_close(torch.stack(micro_losses).sum(), whole_out.loss.detach())
    torch.testing.assert_close(split.logprobs_B_T.grad, whole.logprobs_B_T.grad)
    assert whole.logprobs_B_T.grad.abs().sum() > 0


def test_length_norm_changes_the_gradient_by_one_over_length(random_batch):
    hyper = HYPER["minirl"] | {"loss_agg": "seq_mean_token_sum"}
    plain = random_batch(9, spread=0.1)
    normed = random_batch(9, spread=0.1)
    OBJECTIVES["minirl"](plain, normalizer=6.0, **hyper).loss.backward()
    hyper_normed = hyper | {"length_norm": True}
    OBJECTIVES["minirl"](normed, normalizer=6.0, **hyper_normed).loss.backward()
    lengths = plain.mask_B_T.sum(dim=-1, keepdim=True).double()
    assert (lengths > 1).any()
    assert not torch.allclose(plain.logprobs_B_T.grad, normed.logprobs_B_T.grad)
    torch.testing.assert_close(normed.logprobs_B_T.grad, plain.logprobs_B_T.grad / lengths)
