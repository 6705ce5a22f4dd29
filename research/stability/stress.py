"""The stress suite's regime and matrix: rules declared here, before any pilot or matrix result.

The regime is chosen by three rules that look only at unstabilized baselines (`reinforce`, the
paper's "MiniRL w/o train–infer IS", and MiniRL without clipping or replay), never at MiniRL or a
stabilized cell. Each pilot is one seed (0) at the full budget, judged by `criterion.judge`:

A. **Learning rate (on-policy)**: the largest lr in `LR_GRID` at which on-policy `reinforce`
   with fp32 rollouts (no training–inference mismatch) ends above its initial held-out accuracy.
   (At fp32 and N = 1 no IS weight differs from 1, so this is the lr at which plain policy
   gradient still learns the task; if none does, the smallest lr.)

B. **Mismatch dial**: the mildest rung of `suites.LADDER` at which on-policy `reinforce` at
   lr_A collapses. If no rung makes it collapse, the strongest rung, reported as "no baseline
   collapse".

C. **Learning rate (off-policy)**: the smallest lr in `LR_GRID` that is ≥ lr_A at which
   `N4/minirl-noclip` (MiniRL without clipping or replay, N = 4) at dial_B collapses. If none
   does, the largest lr in the grid, reported as "no baseline collapse".

The matrix then reruns the gentle suite's findings cells (F1–F8, same names, same comparison
rule, 3 seeds) at dial_B, with lr_A for N = 1 and lr_C for N > 1, and adds F9 (MiniRL with the
π_old anchor, MiniRL with the μ anchor, DPPO-TV, at N = 4 with R3, 2 seeds: the comparison rule's
minimum) and the stability map ({MiniRL, MiniRL w/o IS, GRPO, CISPO, DPPO-TV} × N × rung, one
seed per cell: a screening figure; the findings use ≥ 3 seeds). A cell whose configuration equals
another's is not run twice.

**Routing Replay `auto` against the fixed choices** (declared with the `auto` rule, before any
`auto` run): at every N of `AUTO_N` (1, 2, 4, 8), MiniRL with clipping under `auto` and under each
fixed choice — none, R2, R3 (at N = 1 R2 is none) — at the findings' seeds, dial_B, lr_A for
N = 1 and lr_C for N > 1. The fixed cells that equal findings cells (`N1/minirl`,
`N1/minirl+R3`, `N{n}/minirl+R2`, `N{n}/minirl+R3`) are those runs; new are the four `auto` cells
and MiniRL with clipping but no replay at N = 2, 4, 8 (the paper does not run it): 7 cells, 21
runs. Rule: per N, the best fixed choice is the fixed cell with the highest mean final held-out
accuracy; `auto` is "never worse" at that N when `findings.better(auto, fixed)` is not −1 for
any fixed cell (the findings' comparison: a Welch difference beyond max(0.03, 2 SE), or a
majority-of-seeds collapse against none). Fewer than `criterion.MIN_SEEDS` runs of a cell is
"missing".

**What we cut to fit the budget** (declared with the regime rules, before any matrix run; a run
takes about 5 min on one core of this machine, two run at a time): F9 and the map use the rungs
`MAP_RUNGS` (no mismatch, int4, int4 + top-p: the control, the middle and the strongest rung;
fp8_tensor is measured by the probe and is the mildest rung of rule B) and the map uses
N ∈ {1, 4, 8} (N = 2 is covered by the findings cells). As declared the matrix is 78 findings
runs, 16 F9 runs and 32 map runs (≈ 4.5 h), which is over the 4 h budget; it runs in parts
of ≤ 75 min (`--deadline`).
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

from keel_worker.training.replay_auto import prior_mode
from research.stability.criterion import final_accuracy
from research.stability.matrix import Cell, all_cells
from research.stability.results import Run
from research.stability.suites import LADDER, NO_MISMATCH, Dial

LR_GRID = (1e-4, 3e-4, 1e-3, 3e-3)
PILOT_N = 4
MAP_N = (1, 4, 8)
MAP_RUNGS: tuple[Dial, ...] = (NO_MISMATCH, LADDER[1], LADDER[2])
F9_SEEDS = (0, 1)
AUTO_N = (1, 2, 4, 8)
MAP_ALGORITHMS: dict[str, dict[str, Any]] = {
    "minirl": {"name": "minirl"},
    "minirl-noIS": {"name": "reinforce"},
    "grpo": {"name": "grpo"},
    "cispo": {"name": "cispo"},
    "dppo_tv": {"name": "dppo_tv"},
}
F9_VARIANTS: dict[str, dict[str, Any]] = {
    "minirl": {"name": "minirl"},
    "minirl-mu": {"name": "minirl", "clip_anchor": "mu_old"},
    "dppo_tv": {"name": "dppo_tv"},
}


def _on(cell: Cell, dial: Dial, lr: float) -> Cell:
    return replace(cell, lr=lr, **dial.fields)


# ---------------------------------------------------------------- the pilots of rules A, B, C
def pilot_a_cells() -> list[Cell]:
    base = Cell("N1/reinforce", "pilot_A", {"name": "reinforce"})
    return [
        replace(_on(base, NO_MISMATCH, lr), name=f"A/lr{lr:g}/fp32/N1/reinforce") for lr in LR_GRID
    ]


def pilot_b_cells(lr_a: float) -> list[Cell]:
    base = Cell("N1/reinforce", "pilot_B", {"name": "reinforce"})
    return [replace(_on(base, d, lr_a), name=f"B/{d.name}/N1/reinforce") for d in LADDER]


def pilot_c_cells(lr_a: float, dial: Dial) -> list[Cell]:
    base = Cell(
        f"N{PILOT_N}/minirl-noclip",
        "pilot_C",
        {"name": "minirl", "use_clip": False},
        "none",
        PILOT_N,
    )
    return [
        replace(_on(base, dial, lr), name=f"C/lr{lr:g}/{dial.name}/N{PILOT_N}/minirl-noclip")
        for lr in LR_GRID
        if lr >= lr_a
    ]


@dataclass(frozen=True)
class Regime:
    """The outcome of rules A–C, with the evidence each rule looked at."""

    lr_on_policy: float
    dial: str
    lr_off_policy: float
    baseline_collapsed: dict[str, bool]  # rule -> did a baseline collapse where the rule chose
    evidence: dict[str, list[dict[str, Any]]]

    @property
    def dial_setting(self) -> Dial:
        return next(d for d in LADDER if d.name == self.dial)

    def save(self, path: Path) -> None:
        path.write_text(json.dumps(asdict(self), indent=2))

    @classmethod
    def load(cls, path: Path) -> Regime:
        return cls(**json.loads(path.read_text()))


def _evidence(cell: Cell, run: Run | None) -> dict[str, Any]:
    if run is None:
        return {"cell": cell.name, "missing": True}
    v = run.verdict()
    return {
        "cell": cell.name,
        "lr": cell.lr,
        "dial": cell.precision,
        "top_p": cell.top_p,
        "collapsed": v.collapsed,
        "reason": v.reason,
        "initial_acc": v.initial_acc,
        "peak_acc": v.peak_acc,
        "final_acc": final_accuracy(run.column("eval_acc")[1]),
    }


def rule_a(runs: dict[str, Run]) -> tuple[float, list[dict[str, Any]]]:
    cells = pilot_a_cells()
    evidence = [_evidence(c, runs.get(c.name)) for c in cells]
    learning = [
        e["lr"] for e in evidence if not e.get("missing") and e["final_acc"] > e["initial_acc"]
    ]
    return (max(learning) if learning else min(LR_GRID)), evidence


def rule_b(runs: dict[str, Run], lr_a: float) -> tuple[Dial, bool, list[dict[str, Any]]]:
    cells = pilot_b_cells(lr_a)
    evidence = [_evidence(c, runs.get(c.name)) for c in cells]
    for dial, e in zip(LADDER, evidence, strict=True):
        if not e.get("missing") and e["collapsed"]:
            return dial, True, evidence
    return LADDER[-1], False, evidence


def rule_c(runs: dict[str, Run], lr_a: float, dial: Dial) -> tuple[float, bool, list[dict]]:
    cells = pilot_c_cells(lr_a, dial)
    evidence = [_evidence(c, runs.get(c.name)) for c in cells]
    for cell, e in zip(cells, evidence, strict=True):
        if not e.get("missing") and e["collapsed"]:
            return float(cell.lr), True, evidence
    return max(LR_GRID), False, evidence


# ---------------------------------------------------------------- the matrix in the regime
def findings_cells(regime: Regime) -> list[Cell]:
    """F1–F8: the gentle suite's cells (same names) at dial_B; its bf16 precision cells are left
    out (the stability map covers precision)."""
    dial = regime.dial_setting
    return [
        _on(c, dial, regime.lr_on_policy if c.num_minibatches == 1 else regime.lr_off_policy)
        for c in all_cells()
        if c.regime != "precision_bf16"
    ]


def auto_choices(n: int) -> tuple[str, ...]:
    """The fixed replay choices `auto` is compared with at N = n (R2 is a no-op at N = 1)."""
    return ("none", "R3") if n == 1 else ("none", "R2", "R3")


def auto_cells(regime: Regime) -> list[Cell]:
    """Per N of `AUTO_N`: MiniRL (clipping on) under `auto` and under each fixed choice."""
    dial = regime.dial_setting
    return [
        _on(
            Cell(f"auto/N{n}/minirl+{replay}", "auto", {"name": "minirl"}, replay, n),
            dial,
            regime.lr_on_policy if n == 1 else regime.lr_off_policy,
        )
        for n in AUTO_N
        for replay in ("auto", *auto_choices(n))
    ]


def f9_cells(regime: Regime) -> list[Cell]:
    """MiniRL (π_old anchor), MiniRL (μ anchor) and DPPO-TV at N = 4 (R3) on the map's rungs."""
    return [
        _on(Cell(f"F9/{d.name}/{variant}", "f9", algorithm, "R3", PILOT_N), d, regime.lr_off_policy)
        for d in MAP_RUNGS
        for variant, algorithm in F9_VARIANTS.items()
    ]


def map_cells(regime: Regime) -> list[Cell]:
    """Every map rung × N × algorithm, replay by the paper's recipe for that N."""
    return [
        _on(
            Cell(f"map/{d.name}/N{n}/{name}", "map", algorithm, prior_mode(n), n),
            d,
            regime.lr_on_policy if n == 1 else regime.lr_off_policy,
        )
        for d in MAP_RUNGS
        for n in MAP_N
        for name, algorithm in MAP_ALGORITHMS.items()
    ]


def config_key(cell: Cell) -> tuple:
    """What makes two cells the same run (everything but name and regime)."""
    return (
        json.dumps(cell.algorithm, sort_keys=True),
        cell.replay,
        cell.num_minibatches,
        cell.init,
        cell.precision,
        cell.top_p,
        cell.top_k,
        cell.lr,
    )


def matrix_cells(regime: Regime) -> tuple[list[Cell], dict[str, str]]:
    """The cells to run (findings first) and, for each deduplicated cell, the cell it reuses."""
    cells: list[Cell] = []
    owner: dict[tuple, str] = {}
    aliases: dict[str, str] = {}
    for cell in [
        *findings_cells(regime),
        *auto_cells(regime),
        *f9_cells(regime),
        *map_cells(regime),
    ]:
        key = config_key(cell)
        if key in owner:
            aliases[cell.name] = owner[key]
            continue
        owner[key] = cell.name
        cells.append(cell)
    return cells, aliases
