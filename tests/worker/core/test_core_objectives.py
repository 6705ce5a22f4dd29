"""Hand-computed losses, gradients and metrics of every objective on the reference batch.

The reference batch (conftest.py) has five response tokens:
    token   π_θ    π_old  μ_old   r=π_θ/π_old  π_θ/μ_old  π_old/μ_old   Â
    (0,0)   0.60   0.50   0.40    1.2          1.5        1.25          +1
    (0,1)   0.55   0.50   0.05    1.1          11         10            +1
    (0,2)   0.90   0.60   0.60    1.5          1.5        1.0           +1
    (1,0)   0.30   0.50   0.50    0.6          0.6        1.0           −0.5
    (1,1)   0.80   0.40   0.20    2.0          4.0        2.0           −0.5
and one padding position (1,2) holding log-probs of −inf. Losses are what is minimized (−J).
"""

from __future__ import annotations

from inspect import signature
from math import log, sqrt

import pytest
import torch

from keel_worker.core.objectives import OBJECTIVES

TIS5 = {"mode": "token_truncate", "cap": 5.0}
MINIRL = {
    "eps_low": 0.2,
    "eps_high": 0.27,
    "use_clip": True,
    "clip_anchor": "pi_old",
    "is_correction": TIS5,
    "is_scope": "full",
    "length_norm": False,
    "loss_agg": "seq_mean_token_sum",
}
PPO = {"eps_low": 0.2, "eps_high": 0.27, "is_correction": None}


def run(name, batch, normalizer, **hyper):
    out = OBJECTIVES[name](batch, normalizer=normalizer, **hyper)
    out.loss.backward()
    return out, batch.logprobs_B_T.grad


def grad_tensor(rows):
    return torch.tensor(rows, dtype=torch.float64)


def test_minirl_default_loss_gradient_and_metrics(ref_batch):
    # w = min(π_θ/μ, 5) = [1.5, 5, 1.5 | 0.6, 4]; M: (0,2) has Â>0 and r=1.5>1.27 → 0,
    # (1,0) has Â<0 and r=0.6<0.8 → 0, (1,1) has Â<0 and r=2 > 1.27 but only the lower side
    # masks negative advantages → 1. ℓ = −M·w·Â·log π_θ, summed, divided by 2 responses.
    out, grad = run("minirl", ref_batch(), 2.0, **MINIRL)
    expected = (-1.5 * log(0.6) - 5 * log(0.55) + 0.5 * 4 * log(0.8)) / 2
    assert out.loss.item() == pytest.approx(expected, abs=1e-12)
    # ∂loss/∂log π_θ = −M·w·Â/2: the weight and mask are constants (stop-gradient).
    torch.testing.assert_close(grad, grad_tensor([[-0.75, -2.5, 0.0], [0.0, 1.0, 0.0]]))
    m = out.metrics
    assert m["is/raw_mean"].item() == pytest.approx((1.5 + 11 + 1.5 + 0.6 + 4) / 5)
    assert m["is/raw_max"].item() == pytest.approx(11.0)
    assert m["is/weight_mean"].item() == pytest.approx((1.5 + 5 + 1.5 + 0.6 + 4) / 5)
    assert m["is/weight_max"].item() == pytest.approx(5.0)
    assert m["is/truncated_frac"].item() == pytest.approx(1 / 5)
    assert m["is/masked_frac"].item() == 0.0
    # ESS = (Σw)²/(n Σw²) = 12.6² / (5 · (2.25 + 25 + 2.25 + 0.36 + 16))
    assert m["is/ess"].item() == pytest.approx(12.6**2 / (5 * 45.86))
    assert m["clip/frac_pos"].item() == pytest.approx(1 / 5)
    assert m["clip/frac_neg"].item() == pytest.approx(1 / 5)
    assert m["clip/frac"].item() == pytest.approx(2 / 5)
    # ppo_kl = mean(log π_old − log π_θ) = −log(1.2·1.1·1.5·0.6·2.0)/5
    assert m["clip/ppo_kl"].item() == pytest.approx(-log(2.376) / 5)
    assert all(not value.requires_grad for value in m.values())


def test_minirl_train_infer_scope_truncates_only_the_train_infer_factor(ref_batch):
    # w = min(π_old/μ, 5) · r = [1.25·1.2, 5·1.1, 1·1.5 | 1·0.6, 2·2] = [1.5, 5.5, 1.5 | 0.6, 4]
    out, grad = run("minirl", ref_batch(), 2.0, **(MINIRL | {"is_scope": "train_infer"}))
    expected = (-1.5 * log(0.6) - 5.5 * log(0.55) + 0.5 * 4 * log(0.8)) / 2
    assert out.loss.item() == pytest.approx(expected, abs=1e-12)
    torch.testing.assert_close(grad, grad_tensor([[-0.75, -2.75, 0.0], [0.0, 1.0, 0.0]]))


def test_minirl_without_train_infer_is_keeps_only_the_staleness_ratio(ref_batch):
    # is_correction=None: w = r = [1.2, 1.1, 1.5 | 0.6, 2.0]; same mask as the default.
    out, _ = run("minirl", ref_batch(), 2.0, **(MINIRL | {"is_correction": None}))
    expected = (-1.2 * log(0.6) - 1.1 * log(0.55) + 0.5 * 2.0 * log(0.8)) / 2
    assert out.loss.item() == pytest.approx(expected, abs=1e-12)


def test_minirl_without_clipping_keeps_every_token(ref_batch):
    out, _ = run("minirl", ref_batch(), 2.0, **(MINIRL | {"use_clip": False}))
    expected = (
        -1.5 * log(0.6) - 5 * log(0.55) - 1.5 * log(0.9) + 0.5 * 0.6 * log(0.3) + 2 * log(0.8)
    ) / 2
    assert out.loss.item() == pytest.approx(expected, abs=1e-12)


def test_minirl_mu_anchor_masks_on_pi_theta_over_mu(ref_batch):
    # Mask ratio π_θ/μ = [1.5, 11, 1.5 | 0.6, 4]: all of row 0 exceed 1.27 with Â>0 → masked;
    # (1,0) 0.6 < 0.8 with Â<0 → masked; only (1,1) remains: ℓ = −4·(−0.5)·log 0.8.
    out, _ = run("minirl", ref_batch(), 2.0, **(MINIRL | {"clip_anchor": "mu_old"}))
    assert out.loss.item() == pytest.approx(2 * log(0.8) / 2, abs=1e-12)
    assert out.metrics["clip/frac_pos"].item() == pytest.approx(3 / 5)


def test_minirl_length_norm_divides_each_response_by_its_length(ref_batch):
    out, grad = run("minirl", ref_batch(), 2.0, **(MINIRL | {"length_norm": True}))
    expected = ((-1.5 * log(0.6) - 5 * log(0.55)) / 3 + (2 * log(0.8)) / 2) / 2
    assert out.loss.item() == pytest.approx(expected, abs=1e-12)
    torch.testing.assert_close(grad, grad_tensor([[-0.25, -2.5 / 3, 0.0], [0.0, 0.5, 0.0]]))


def test_reinforce_has_no_weight_and_no_mask(ref_batch):
    out, grad = run("reinforce", ref_batch(), 2.0, loss_agg="seq_mean_token_sum")
    expected = (-(log(0.6) + log(0.55) + log(0.9)) + 0.5 * (log(0.3) + log(0.8))) / 2
    assert out.loss.item() == pytest.approx(expected, abs=1e-12)
    torch.testing.assert_close(grad, grad_tensor([[-0.5, -0.5, -0.5], [0.25, 0.25, 0.0]]))


def test_grpo_min_clip_with_per_sequence_mean(ref_batch):
    # min(rÂ, clip(r, 0.8, 1.27)Â): row 0 → [1.2, 1.1, min(1.5, 1.27)=1.27];
    # row 1 (Â=−0.5) → [min(−0.3, −0.4)=−0.4, min(−1.0, −0.635)=−1.0].
    # seq_mean_token_mean: −(3.57/3 + (−1.4)/2)/2 = −(1.19 − 0.7)/2 = −0.245
    out, grad = run("grpo", ref_batch(), 2.0, **PPO, loss_agg="seq_mean_token_mean")
    assert out.loss.item() == pytest.approx(-0.245, abs=1e-12)
    # gradient −M·r·Â/(|y_i|·2): clipped tokens (0,2) and (1,0) get 0.
    expected = [[-1.2 / 6, -1.1 / 6, 0.0], [0.0, 2.0 * 0.5 / 4, 0.0]]
    torch.testing.assert_close(grad, grad_tensor(expected))


def test_dapo_clip_higher_and_token_mean(ref_batch):
    # ε_high 0.28 → (0,2) gives 1.28; sum = 1.2 + 1.1 + 1.28 − 0.4 − 1.0 = 2.18; 5 tokens.
    hyper = {"eps_low": 0.2, "eps_high": 0.28, "is_correction": None, "loss_agg": "token_mean"}
    out, _ = run("dapo", ref_batch(), 5.0, **hyper)
    assert out.loss.item() == pytest.approx(-2.18 / 5, abs=1e-12)


def test_dr_grpo_constant_divisor(ref_batch):
    # ε 0.2/0.2 → [1.2, 1.1, 1.2 | −0.4, −1.0], sum 2.1; normalizer = 2 responses × C=10.
    hyper = {
        "eps_low": 0.2,
        "eps_high": 0.2,
        "is_correction": None,
        "loss_agg": "seq_mean_token_sum_norm",
    }
    out, _ = run("dr_grpo", ref_batch(), 20.0, **hyper)
    assert out.loss.item() == pytest.approx(-2.1 / 20, abs=1e-12)


def test_decoupled_ppo_tis_weights_ppo_term_by_truncated_train_infer_ratio(ref_batch):
    # v = min(π_old/μ, 2) = [1.25, 2, 1 | 1, 2]; PPO terms (ε 0.2) = [1.2, 1.1, 1.2 | −0.4, −1.0]
    # Σ v·term = 1.5 + 2.2 + 1.2 − 0.4 − 2.0 = 2.5; token_mean over 5 tokens.
    hyper = {
        "eps_low": 0.2,
        "eps_high": 0.2,
        "is_correction": {"mode": "token_truncate", "cap": 2.0},
        "loss_agg": "token_mean",
    }
    out, grad = run("decoupled_ppo_tis", ref_batch(), 5.0, **hyper)
    assert out.loss.item() == pytest.approx(-0.5, abs=1e-12)
    # −v·M·r·Â/5: (0,0) −1.25·1.2/5, (0,1) −2·1.1/5, (1,1) −2·2·(−0.5)/5; (0,2), (1,0) clipped.
    torch.testing.assert_close(grad, grad_tensor([[-0.3, -0.44, 0.0], [0.0, 0.4, 0.0]]))
    assert out.metrics["is/truncated_frac"].item() == pytest.approx(1 / 5)


def test_cispo_clipped_weight_keeps_every_gradient(ref_batch):
    # w = sg[clip(r, 0, 1.27)] = [1.2, 1.1, 1.27 | 0.6, 1.27]; ℓ = −w·Â·log π_θ; token mean.
    hyper = {"eps_low": 1.0, "eps_high": 0.27, "is_correction": None, "loss_agg": "token_mean"}
    out, grad = run("cispo", ref_batch(), 5.0, **hyper)
    expected = (
        -1.2 * log(0.6)
        - 1.1 * log(0.55)
        - 1.27 * log(0.9)
        + 0.5 * 0.6 * log(0.3)
        + 0.5 * 1.27 * log(0.8)
    ) / 5
    assert out.loss.item() == pytest.approx(expected, abs=1e-12)
    # Unlike the PPO mask, the clipped tokens (0,2) and (1,0) still get a gradient.
    torch.testing.assert_close(grad, grad_tensor([[-0.24, -0.22, -0.254], [0.06, 0.127, 0.0]]))


@pytest.mark.parametrize("name", ["gspo", "gspo_token"])
def test_gspo_sequence_ratio(ref_batch, name):
    # s_0 = (1.2·1.1·1.5)^(1/3) = 1.98^(1/3) ≈ 1.256 > 1 + 4e-4 with Â>0 → clipped to 1.0004;
    # s_1 = (0.6·2.0)^(1/2) = √1.2 with Â<0 → min(−0.5√1.2, −0.5·1.0004) = −0.5√1.2.
    # seq_mean_token_mean over 2 responses: loss = −(1.0004 − 0.5√1.2)/2.
    hyper = {
        "eps_low": 3e-4,
        "eps_high": 4e-4,
        "is_correction": None,
        "loss_agg": "seq_mean_token_mean",
    }
    out, grad = run(name, ref_batch(), 2.0, **hyper)
    assert out.loss.item() == pytest.approx(-(1.0004 - 0.5 * sqrt(1.2)) / 2, abs=1e-12)
    # Row 1: ∂/∂log π_t of 0.5·s_1/2 with ∂s_1/∂log π_t = s_1/2 → s_1/8 per token.
    expected = [[0.0, 0.0, 0.0], [sqrt(1.2) / 8, sqrt(1.2) / 8, 0.0]]
    torch.testing.assert_close(grad, grad_tensor(expected))
    assert out.metrics["clip/frac_pos"].item() == pytest.approx(3 / 5)


def test_gspo_and_gspo_token_agree_when_advantages_are_per_response(random_batch):
    # GSPO paper: with one Â per response both variants have the same loss and gradient.
    hyper = {"eps_low": 0.05, "eps_high": 0.08, "is_correction": None}
    results = []
    for name in ("gspo", "gspo_token"):
        batch = random_batch(3, spread=0.1)
        out, grad = run(name, batch, 6.0, **hyper, loss_agg="seq_mean_token_mean")
        results.append((out.loss.detach(), grad))
    torch.testing.assert_close(results[0][0], results[1][0])
    torch.testing.assert_close(results[0][1], results[1][1])
    assert results[0][1].abs().sum() > 0


ALL_HYPER = {
    "minirl": MINIRL,
    "reinforce": {"loss_agg": "seq_mean_token_sum"},
    "grpo": PPO | {"loss_agg": "seq_mean_token_mean"},
    "dr_grpo": PPO | {"loss_agg": "seq_mean_token_sum_norm"},
    "dapo": PPO | {"loss_agg": "token_mean"},
    "cispo": PPO | {"eps_low": 1.0, "loss_agg": "token_mean"},
    "gspo": PPO | {"loss_agg": "seq_mean_token_mean"},
    "gspo_token": PPO | {"loss_agg": "seq_mean_token_mean"},
    "decoupled_ppo_tis": PPO | {"is_correction": TIS5, "loss_agg": "token_mean"},
    "dppo_tv": {
        "divergence": "tv",
        "delta_low": 0.15,
        "delta_high": 0.15,
        "is_cap": 10.0,
        "loss_agg": "token_mean",
    },
    "dppo_kl": {
        "divergence": "kl",
        "delta_low": 0.05,
        "delta_high": 0.05,
        "is_cap": 10.0,
        "loss_agg": "token_mean",
    },
}


@pytest.mark.parametrize("name", sorted(ALL_HYPER))
def test_gradient_flows_only_through_current_logprobs(ref_batch, name):
    # π_old and μ_old are marked as requiring grad on purpose: every objective must treat them
    # as constants (they sit under sg[·] or are plain data), and padding must stay finite.
    batch = ref_batch(requires_grad_all=True)
    out, grad = run(name, batch, 2.0, **ALL_HYPER[name])
    assert batch.old_logprobs_B_T.grad is None
    assert batch.rollout_logprobs_B_T.grad is None
    assert torch.isfinite(out.loss)
    assert torch.isfinite(grad).all()
    assert grad[1, 2] == 0.0  # padding
    assert all(not value.requires_grad for value in out.metrics.values())


def test_every_objective_is_in_the_hyperparameter_table():
    # The "every objective" tests below parametrize over ALL_HYPER: it must name every one.
    assert set(ALL_HYPER) == set(OBJECTIVES)


WITH_IS_CORRECTION = sorted(n for n, h in ALL_HYPER.items() if "is_correction" in h)


def test_the_train_infer_weight_test_covers_every_objective_that_takes_a_correction():
    takes = {n for n, fn in OBJECTIVES.items() if "is_correction" in signature(fn).parameters}
    assert set(WITH_IS_CORRECTION) == takes


@pytest.mark.parametrize("name", WITH_IS_CORRECTION)
def test_with_an_is_correction_every_objective_multiplies_the_train_infer_weight(probs_batch, name):
    # μ_old = π_old / 3 everywhere: π_old/μ_old = 3 on every token, so an uncapped truncation
    # weight is v_t = 3 and the loss must be exactly 3× the loss without the correction. (For
    # MiniRL's `full` scope the weight is π_θ/μ_old = 3 · π_θ/π_old, the no-correction weight.)
    # The clip decisions look at π_θ/π_old only, so nothing else changes.
    old = [[0.50, 0.50, 0.60], [0.50, 0.40, None]]
    rollout = [[None if p is None else p / 3 for p in row] for row in old]
    uncapped = {"mode": "token_truncate", "cap": 1e6}

    def loss(correction):
        batch = probs_batch([[0.60, 0.55, 0.90], [0.30, 0.80, None]], old, rollout, [1.0, -0.5])
        hyper = ALL_HYPER[name] | {"is_correction": correction}
        return OBJECTIVES[name](batch, normalizer=2.0, **hyper).loss.item()

    plain = loss(None)
    assert plain != 0.0
    assert loss(uncapped) == pytest.approx(3.0 * plain, rel=1e-12)


def test_icepop_masks_a_token_out_of_the_grpo_loss(ref_batch):
    # GRPO + IcePop on π_old/μ_old = [1.25, 10, 1 | 1, 2] with bounds [0.5, 5]: (0,1) is
    # masked out, the others keep their ratio. PPO terms [1.2, 1.1, 1.27 | −0.4, −1.0]:
    # Σ = 1.25·1.2 + 0 + 1.27 − 0.4 − 2·1.0 = 0.37 with token_mean over 5 tokens.
    icepop = {"mode": "token_mask", "lower": 0.5, "upper": 5.0}
    hyper = PPO | {"is_correction": icepop, "loss_agg": "token_mean"}
    out, _ = run("grpo", ref_batch(), 5.0, **hyper)
    assert out.loss.item() == pytest.approx(-0.37 / 5, abs=1e-12)
    assert out.metrics["is/masked_frac"].item() == pytest.approx(1 / 5)


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ({"is_scope": "partial"}, "is_scope"),
        ({"clip_anchor": "pi_theta"}, "clip_anchor"),
        ({"loss_agg": "token_sum"}, "loss_agg"),
        ({"is_correction": {"mode": "seq_clip", "cap": 2.0}}, "IS correction"),
    ],
)
def test_minirl_rejects_unknown_options(ref_batch, override, message):
    with pytest.raises(ValueError, match=message):
        OBJECTIVES["minirl"](ref_batch(), normalizer=2.0, **(MINIRL | override))
