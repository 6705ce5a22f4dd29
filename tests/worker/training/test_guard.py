"""The guard's detector on synthetic metric sequences: each trigger fires where the threshold
and patience say (step counted by hand), stays quiet on a stable sequence, and re-arms only after
`patience` clean observations. Also: the defaults are the ones the committed replay chose."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from keel.types.guard import GuardConfig
from keel_worker.training.guard import (
    _JUDGES,
    TRIGGERS,
    Fired,
    StabilityGuard,
    guard_metrics,
    strongest,
)

RESULTS = Path(__file__).resolve().parents[3] / "research" / "results" / "guard" / "thresholds.json"


def only(trigger: str, **fields) -> GuardConfig:
    off = {name: None for name in TRIGGERS if name != trigger}
    default = getattr(GuardConfig(), trigger)
    return GuardConfig(**off, **{trigger: default.model_copy(update=fields)})


def fire_steps(config: GuardConfig, sequence: list[dict[str, float]]) -> list[int]:
    guard = StabilityGuard(config)
    return [step for step, m in enumerate(sequence, start=1) for _ in guard.observe(step, m)]


def series(name: str, values: list[float]) -> list[dict[str, float]]:
    return [{name: v} for v in values]


def test_every_trigger_has_a_judge():
    assert set(_JUDGES) == set(TRIGGERS)
    assert set(TRIGGERS) <= set(GuardConfig.model_fields)


# ---------------------------------------------------------------- kl
def test_kl_fires_after_patience_steps_above_ratio_times_baseline():
    # Baseline = median(1e-2) after warmup 1; 6e-2 = 6x > 5x (and > 1e-3) breaches at steps
    # 4, 5, 6: patience 3 fires at step 6.
    values = [1e-2, 1.1e-2, 0.9e-2, 6e-2, 6e-2, 6e-2]
    assert fire_steps(only("kl"), series("mismatch/kl_k3", values)) == [6]


def test_kl_is_quiet_on_a_stable_sequence_and_below_its_floor():
    stable = [1e-2, 1.3e-2, 0.8e-2, 4.5e-2, 1.1e-2, 0.7e-2] * 5  # ≤ 4.5x the median
    assert fire_steps(only("kl"), series("mismatch/kl_k3", stable)) == []
    # fp32 rollouts: float noise around 0, hundreds of times its baseline, never above 1e-3.
    noise = [-4.6e-9, 1e-9, 3e-7, 4e-6, 4e-6, 4e-6, 4e-6]
    assert fire_steps(only("kl"), series("mismatch/kl_k3", noise)) == []


def test_kl_baseline_ignores_breaching_steps():
    # A breach streak cut short (2 < patience 3) must not raise the baseline: the next
    # 3 breaches at the same level still fire.
    values = [1e-2, 6e-2, 6e-2, 1e-2, 6e-2, 6e-2, 6e-2]
    assert fire_steps(only("kl"), series("mismatch/kl_k3", values)) == [7]


# ---------------------------------------------------------------- fractions
def test_is_fraction_takes_the_larger_of_truncated_and_masked():
    seq = [{"is/truncated_frac": 0.01, "is/masked_frac": 0.06}] * 2
    assert fire_steps(only("is_fraction"), seq) == [2]  # patience 2
    quiet = [{"is/truncated_frac": 0.04, "is/masked_frac": 0.01}] * 10
    assert fire_steps(only("is_fraction"), quiet) == []


def test_clip_fires_after_three_steps_over_five_percent():
    assert fire_steps(only("clip"), series("clip/frac", [0.02, 0.06, 0.07, 0.08])) == [4]
    assert fire_steps(only("clip"), series("clip/frac", [0.06, 0.06, 0.04] * 4)) == []


# ---------------------------------------------------------------- entropy
def test_entropy_fires_below_its_share_of_the_early_level():
    # Entropy alone (reward_window 0): early level = 1.0 (warmup 1); 0.29 < 0.3 breaches and
    # fires at once (patience 1).
    alone = only("entropy", reward_window=0)
    values = [1.0, 0.8, 0.5, 0.31, 0.29]
    assert fire_steps(alone, series("train/entropy", values)) == [5]
    low = series("train/entropy", [1.0, 0.2, 0.2])
    assert fire_steps(only("entropy", warmup=2, reward_window=0), low) == []


def with_reward(entropy: list[float], reward: list[float]) -> list[dict[str, float]]:
    return [{"train/entropy": e, "reward/mean": r} for e, r in zip(entropy, reward, strict=True)]


def test_an_entropy_drop_while_the_reward_climbs_is_learning_not_an_alert():
    # `make demo`'s shape: entropy 2.18 → 0.61 while the reward goes 0.19 → 0.77.
    entropy = [2.18, 1.9, 1.5, 1.2, 0.9, 0.75, 0.65, 0.61]
    reward = [0.19, 0.33, 0.41, 0.38, 0.48, 0.6, 0.7, 0.77]
    assert fire_steps(only("entropy"), with_reward(entropy, reward)) == []
    # The same entropy with the reward falling is the criterion's entropy collapse: it fires
    # once 4 rewards after the first 4 average below them (step 8, the first it can judge).
    falling = [0.4, 0.45, 0.4, 0.42, 0.3, 0.1, 0.0, 0.0]
    assert fire_steps(only("entropy"), with_reward(entropy, falling)) == [8]
    # Entropy alone (the first form) alerts on the happy path too.
    assert fire_steps(only("entropy", reward_window=0), with_reward(entropy, reward)) == [7]


# ---------------------------------------------------------------- grad norm
def test_a_non_finite_gradient_norm_fires_at_once_whatever_the_patience():
    seq = series("optim/grad_norm", [1.0, math.nan])
    assert fire_steps(only("grad_norm", patience=5), seq) == [2]
    assert fire_steps(only("grad_norm"), series("optim/grad_norm", [math.inf])) == [1]


def test_grad_norm_fires_far_above_its_running_median():
    # Ratio 20, patience 1: 4 warmup steps (median 1.35); 9 < 20 × 1.35 joins them (median
    # 1.5); 31 > 20 × 1.5.
    values = [1.0, 2.0, 1.5, 1.2, 9.0, 31.0]
    grad_norm = only("grad_norm", ratio=20, patience=1)
    assert fire_steps(grad_norm, series("optim/grad_norm", values)) == [6]


# ---------------------------------------------------------------- peaks
def test_reward_fires_when_its_window_mean_falls_below_its_share_of_the_baseline():
    # Window 2, warmup 1, ratio 0.1, patience 2: the first mean (step 2: 0.5) starts the
    # baseline; the means 0.4, 0.3 and 0.15 of steps 3-5 are clean and join it; the zero means
    # of steps 6 and 7 breach (0 < 0.1 × median 0.35): fires at 7.
    trigger = {"window": 2, "warmup": 1, "min_ratio": 0.1, "patience": 2}
    values = [0.5, 0.5, 0.3, 0.3, 0.0, 0.0, 0.0]
    assert fire_steps(only("reward", **trigger), series("reward/mean", values)) == [7]
    # The baseline is a median: one lucky step does not raise the bar (a peak would be 0.9,
    # and 0.05 < 0.1 × 0.9 would breach at steps 5-6).
    lucky = [0.3, 0.9, 0.3, 0.3, 0.05, 0.05]
    assert (
        fire_steps(
            only("reward", window=1, patience=2, min_ratio=0.1), series("reward/mean", lucky)
        )
        == []
    )
    # A baseline under min_baseline is no reference: a run that never learnt does not "collapse".
    never_learnt = series("reward/mean", [0.01] * 4 + [0.0] * 8)
    assert fire_steps(only("reward", **trigger), never_learnt) == []


def test_accuracy_is_judged_on_evaluated_steps_only():
    # Evaluations at steps 1, 5, 9: 0.4, 0.5, 0.05 (< 0.2 × 0.5); steps between carry no
    # accuracy and neither breach nor clear.
    seq = [
        {"eval/accuracy": 0.4},
        {},
        {},
        {},
        {"eval/accuracy": 0.5},
        {},
        {},
        {},
        {"eval/accuracy": 0.05},
    ]
    assert fire_steps(only("accuracy", patience=1), seq) == [9]
    seq += [{}, {"eval/accuracy": 0.08}]
    assert fire_steps(only("accuracy"), seq) == []  # patience 3: a third evaluation needed
    assert fire_steps(only("accuracy"), [*seq, {}, {"eval/accuracy": 0.06}]) == [13]


# ---------------------------------------------------------------- hysteresis
def test_a_fired_trigger_stays_latched_until_patience_clean_steps_rearm_it():
    # clip, patience 3: breaches 1-3 fire at 3; 4-5 still breach (latched, silent); 6-7 clean
    # (2 < 3: still latched); 8 breach resets the clean count, so 9-11 clean re-arm it;
    # breaches 12-14 fire again at 14.
    b, c = 0.1, 0.0
    values = [b, b, b, b, b, c, c, b, c, c, c, b, b, b]
    assert fire_steps(only("clip"), series("clip/frac", values)) == [3, 14]


def test_rewind_restores_the_detector_as_it_stood_at_the_restored_step():
    # Reward, window 1, patience 1, ratio 0.1: steps 1-2 (0.5) build the baseline; the slide of
    # steps 3-6 (0.06, clean: > 0.05) joins it and drags the median to 0.06, so only step 7's 0
    # fires. Rolled back to step 2, the re-run must be judged against step 2's baseline (0.5):
    # 0.04 < 0.05 fires at once; judged against the abandoned steps' 0.06 it would not.
    config = only("reward", window=1, patience=1)
    guard = StabilityGuard(config)
    fired = [
        f.step
        for s, v in enumerate([0.5, 0.5, 0.06, 0.06, 0.06, 0.06, 0.0], 1)
        for f in guard.observe(s, {"reward/mean": v})
    ]
    assert fired == [7]
    guard.rewind(2)
    assert [f.reference for f in guard.observe(3, {"reward/mean": 0.04})] == [0.5]
    # A rewind to the start forgets everything: the first value is a baseline again.
    guard.rewind(0)
    assert guard.observe(1, {"reward/mean": 0.04}) == []


def test_a_zero_gradient_norm_is_no_observation():
    # Collapsed steps have no reward spread and no update: norm exactly 0. Were the zeros a
    # baseline, any later update would be "far above" it.
    values = [1.0, 1.0, 1.0, 1.0, 0.0, 0.0, 0.0, 0.0, 0.0, 15.0, 25.0]
    grad_norm = only("grad_norm", ratio=20, patience=1)
    assert fire_steps(grad_norm, series("optim/grad_norm", values)) == [11]


def test_fired_carries_the_breach_start_and_the_step_metrics():
    guard = StabilityGuard(only("clip", action="pause"))
    fired = [
        f for s, v in enumerate([0.0, 0.1, 0.1, 0.1], 1) for f in guard.observe(s, {"clip/frac": v})
    ]
    assert [(f.trigger, f.action, f.step, f.since) for f in fired] == [("clip", "pause", 4, 2)]
    assert guard_metrics(fired) == {"guard/fired": 1.0, "guard/clip": 1.0}
    assert guard_metrics([]) == {"guard/fired": 0.0}


def test_the_most_cautious_action_wins():
    guard = StabilityGuard(
        GuardConfig(
            clip={"action": "rollback", "patience": 1},
            is_fraction={"action": "pause", "patience": 1},
            kl=None,
        )
    )
    fired = guard.observe(1, {"clip/frac": 0.5, "is/truncated_frac": 0.5})
    assert {f.trigger for f in fired} == {"clip", "is_fraction"}
    assert strongest(fired).action == "pause"


# ---------------------------------------------------------------- defaults = the replay's choice
def test_the_defaults_are_what_the_committed_replay_chose():
    result = json.loads(RESULTS.read_text())
    for trigger, info in result["triggers"].items():
        default = getattr(GuardConfig(), trigger)
        if info["chosen"] is None:  # no evidence on the grid: the default is a prior
            continue
        for field, value in info["chosen"].items():
            assert getattr(default, field) == pytest.approx(value), (trigger, field)
    assert result["combined_defaults"]["stable_runs_alerted"] == {}


def test_a_rollback_goes_back_past_the_weights_that_produced_the_breach():
    # A breach first seen at step 5 in a signal of the policy came from the weights after step
    # 4 (step 5 sampled and was evaluated with them): the last good ones are step 3's. The
    # gradient norm and the clip fraction judge step 5's own update: step 4's weights are good.
    def since_5(trigger: str) -> Fired:
        return Fired(trigger, "rollback", step=7, since=5, value=1.0, reference=0.5, reason="")

    policy = ("kl", "is_fraction", "entropy", "reward", "accuracy")
    assert [since_5(t).last_good_step for t in policy] == [3] * 5
    assert [since_5(t).last_good_step for t in ("grad_norm", "clip")] == [4, 4]
    assert set(policy) | {"grad_norm", "clip"} == set(TRIGGERS)
