"""The statistics the fidelity rules (`fidelity`, whose docstring declares them) stand on: rule 1's
smoothed collapse and the run row it goes into, rule 2's effect sizes with their bootstrap
intervals, rule 5's permutation test and rule 6's evaluation noise band.
"""

from __future__ import annotations

import math
import random
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, replace
from statistics import fmean
from typing import Any

from research.stability.criterion import TAIL_EVALS, RunSeries, callable_at, compare, judge
from research.stability.findings import better
from research.stability.results import Run, run_summary

SMOOTH_EVALS = 2
CI = 0.95
BOOTSTRAP_RESAMPLES = 4000
BOOTSTRAP_SEED = 30
NOISE_Z = 2.0
F8_PERMUTATIONS = 4000
LR_SHOCK_STEP = 8  # the first evaluation after step 0: where the issue saw the lr shock

Rows = dict[str, list[dict[str, Any]]]


# ------------------------------------------------------------------ rule 1: smoothed collapse


def smoothed(values: Sequence[float], window: int = SMOOTH_EVALS) -> list[float]:
    """Each value averaged with the `window` − 1 before it (fewer at the start)."""
    return [fmean(values[max(0, i - window + 1) : i + 1]) for i in range(len(values))]


def judge_smoothed(series: RunSeries):
    """`criterion.judge` on the moving mean of the evaluations; final/peak/initial stay raw."""
    raw = judge(series)
    verdict = judge(replace(series, eval_acc=smoothed(list(series.eval_acc))))
    return replace(
        verdict, final_acc=raw.final_acc, peak_acc=raw.peak_acc, initial_acc=raw.initial_acc
    )


def run_row(run: Run) -> dict[str, Any]:
    """`results.run_summary` with rule 1's collapse, plus what rules 6 and 7 need."""
    row = run_summary(run)
    v = judge_smoothed(run.series())
    row["collapsed_first_rule"] = row["collapsed"]
    row["first_rule_step"] = row["collapse_step"]
    row["collapsed"] = int(v.collapsed)
    row["reason"] = v.reason
    row["collapse_step"] = "" if v.step is None else v.step
    _, lengths = run.column("response_len")
    row["mean_response_len"] = _mean(lengths)
    budget = run.meta.get("budget", {})
    row["eval_n"] = budget.get("eval_prompts", 0) * budget.get("eval_samples", 0)
    per_step = budget.get("prompts_per_minibatch", 0) * budget.get("group_size", 0)
    truncated = [
        r["is_trunc_frac"] * r["response_len"] * per_step
        for r in run.rows
        if r.get("is_trunc_frac") is not None and r.get("response_len") is not None
    ]
    row["tis_truncated_tokens"] = sum(truncated) if truncated else math.nan
    steps, acc = run.column("eval_acc")
    early = [a for s, a in zip(steps, acc, strict=True) if 0 < s <= LR_SHOCK_STEP]
    row["acc_at_shock"] = early[0] if early else math.nan
    row["precision"] = run.meta.get("precision", "")
    row["cpu"] = run.meta.get("cpu", "")
    return row


def noise_band(p: float, n: int) -> float:
    """Rule 6: NOISE_Z × the binomial SE of one run's Δ(final − initial)."""
    if n <= 0 or not math.isfinite(p):
        return math.nan
    return NOISE_Z * math.sqrt(p * (1 - p) / n * (1 / TAIL_EVALS + 1))


# ------------------------------------------------------------------ rule 2: effect sizes


@dataclass(frozen=True)
class Effect:
    a: str
    b: str
    diff: float
    low: float
    high: float
    detectable: float  # the smallest |Δ| the comparison rule could call at these seeds
    seeds_a: tuple[float, ...]
    seeds_b: tuple[float, ...]
    sign: int  # findings.better(a, b)

    def text(self) -> str:
        dots = "; ".join(
            f"`{c}` " + ", ".join(f"{x:.3f}" for x in s)
            for c, s in ((self.a, self.seeds_a), (self.b, self.seeds_b))
        )
        return (
            f"`{self.a}` − `{self.b}`: Δ {self.diff:+.3f} [{self.low:+.3f}, {self.high:+.3f}] "
            f"({CI:.0%} bootstrap), callable at |Δ| > {self.detectable:.3f}; seeds: {dots}"
        )


def bootstrap_diff(a: Sequence[float], b: Sequence[float], rng: random.Random) -> tuple:
    """(low, high) percentile interval of mean(a*) − mean(b*) over resampled seeds."""
    if not a or not b:
        return math.nan, math.nan
    return _interval(
        fmean(rng.choices(a, k=len(a))) - fmean(rng.choices(b, k=len(b)))
        for _ in range(BOOTSTRAP_RESAMPLES)
    )


def bootstrap_mean(values: Sequence[float], rng: random.Random) -> tuple:
    """(low, high) percentile interval of mean(values*) over resampled seeds."""
    if not values:
        return math.nan, math.nan
    return _interval(fmean(rng.choices(values, k=len(values))) for _ in range(BOOTSTRAP_RESAMPLES))


def _interval(draws: Iterable[float]) -> tuple[float, float]:
    ordered = sorted(draws)
    tail = (1 - CI) / 2
    high = min(len(ordered) - 1, int((1 - tail) * len(ordered)))
    return ordered[int(tail * len(ordered))], ordered[high]


def effect(rows: Rows, a: str, b: str) -> Effect:
    fa, fb = finals(rows, a), finals(rows, b)
    rng = random.Random(f"{BOOTSTRAP_SEED}:{a}:{b}")
    low, high = bootstrap_diff(fa, fb, rng)
    detectable = callable_at(compare(fa, fb).se)
    diff = fmean(fa) - fmean(fb) if fa and fb else math.nan
    return Effect(a, b, diff, low, high, detectable, tuple(fa), tuple(fb), better(rows, a, b))


def paired_effect(rows: Rows, a: str, b: str) -> Effect:
    """`effect` for a design in blocks (`reruns`'s map): Δ is the mean over the seeds both cells
    ran of a − b within a seed, its interval resampled over those differences, and callable
    beyond the comparison rule's threshold on their standard error."""
    by_seed = {c: {r["seed"]: r["final_acc"] for r in rows.get(c, [])} for c in (a, b)}
    seeds = sorted(
        s
        for s in by_seed[a].keys() & by_seed[b].keys()
        if math.isfinite(by_seed[a][s]) and math.isfinite(by_seed[b][s])
    )
    diffs = [by_seed[a][s] - by_seed[b][s] for s in seeds]
    rng = random.Random(f"{BOOTSTRAP_SEED}:{a}:{b}")
    low, high = bootstrap_mean(diffs, rng)
    # The comparison rule on the differences against zero: a side with no spread leaves the
    # standard error of the differences alone, so its threshold and sign are the rule's own.
    paired = compare(diffs, [0.0] * len(diffs))
    dots = tuple(tuple(by_seed[c][s] for s in seeds) for c in (a, b))
    return Effect(a, b, paired.diff, low, high, callable_at(paired.se), *dots, paired.sign)


# ------------------------------------------------------------------ rule 5: the noise floor


def permutation_p(a: Sequence[float], b: Sequence[float]) -> tuple[float, float]:
    """One-sided p values of mean(a) − mean(b) being this high (and this low) by chance."""
    observed = fmean(a) - fmean(b)
    pooled, k = [*a, *b], len(a)
    rng = random.Random(f"{BOOTSTRAP_SEED}:perm")
    high = low = 0
    for _ in range(F8_PERMUTATIONS):
        rng.shuffle(pooled)
        d = fmean(pooled[:k]) - fmean(pooled[k:])
        high += d >= observed
        low += d <= observed
    return (high + 1) / (F8_PERMUTATIONS + 1), (low + 1) / (F8_PERMUTATIONS + 1)


# ------------------------------------------------------------------ helpers


def finals(rows: Rows, cell: str) -> list[float]:
    return [r["final_acc"] for r in rows.get(cell, []) if math.isfinite(r["final_acc"])]


def _mean(values: Sequence[float]) -> float:
    finite = [v for v in values if math.isfinite(v)]
    return fmean(finite) if finite else math.nan
