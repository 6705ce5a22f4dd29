"""The fidelity reruns judged: each part of `reruns` by its rule, declared here before any rerun
was judged (4 of `f1-rung3`'s runs were committed, unread, when this module was written).

- **Completeness.** A part is judged only when all its runs are in: a part split into pieces
  (`-s1`, `-s2`, ...) pools its pieces' seeds, and waits for every piece. Until then the report
  shows its count of runs and nothing of their accuracies.
- **One CPU kind.** A part's runs are pooled as seeds only when they share one kind of CPU;
  pieces run on different kinds leave the part "not judged" (it needs a rerun on one kind),
  never pooled. A part in blocks (`reruns`'s map) is read across kinds, by differences within
  a seed.
- **Rules, per part** (`fidelity`'s rules unchanged, on the part's cells, which carry the
  findings' names):
  - `f1-rungK`: F1 (`fidelity.f1`), its mechanism gate included.
  - `f9-rungK`: F9 (`fidelity.f9`) on the part's two rungs, fp32 and the rung.
  - `f3-routing`, `f5-routing`: F3 and F5 (`fidelity.f3`, `fidelity.f5`).
  - `lr-control-nN`: F4a and F4b at that N alone, read by `reruns`'s lr-control rule:
    F4a `agrees` → clipping is needed apart from the lr shock; F4a `not reproduced` → the
    stress suite's clipping effect is the lr shock's; any other F4a verdict → no reading.
  - `f6-long-heavy`: `findings.better(fp32, dial)`: +1 → the mismatch explains long_heavy's
    fall; 0 → the cold start does; −1 (the dial ends above fp32) → neither, no reading.
  - `long-512`: MiniRL + R3 against MiniRL without clipping at N = 4 over 512 grad steps:
    `agrees` (clipping is needed) when `findings.better` says +1, `disagrees` at −1, else
    `not reproduced`; the collapse counts by the moving-mean criterion beside it.
  - `map-n2-rungK`: the map is read, not judged: the effect of the rung against fp32 for each
    algorithm (Δ with its interval and seeds, `fidelity_stats.paired_effect` since the map was
    put in blocks), verdict `reported`, and the CPU kind of each seed.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from research.stability import fidelity, reruns
from research.stability.fidelity_stats import Rows, effect, paired_effect, run_row
from research.stability.findings import better
from research.stability.matrix import Cell
from research.stability.results import load_runs

NOT_JUDGED = "not judged"
REPORTED = "reported"
CUT = "cut"


@dataclass(frozen=True)
class PartResult:
    """One part of the reruns (its pieces pooled): how far it ran, and its verdict if judged."""

    name: str
    what: str
    done: int
    expected: int
    cpus: tuple[str, ...]
    verdict: str
    lines: tuple[str, ...]


def base_name(piece: str) -> str:
    """A part's name without the `-sK` of the piece `reruns.fit` split it into."""
    return re.sub(r"-s\d+$", "", piece)


def pieces_by_part(probe: reruns.Probe) -> dict[str, list[reruns.Part]]:
    out: dict[str, list[reruns.Part]] = {}
    for piece in reruns.parts(probe):
        out.setdefault(base_name(piece.name), []).append(piece)
    return out


def judge_part(name: str, pieces: list[reruns.Part], run_rows: list[dict[str, Any]]) -> PartResult:
    """`name`'s result from the run summaries of its pieces (`fidelity_stats.run_row`)."""
    what = pieces[0].what
    expected = sum(p.runs() for p in pieces)
    cpus = tuple(sorted({r.get("cpu", "") for r in run_rows}))
    head = (name, what, len(run_rows), expected, cpus)
    if not pieces[0].cells:
        return PartResult(*head, CUT, (pieces[0].cut,))
    if len(run_rows) < expected:
        return PartResult(*head, NOT_JUDGED, (f"{len(run_rows)} of {expected} runs in",))
    if len(cpus) > 1 and not pieces[0].blocks:
        return PartResult(*head, NOT_JUDGED, ("its runs come from more than one kind of CPU",))
    rows = fidelity.group(run_rows, {})
    verdict, lines = _rule(name)(pieces[0].cells, rows)
    return PartResult(*head, verdict, tuple(lines))


def judge_reruns(out_dir: Path, probe: reruns.Probe) -> list[PartResult]:
    """Every part of `reruns.parts(probe)`, from the runs under `out_dir/reruns/`."""
    return [
        judge_part(
            name,
            pieces,
            [run_row(r) for p in pieces for r in load_runs(out_dir / "reruns" / p.name)],
        )
        for name, pieces in pieces_by_part(probe).items()
    ]


# ------------------------------------------------------------------ the rules per part

Judgement = tuple[str, list[str]]


def _finding(rule: Callable[[Rows], fidelity.Judged]) -> Callable[..., Judgement]:
    def judge(cells: tuple[Cell, ...], rows: Rows) -> Judgement:
        j = rule(rows)
        return j.verdict, j.lines

    return judge


def _f9(cells: tuple[Cell, ...], rows: Rows) -> Judgement:
    rungs = list(dict.fromkeys(c.name.split("/")[1] for c in cells))
    j = fidelity.f9(rows, rungs=rungs)
    return j.verdict, j.lines


def _lr_control(cells: tuple[Cell, ...], rows: Rows) -> Judgement:
    n = cells[0].num_minibatches
    a, b = fidelity.f4a(rows, ns=(n,)), fidelity.f4b(rows, ns=(n,))
    reading = {
        "agrees": "clipping is needed apart from the lr shock",
        "not reproduced": "the stress suite's clipping effect is the lr shock's",
    }.get(a.verdict, "no reading (the rule reads only agrees / not reproduced)")
    lines = [f"F4a (clipping): {a.verdict}", *a.lines, f"F4b (replay): {b.verdict}", *b.lines]
    return f"F4a {a.verdict}, F4b {b.verdict}: {reading}", lines


def _long_heavy(cells: tuple[Cell, ...], rows: Rows) -> Judgement:
    fp32, dial = (c.name for c in cells)
    reading = {
        1: "the mismatch explains long_heavy's fall",
        0: "the cold start explains long_heavy's fall",
        -1: "neither: the dial ends above fp32 (no reading declared)",
    }[better(rows, fp32, dial)]
    return reading, [effect(rows, fp32, dial).text(), _collapse_counts(rows, (fp32, dial))]


def _long(cells: tuple[Cell, ...], rows: Rows) -> Judgement:
    clipped, noclip = (c.name for c in cells)
    verdict = fidelity.verdict_for(better(rows, clipped, noclip))
    return verdict, [
        effect(rows, clipped, noclip).text(),
        _collapse_counts(rows, (clipped, noclip)),
    ]


def _map(cells: tuple[Cell, ...], rows: Rows) -> Judgement:
    rung = next(c.name.split("/")[1] for c in cells if not c.name.startswith("map/fp32/"))
    lines = [
        paired_effect(rows, f"map/{rung}/N2/{alg}", f"map/fp32/N2/{alg}").text()
        for alg in reruns.MAP_ALGORITHMS
    ]
    kinds = sorted({(r["seed"], r["cpu"]) for cell in rows.values() for r in cell})
    blocks = "; ".join(f"seed {seed}: {cpu or '–'}" for seed, cpu in kinds)
    return REPORTED, [
        *lines,
        _collapse_counts(rows, [c.name for c in cells]),
        f"CPU kind per seed (the blocks): {blocks}",
    ]


def _collapse_counts(rows: Rows, cells: Sequence[str]) -> str:
    counts = ", ".join(
        f"`{c}` {sum(r['collapsed'] for r in rows[c])}/{len(rows[c])}" for c in cells
    )
    return f"collapsed (moving-mean criterion): {counts}"


RULES: dict[str, Callable[[tuple[Cell, ...], Rows], Judgement]] = {
    "f1-": _finding(fidelity.f1),
    "f9-": _f9,
    "f3-routing": _finding(fidelity.f3),
    "f5-routing": _finding(fidelity.f5),
    "lr-control-": _lr_control,
    "f6-long-heavy": _long_heavy,
    "long-": _long,
    "map-": _map,
}


def _rule(name: str) -> Callable[[tuple[Cell, ...], Rows], Judgement]:
    return next(rule for prefix, rule in RULES.items() if name.startswith(prefix))
