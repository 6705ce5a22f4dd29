"""The pre-declared collapse criterion and the comparison rule, applied identically to every run.

Declared before any result of the matrix was seen, and written into REPORT.md verbatim from the
constants below. Footnote 1 of the paper defines stable training as steady improvement of reward and
benchmark with a smoothly evolving internal state; collapse (docs/concepts/algorithm.md §11) shows
as a falling benchmark, a sharp entropy drop and a rising training–inference KL. We make that
operational:

1. **Performance collapse.** With ``peak(t)`` the running maximum of held-out accuracy up to
   evaluation ``t``, a run collapses at the first evaluation ``t`` from which held-out accuracy
   stays below ``COLLAPSE_FRACTION * peak(t)`` for every remaining evaluation, provided
   ``peak(t) >= MIN_PEAK`` and at least ``MIN_TAIL_EVALS`` evaluations lie in that tail.
2. **Degenerate entropy collapse.** The mean entropy of the last ``TAIL_STEPS`` logged steps is
   below ``ENTROPY_FRACTION`` times that of the first ``TAIL_STEPS`` steps while the final held-out
   accuracy (mean of the last ``TAIL_EVALS`` evaluations) is below the initial one: the policy
   became confident without becoming right.
3. **Numerical failure.** Any non-finite loss, gradient norm or entropy.

Cells are compared on the final held-out accuracy per seed: A beats B when the difference of means
exceeds both ``MIN_EFFECT`` and ``SE_MULTIPLIER`` standard errors of that difference (Welch), with
at least ``MIN_SEEDS`` seeds on each side; else they are indistinguishable at our scale. Collapse
counts are reported beside every comparison.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from statistics import fmean, variance

COLLAPSE_FRACTION = 0.5
MIN_PEAK = 0.1
MIN_TAIL_EVALS = 2
ENTROPY_FRACTION = 0.2
TAIL_STEPS = 3
TAIL_EVALS = 3
MIN_EFFECT = 0.03
SE_MULTIPLIER = 2.0
MIN_SEEDS = 2  # added mid-matrix for deadline-cut cells: a lone seed has no standard error


@dataclass(frozen=True)
class RunSeries:
    """The series one run logged: evaluations (held-out accuracy) and per-step health signals."""

    eval_steps: Sequence[int]
    eval_acc: Sequence[float]
    entropy: Sequence[float]
    health: Sequence[float]  # loss and grad-norm values; only their finiteness is used
    health_steps: Sequence[int]


@dataclass(frozen=True)
class Verdict:
    """Whether and why a run collapsed; ``step`` is the gradient step of the collapse."""

    collapsed: bool
    reason: str
    step: int | None
    final_acc: float
    peak_acc: float
    initial_acc: float


def final_accuracy(acc: Sequence[float]) -> float:
    return fmean(acc[-TAIL_EVALS:]) if acc else math.nan


def _performance_collapse(steps: Sequence[int], acc: Sequence[float]) -> int | None:
    peak = -math.inf
    for i, value in enumerate(acc):
        peak = max(peak, value)
        tail = acc[i:]
        if (
            peak >= MIN_PEAK
            and len(tail) >= MIN_TAIL_EVALS
            and all(v < COLLAPSE_FRACTION * peak for v in tail)
        ):
            return steps[i]
    return None


def _entropy_collapse(series: RunSeries) -> bool:
    if len(series.entropy) < 2 * TAIL_STEPS or len(series.eval_acc) < 2:
        return False
    start = fmean(series.entropy[:TAIL_STEPS])
    end = fmean(series.entropy[-TAIL_STEPS:])
    return end < ENTROPY_FRACTION * start and final_accuracy(series.eval_acc) < series.eval_acc[0]


def judge(series: RunSeries) -> Verdict:
    """Apply the collapse criterion of this module's docstring to one run."""
    acc = list(series.eval_acc)
    summary = {
        "final_acc": final_accuracy(acc),
        "peak_acc": max(acc) if acc else math.nan,
        "initial_acc": acc[0] if acc else math.nan,
    }
    for step, value in zip(series.health_steps, series.health, strict=True):
        if not math.isfinite(value):
            return Verdict(True, "non-finite loss or gradient", step, **summary)
    if any(not math.isfinite(v) for v in series.entropy):
        return Verdict(True, "non-finite entropy", None, **summary)
    step = _performance_collapse(series.eval_steps, acc)
    if step is not None:
        return Verdict(True, f"held-out accuracy < {COLLAPSE_FRACTION:g} x peak", step, **summary)
    if _entropy_collapse(series):
        return Verdict(True, "entropy collapse without accuracy gain", None, **summary)
    return Verdict(False, "stable", None, **summary)


@dataclass(frozen=True)
class Comparison:
    """A vs B on final held-out accuracy across seeds: ``sign`` is +1, -1 or 0 (no difference)."""

    sign: int
    diff: float
    se: float


def compare(a: Sequence[float], b: Sequence[float]) -> Comparison:
    """Welch-style comparison of per-seed final accuracies, thresholds from the module docstring."""
    a = [x for x in a if math.isfinite(x)]
    b = [x for x in b if math.isfinite(x)]
    if len(a) < MIN_SEEDS or len(b) < MIN_SEEDS:
        # One seed has no spread to estimate: no verdict either way.
        diff = fmean(a) - fmean(b) if a and b else math.nan
        return Comparison(0, diff, math.nan)
    diff = fmean(a) - fmean(b)
    var_a = variance(a) if len(a) > 1 else 0.0
    var_b = variance(b) if len(b) > 1 else 0.0
    se = math.sqrt(var_a / len(a) + var_b / len(b))
    if abs(diff) > callable_at(se):
        return Comparison(1 if diff > 0 else -1, diff, se)
    return Comparison(0, diff, se)


def callable_at(se: float) -> float:
    """The smallest |Δ| the comparison rule calls at standard error `se` (NaN without one)."""
    return max(MIN_EFFECT, SE_MULTIPLIER * se) if math.isfinite(se) else math.nan
