"""The fidelity verdict rules for the stress suite: declared here before they were applied to a run.

The first rules (`findings`, `criterion`) stay in the report for the record; an outside read
found that three of their verdicts say more than the runs do. These rules replace them as the
stress suite's verdicts. Nothing below was tuned on the runs it judges: the constants are the
issue's goals, the criterion's own constants, or conventions (95 % intervals, 2 standard errors).

1. **Collapse on a two-evaluation moving mean.** A run is judged by `criterion.judge` on its
   held-out accuracy smoothed by the mean of each evaluation and the one before it
   (`SMOOTH_EVALS`; the first evaluation stays as it is), so one unlucky evaluation of 128
   samples no longer dates a collapse. The final accuracy stays the raw mean of the last
   `criterion.TAIL_EVALS` evaluations.
2. **Effect sizes.** Every comparison states Δ = mean(A) − mean(B) of per-seed final held-out
   accuracy with a `CI` percentile bootstrap interval (each cell's seeds resampled with
   replacement, `BOOTSTRAP_RESAMPLES` draws, RNG seed `BOOTSTRAP_SEED`), each seed's value, and
   the smallest |Δ| the comparison rule could have called at those seeds (max(MIN_EFFECT,
   SE_MULTIPLIER × SE)). The comparison rule itself is unchanged (`findings.better`, with the
   collapse counts of rule 1).
3. **"Cannot be tested here".** A finding is about a mechanism. When that mechanism, measured in
   the finding's own runs, stays below a declared size, the verdict is `cannot be tested here`,
   whatever the accuracies say:
   - F1 and F9 (the IS weight π_old/μ and the trust region's anchor): the mean per-token k3
     KL(μ‖π_old) over the finding's runs with a mismatch (the fp32 rung left out) is at least
     `K3_FLOOR` (the issue's goal).
   - F3 (R3 replays the engine's routes in the trainer): the worst layer's engine-vs-trainer
     routing flip, averaged over the finding's runs, is at least `ROUTING_FLOOR` (the goal).
   - F5 (R2's staleness against R3's bias): the worst layer's θ_old-vs-θ flip or its
     engine-vs-trainer flip, averaged over the R2 and R3 runs, is at least `ROUTING_FLOOR`.
   - F6 (cold starts converge under a stable recipe): the stable baseline (`N2/minirl+R2`)
     improves on its cold start, its mean Δ(final − initial) above the evaluation noise band
     (rule 6). Where the baseline does not learn, convergence cannot show.
4. **F4 split in two.** *F4a, clipping*: at each N > 1, clipped MiniRL beats unclipped MiniRL
   with replay (R2 against R2-noclip) and without it (the `auto` table's clipped no-replay cell
   `auto/N{n}/minirl+none` against `N{n}/minirl-noclip`). *F4b, replay*: at each N > 1, the
   better clipped replay cell (R2 or R3, higher mean) beats the clipped no-replay cell, and R2
   beats no replay without clipping (R2-noclip against noclip). Each part combines its N as
   `findings._combine` does.
5. **F8 with a noise floor.** The contrast is the mean change of KL k1 (last − first tenth of a
   run's steps) of the collapsed runs minus that of the stable runs (rule 1's collapse). Its
   noise floor is a permutation test: the collapsed/stable labels shuffled
   `F8_PERMUTATIONS` times (RNG seed `BOOTSTRAP_SEED`); `agrees` when the observed difference
   is positive with a one-sided p below `F8_ALPHA`, `disagrees` when it is negative with the
   mirrored p below `F8_ALPHA`, else `not reproduced`. The AUC (a collapsed run's growth above a
   stable run's) and a bootstrap interval are stated beside it.
6. **Evaluation noise band.** The binomial standard error of one run's Δ(final − initial):
   sqrt(p(1 − p)/n × (1/TAIL_EVALS + 1)), n = evaluation prompts × samples of the run's budget,
   p its initial accuracy, times `NOISE_Z`. It ignores that the same prompts are scored at every
   evaluation, so it is a lower bound on the noise; the figures shade it.
7. **Goals.** `REPORT.md` states what the runs reached against the issue's goals: per-token k3
   ≥ `K3_FLOOR`, summed over a response ≥ `SEQUENCE_KL_GOAL` nats (the paper's tens of nats),
   worst-layer routing flips ≥ `ROUTING_FLOOR`, ≥ `SEEDS_GOAL` seeds per findings cell; and the
   comparison rule's false-positive rate and power at Δ = `POWER_AT`, simulated
   (`POWER_SIMULATIONS` normal draws, RNG seed `BOOTSTRAP_SEED`) with the pooled seed-to-seed
   standard deviation of the findings cells and their seed count.
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from statistics import fmean
from typing import Any

from research.stability.fidelity_stats import (
    BOOTSTRAP_SEED,
    CI,
    Effect,
    Rows,
    bootstrap_diff,
    effect,
    finals,
    noise_band,
    permutation_p,
)
from research.stability.findings import _combine, _missing, group_by_cell
from research.stability.matrix import OFF_POLICY_N

K3_FLOOR = 1e-2
ROUTING_FLOOR = 0.10
F8_ALPHA = 0.05
UNTESTABLE = "cannot be tested here"


def verdict_for(sign: int) -> str:
    return {1: "agrees", 0: "not reproduced", -1: "disagrees"}[sign]


# ------------------------------------------------------------------ rule 3: mechanism gates


def mechanism(rows: Rows, cells: Sequence[str], key: str, *, mismatch_only: bool = False):
    """Mean of `key` over the runs of `cells` (fp32-rung runs left out with `mismatch_only`)."""
    values = [
        r[key]
        for c in cells
        for r in rows.get(c, [])
        if math.isfinite(r[key]) and not (mismatch_only and r["precision"] == "fp32")
    ]
    return fmean(values) if values else math.nan


def _gate(value: float, floor: float, what: str) -> tuple[bool, str]:
    ok = math.isfinite(value) and value >= floor
    return (
        ok,
        f"mechanism: {what} {value:.2e} (declared floor {floor:g}: {'met' if ok else 'not met'})",
    )


# ------------------------------------------------------------------ the findings


@dataclass(frozen=True)
class Judged:
    """One finding under these rules: the verdict, its lines, its effects (for the figures)."""

    key: str
    title: str
    claim: str
    verdict: str
    lines: list[str]
    effects: list[Effect]
    first_verdict: str = ""  # what `findings` said (filled by `judge_all`)


def _pairs(rows: Rows, pairs: list[tuple[str, str]]) -> tuple[list[str], list[Effect]]:
    effects = [effect(rows, a, b) for a, b in pairs]
    return [e.text() for e in effects], effects


def f1(rows: Rows) -> Judged:
    key, title = "F1", "On-policy: the train–infer IS correction is essential"
    claim = "MiniRL beats MiniRL w/o train-infer IS (`reinforce`), which collapses rapidly."
    cells = ["N1/minirl", "N1/reinforce"]
    return _gated_ordering(rows, key, title, claim, [tuple(cells)], cells)


def f2(rows: Rows) -> Judged:
    key, title = "F2", "On-policy: length normalization is worse but stable"
    claim = "MiniRL + length-norm is suboptimal, yet training remains stable."
    a, b = "N1/minirl", "N1/minirl+length_norm"
    if _missing(rows, a, b):
        return Judged(key, title, claim, "missing", ["missing cells"], [])
    lines, effects = _pairs(rows, [(a, b)])
    stable = _collapses(rows, b) * 2 <= len(rows[b])
    worse = verdict_for(effects[0].sign)
    lines.append(f"length-norm stable in a majority of seeds: {stable}")
    verdict = worse if stable or worse != "agrees" else "partial"
    return Judged(key, title, claim, verdict, lines, effects)


def f3(rows: Rows) -> Judged:
    key, title = "F3", "On-policy: R3 lowers the train–infer KL but brings no gain"
    claim = "MiniRL + R3 is no better than MiniRL although it lowers the KL; R3 w/o IS fails."
    cells = ["N1/minirl", "N1/minirl+R3", "N1/reinforce+R3"]
    if _missing(rows, *cells):
        return Judged(key, title, claim, "missing", ["missing cells"], [])
    flip = mechanism(rows, cells, "max_layer_routing_infer_vs_train")
    ok, gate = _gate(flip, ROUTING_FLOOR, "worst-layer routing flip engine vs trainer")
    lines, effects = _pairs(rows, [(cells[1], cells[0]), (cells[1], cells[2])])
    lines.append(gate)
    if not ok:
        return Judged(key, title, claim, UNTESTABLE, lines, effects)
    no_gain = "agrees" if effects[0].sign <= 0 else "disagrees"
    kl = [mechanism(rows, [c], "mean_kl_k3") for c in cells[:2]]
    lower = "agrees" if kl[1] < kl[0] else "disagrees"
    verdict = _combine([no_gain, lower, verdict_for(effects[1].sign)])
    return Judged(key, title, claim, verdict, lines, effects)


def f4a(rows: Rows, ns: Sequence[int] = OFF_POLICY_N) -> Judged:
    key, title = "F4a", "Off-policy: clipping is needed"
    claim = "With N > 1, MiniRL without clipping falls behind or collapses, with replay or not."
    pairs = [
        pair
        for n in ns
        for pair in (
            (f"N{n}/minirl+R2", f"N{n}/minirl+R2-noclip"),
            (f"auto/N{n}/minirl+none", f"N{n}/minirl-noclip"),
        )
    ]
    return _combined_pairs(rows, key, title, claim, pairs)


def f4b(rows: Rows, ns: Sequence[int] = OFF_POLICY_N) -> Judged:
    key, title = "F4b", "Off-policy: Routing Replay is needed"
    claim = "With N > 1, MiniRL without Routing Replay falls behind or collapses."
    pairs = []
    for n in ns:
        r2, r3, none = f"N{n}/minirl+R2", f"N{n}/minirl+R3", f"auto/N{n}/minirl+none"
        best = r2 if _cell_mean(rows, r2) >= _cell_mean(rows, r3) else r3
        pairs += [(best, none), (f"N{n}/minirl+R2-noclip", f"N{n}/minirl-noclip")]
    return _combined_pairs(rows, key, title, claim, pairs)


def f5(rows: Rows) -> Judged:
    key, title = "F5", "Off-policy: R2 is better at N = 2, R3 at N ≥ 4"
    claim = "R2 outperforms R3 at N = 2; R3 outperforms R2 at N = 4 and N = 8."
    pairs = [
        (f"N{n}/minirl+R2", f"N{n}/minirl+R3") if n == 2 else (f"N{n}/minirl+R3", f"N{n}/minirl+R2")
        for n in OFF_POLICY_N
    ]
    cells = [c for p in pairs for c in p]
    if _missing(rows, *cells):
        return Judged(key, title, claim, "missing", ["missing cells"], [])
    stale = mechanism(rows, cells, "max_layer_routing_old_vs_current")
    bias = mechanism(rows, cells, "max_layer_routing_infer_vs_train")
    ok, gate = _gate(max(stale, bias), ROUTING_FLOOR, "larger worst-layer routing flip")
    lines, effects = _pairs(rows, pairs)
    lines.append(f"{gate} (θ_old vs θ {stale:.3f}, engine vs trainer {bias:.3f})")
    verdict = _combine([verdict_for(e.sign) for e in effects]) if ok else UNTESTABLE
    return Judged(key, title, claim, verdict, lines, effects)


def f6(rows: Rows) -> Judged:
    key, title = "F6", "Cold starts converge under a stable recipe"
    claim = "Three cold starts trained with MiniRL + R2 (N = 2) reach comparable performance."
    cells = ["N2/minirl+R2", "cold/short_heavy", "cold/long_heavy"]
    if _missing(rows, *cells):
        return Judged(key, title, claim, "missing", ["missing cells"], [])
    base = rows[cells[0]]
    gain = fmean(r["final_acc"] - r["initial_acc"] for r in base)
    band = noise_band(fmean(r["initial_acc"] for r in base), base[0]["eval_n"])
    learns = math.isfinite(band) and gain > band
    pairs = [(a, b) for i, a in enumerate(cells) for b in cells[i + 1 :]]
    lines, effects = _pairs(rows, pairs)
    lines.append(
        f"precondition: `{cells[0]}` gains {gain:+.3f} on its cold start against a noise band "
        f"of {band:.3f} ({'met' if learns else 'not met: the stable recipe does not learn'})"
    )
    if not learns:
        return Judged(key, title, claim, UNTESTABLE, lines, effects)
    verdict = "agrees" if all(e.sign == 0 for e in effects) else "disagrees"
    return Judged(key, title, claim, verdict, lines, effects)


def f7(rows: Rows) -> Judged:
    key, title = "F7", "MiniRL vs GRPO and CISPO (App. A)"
    claim = "GRPO and CISPO are inferior to MiniRL."
    pairs = [
        (f"N{n}/minirl+{rec}", f"N{n}/{ref}+{rec}")
        for n, rec in ((2, "R2"), (4, "R3"), (8, "R3"))
        for ref in ("grpo", "cispo")
    ]
    return _combined_pairs(rows, key, title, claim, pairs)


def f8(rows: Rows) -> Judged:
    key, title = "F8", "Collapse comes with a rising training–inference KL"
    claim = "Collapse is often accompanied by a sharp increase of KL(μ_old‖π_old)."
    every = list({id(r): r for runs in rows.values() for r in runs}.values())
    growth = {
        id(r): r["kl_end"] - r["kl_start"]
        for r in every
        if math.isfinite(r["kl_end"]) and math.isfinite(r["kl_start"])
    }
    up = [growth[id(r)] for r in every if r["collapsed"] and id(r) in growth]
    flat = [growth[id(r)] for r in every if not r["collapsed"] and id(r) in growth]
    if not up or not flat:
        return Judged(key, title, claim, "missing", [f"{len(up)} collapsed runs"], [])
    observed = fmean(up) - fmean(flat)
    p_up, p_down = permutation_p(up, flat)
    rng = random.Random(f"{BOOTSTRAP_SEED}:F8")
    low, high = bootstrap_diff(up, flat, rng)
    auc = fmean(1.0 if u > f else 0.5 if u == f else 0.0 for u in up for f in flat)
    lines = [
        f"{len(up)} collapsed runs (two-evaluation moving mean): KL k1 change {fmean(up):.2e}; "
        f"{len(flat)} stable runs: {fmean(flat):.2e}",
        f"difference {observed:+.2e} [{low:+.2e}, {high:+.2e}] ({CI:.0%} bootstrap); "
        f"permutation p (collapsed higher) {p_up:.3f}, (lower) {p_down:.3f}; AUC {auc:.2f}",
    ]
    if observed > 0 and p_up < F8_ALPHA:
        verdict = "agrees"
    elif observed < 0 and p_down < F8_ALPHA:
        verdict = "disagrees"
    else:
        verdict = "not reproduced"
    return Judged(key, title, claim, verdict, lines, [])


F9_RUNGS = ("fp32", "int4", "int4+top_p0.9")  # the stress suite's F9 cells


def f9(rows: Rows, rungs: Sequence[str] = F9_RUNGS) -> Judged:
    key, title = "F9", "DPPO: the trust region must be anchored on μ, not the recomputed π_old"
    claim = "MiniRL (π_old anchor) fails as the mismatch grows; DPPO's μ-anchored mask is stable."
    pairs = [
        (f"F9/{rung}/{v}", f"F9/{rung}/minirl") for rung in rungs for v in ("dppo_tv", "minirl-mu")
    ]
    cells = sorted({c for p in pairs for c in p})
    return _gated_ordering(rows, key, title, claim, pairs, cells, combine=_f9_combine)


def _f9_combine(signs: list[int]) -> str:
    """F9's first rule on the pairs' signs (DPPO-TV, MiniRL-μ per rung, against MiniRL)."""
    per_rung = list(zip(signs[::2], signs[1::2], strict=True))
    if any(p == (1, 1) for p in per_rung) and -1 not in signs:
        return "agrees"
    if any(p == (-1, -1) for p in per_rung) and 1 not in signs:
        return "disagrees"
    return "not reproduced" if all(s == 0 for s in signs) else "partial"


def _gated_ordering(rows, key, title, claim, pairs, cells, combine=None) -> Judged:
    if _missing(rows, *cells):
        return Judged(key, title, claim, "missing", ["missing cells"], [])
    k3 = mechanism(rows, cells, "mean_kl_k3", mismatch_only=True)
    ok, gate = _gate(k3, K3_FLOOR, "mean per-token k3 KL(μ‖π_old)")
    lines, effects = _pairs(rows, pairs)
    lines.append(gate)
    if not ok:
        return Judged(key, title, claim, UNTESTABLE, lines, effects)
    signs = [e.sign for e in effects]
    verdict = combine(signs) if combine else _combine([verdict_for(s) for s in signs])
    return Judged(key, title, claim, verdict, lines, effects)


def _combined_pairs(rows, key, title, claim, pairs) -> Judged:
    if _missing(rows, *{c for p in pairs for c in p}):
        return Judged(key, title, claim, "missing", ["missing cells"], [])
    lines, effects = _pairs(rows, pairs)
    return Judged(
        key, title, claim, _combine([verdict_for(e.sign) for e in effects]), lines, effects
    )


RULES: tuple[Callable[[Rows], Judged], ...] = (f1, f2, f3, f4a, f4b, f5, f6, f7, f8, f9)


group = group_by_cell  # the fidelity rules read the runs as the first rules do


def judge_all(run_rows: list[dict[str, Any]], aliases: dict[str, str]) -> list[Judged]:
    rows = group(run_rows, aliases)
    return [rule(rows) for rule in RULES]


def _collapses(rows: Rows, cell: str) -> int:
    return sum(r["collapsed"] for r in rows.get(cell, []))


def _cell_mean(rows: Rows, cell: str) -> float:
    values = finals(rows, cell)
    return fmean(values) if values else -math.inf
