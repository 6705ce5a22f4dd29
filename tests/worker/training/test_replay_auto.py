"""Routing Replay `auto`: hand-made per-layer fractions → the rule's choice, hysteresis, and the
first-step-then-every-k schedule (keel_worker.training.replay_auto)."""

from __future__ import annotations

import math

import pytest

from keel_worker.training.replay_auto import (
    HYSTERESIS,
    MODE_CODES,
    REASONS,
    AutoReplay,
    Decision,
    RoutingMeasurement,
    choose_replay,
    prior_mode,
)

PRIOR_R2 = Decision("R2", "prior", "", 0)


def _m(d_L, s_L, step=1) -> RoutingMeasurement:
    return RoutingMeasurement(step, tuple(d_L), tuple(s_L))


def _choose(d_L, s_L, *, n=2, current=PRIOR_R2) -> Decision:
    return choose_replay(_m(d_L, s_L), num_minibatches=n, current=current)


@pytest.mark.parametrize(
    ("d_L", "s_L", "n", "mode", "reason"),
    [
        # N = 1: on-policy, whatever the engine–trainer mismatch (R2 no-op, R3 no gain).
        ([0.3, 0.5], [math.nan, math.nan], 1, "none", "on_policy"),
        # Staleness below 1% in every layer: routing does not move, replay only biases.
        ([0.08, 0.05], [0.009, 0.004], 2, "none", "static"),
        # The worst layer counts: mean 0.007 would be static, layer 1 at 0.012 is not.
        ([0.08, 0.05], [0.002, 0.012], 2, "R2", "mild_staleness"),
        # Engine and trainer route alike (fp32 rollouts): R3 would replay R2's experts.
        ([0.0, 0.004], [0.05, 0.09], 4, "R2", "aligned"),
        # The stress dial at N = 2: S/D = 0.02/0.08 = 0.25 → R2.
        ([0.044, 0.08], [0.013, 0.02], 2, "R2", "mild_staleness"),
        # The gentle suite's N = 4: S/D = 0.027/0.024 ≥ 1 → R3.
        ([0.024, 0.01], [0.027, 0.02], 4, "R3", "strong_staleness"),
        # Exactly at the ratio: S = D → R3 (the comparison is ≥).
        ([0.05], [0.05], 8, "R3", "strong_staleness"),
    ],
)
def test_rule_on_hand_made_fractions(d_L, s_L, n, mode, reason):
    decision = _choose(d_L, s_L, n=n)
    assert (decision.mode, decision.reason) == (mode, reason)
    assert decision.step == 1


def test_missing_layer_keeps_the_mode_and_says_missing():
    current = Decision("R3", "strong_staleness", "", 1)
    decision = _choose([0.05, 0.05], [0.06, math.nan], current=current)
    assert (decision.mode, decision.reason) == ("R3", "missing")


def test_prior_is_the_papers_recipe_and_gets_no_hysteresis():
    assert [prior_mode(n) for n in (1, 2, 3, 4, 8)] == ["none", "R2", "R2", "R3", "R3"]
    # S = 1.1 D: inside the hysteresis band, but the prior was never measured → switch.
    assert _choose([0.05], [0.055], current=PRIOR_R2).mode == "R3"


def test_hysteresis_between_r2_and_r3():
    d = 0.05
    in_r3 = Decision("R3", "strong_staleness", "", 1)
    in_r2 = Decision("R2", "mild_staleness", "", 1)
    # In R3: S = 0.9 D would be R2 nominally, but only leaves R3 below (1 − 25%) D.
    held = _choose([d], [0.9 * d], current=in_r3)
    assert (held.mode, held.reason) == ("R3", "held")
    assert _choose([d], [(1 - HYSTERESIS) * d * 0.95], current=in_r3).mode == "R2"
    # In R2: S = 1.1 D is held, above (1 + 25%) D it switches.
    assert (_choose([d], [1.1 * d], current=in_r2).reason) == "held"
    switched = _choose([d], [(1 + HYSTERESIS) * d * 1.05], current=in_r2)
    assert (switched.mode, switched.reason) == ("R3", "strong_staleness")


def test_hysteresis_around_the_static_threshold():
    in_none = Decision("none", "static", "", 1)
    assert _choose([0.02], [0.011], current=in_none).mode == "none"  # 0.011 < 0.0125
    assert _choose([0.02], [0.013], current=in_none).mode == "R2"
    in_r2 = Decision("R2", "mild_staleness", "", 1)
    assert _choose([0.02], [0.009], current=in_r2).mode == "R2"  # 0.009 ≥ 0.0075: held
    assert _choose([0.02], [0.007], current=in_r2).mode == "none"


def test_no_flapping_on_a_noisy_series():
    """S/D oscillating ±20% around 1 switches once (prior → measured), then holds."""
    auto = AutoReplay("auto", is_moe=True, num_minibatches=4, every=1)
    modes = []
    for step, ratio in enumerate([1.1, 0.85, 1.15, 0.82, 1.18, 0.9, 1.05], start=1):
        auto.after_step(_metrics([0.05, 0.04], [0.05 * ratio, 0.03]), num_layers=2)
        modes.append(auto.mode)
        assert auto.decision.step == step
    assert modes == ["R3"] * 7
    assert auto.switches == 0  # the prior for N = 4 was R3 already


def _metrics(d_L, s_L) -> dict[str, float]:
    out = {f"routing/infer_vs_train_L{i}": v for i, v in enumerate(d_L)}
    out.update({f"routing/old_vs_current_L{i}": v for i, v in enumerate(s_L)})
    return out


STRONG, MILD = _metrics([0.02], [0.05]), _metrics([0.08], [0.02])


def test_auto_measures_on_the_first_step_then_every_k():
    auto = AutoReplay("auto", is_moe=True, num_minibatches=2, every=3)
    ran, decided = [], []
    series = [STRONG, MILD, MILD, MILD, MILD, MILD, MILD]
    for metrics in series:
        ran.append(auto.after_step(metrics, num_layers=1)["routing/replay_mode"])
        decided.append(auto.decision.step)
    # Step 1 runs the prior (R2) and measures STRONG → R3; steps 2-4 run R3; step 4 measures
    # MILD (S/D = 0.25) → R2 for steps 5-7; step 7 measures again.
    assert ran == [2.0, 3.0, 3.0, 3.0, 2.0, 2.0, 2.0]
    assert decided == [1, 1, 1, 4, 4, 4, 7]
    assert auto.switches == 2
    assert auto.summary()["decided_at_step"] == 7


def test_every_zero_decides_once():
    auto = AutoReplay("auto", is_moe=True, num_minibatches=2, every=0)
    for metrics in [STRONG, MILD, MILD, MILD]:
        auto.after_step(metrics, num_layers=1)
    assert (auto.mode, auto.decision.step) == ("R3", 1)


def test_a_step_without_measurements_measures_again_next_step():
    auto = AutoReplay("auto", is_moe=True, num_minibatches=2, every=10)
    auto.after_step({}, num_layers=1)  # every group dropped: no routing metrics
    assert (auto.mode, auto.decision.reason) == ("R2", "missing")
    auto.after_step(STRONG, num_layers=1)
    assert (auto.mode, auto.decision.step) == ("R3", 2)


def test_reason_metric_and_summary_name_the_branch():
    auto = AutoReplay("auto", is_moe=True, num_minibatches=2, every=5)
    first = auto.after_step(MILD, num_layers=1)
    assert first["routing/replay_reason"] == REASONS.index("prior")
    second = auto.after_step(MILD, num_layers=1)
    assert second == {
        "routing/replay_mode": MODE_CODES["R2"],
        "routing/replay_reason": float(REASONS.index("mild_staleness")),
    }
    summary = auto.summary()
    assert summary["requested"] == "auto" and summary["mode"] == "R2"
    assert "S=0.0200" in summary["reason"] and "D=0.0800" in summary["reason"]


@pytest.mark.parametrize(
    ("requested", "is_moe", "mode", "reason"),
    [
        ("R3", True, "R3", "fixed"),
        ("none", True, "none", "fixed"),
        ("auto", False, "none", "dense"),
    ],
)
def test_fixed_and_dense_never_change(requested, is_moe, mode, reason):
    auto = AutoReplay(requested, is_moe=is_moe, num_minibatches=4, every=1)
    for metrics in [MILD, STRONG, _metrics([0.0], [0.0])]:
        ran = auto.after_step(metrics, num_layers=1)
        assert ran["routing/replay_mode"] == MODE_CODES[mode]
    assert (auto.mode, auto.decision.reason, auto.switches) == (mode, reason, 0)


def test_state_round_trip_resumes_the_schedule():
    a = AutoReplay("auto", is_moe=True, num_minibatches=2, every=2)
    a.after_step(STRONG, num_layers=1)
    a.after_step(MILD, num_layers=1)  # due again after step 2
    b = AutoReplay("auto", is_moe=True, num_minibatches=2, every=2)
    b.load_state_dict(a.state_dict())
    assert b.decision == a.decision
    for auto in (a, b):
        auto.after_step(MILD, num_layers=1)
    assert a.decision == b.decision and a.decision.step == 3 and a.mode == "R2"
