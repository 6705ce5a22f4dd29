"""The fidelity verdict rules (`research.stability.fidelity`) on hand-made run summaries."""

import math

import pytest

from research.stability import fidelity, fidelity_stats
from research.stability.criterion import compare


def runs(cell, finals, collapsed=None, *, k3=2e-2, flip=0.2, initial=0.2, precision="int4"):
    collapsed = collapsed or (0,) * len(finals)
    return [
        {
            "cell": cell,
            "final_acc": f,
            "collapsed": c,
            "initial_acc": initial,
            "mean_kl_k1": 1e-3,
            "mean_kl_k3": k3,
            "max_layer_routing_infer_vs_train": flip,
            "max_layer_routing_old_vs_current": flip,
            "kl_start": 1e-3,
            "kl_end": 1e-3,
            "eval_n": 128,
            "precision": precision,
        }
        for f, c in zip(finals, collapsed, strict=True)
    ]


def by_key(rows):
    return {j.key: j for j in fidelity.judge_all(rows, {})}


def test_f4_is_split_into_clipping_and_replay():
    rows = []
    for n in (2, 4, 8):
        rows += runs(f"N{n}/minirl+R2", [0.40, 0.41, 0.42])
        rows += runs(f"N{n}/minirl+R3", [0.40, 0.41, 0.40])
        rows += runs(f"auto/N{n}/minirl+none", [0.40, 0.42, 0.41])  # clipped, no replay: a tie
        rows += runs(f"N{n}/minirl+R2-noclip", [0.10, 0.12, 0.11])
        rows += runs(f"N{n}/minirl-noclip", [0.11, 0.10, 0.12])
    judged = by_key(rows)
    assert judged["F4a"].verdict == "agrees"
    assert judged["F4b"].verdict == "not reproduced"
    without_the_no_replay_cells = [r for r in rows if not r["cell"].startswith("auto/")]
    assert by_key(without_the_no_replay_cells)["F4b"].verdict == "missing"


def test_a_mechanism_below_its_floor_cannot_be_tested_whatever_the_accuracies():
    apart = runs("N1/minirl", [0.4, 0.42, 0.41], k3=1e-3) + runs(
        "N1/reinforce", [0.1, 0.12, 0.09], k3=1e-3
    )
    assert by_key(apart)["F1"].verdict == fidelity.UNTESTABLE
    strong = [{**r, "mean_kl_k3": 2e-2} for r in apart]
    assert by_key(strong)["F1"].verdict == "agrees"
    # The fp32 rung's near-zero KL does not pull the mean below the floor.
    fp32 = runs("N1/minirl", [0.4], k3=0.0, precision="fp32")
    assert by_key(strong + fp32)["F1"].verdict == "agrees"


def test_f6_cannot_be_tested_when_the_stable_baseline_does_not_learn():
    cells = ("N2/minirl+R2", "cold/short_heavy", "cold/long_heavy")
    flat = [r for c in cells for r in runs(c, [0.36, 0.35, 0.36], initial=0.36)]
    assert by_key(flat)["F6"].verdict == fidelity.UNTESTABLE
    learnt = [r for c in cells for r in runs(c, [0.60, 0.61, 0.60], initial=0.36)]
    assert by_key(learnt)["F6"].verdict == "agrees"


def test_f8_needs_the_kl_growth_to_clear_a_permutation_noise_floor():
    def kl_runs(cell, growths, collapsed):
        return [
            {**r, "kl_end": 1e-3 + g}
            for r, g in zip(
                runs(cell, [0.3] * len(growths), (collapsed,) * len(growths)), growths, strict=True
            )
        ]

    noisy = [(-1) ** i * 1e-3 * (i % 5) for i in range(40)]
    overlap = kl_runs("S", noisy, 0) + kl_runs("C", [1e-3, -5e-4, 2e-3, 0.0], 1)
    assert by_key(overlap)["F8"].verdict == "not reproduced"
    apart = kl_runs("S", noisy, 0) + kl_runs("C", [0.05, 0.06, 0.04, 0.07], 1)
    assert by_key(apart)["F8"].verdict == "agrees"


def test_effects_carry_a_bootstrap_interval_around_the_difference_and_the_seed_dots():
    rows = fidelity.group(runs("A", [0.40, 0.45, 0.50]) + runs("B", [0.30, 0.31, 0.29]))
    e = fidelity_stats.effect(rows, "A", "B")
    assert math.isclose(e.diff, 0.15)
    assert e.low <= e.diff <= e.high and e.low > 0.0
    assert e.seeds_a == (0.40, 0.45, 0.50)
    assert fidelity_stats.effect(rows, "A", "B") == e  # seeded: the report rebuilds identical


def test_a_paired_effect_differences_within_a_seed_first():
    # Seeds far apart (as two CPU kinds may be), the rung 0.05 below fp32 within every seed:
    # unpaired, the spread between seeds hides it; paired, it is the whole effect.
    rows = {"R": [], "F": []}
    for seed, level, wobble in ((0, 0.20, 0.000), (1, 0.50, 0.004), (2, 0.35, -0.004)):
        rows["R"].append({"cell": "R", "seed": seed, "final_acc": level - 0.05 + wobble})
        rows["F"].append({"cell": "F", "seed": seed, "final_acc": level})
    rows["R"].append({"cell": "R", "seed": 3, "final_acc": 0.9})  # no fp32 seed 3: left out
    e = fidelity_stats.paired_effect(rows, "R", "F")
    assert math.isclose(e.diff, -0.05)
    # The differences (−0.05, −0.046, −0.054) have sd 0.004, se 0.004 / √3: the rule's threshold
    # is its floor, MIN_EFFECT 0.03, and 0.05 is beyond it.
    assert math.isclose(e.detectable, 0.03)
    assert e.sign == -1 and e.low < e.diff < e.high < 0.0
    assert e.seeds_a == pytest.approx((0.15, 0.454, 0.296)) and e.seeds_b == (0.20, 0.50, 0.35)
    unpaired = compare([r["final_acc"] for r in rows["R"][:3]], [r["final_acc"] for r in rows["F"]])
    assert unpaired.sign == 0 and unpaired.se > 0.1
