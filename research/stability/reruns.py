"""Issue 30 §3's reruns, declared here before any of them ran: resumable parts of under two hours.

    python -m research.stability rerun --list             # the parts, their runs and estimates
    python -m research.stability rerun --part f1-rung1    # one part; a rerun does what is missing

**Rungs.** §3 asks for the rungs whose per-token k3 KL(μ‖π_old) is closest to `RUNG_TARGETS`
(3e-3, 1e-2, 3e-2). `rung_for` picks, from the discrepancy probe of the `balanced` cold start
(`stress/discrepancy.csv`), the dial with the smallest |log(k3 / target)|; the target is
*reached* only when that dial lies within `RUNG_TOLERANCE` (10^0.25: half the log spacing of the
targets, so a dial counts for the target it is nearest to, never for two). A part that needs an
unreached rung is cut, and `--list` says so. With today's ladder (`fp8_tensor`, `int4`,
`int4+top_p0.9`) only the first target can be reached; the others wait for §2's mechanisms.

**Budget.** `SEEDS` (four), the stress suite's budget with `EVAL_PROMPTS` held-out prompts (twice
the matrix's: its ±2 SE band on a run's Δ was ±0.10). A run's minutes are estimated as
`RUN_MINUTES` × grad steps / 64 × (1 + `EVAL_COST` × (eval prompts / 64 − 1)) on one core, two at a
time (`--workers 2`). `RUN_MINUTES` is the 90th percentile of the committed 64-step stress runs'
wall time on AVX512 CPUs (8.4 min; median 4.6); on an AVX2-only CPU runs take about 2.5× as long,
so a part there needs `--deadline` and a second sitting. A part whose estimate exceeds
`PART_LIMIT_MIN` is split by seeds (`-s1`, `-s2`, ...) until every piece fits.

**CPU kinds.** A part's folder (`stress/reruns/<part>/`) holds runs of one kind of CPU: `run`
refuses to add a run on another kind, so no rerun pools CPU kinds as seeds.

**Rules.** Each part is judged by `fidelity`'s rules unchanged (the findings' cells under the same
names), plus:

- *lr control* (F4 at lr `LR_CONTROL`, the regime's dial): if F4a still agrees there, clipping is
  needed apart from the lr shock; if it is not reproduced there, the stress suite's clipping
  effect is the lr shock's.
- *long_heavy at fp32 against the regime's dial* (F6 apart from the mismatch): the mismatch
  explains long_heavy's fall when `findings.better(fp32, dial)` is +1, the cold start when 0.
- *long runs* (`LONG_GRAD_STEPS`): MiniRL + R3 against MiniRL without clipping at N = 4, collapse
  counts by the moving-mean criterion; a long run is one unit, resumable only between runs.

**Cut** (declared with the parts): lr warmup (keel's optimizer has a constant learning rate, no
schedule to warm up); the rungs of 1e-2 and 3e-2 and the routing flip over 10 % (§2's new
mechanisms do not exist yet); the guard's SmolLM2 addition jobs at several learning rates (service
jobs of ≈ 6 min each: `research.guard_service` runs them, not this module).
"""

from __future__ import annotations

import csv
import json
import math
from dataclasses import dataclass, replace
from pathlib import Path

from research.stability.matrix import Budget, Cell
from research.stability.suites import LADDER, NO_MISMATCH, STRESS, Dial

RUNG_TARGETS = (3e-3, 1e-2, 3e-2)
RUNG_TOLERANCE = 10**0.25
SEEDS = (0, 1, 2, 3)
EVAL_PROMPTS = 128
RUN_MINUTES = 8.4
EVAL_COST = 0.3
PART_LIMIT_MIN = 110.0
LR_REGIME = 3e-4  # the regime's rules A and C (stress/regime.json)
LR_CONTROL = 1e-4
LONG_GRAD_STEPS = 512
REGIME_DIAL = LADDER[2]  # rule B's dial, int4 + top-p 0.9
MAP_ALGORITHMS = {
    "minirl": {"name": "minirl"},
    "minirl-noIS": {"name": "reinforce"},
    "grpo": {"name": "grpo"},
    "cispo": {"name": "cispo"},
    "dppo_tv": {"name": "dppo_tv"},
}
F9_VARIANTS = {
    "minirl": {"name": "minirl"},
    "minirl-mu": {"name": "minirl", "clip_anchor": "mu_old"},
    "dppo_tv": {"name": "dppo_tv"},
}


@dataclass(frozen=True)
class Part:
    name: str
    what: str
    cells: tuple[Cell, ...]
    seeds: tuple[int, ...]
    grad_steps: int
    needs_rung: int | None = None  # index into RUNG_TARGETS

    def budget(self) -> Budget:
        return replace(
            STRESS.full, seeds=self.seeds, grad_steps=self.grad_steps, eval_prompts=EVAL_PROMPTS
        )

    def runs(self) -> int:
        return len(self.cells) * len(self.seeds)

    def minutes(self, workers: int = 2) -> float:
        per_run = (
            RUN_MINUTES
            * self.grad_steps
            / STRESS.full.grad_steps
            * (1 + EVAL_COST * (EVAL_PROMPTS / STRESS.full.eval_prompts - 1))
        )
        return per_run * self.runs() / workers


def probe_k3(path: Path, init: str = "balanced") -> dict[str, float]:
    """Per dial, the probe's per-token k3 on `init`'s cold start."""
    with path.open() as f:
        return {r["dial"]: float(r["kl_k3"]) for r in csv.DictReader(f) if r["init"] == init}


def rung_for(target: float, k3: dict[str, float]) -> str | None:
    """The ladder dial nearest `target` in log k3, if within `RUNG_TOLERANCE`; else None."""
    ladder = {d.name: k3[d.name] for d in LADDER if k3.get(d.name, 0.0) > 0}
    if not ladder:
        return None
    name = min(ladder, key=lambda n: abs(math.log(ladder[n] / target)))
    return name if abs(math.log(ladder[name] / target)) <= math.log(RUNG_TOLERANCE) else None


def _dial(name: str) -> Dial:
    return next(d for d in (NO_MISMATCH, *LADDER) if d.name == name)


def _cell(name: str, algorithm: dict, dial: Dial, *, n: int = 1, replay: str = "none", **kw):
    lr = kw.pop("lr", LR_REGIME)
    return Cell(name, "rerun", algorithm, replay, n, lr=lr, **dial.fields, **kw)


def parts(k3: dict[str, float]) -> list[Part]:
    """Every part in the order to run them; a part whose rung is unreached names it `None`."""
    rung = [rung_for(t, k3) for t in RUNG_TARGETS]
    out: list[Part] = []
    for i, target in enumerate(RUNG_TARGETS):
        dial = _dial(rung[i]) if rung[i] else None
        tag = f"rung{i + 1}"
        where = f"k3 ≈ {target:g}" + (f" (`{dial.name}`)" if dial else " (not reached)")
        f1 = (
            tuple(_cell(f"N1/{v}", {"name": v}, dial) for v in ("minirl", "reinforce"))
            if dial
            else ()
        )
        out.append(Part(f"f1-{tag}", f"F1 at {where}: MiniRL vs no IS, N = 1", f1, SEEDS, 64, i))
        f9 = (
            tuple(
                _cell(f"F9/{d.name}/{v}", a, d, n=4, replay="R3")
                for d in (NO_MISMATCH, dial)
                for v, a in F9_VARIANTS.items()
            )
            if dial
            else ()
        )
        out.append(Part(f"f9-{tag}", f"F9 at {where} and fp32, N = 4", f9, SEEDS, 64, i))
        mapped = (
            tuple(
                _cell(f"map/{d.name}/N2/{a}", alg, d, n=2, replay="R2")
                for d in (NO_MISMATCH, dial)
                for a, alg in MAP_ALGORITHMS.items()
            )
            if dial
            else ()
        )
        out.append(
            Part(
                f"map-n2-{tag}",
                f"the map's mismatch axis at N = 2, fp32 and {where}",
                mapped,
                SEEDS,
                64,
                i,
            )
        )
    for n in (4, 8):
        replay = "R3" if n >= 4 else "R2"
        f4 = (
            _cell(f"N{n}/minirl+R2", {"name": "minirl"}, REGIME_DIAL, n=n, replay="R2"),
            _cell(
                f"N{n}/minirl+R2-noclip",
                {"name": "minirl", "use_clip": False},
                REGIME_DIAL,
                n=n,
                replay="R2",
            ),
            _cell(f"N{n}/minirl-noclip", {"name": "minirl", "use_clip": False}, REGIME_DIAL, n=n),
            _cell(f"auto/N{n}/minirl+none", {"name": "minirl"}, REGIME_DIAL, n=n),
            _cell(f"N{n}/minirl+{replay}", {"name": "minirl"}, REGIME_DIAL, n=n, replay=replay),
        )
        f4 = tuple(replace(c, lr=LR_CONTROL) for c in f4)
        out.append(Part(f"lr-control-n{n}", f"F4 at lr {LR_CONTROL:g}, N = {n}", f4, SEEDS, 64))
    cold = tuple(
        _cell(
            f"cold/long_heavy/{d.name}", {"name": "minirl"}, d, n=2, replay="R2", init="long_heavy"
        )
        for d in (NO_MISMATCH, REGIME_DIAL)
    )
    out.append(Part("f6-long-heavy", "long_heavy at fp32 vs the regime's dial", cold, SEEDS, 64))
    long = (
        _cell("N4/minirl+R3", {"name": "minirl"}, REGIME_DIAL, n=4, replay="R3"),
        _cell("N4/minirl-noclip", {"name": "minirl", "use_clip": False}, REGIME_DIAL, n=4),
    )
    out.append(
        Part("long-512", f"{LONG_GRAD_STEPS} grad steps at the regime's dial", long, (0, 1), 512)
    )
    return [piece for part in out for piece in fit(part)]


def fit(part: Part) -> list[Part]:
    """`part` as is when its estimate fits `PART_LIMIT_MIN`, else split by seeds into the
    fewest pieces that each fit (a single run over the limit stays one piece)."""
    if not part.cells or part.minutes() <= PART_LIMIT_MIN:
        return [part]
    for k in range(2, len(part.seeds) + 1):
        chunks = [part.seeds[i::k] for i in range(k)]
        pieces = [
            replace(
                part,
                name=f"{part.name}-s{j + 1}",
                seeds=tuple(sorted(c)),
                what=f"{part.what}, seeds {tuple(sorted(c))}",
            )
            for j, c in enumerate(chunks)
        ]
        if all(p.minutes() <= PART_LIMIT_MIN for p in pieces):
            return pieces
    return pieces


def foreign_cpus(out_dir: Path, here: str) -> set[str]:
    """The CPU kinds of the runs already in `out_dir` other than `here` (one kind a part)."""
    kinds = {json.loads(p.read_text()).get("cpu", "") for p in out_dir.glob("runs/*/seed*.json")}
    return {k for k in kinds if k and k != here}


def plan_lines(k3: dict[str, float]) -> list[str]:
    lines = []
    for p in parts(k3):
        state = "CUT: rung not reached" if not p.cells else f"≈ {p.minutes():.0f} min on 2 cores"
        lines.append(f"{p.name:18s} {p.runs():3d} runs  {state:28s} {p.what}")
    return lines
