"""The statistics under the fidelity rules (`research.stability.fidelity_stats`): rule 1's smoothed
collapse and rule 6's noise band, on hand-made series."""

import math

from research.stability import fidelity_stats
from research.stability.criterion import RunSeries


def test_one_bad_evaluation_no_longer_dates_a_collapse_but_a_fall_still_does():
    steps = [0, 8, 16, 24, 32, 40]
    dip = RunSeries(steps, [0.4, 0.4, 0.4, 0.4, 0.1, 0.4], [1.0] * 6, [1.0] * 6, steps)
    # Raw: the dip alone is no collapse either (the tail climbs back); a fall at the end is.
    fall = RunSeries(steps, [0.4, 0.4, 0.4, 0.1, 0.0, 0.0], [1.0] * 6, [1.0] * 6, steps)
    assert not fidelity_stats.judge_smoothed(dip).collapsed
    smoothed_fall = fidelity_stats.judge_smoothed(fall)
    assert smoothed_fall.collapsed and smoothed_fall.step == 32  # the moving mean dates it later
    assert math.isclose(smoothed_fall.final_acc, 0.1 / 3)  # the final accuracy stays raw
    two_bad_ends = RunSeries(steps[:4], [0.4, 0.4, 0.4, 0.15], [1.0] * 4, [1.0] * 4, steps[:4])
    assert not fidelity_stats.judge_smoothed(two_bad_ends).collapsed  # (0.4 + 0.15) / 2 ≥ 0.2


def test_the_noise_band_is_the_binomial_se_of_a_run_delta_times_two():
    assert math.isclose(fidelity_stats.noise_band(0.5, 100), 2 * math.sqrt(0.25 / 100 * (4 / 3)))
