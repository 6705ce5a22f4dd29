"""The pre-declared collapse criterion and comparison rule, on hand-made series."""

import math

from research.stability.criterion import RunSeries, compare, judge

STEPS = [0, 8, 16, 24, 32, 40]


def series(acc, *, entropy=(2.0,) * 6, health=(1.0,) * 6) -> RunSeries:
    return RunSeries(STEPS[: len(acc)], acc, list(entropy), list(health), STEPS[: len(health)])


def test_steady_improvement_is_stable():
    v = judge(series([0.2, 0.3, 0.4, 0.5, 0.55, 0.6]))
    assert not v.collapsed
    # final = mean of the last 3 evaluations = (0.5 + 0.55 + 0.6) / 3
    assert math.isclose(v.final_acc, 0.55)
    assert (v.peak_acc, v.initial_acc) == (0.6, 0.2)


def test_accuracy_below_half_its_peak_for_good_is_a_collapse():
    # Peak 0.5 at step 16; from step 24 on every value is < 0.25.
    v = judge(series([0.2, 0.4, 0.5, 0.2, 0.1, 0.1]))
    assert v.collapsed and v.step == 24
    assert v.reason.startswith("held-out accuracy")


def test_a_single_final_dip_or_a_recovery_is_not_a_collapse():
    assert not judge(series([0.2, 0.4, 0.5, 0.5, 0.5, 0.1])).collapsed  # tail of one evaluation
    assert not judge(series([0.2, 0.5, 0.1, 0.1, 0.3, 0.4])).collapsed  # 0.3 >= 0.25 recovers


def test_a_peak_below_the_floor_cannot_collapse():
    assert not judge(series([0.05, 0.08, 0.01, 0.0, 0.0, 0.0])).collapsed


def test_entropy_collapse_counts_only_without_accuracy_gain():
    entropy = [2.0, 2.0, 2.0, 0.3, 0.3, 0.3]  # end 0.3 < 0.2 × start 2.0 = 0.4
    worse = judge(series([0.3, 0.3, 0.2, 0.2, 0.2, 0.2], entropy=entropy))
    assert worse.collapsed and worse.reason.startswith("entropy")
    better = judge(series([0.3, 0.4, 0.5, 0.6, 0.6, 0.6], entropy=entropy))
    assert not better.collapsed


def test_non_finite_loss_is_a_collapse_at_its_step():
    v = judge(series([0.3, 0.4, 0.4], health=[1.0, 1.0, math.nan]))
    assert v.collapsed and v.step == 16


def test_compare_needs_both_the_effect_floor_and_two_standard_errors():
    # diff 0.2; se = sqrt(0.0004/3 + 0.0001/3) ≈ 0.0129 → significant.
    assert compare([0.5, 0.52, 0.48], [0.3, 0.31, 0.29]).sign == 1
    assert compare([0.3, 0.31, 0.29], [0.5, 0.52, 0.48]).sign == -1
    # diff 0.05 but se = sqrt(0.04/3 + 0.0025/3) ≈ 0.119: within noise.
    assert compare([0.5, 0.3, 0.7], [0.45, 0.5, 0.4]).sign == 0
    # No variance at all, but 0.02 is below the 0.03 effect floor.
    assert compare([0.5, 0.5, 0.5], [0.48, 0.48, 0.48]).sign == 0
    # A lone seed has no standard error: never a verdict, however large the gap.
    assert compare([0.9], [0.1, 0.12]).sign == 0
