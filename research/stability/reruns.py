"""The fidelity reruns (the ladder's rungs, ≥ 4 seeds, the lr controls), declared here before any
of them ran: resumable parts of under two hours.

    python -m research.stability rerun --list             # the parts, their runs and estimates
    python -m research.stability rerun --part f1-rung1    # one part; a rerun does what is missing

**Rungs** (the mismatch ladder's rule, declared here before the ladder probe ran). The
candidates are `suites.RUNG_CANDIDATES`: the stress ladder (`fp8_tensor`, `int4`,
`int4+top_p0.9`) and the serving mechanisms (`int3`, `int4_channel`, `int4_router`, `kv_fp8`,
`int4_kv_fp8`, then `int3_kv_fp8` and `int2`, added after a smoke run, before the full probe),
measured by the discrepancy probe on the `balanced` cold start (`stress/discrepancy.csv`, then
`stress/ladder.csv`, whose rows win). `chosen_rungs` keeps:

- for each of `RUNG_TARGETS` (per-token k3 KL(μ‖π_old) of 3e-3, 1e-2, 3e-2), the candidate with
  the smallest |log(k3 / target)| (`rung_for`); the target is *reached* only when that candidate
  lies within `RUNG_TOLERANCE` (10^0.25: half the log spacing of the targets, so a candidate
  counts for the target it is nearest to, never for two);
- the routing rung: among the candidates whose worst-layer routing flip engine vs trainer
  (`routing_layer_max`) is at least `ROUTING_TARGET` (10 %, fidelity's `ROUTING_FLOOR`), the one
  with the least k3, so that what it adds over the k3 rungs is the routing flip
  (`routing_rung`); none when no candidate reaches 10 %.

A part that needs an unreached rung is cut, and `--list` says so.

**Budget.** `SEEDS` (four), the stress suite's budget with `EVAL_PROMPTS` held-out prompts (twice
the matrix's: its ±2 SE band on a run's Δ was ±0.10). A run's minutes are estimated as
`RUN_MINUTES` × grad steps / 64 × (1 + `EVAL_COST` × (eval prompts / 64 − 1)) on one core, two at a
time (`--workers 2`). `RUN_MINUTES` is the 90th percentile of the committed 64-step stress runs'
wall time on AVX512 CPUs (8.4 min; median 4.6); on an AVX2-only CPU runs take about 2.5× as long,
so a part there needs `--deadline` and a second sitting. A part whose estimate exceeds
`PART_LIMIT_MIN` is split by seeds (`-s1`, `-s2`, ...) until every piece fits.

**CPU kinds.** A part's folder (`stress/reruns/<part>/`) holds runs of one kind of CPU: `run`
refuses to add a run on another kind, so no rerun pools CPU kinds as seeds.

**The map in blocks** (declared before any map run, when the CPU kind of the sessions left to
run it could not be chosen): a `map-n2-rungK` part is split into one piece per seed (`blocks`),
each piece holding both of its dials, fp32 and the rung, for every algorithm. A piece runs on one
kind of CPU, but its pieces may run on different kinds: the CPU kind is a declared block factor,
and the map reads the rung's effect as the mean of per-seed differences (rung − fp32 within a
seed, so within one kind of CPU), never by pooling a kind's runs as another's seeds
(`fidelity_stats.paired_effect`). The other parts keep one kind per part.

**Parts at the routing rung**: F3 (N = 1: MiniRL, + R3, reinforce + R3) and F5 (N = 2, 4, 8:
MiniRL + R2 against + R3), the findings that `fidelity` marks untestable below a 10 % flip.

**Rules.** Each part is judged by `fidelity`'s rules unchanged (the findings' cells under the same
names), plus:

- *lr control* (F4 at lr `LR_CONTROL`, the regime's dial): if F4a still agrees there, clipping is
  needed apart from the lr shock; if it is not reproduced there, the stress suite's clipping
  effect is the lr shock's.
- *long_heavy at fp32 against the regime's dial* (F6 apart from the mismatch): the mismatch
  explains long_heavy's fall when `findings.better(fp32, dial)` is +1, the cold start when 0.
- *long runs* (`LONG_GRAD_STEPS`): MiniRL + R3 against MiniRL without clipping at N = 4, collapse
  counts by the moving-mean criterion; a long run is one unit, resumable only between runs. They
  run at the strongest k3 rung reached (`strongest_dial`), as the plan asks, or at the regime's
  dial when no rung is reached (the regime's dial was their first declaration, changed before
  either long run started).

**Cut** (declared with the parts): lr warmup (keel's optimizer has a constant learning rate, no
schedule to warm up); any rung `chosen_rungs` does not reach (`--list` names them); the guard's
SmolLM2 addition jobs at several learning rates (service jobs of ≈ 6 min each:
`research.guard_service` runs them, not this module). Added before any of the parts it cuts ran:
an F1 or F9 part whose rung's probe k3 lies below `fidelity.K3_FLOOR` by more than
`RUNG_TOLERANCE` (`gated_out`), since `fidelity` gates both findings on that floor, so the part
could only read "cannot be tested here". The margin is for a run's k3 differing from its probe:
within 5 % at int4_kv_fp8 and int3, but 1.6× at int4_router (F3's MiniRL runs at N = 1, which are
F1's MiniRL cell there, measured 5.1e-3 against the probe's 3.3e-3: still half the floor).
By the rung rule's tolerance this cuts F1 and F9 at the 3e-3 rung whatever the probe measured
there, and never at the 1e-2 rung; the map keeps all three rungs, being reported, not judged.
Left unrun for compute (a budget, not a rule; declared before any map run was read): the map
runs its strongest rung first, `map-n2-rung3` in seed order, and its other two rungs (80 runs,
their k3 below `K3_FLOOR`, where F1 at the 1e-2 rung read "cannot be tested here") wait, with
the 20 runs `f9-rung2` lacks; they stay in `--list`, resumable with `--part`.
"""

from __future__ import annotations

import csv
import json
import math
from dataclasses import dataclass, replace
from pathlib import Path

from research.stability.fidelity import K3_FLOOR
from research.stability.matrix import Budget, Cell
from research.stability.suites import LADDER, NO_MISMATCH, RUNG_CANDIDATES, STRESS, Dial

RUNG_TARGETS = (3e-3, 1e-2, 3e-2)
RUNG_TOLERANCE = 10**0.25
ROUTING_TARGET = 0.10
PROBE_FILES = ("discrepancy.csv", "ladder.csv")  # later files win for a dial in both
ROUTING_PART = len(RUNG_TARGETS)  # `Part.needs_rung` of the parts at the routing rung
SEEDS = (0, 1, 2, 3)
EVAL_PROMPTS = 128
RUN_MINUTES = 8.4
EVAL_COST = 0.3
PART_LIMIT_MIN = 110.0
LR_REGIME = 3e-4  # the regime's rules A and C (stress/regime.json)
LR_CONTROL = 1e-4
LONG_GRAD_STEPS = 512
REGIME_DIAL = LADDER[2]  # rule B's dial, int4 + top-p 0.9
UNREACHED = "rung not reached"  # a part's `cut` when its rung is not reached
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
    needs_rung: int | None = None  # index into RUNG_TARGETS, or ROUTING_PART
    cut: str = ""  # why the part has no cells, when it has none
    blocks: bool = False  # one piece per seed, CPU kind a block factor (the map)

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


Probe = dict[str, dict[str, float]]  # dial -> {"kl_k3": ..., "routing_layer_max": ...}


def read_probe(results_dir: Path, init: str = "balanced") -> Probe:
    """Per dial, the probe's per-token k3 and worst-layer routing flip on `init`'s cold start,
    from every file of `PROBE_FILES` in `results_dir` (a dial in a later file wins)."""
    out: Probe = {}
    for name in PROBE_FILES:
        path = results_dir / name
        if not path.is_file():
            continue
        with path.open() as f:
            for r in csv.DictReader(f):
                if r["init"] == init:
                    out[r["dial"]] = {
                        "kl_k3": float(r["kl_k3"]),
                        "routing_layer_max": float(r["routing_layer_max"]),
                    }
    return out


def rung_for(target: float, probe: Probe) -> str | None:
    """The candidate nearest `target` in log k3, if within `RUNG_TOLERANCE`; else None."""
    k3 = {
        d.name: probe[d.name]["kl_k3"]
        for d in RUNG_CANDIDATES
        if probe.get(d.name, {}).get("kl_k3", 0.0) > 0
    }
    if not k3:
        return None
    name = min(k3, key=lambda n: abs(math.log(k3[n] / target)))
    return name if abs(math.log(k3[name] / target)) <= math.log(RUNG_TOLERANCE) else None


def routing_rung(probe: Probe) -> str | None:
    """The candidate of least k3 among those whose worst-layer routing flip reaches
    `ROUTING_TARGET`; None when none does."""
    over = [
        d.name
        for d in RUNG_CANDIDATES
        if probe.get(d.name, {}).get("routing_layer_max", 0.0) >= ROUTING_TARGET
    ]
    return min(over, key=lambda n: probe[n]["kl_k3"]) if over else None


@dataclass(frozen=True)
class Rungs:
    """The dials `chosen_rungs` keeps: one per `RUNG_TARGETS` (None: not reached) and the
    routing rung."""

    k3: tuple[str | None, ...]
    routing: str | None

    def lines(self, probe: Probe) -> list[str]:
        def shown(name: str | None) -> str:
            if name is None:
                return "not reached"
            row = probe[name]
            return f"`{name}` (k3 {row['kl_k3']:.2g}, routing flip {row['routing_layer_max']:.1%})"

        out = [f"k3 ≈ {t:g}: {shown(n)}" for t, n in zip(RUNG_TARGETS, self.k3, strict=True)]
        return [*out, f"routing flip ≥ {ROUTING_TARGET:.0%}: {shown(self.routing)}"]


def chosen_rungs(probe: Probe) -> Rungs:
    return Rungs(tuple(rung_for(t, probe) for t in RUNG_TARGETS), routing_rung(probe))


def gated_out(name: str, probe: Probe) -> bool:
    """Whether `name`'s probe k3 is too far below `K3_FLOOR` for a k3-gated finding to be judged
    there (see the docstring's **Cut**)."""
    return probe[name]["kl_k3"] * RUNG_TOLERANCE < K3_FLOOR


def strongest_dial(rungs: Rungs) -> Dial:
    """The reached k3 rung of the largest target; the regime's dial when none is reached."""
    reached = [name for name in rungs.k3 if name]
    return _dial(reached[-1]) if reached else REGIME_DIAL


def _dial(name: str) -> Dial:
    return next(d for d in (NO_MISMATCH, *RUNG_CANDIDATES) if d.name == name)


def _cell(name: str, algorithm: dict, dial: Dial, *, n: int = 1, replay: str = "none", **kw):
    lr = kw.pop("lr", LR_REGIME)
    return Cell(name, "rerun", algorithm, replay, n, lr=lr, **dial.fields, **kw)


def parts(probe: Probe) -> list[Part]:
    """Every part in the order to run them; a cut part (its `cut` says why) has no cells."""
    rungs = chosen_rungs(probe)
    rung = rungs.k3
    out: list[Part] = []
    for i, target in enumerate(RUNG_TARGETS):
        dial = _dial(rung[i]) if rung[i] else None
        tag = f"rung{i + 1}"
        where = f"k3 ≈ {target:g}" + (f" (`{dial.name}`)" if dial else " (not reached)")
        unreached = "" if dial else UNREACHED
        gated = unreached or (
            f"k3 {probe[dial.name]['kl_k3']:.2g}, under the gate"
            if gated_out(dial.name, probe)
            else ""
        )
        f1 = (
            ()
            if gated
            else tuple(_cell(f"N1/{v}", {"name": v}, dial) for v in ("minirl", "reinforce"))
        )
        what = f"F1 at {where}: MiniRL vs no IS, N = 1"
        out.append(Part(f"f1-{tag}", what, f1, SEEDS, 64, i, gated))
        f9 = (
            ()
            if gated
            else tuple(
                _cell(f"F9/{d.name}/{v}", a, d, n=4, replay="R3")
                for d in (NO_MISMATCH, dial)
                for v, a in F9_VARIANTS.items()
            )
        )
        out.append(Part(f"f9-{tag}", f"F9 at {where} and fp32, N = 4", f9, SEEDS, 64, i, gated))
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
                unreached,
                blocks=True,
            )
        )
    out += _routing_parts(rungs.routing)
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
    strongest = strongest_dial(rungs)
    long = (
        _cell("N4/minirl+R3", {"name": "minirl"}, strongest, n=4, replay="R3"),
        _cell("N4/minirl-noclip", {"name": "minirl", "use_clip": False}, strongest, n=4),
    )
    what = f"{LONG_GRAD_STEPS} grad steps at `{strongest.name}`"
    out.append(Part("long-512", what, long, (0, 1), LONG_GRAD_STEPS))
    return [piece for part in out for piece in fit(part)]


def _routing_parts(name: str | None) -> list[Part]:
    """F3 and F5 (fidelity's routing findings, their cells under the same names) at the routing
    rung; cut when no candidate reaches `ROUTING_TARGET`."""
    dial = _dial(name) if name else None
    where = f"the routing rung ({f'`{name}`' if name else 'not reached'})"
    cut = "" if dial else UNREACHED
    f3 = (
        (
            _cell("N1/minirl", {"name": "minirl"}, dial),
            _cell("N1/minirl+R3", {"name": "minirl"}, dial, replay="R3"),
            _cell("N1/reinforce+R3", {"name": "reinforce"}, dial, replay="R3"),
        )
        if dial
        else ()
    )
    f5 = (
        tuple(
            _cell(f"N{n}/minirl+{r}", {"name": "minirl"}, dial, n=n, replay=r)
            for n in (2, 4, 8)
            for r in ("R2", "R3")
        )
        if dial
        else ()
    )
    return [
        Part("f3-routing", f"F3 at {where}: R3 on-policy, N = 1", f3, SEEDS, 64, ROUTING_PART, cut),
        Part(
            "f5-routing", f"F5 at {where}: R2 vs R3, N = 2, 4, 8", f5, SEEDS, 64, ROUTING_PART, cut
        ),
    ]


def fit(part: Part) -> list[Part]:
    """`part` as is when its estimate fits `PART_LIMIT_MIN`, else split by seeds into the
    fewest pieces that each fit (a single run over the limit stays one piece); a part in
    `blocks` is split into one piece per seed."""
    if part.blocks and part.cells:
        return [
            replace(part, name=f"{part.name}-s{j + 1}", seeds=(seed,))
            for j, seed in enumerate(part.seeds)
        ]
    if not part.cells or part.minutes() <= PART_LIMIT_MIN:
        return [part]
    for k in range(2, len(part.seeds) + 1):
        chunks = [part.seeds[i::k] for i in range(k)]
        pieces = [
            replace(part, name=f"{part.name}-s{j + 1}", seeds=tuple(sorted(c)))
            for j, c in enumerate(chunks)
        ]
        if all(p.minutes() <= PART_LIMIT_MIN for p in pieces):
            return pieces
    return pieces


def foreign_cpus(out_dir: Path, here: str) -> set[str]:
    """The CPU kinds of the runs already in `out_dir` other than `here` (one kind a part)."""
    kinds = {json.loads(p.read_text()).get("cpu", "") for p in out_dir.glob("runs/*/seed*.json")}
    return {k for k in kinds if k and k != here}


def plan_lines(probe: Probe) -> list[str]:
    lines = [
        "rungs (chosen_rungs, from the ladder probe: stress/ladder.md):",
        *(f"  {line}" for line in chosen_rungs(probe).lines(probe)),
    ]
    for p in parts(probe):
        state = f"CUT: {p.cut}" if not p.cells else f"≈ {p.minutes():.0f} min on 2 cores"
        seeds = f", seeds {p.seeds}" if p.seeds != SEEDS and p.cells else ""
        lines.append(f"{p.name:18s} {p.runs():3d} runs  {state:30s} {p.what}{seeds}")
    return lines
