"""The mismatch ladder's probe: every rung candidate measured on the committed cold starts.

    python -m research.stability ladder                  # stress/ladder.csv and stress/ladder.md
    python -m research.stability ladder --prompts 16 --samples 2 --out /tmp/x   # a small one

For each cold start of `INITS` and each dial of `DIALS` (the fp32 control, then
`suites.RUNG_CANDIDATES`), `probe.measure` on the RL pool's first prompts, and on the `balanced`
cold start also on its long-answer slice (`probe.LONG_MIN_DIGITS`, init `balanced@long`). The
full probe uses the committed probe's budget (64 prompts × 4 samples, seed 0), so its rows sit
beside `stress/discrepancy.csv`'s. `reruns.chosen_rungs` applies the rung rule (declared before
this probe first ran) to the `balanced` rows; `ladder.md` says which rungs were reached and
which were not, with the numbers.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

from research.stability import coldstart, probe, reruns
from research.stability.suites import NO_MISMATCH, RUNG_CANDIDATES, SUITES, Suite

DIALS = (NO_MISMATCH, *RUNG_CANDIDATES)
INITS = ("balanced", "long_heavy")
LONG_INITS = ("balanced",)
CSV_NAME = "ladder.csv"


def _job(suite_name: str, init: str, path: str, dial, long: bool, budget: dict) -> dict:
    return probe.ladder_job(SUITES[suite_name], init, Path(path), dial, long=long, **budget)


def run(
    suite: Suite,
    *,
    out_dir: Path,
    cache_dir: Path,
    workers: int,
    prompts: int,
    samples: int,
    inits: tuple[str, ...] = INITS,
    dials=DIALS,
) -> list[dict]:
    """Probe every dial on every init (and the long-answer slice of `LONG_INITS`); write
    `ladder.csv` and `ladder.md` into `out_dir` and return the rows."""
    from research.stability.orchestrate import _write_rows, open_pool

    paths = {}
    for name in inits:
        mixture = next(m for m in suite.task.COLD_START_MIXTURES if m.name == name)
        cold = coldstart.ensure_cold_start(suite, mixture, suite.sft, cache_dir=cache_dir)
        paths[name] = str(cold.path)
    budget = {"max_new_tokens": suite.full.max_new_tokens, "prompts": prompts, "n": samples}
    jobs = [(init, paths[init], d, False) for init in inits for d in dials]
    jobs += [(init, paths[init], d, True) for init in inits if init in LONG_INITS for d in dials]
    load_before, started = os.getloadavg(), time.time()
    with open_pool(workers) as pool:
        futures = [pool.submit(_job, suite.name, *job, budget) for job in jobs]
        rows = [f.result() for f in futures]
    minutes = (time.time() - started) / 60
    out_dir.mkdir(parents=True, exist_ok=True)
    _write_rows(out_dir / CSV_NAME, rows)
    conditions = {
        "cpu": rows[0]["cpu"],
        "minutes": minutes,
        "workers": workers,
        "load_before": load_before,
        "load_after": os.getloadavg(),
    }
    (out_dir / "ladder.md").write_text(summary(rows, conditions))
    return rows


def summary(rows: list[dict], conditions: dict) -> str:
    """The ladder as a table per init, the rungs the declared rule keeps, the targets missed."""
    probe_rows = {
        r["dial"]: {"kl_k3": float(r["kl_k3"]), "routing_layer_max": float(r["routing_layer_max"])}
        for r in rows
        if r["init"] == "balanced"
    }
    rungs = reruns.chosen_rungs(probe_rows)
    first = rows[0]
    lines = [
        "# The mismatch ladder's probe",
        "",
        "Written by `python -m research.stability ladder` (`research/stability/ladder.py`). Per "
        f"init and dial: {first['prompts']} RL-pool prompts × {first['n']} samples at T = 1, "
        "seed 0, rescored by the fp32 trainer. k3 is the per-token mean of KL(μ‖π_old)'s k3 "
        "estimator; the routing flip is the worst layer's share of tokens whose top-2 experts "
        "differ between engine and trainer. `@long`: the RL pool's problems of "
        f"≥ {probe.LONG_MIN_DIGITS} digits.",
        "",
        f"CPU: {conditions['cpu']}; {conditions['workers']} processes, one thread each, "
        f"{conditions['minutes']:.1f} min; load average (1, 5, 15 min) "
        f"{_load(conditions['load_before'])} before and {_load(conditions['load_after'])} after, "
        "on a machine shared with other sessions.",
        "",
        "## Rungs kept by the declared rule (`reruns.chosen_rungs`, `balanced` rows)",
        "",
        *(f"- {line}" for line in rungs.lines(probe_rows)),
        "",
    ]
    for init in dict.fromkeys(r["init"] for r in rows):
        lines += [
            f"## {init}",
            "",
            "| dial | k3 | k3 × mean length | routing flip (worst layer) | any layer | "
            "TIS-cap hits | mean length |",
            "|---|---|---|---|---|---|---|",
        ]
        for r in rows:
            if r["init"] != init:
                continue
            k3, length = float(r["kl_k3"]), float(r["response_len_mean"])
            lines.append(
                f"| {r['dial']} | {k3:.2e} | {k3 * length:.3f} | "
                f"{float(r['routing_layer_max']):.1%} | {float(r['routing_any_frac']):.1%} | "
                f"{float(r['tis_cap_hit_frac']):.2%} | {length:.1f} |"
            )
        lines.append("")
    return "\n".join(lines)


def _load(values) -> str:
    return "/".join(f"{v:.1f}" for v in values)
