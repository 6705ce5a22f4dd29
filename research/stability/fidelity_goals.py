"""Rule 7 of the fidelity rules (`fidelity`): what the stress runs reached against the issue's
goals, and the comparison rule's false-positive rate and power, simulated.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass
from statistics import fmean, median, pstdev
from typing import Any

from research.stability.criterion import compare
from research.stability.fidelity import K3_FLOOR, ROUTING_FLOOR, group
from research.stability.fidelity_stats import BOOTSTRAP_SEED, LR_SHOCK_STEP

SEQUENCE_KL_GOAL = 10.0
SEEDS_GOAL = 4
POWER_AT = 0.05
POWER_SIMULATIONS = 20_000


def rule_error_rates(sd: float, seeds: int, *, at: float = POWER_AT) -> tuple[float, float]:
    """(false-positive rate, power at Δ = `at`) of `criterion.compare` on `seeds` seeds a side
    drawn from normals with standard deviation `sd` (collapse counts left out)."""
    rng = random.Random(f"{BOOTSTRAP_SEED}:power")
    fp = hit = 0
    for _ in range(POWER_SIMULATIONS):
        base = [rng.gauss(0, sd) for _ in range(seeds)]
        same = [rng.gauss(0, sd) for _ in range(seeds)]
        shifted = [rng.gauss(at, sd) for _ in range(seeds)]
        fp += compare(same, base).sign != 0
        hit += compare(shifted, base).sign == 1
    return fp / POWER_SIMULATIONS, hit / POWER_SIMULATIONS


@dataclass(frozen=True)
class Goal:
    what: str
    goal: str
    reached: str
    met: bool | None  # None: no declared goal, a measurement only


def goals(run_rows: list[dict[str, Any]]) -> list[Goal]:
    """Rule 7's table from the runs (every stress run; the dialled ones for the mismatch)."""
    dialled = [r for r in run_rows if r["precision"] not in ("", "fp32")]
    k3 = [r["mean_kl_k3"] for r in dialled if math.isfinite(r["mean_kl_k3"])]
    seq = [
        r["mean_kl_k3"] * r["mean_response_len"]
        for r in dialled
        if math.isfinite(r["mean_kl_k3"]) and math.isfinite(r["mean_response_len"])
    ]
    trunc = [r["tis_truncated_tokens"] for r in dialled if math.isfinite(r["tis_truncated_tokens"])]
    eng = [
        r["max_layer_routing_infer_vs_train"]
        for r in dialled
        if math.isfinite(r["max_layer_routing_infer_vs_train"])
    ]
    stale = [
        r["max_layer_routing_old_vs_current"]
        for r in run_rows
        if math.isfinite(r["max_layer_routing_old_vs_current"])
    ]
    rows = group(run_rows)
    findings_cells = [c for c in rows if not c.startswith("map/")]
    seeds = [len(rows[c]) for c in findings_cells]
    sds = [pstdev([r["final_acc"] for r in rows[c]]) for c in findings_cells if len(rows[c]) > 1]
    # Pooled sd (root mean variance) with the sample correction of a median seed count.
    n_typ = int(median(seeds)) if seeds else 0
    sd = math.sqrt(fmean(s * s for s in sds) * n_typ / max(1, n_typ - 1)) if sds else math.nan
    fp, power = rule_error_rates(sd, n_typ) if math.isfinite(sd) and n_typ > 1 else (math.nan,) * 2
    shock = [
        (r["initial_acc"] - r["acc_at_shock"]) / r["initial_acc"]
        for r in run_rows
        if math.isfinite(r["acc_at_shock"]) and r["initial_acc"] > 0
    ]
    collapses = [r for r in run_rows if r["collapsed"]]
    early = [r for r in collapses if r["collapse_step"] != "" and r["collapse_step"] <= 8]
    cpus = sorted({r["cpu"] for r in run_rows if r["cpu"]})

    def spread(values: list[float], fmt: str) -> str:
        if not values:
            return "–"
        low, high = format(min(values), fmt), format(max(values), fmt)
        return f"median {format(median(values), fmt)} (range {low}–{high})"

    return [
        Goal(
            "per-token k3 KL(μ‖π_old), mean over a run",
            f"≥ {K3_FLOOR:g}",
            f"{spread(k3, '.1e')}; {sum(v >= K3_FLOOR for v in k3)} of {len(k3)} runs reach it",
            bool(k3) and median(k3) >= K3_FLOOR,
        ),
        Goal(
            "k3 summed over a response (per-token mean × mean length)",
            f"≥ {SEQUENCE_KL_GOAL:g} nats",
            f"{spread(seq, '.2f')} nats",
            bool(seq) and median(seq) >= SEQUENCE_KL_GOAL,
        ),
        Goal("tokens TIS truncated per run", "–", spread(trunc, ".1f"), None),
        Goal(
            "worst-layer routing flip, engine vs trainer",
            f"≥ {ROUTING_FLOOR:.0%}",
            spread(eng, ".3f"),
            bool(eng) and median(eng) >= ROUTING_FLOOR,
        ),
        Goal(
            "worst-layer routing flip, θ_old vs θ (N > 1)",
            f"≥ {ROUTING_FLOOR:.0%}",
            spread(stale, ".3f"),
            bool(stale) and median(stale) >= ROUTING_FLOOR,
        ),
        Goal(
            "seeds per findings / F9 / auto cell",
            f"≥ {SEEDS_GOAL}",
            spread([float(s) for s in seeds], ".0f"),
            bool(seeds) and min(seeds) >= SEEDS_GOAL,
        ),
        Goal(
            f"comparison rule at {n_typ} seeds, seed sd {sd:.3f}",
            "–",
            f"false positives {fp:.0%}, power {power:.0%} at Δ = {POWER_AT:g}",
            None,
        ),
        Goal(
            f"held-out accuracy lost by grad step {LR_SHOCK_STEP} (share of the start)",
            "–",
            spread(shock, ".2f"),
            None,
        ),
        Goal(
            f"collapses dated at grad step ≤ {LR_SHOCK_STEP}",
            "–",
            f"{len(early)} of {len(collapses)}",
            None,
        ),
        Goal(
            "CPU kinds the runs pooled", "1 (or a declared factor)", ", ".join(cpus), len(cpus) <= 1
        ),
    ]
