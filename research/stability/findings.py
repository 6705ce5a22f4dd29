"""The paper's findings as checkable claims, each with a pre-declared rule for agree / disagree.

Every rule works on per-seed final held-out accuracies (`criterion.compare`) and collapse counts
(`criterion.judge`), so the verdicts follow mechanically from the saved runs. Verdicts:

- ``agrees``: our runs show the paper's ordering (or its absence of difference, where that is the
  claim);
- ``disagrees``: our runs show the opposite ordering;
- ``not reproduced``: the paper claims a difference and ours is within noise (criterion's
  thresholds) with equal collapse counts;
- ``partial``: a multi-part claim where some parts agree and others do not;
- ``missing``: a cell the rule needs has no completed runs.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from keel_worker.training.replay_auto import prior_mode
from research.stability.criterion import MIN_SEEDS, compare
from research.stability.matrix import OFF_POLICY_N

Rows = dict[str, list[dict[str, Any]]]  # cell name -> its run-summary rows


@dataclass(frozen=True)
class Finding:
    key: str
    title: str
    claim: str
    verdict: str
    lines: list[str]  # our numbers, one markdown bullet each


def _finals(rows: Rows, cell: str) -> list[float]:
    return [r["final_acc"] for r in rows.get(cell, [])]


def _collapses(rows: Rows, cell: str) -> int:
    return sum(r["collapsed"] for r in rows.get(cell, []))


def _describe(rows: Rows, cell: str) -> str:
    runs = rows.get(cell, [])
    if not runs:
        return f"`{cell}`: no runs"
    finals = [r["final_acc"] for r in runs if math.isfinite(r["final_acc"])]
    mean = sum(finals) / len(finals) if finals else math.nan
    kl = [r["mean_kl_k1"] for r in runs if math.isfinite(r["mean_kl_k1"])]
    kl_text = f", mean KL k1 {sum(kl) / len(kl):.2e}" if kl else ""
    return (
        f"`{cell}`: final held-out acc {mean:.3f} (seeds: "
        f"{', '.join(f'{x:.3f}' for x in finals)}), collapsed {_collapses(rows, cell)}/{len(runs)}"
        f"{kl_text}"
    )


def better(rows: Rows, a: str, b: str) -> int:
    """+1 if `a` beats `b`, -1 if `b` beats `a`, 0 if indistinguishable, None-safe (0 if missing).

    A beats B when its final accuracy is significantly higher (criterion.compare) or, failing
    that, when B collapsed in a majority of its seeds and A in none.
    """
    sign = compare(_finals(rows, a), _finals(rows, b)).sign
    if sign:
        return sign
    n_a, n_b = len(rows.get(a, [])), len(rows.get(b, []))
    ca, cb = _collapses(rows, a), _collapses(rows, b)
    if cb * 2 > n_b and ca == 0:
        return 1
    if ca * 2 > n_a and cb == 0:
        return -1
    return 0


def _missing(rows: Rows, *cells: str) -> list[str]:
    """Cells without the `MIN_SEEDS` runs a comparison needs (a lone seed has no spread)."""
    return [c for c in cells if len(rows.get(c, [])) < MIN_SEEDS]


def _ordered(rows: Rows, a: str, b: str) -> str:
    """Verdict for the claim 'a beats b'."""
    return {1: "agrees", 0: "not reproduced", -1: "disagrees"}[better(rows, a, b)]


def _combine(verdicts: list[str]) -> str:
    if any(v == "missing" for v in verdicts):
        return "missing"
    if all(v == "agrees" for v in verdicts):
        return "agrees"
    if all(v == "disagrees" for v in verdicts):
        return "disagrees"
    if all(v == "not reproduced" for v in verdicts):
        return "not reproduced"
    return "partial"


def _guard(rows: Rows, cells: list[str], key: str, title: str, claim: str) -> Finding | None:
    missing = _missing(rows, *cells)
    if missing:
        return Finding(
            key, title, claim, "missing", [f"fewer than {MIN_SEEDS} runs for {', '.join(missing)}"]
        )
    return None


def on_policy_is(rows: Rows) -> Finding:
    key, title = "F1", "On-policy: the train–infer IS correction is essential"
    claim = (
        "MiniRL beats MiniRL w/o train-infer IS (`reinforce`), which collapses rapidly with a "
        "sharp entropy drop (paper §4.3, Fig. 1)."
    )
    cells = ["N1/minirl", "N1/reinforce"]
    if guard := _guard(rows, cells, key, title, claim):
        return guard
    lines = [_describe(rows, c) for c in cells]
    return Finding(key, title, claim, _ordered(rows, *cells), lines)


def on_policy_length_norm(rows: Rows) -> Finding:
    key, title = "F2", "On-policy: length normalization is worse but stable"
    claim = "MiniRL + length-norm is suboptimal, yet training remains stable (paper §4.3)."
    cells = ["N1/minirl", "N1/minirl+length_norm"]
    if guard := _guard(rows, cells, key, title, claim):
        return guard
    worse = _ordered(rows, *cells)
    stable = _collapses(rows, cells[1]) * 2 <= len(rows[cells[1]])
    lines = [_describe(rows, c) for c in cells]
    lines.append(f"length-norm stable in a majority of seeds: {stable}")
    verdict = worse if stable or worse != "agrees" else "partial"
    return Finding(key, title, claim, verdict, lines)


def on_policy_r3(rows: Rows) -> Finding:
    key, title = "F3", "On-policy: R3 lowers the train–infer KL but brings no gain"
    claim = (
        "MiniRL + R3 is no better than MiniRL although it reduces the training–inference KL; "
        "R3 w/o train-infer IS still fails rapidly (paper §4.3)."
    )
    cells = ["N1/minirl", "N1/minirl+R3", "N1/reinforce+R3"]
    if guard := _guard(rows, cells, key, title, claim):
        return guard
    no_gain = "agrees" if better(rows, cells[1], cells[0]) <= 0 else "disagrees"
    kl = {c: _mean_of(rows, c, "mean_kl_k1") for c in cells[:2]}
    kl_verdict = _below(kl[cells[1]], kl[cells[0]])
    routing = {c: _mean_of(rows, c, "mean_routing_infer_vs_train") for c in cells[:2]}
    fails = _ordered(rows, cells[1], cells[2])
    lines = [_describe(rows, c) for c in cells]
    lines += [
        f"R3 gain over MiniRL: {no_gain} (the claim is *no* gain)",
        f"KL k1 without/with R3: {kl[cells[0]]:.2e} / {kl[cells[1]]:.2e} ({kl_verdict})",
        f"tokens routed differently in ≥1 layer (engine vs trainer) without/with R3: "
        f"{routing[cells[0]]:.3f} / {routing[cells[1]]:.3f}",
        f"MiniRL + R3 beats `reinforce` + R3: {fails}",
    ]
    return Finding(key, title, claim, _combine([no_gain, kl_verdict, fails]), lines)


def off_policy_clip_and_replay(rows: Rows) -> Finding:
    key, title = "F4", "Off-policy: both clipping and Routing Replay are needed"
    claim = (
        "With N > 1, omitting clipping or Routing Replay causes premature collapse and a "
        "lower peak (paper §4.4, Figs. 2–3)."
    )
    verdicts, lines = [], []
    for n in OFF_POLICY_N:
        plain, r2_noclip = f"N{n}/minirl-noclip", f"N{n}/minirl+R2-noclip"
        r2, r3 = f"N{n}/minirl+R2", f"N{n}/minirl+R3"
        if _missing(rows, plain, r2_noclip, r2, r3):
            lines.append(f"N={n}: missing cells")
            continue
        best = _higher_cell(rows, r2, r3, "final_acc")
        if best is None:
            lines.append(f"N={n}: no finite final accuracy for `{r2}` or `{r3}`")
            verdicts.append("missing")
            continue
        replay = _ordered(rows, r2_noclip, plain)
        clip = _ordered(rows, r2, r2_noclip)
        full = _combine([_ordered(rows, best, plain), _ordered(rows, best, r2_noclip)])
        verdicts.append(full)
        lines += [f"N={n}: " + _describe(rows, c) for c in (plain, r2_noclip, r2, r3)]
        lines.append(
            f"N={n}: replay helps without clipping (R2-noclip > noclip): {replay}; clipping helps "
            f"(R2 > R2-noclip): {clip}; best stabilized (`{best}`) beats both ablations: {full}"
        )
    verdict = _combine(verdicts) if verdicts else "missing"
    return Finding(key, title, claim, verdict, lines)


def r2_vs_r3(rows: Rows) -> Finding:
    key, title = "F5", "Off-policy: R2 is better at N = 2, R3 at N ≥ 4"
    claim = "R2 outperforms R3 at N = 2; R3 outperforms R2 at N = 4 and N = 8 (paper §4.4)."
    verdicts, lines = [], []
    for n in OFF_POLICY_N:
        r2, r3 = f"N{n}/minirl+R2", f"N{n}/minirl+R3"
        if _missing(rows, r2, r3):
            lines.append(f"N={n}: missing cells")
            continue
        verdict = _ordered(rows, r2, r3) if n == 2 else _ordered(rows, r3, r2)
        verdicts.append(verdict)
        lines.append(f"N={n}: {_describe(rows, r2)}; {_describe(rows, r3)} → {verdict}")
    return Finding(key, title, claim, _combine(verdicts) if verdicts else "missing", lines)


def cold_starts(rows: Rows) -> Finding:
    key, title = "F6", "Cold starts converge under a stable recipe"
    claim = (
        "Three cold-start initializations trained with MiniRL + R2 (N = 2) reach comparable "
        "final performance (paper §4.5, Fig. 5)."
    )
    cells = ["N2/minirl+R2", "cold/short_heavy", "cold/long_heavy"]
    if guard := _guard(rows, cells, key, title, claim):
        return guard
    lines = [_describe(rows, c) for c in cells]
    initial = [_mean_of(rows, c, "initial_acc") for c in cells]
    final = [_mean_of(rows, c, "final_acc") for c in cells]
    lines.append(
        "spread (max − min) of mean held-out acc across inits: "
        f"initial {max(initial) - min(initial):.3f}, final {max(final) - min(final):.3f}"
    )
    pairs = [(a, b) for i, a in enumerate(cells) for b in cells[i + 1 :]]
    signs = [better(rows, a, b) for a, b in pairs]
    verdict = "agrees" if all(s == 0 for s in signs) else "disagrees"
    lines.append(
        f"pairs with a significant final difference: {sum(s != 0 for s in signs)} of {len(pairs)}"
    )
    return Finding(key, title, claim, verdict, lines)


def references(rows: Rows) -> Finding:
    key, title = "F7", "MiniRL vs GRPO and CISPO (App. A)"
    claim = (
        "GRPO and CISPO, which ignore the train–infer discrepancy and normalize by length "
        "(CISPO also never masks), are inferior to MiniRL (paper §4.4, App. A)."
    )
    verdicts, lines = [], []
    for n in OFF_POLICY_N:
        rec = prior_mode(n)
        mini = f"N{n}/minirl+{rec}"
        for ref in (f"N{n}/grpo+{rec}", f"N{n}/cispo+{rec}"):
            if _missing(rows, mini, ref):
                lines.append(f"N={n}: missing `{ref}`")
                continue
            verdict = _ordered(rows, mini, ref)
            verdicts.append(verdict)
            lines.append(f"N={n}: {_describe(rows, ref)} vs `{mini}` → {verdict}")
    return Finding(key, title, claim, _combine(verdicts) if verdicts else "missing", lines)


def kl_and_collapse(rows: Rows) -> Finding:
    key, title = "F8", "Collapse comes with a rising training–inference KL"
    claim = (
        "Collapse is often accompanied by a sharp increase of KL(μ_old‖π_old) (paper §4.2, "
        "after Yao et al. and Liu et al.); collapsing runs reach ~1e-1 in the paper's plots."
    )
    # Each run once: an aliased cell lists the very runs of the cell it reuses.
    every = list({id(r): r for runs in rows.values() for r in runs}.values())
    collapsed = [r for r in every if r["collapsed"]]
    stable = [r for r in every if not r["collapsed"]]
    if not collapsed or not stable:
        return Finding(
            key,
            title,
            claim,
            "missing",
            [f"{len(collapsed)} collapsed and {len(stable)} stable runs: nothing to contrast"],
        )

    def growth(group: list[dict[str, Any]]) -> float:
        changes = [
            r["kl_end"] - r["kl_start"]
            for r in group
            if math.isfinite(r["kl_end"]) and math.isfinite(r["kl_start"])
        ]
        return sum(changes) / len(changes) if changes else math.nan

    grow_c, grow_s = growth(collapsed), growth(stable)
    if not (math.isfinite(grow_c) and math.isfinite(grow_s)):
        return Finding(key, title, claim, "missing", ["no finite KL change to contrast"])
    lines = [
        f"{len(collapsed)} collapsed runs: KL k1 change (last − first tenth of steps) {grow_c:.2e}",
        f"{len(stable)} stable runs: KL k1 change {grow_s:.2e}",
        f"largest final KL k1 of any run: {max(r['kl_end'] for r in every):.2e}",
    ]
    verdict = "agrees" if grow_c > grow_s and grow_c > 0 else "disagrees"
    return Finding(key, title, claim, verdict, lines)


def _below(a: float, b: float) -> str:
    """'agrees' when a < b, 'disagrees' when not, 'missing' when either is not a number."""
    if not (math.isfinite(a) and math.isfinite(b)):
        return "missing"
    return "agrees" if a < b else "disagrees"


def _higher_cell(rows: Rows, a: str, b: str, key: str) -> str | None:
    """The cell with the higher mean `key` (ties go to `a`); None when either is missing."""
    va, vb = _mean_of(rows, a, key), _mean_of(rows, b, key)
    if not (math.isfinite(va) and math.isfinite(vb)):
        return None
    return a if va >= vb else b


def _mean_of(rows: Rows, cell: str, key: str) -> float:
    values = [r[key] for r in rows.get(cell, []) if math.isfinite(r[key])]
    return sum(values) / len(values) if values else math.nan


F9_RUNGS = ("fp32", "int4", "int4+top_p0.9")  # the stress suite's map rungs, mildest first


def dppo_critique(rows: Rows) -> Finding:
    """F9, rule declared with the stress suite: per rung, DPPO-TV and MiniRL with the μ anchor
    against MiniRL (π_old anchor) by `better`. Agrees when at some rung both μ-anchored variants
    beat MiniRL and at no rung does either lose; disagrees when at some rung both lose and at no
    rung does either win; not reproduced when every comparison is a tie; else partial."""
    key, title = "F9", "DPPO: the trust region must be anchored on μ, not the recomputed π_old"
    claim = (
        "MiniRL, whose clip mask is anchored on the recomputed π_old, fails to control the "
        "training–inference mismatch and collapses as it grows; DPPO's Binary-TV mask "
        "anchored on μ stays stable (Qi et al., docs/concepts/algorithm.md §8.9)."
    )
    signs, lines = [], []
    for rung in F9_RUNGS:
        mini, mu, dppo = (f"F9/{rung}/{v}" for v in ("minirl", "minirl-mu", "dppo_tv"))
        if _missing(rows, mini, mu, dppo):
            lines.append(f"{rung}: missing cells")
            signs.append(None)
            continue
        pair = (better(rows, dppo, mini), better(rows, mu, mini))
        signs.append(pair)
        lines += [f"{rung}: " + _describe(rows, c) for c in (mini, mu, dppo)]
        lines.append(f"{rung}: DPPO-TV vs MiniRL {pair[0]:+d}, MiniRL-μ vs MiniRL {pair[1]:+d}")
    if any(p is None for p in signs):
        return Finding(key, title, claim, "missing", lines)
    flat = [x for p in signs for x in p]
    if any(p == (1, 1) for p in signs) and -1 not in flat:
        verdict = "agrees"
    elif any(p == (-1, -1) for p in signs) and 1 not in flat:
        verdict = "disagrees"
    elif all(x == 0 for x in flat):
        verdict = "not reproduced"
    else:
        verdict = "partial"
    return Finding(key, title, claim, verdict, lines)


FINDINGS: tuple[Callable[[Rows], Finding], ...] = (
    on_policy_is,
    on_policy_length_norm,
    on_policy_r3,
    off_policy_clip_and_replay,
    r2_vs_r3,
    cold_starts,
    references,
    kl_and_collapse,
)


def evaluate_findings(
    run_rows: list[dict[str, Any]],
    *,
    aliases: dict[str, str] | None = None,
    findings: tuple[Callable[[Rows], Finding], ...] = FINDINGS,
) -> list[Finding]:
    """Every finding on the run summaries; `aliases` maps a cell that was not run twice to the
    cell with the same configuration (the stress suite's deduplication)."""
    rows = group_by_cell(run_rows, aliases)
    return [finding(rows) for finding in findings]


def group_by_cell(run_rows: list[dict[str, Any]], aliases: dict[str, str] | None = None) -> Rows:
    """The run summaries by cell, each alias sharing its owner's runs."""
    rows: Rows = {}
    for row in run_rows:
        rows.setdefault(row["cell"], []).append(row)
    for alias, owner in (aliases or {}).items():
        if owner in rows:
            rows[alias] = rows[owner]
    return rows
