"""Each loss on a two-token toy, against its value worked out by hand.

The model's log π of the two targets (p0, p1) is read first with a forward-only call; the
sampler's log q is then set so that the ratios r = exp(p − q) are exactly 1.5 and 0.5, with
advantages A = (+1, −1). Every expected value below is derived from those numbers in a comment.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
from tinker_helpers import TOY_TARGETS, TOY_TOKENS, resident, toy_datum

R0, R1 = 1.5, 0.5
A = np.array([1.0, -1.0], dtype=np.float32)


@pytest.fixture(scope="module")
def model():
    return resident()


@pytest.fixture(scope="module")
def p(model):
    """log π(target) of the toy's two positions."""
    result = model.forward([toy_datum(weights=[1.0, 1.0])], "cross_entropy", None, backward=False)
    return result.outputs[0]["logprobs"].astype(np.float64)


def _rl_datum(p, **extra):
    # q = p − log r, so that exp(p − q) = r.
    q = np.array([p[0] - math.log(R0), p[1] - math.log(R1)], dtype=np.float32)
    return toy_datum(logprobs=q, advantages=A, **extra)


def _loss(model, datum, loss_fn, config=None):
    result = model.forward([datum], loss_fn, config, backward=False)
    return result.metrics["loss:sum"], result.outputs[0]


def test_cross_entropy_is_the_weighted_negative_log_likelihood_sum(model, p):
    loss, out = _loss(model, toy_datum(weights=[1.0, 0.5]), "cross_entropy")
    # −(1 · p0 + 0.5 · p1)
    assert loss == pytest.approx(-(p[0] + 0.5 * p[1]), abs=1e-5)
    np.testing.assert_allclose(out["elementwise_loss"], [-p[0], -0.5 * p[1]], atol=1e-5)
    assert out["logprobs"].shape == (len(TOY_TARGETS),)


def test_importance_sampling_is_minus_ratio_times_advantage(model, p):
    loss, out = _loss(model, _rl_datum(p), "importance_sampling")
    # −(1.5 · 1 + 0.5 · (−1)) = −1.0
    assert loss == pytest.approx(-1.0, abs=1e-5)
    np.testing.assert_allclose(out["elementwise_loss"], [-1.5, 0.5], atol=1e-5)


def test_ppo_clips_the_ratio_at_its_default_thresholds(model, p):
    loss, out = _loss(model, _rl_datum(p), "ppo")
    # token 0: min(1.5 · 1, clip(1.5, 0.8, 1.2) · 1) = 1.2
    # token 1: min(0.5 · (−1), clip(0.5, 0.8, 1.2) · (−1)) = min(−0.5, −0.8) = −0.8
    # loss = −(1.2 − 0.8) = −0.4
    assert loss == pytest.approx(-0.4, abs=1e-5)
    np.testing.assert_allclose(out["elementwise_loss"], [-1.2, 0.8], atol=1e-5)


def test_ppo_reads_its_thresholds_from_the_config(model, p):
    config = {"clip_low_threshold": 0.4, "clip_high_threshold": 2.0}
    loss, _ = _loss(model, _rl_datum(p), "ppo", config)
    # Neither ratio is clipped now: −(1.5 · 1 + 0.5 · (−1)) = −1.0, importance sampling's value.
    assert loss == pytest.approx(-1.0, abs=1e-5)


def test_cispo_weights_log_pi_by_the_clipped_ratio(model, p):
    loss, _ = _loss(model, _rl_datum(p), "cispo")
    # −(clip(1.5) · p0 · 1 + clip(0.5) · p1 · (−1)) = −(1.2 p0 − 0.8 p1)
    assert loss == pytest.approx(-(1.2 * p[0] - 0.8 * p[1]), abs=1e-5)


def test_dro_adds_a_quadratic_penalty(model, p):
    loss, _ = _loss(model, _rl_datum(p), "dro", {"beta": 0.5})
    # −Σ (p·A − ½ β (p − q)²) with p − q = log r:
    # = −(p0 − 0.25 log²1.5) − (−p1 − 0.25 log²0.5)
    expected = -(p[0] - 0.25 * math.log(1.5) ** 2) - (-p[1] - 0.25 * math.log(0.5) ** 2)
    assert loss == pytest.approx(expected, abs=1e-5)


def test_minirl_on_policy_is_minus_the_advantage_weighted_log_pi_over_norm(model, p):
    q = p.astype(np.float32)  # μ = π: the IS weight min(1, 5) = 1 and no token is clipped
    datum = toy_datum(logprobs=q, advantages=[1.0, 2.0])
    loss, out = _loss(model, datum, "minirl", {"norm": 2.0})
    # −(1 · p0 + 2 · p1) / 2
    assert loss == pytest.approx(-(p[0] + 2.0 * p[1]) / 2.0, abs=1e-5)
    assert "elementwise_loss" not in out
    result = model.forward([datum], "minirl", {"norm": 2.0}, backward=False)
    assert result.metrics["is/weight_mean:mean"] == pytest.approx(1.0, abs=1e-5)
    assert result.metrics["clip/frac:mean"] == 0.0
    assert result.metrics["mismatch/kl_k1:mean"] == pytest.approx(0.0, abs=1e-6)


def test_minirl_reads_its_settings_from_the_config(model, p):
    # r = π/μ = (1.5, 0.5): a TIS cap of 1.2 truncates token 0's weight to 1.2; token 1 keeps
    # 0.5 (its Â = −1 < 0 and r = 0.5 < 1 − ε_low = 0.8 would be clipped, so use_clip = 0).
    config = {"is_correction.cap": 1.2, "use_clip": 0.0}
    loss, _ = _loss(model, _rl_datum(p), "minirl", config)
    # −(1.2 · 1 · p0 + 0.5 · (−1) · p1)
    assert loss == pytest.approx(-(1.2 * p[0] - 0.5 * p[1]), abs=1e-5)
    result = model.forward([_rl_datum(p)], "minirl", config, backward=False)
    assert result.metrics["is/truncated_frac:mean"] == pytest.approx(0.5)


def test_tinker_names_win_and_keel_prefix_reaches_keel_objectives(model, p):
    tinker_cispo, _ = _loss(model, _rl_datum(p), "cispo")
    keel_cispo, _ = _loss(model, _rl_datum(p), "keel:cispo")
    # keel's CISPO clips π_θ/π_old, which is 1 at the call: −(1 · p0 · 1 + 1 · p1 · (−1)).
    assert keel_cispo == pytest.approx(-(p[0] - p[1]), abs=1e-5)
    assert keel_cispo != pytest.approx(tinker_cispo, abs=1e-3)


def test_unknown_loss_names_the_known_ones(model):
    with pytest.raises(ValueError, match=r"unknown loss_fn 'nope'.*cross_entropy.*minirl"):
        model.forward([toy_datum(weights=[1.0, 1.0])], "nope", None, backward=False)


@pytest.mark.parametrize(
    ("loss_fn", "config", "message"),
    [
        ("dro", {}, "needs 'beta'"),
        ("ppo", {"clip_lo": 0.5}, "unknown \\['clip_lo'\\]"),
        ("minirl", {"eps_low": 5.0}, "eps_low"),
        ("minirl", {"advantage": "rloo"}, "unknown \\['advantage'\\]"),
        ("dppo_tv", {"is_correction": "token_truncate"}, "unknown \\['is_correction'\\]"),
    ],
)
def test_bad_configs_are_refused(model, p, loss_fn, config, message):
    with pytest.raises(ValueError, match=message):
        model.forward([_rl_datum(p)], loss_fn, config, backward=False)


def test_toy_is_what_the_comments_assume():
    assert len(TOY_TOKENS) == len(TOY_TARGETS) == 2
