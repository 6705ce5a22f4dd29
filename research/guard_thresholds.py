"""Replay the stability suites' committed runs through the guard's detector: the evidence for the
defaults of `keel.types.guard`.

Every run's per-step CSV (`research/results/stability/` `runs`, `stress/runs`, `stress/pilot/runs`)
becomes one metrics dict per global step, under keel's metric names, fed to `StabilityGuard`
exactly as the job loop feeds it. Runs are split by the collapse criterion of
`research/stability/criterion.py`: those it judges stable are the false-alarm set, those it
judges collapsed the detection set.

For each trigger alone (the others off, patience at its default) and each threshold of a grid,
it counts the stable runs that would raise an alert and, per collapsing run, the grad step of the
first firing and the lead: collapse grad step − firing grad step (positive = before the
collapse). The **rule** that picks a default: the tightest threshold of the grid that alerts on
no stable run. The chosen values are written beside the grid; `keel.types.guard` carries them
(a test keeps the two equal).

    python -m research.guard_thresholds   # writes research/results/guard/thresholds.{json,md}

The committed `thresholds.*` are the replay that chose today's defaults (with the entropy
trigger in its first form). A replay with today's code and runs (the entropy trigger's reward
clause on, the runs the tree holds now) is a *re-sweep*; it goes to its own folder, so that it
never overwrites that record, and `research.guard_oos` scores it where it did not look:

    python -m research.guard_thresholds --out research/results/guard/resweep
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path
from typing import Any

from keel.types import metric_names as metric
from keel.types.guard import GuardConfig
from keel_worker.training.guard import TRIGGERS, StabilityGuard
from research.stability.results import Run, load_runs

ROOT = Path(__file__).resolve().parent / "results"
SUITES = {
    "gentle": ROOT / "stability",
    "stress": ROOT / "stability" / "stress",
    "stress-pilot": ROOT / "stability" / "stress" / "pilot",
}
OUT = ROOT / "guard"
# CSV column -> the keel metric the job loop would hand the detector.
METRICS = {
    "kl_k3": metric.MISMATCH_KL_K3,
    "is_trunc_frac": metric.IS_TRUNCATED_FRAC,
    "clip_frac": metric.CLIP_FRAC,
    "entropy": metric.TRAIN_ENTROPY,
    "grad_norm": metric.OPTIM_GRAD_NORM,
    "train_reward": metric.REWARD_MEAN,
    "eval_acc": metric.EVAL_ACCURACY,
}
# Per trigger, each field's grid from loosest to tightest; the sweep takes their product.
PATIENCE = (3, 2, 1)
GRID: dict[str, dict[str, tuple[float, ...]]] = {
    "kl": {
        "ratio": (20, 10, 7, 5, 4, 3, 2.5, 2),
        "min_value": (1e-2, 5e-3, 3e-3, 2e-3, 1e-3),
        "warmup": (4, 2, 1),
        "patience": PATIENCE,
    },
    "is_fraction": {"max_frac": (0.2, 0.1, 0.05, 0.02, 0.01, 0.005, 0.002, 0.001)},
    "clip": {"max_frac": (0.5, 0.3, 0.2, 0.1, 0.05, 0.02, 0.01, 0.005), "patience": PATIENCE},
    "entropy": {
        "min_ratio": (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7),
        "warmup": (4, 2, 1),
        "patience": PATIENCE,
    },
    "grad_norm": {"ratio": (50, 20, 10, 5, 3, 2), "patience": PATIENCE},
    "reward": {
        "min_ratio": (0.1, 0.15, 0.2, 0.3, 0.4, 0.5),
        "window": (8, 4, 2, 1),
        "warmup": (4, 2, 1),
        "min_baseline": (0.1, 0.05, 0.02),
        "patience": PATIENCE,
    },
    "accuracy": {"min_ratio": (0.2, 0.3, 0.4, 0.5, 0.6, 0.7), "patience": PATIENCE},
}


def settings(trigger: str) -> list[dict[str, float]]:
    """Every combination of the trigger's grid, loosest first."""
    combos: list[dict[str, float]] = [{}]
    for field, values in GRID[trigger].items():
        combos = [{**c, field: v} for c in combos for v in values]
    return combos


def step_metrics(run: Run) -> list[tuple[int, int, dict[str, float]]]:
    """(global step, grad step, metrics) per CSV row, as the job loop would have them."""
    out = []
    for row in run.rows:
        metrics = {name: row[col] for col, name in METRICS.items() if row.get(col) is not None}
        out.append((int(row["global_step"]), int(row["grad_step"]), metrics))
    return out


def only(trigger: str, **fields: float) -> GuardConfig:
    """The default guard with every trigger off but `trigger`, its fields overridden."""
    default = getattr(GuardConfig(), trigger)
    off = {name: None for name in TRIGGERS if name != trigger}
    return GuardConfig(**off, **{trigger: default.model_copy(update=fields)})


def firings(config: GuardConfig, run: Run) -> list[int]:
    """Grad steps at which a trigger fired while replaying `run`."""
    guard = StabilityGuard(config)
    steps = []
    for step, grad_step, metrics in step_metrics(run):
        if guard.observe(step, metrics):
            steps.append(grad_step)
    return steps


def sweep(trigger: str, stable: list[Run], collapsed: list[Run]) -> list[dict[str, Any]]:
    rows = []
    for fields in settings(trigger):
        config = only(trigger, **fields)
        alerts = [len(firings(config, r)) for r in stable]
        leads = []
        for run in collapsed:
            fired = firings(config, run)
            collapse = run.verdict().step
            first = fired[0] if fired else None
            lead = collapse - first if first is not None and collapse is not None else None
            leads.append(
                {
                    "run": _name(run),
                    "collapse_grad_step": collapse,
                    "first_alert_grad_step": first,
                    "lead_grad_steps": lead,
                }
            )
        rows.append(
            {
                **fields,
                "stable_runs_alerted": sum(a > 0 for a in alerts),
                "stable_alerts": sum(alerts),
                "collapsed_runs_detected": sum(
                    x["first_alert_grad_step"] is not None for x in leads
                ),
                "collapsed_runs_before_collapse": sum(
                    (x["lead_grad_steps"] or -1) > 0 for x in leads
                ),
                "leads": leads,
            }
        )
    return rows


def choose(rows: list[dict[str, Any]]) -> dict[str, Any] | None:
    """The rule: among the settings that alert on no stable run, the one that catches the most
    collapses before the criterion dates them, then the largest total lead, then the most
    collapses caught at all, then the tightest (latest in the grid)."""
    quiet = [(i, r) for i, r in enumerate(rows) if r["stable_runs_alerted"] == 0]
    if not quiet:
        return None
    if len(quiet) == len(rows) and not any(r["collapsed_runs_detected"] for r in rows):
        return None  # nothing alerts anywhere on the grid: no evidence for any threshold

    def score(item: tuple[int, dict[str, Any]]) -> tuple:
        i, r = item
        total = sum(x["lead_grad_steps"] for x in r["leads"] if (x["lead_grad_steps"] or -1) > 0)
        return (r["collapsed_runs_before_collapse"], total, r["collapsed_runs_detected"], i)

    return max(quiet, key=score)[1]


def _name(run: Run) -> str:
    return f"{run.meta.get('suite', 'gentle')}:{run.cell}@seed{run.meta['seed']}"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m research.guard_thresholds")
    parser.add_argument("--out", type=Path, default=OUT, help=f"results folder (default {OUT})")
    out = parser.parse_args(argv).out
    started = time.perf_counter()
    runs = [run for root in SUITES.values() for run in load_runs(root)]
    stable = [r for r in runs if not r.verdict().collapsed]
    collapsed = [r for r in runs if r.verdict().collapsed]
    where = "" if out == OUT else f" --out {out.as_posix()}"
    result: dict[str, Any] = {
        "command": f"python -m research.guard_thresholds{where}",
        "rule": "per trigger alone, over the product of its grids: no alert on any stable run; "
        "then the most collapses alerted before the criterion dates them, the largest total "
        "lead, the most collapses alerted at all, the tightest setting",
        "stable_runs": len(stable),
        "collapsed_runs": [_name(r) for r in collapsed],
        "machine_load": os.getloadavg()[0],
        "triggers": {},
    }
    for trigger in TRIGGERS:
        rows = sweep(trigger, stable, collapsed)
        chosen = choose(rows)
        result["triggers"][trigger] = {
            "chosen": {f: chosen[f] for f in GRID[trigger]} if chosen else None,
            "chosen_result": chosen,
            "settings_tried": len(rows),
            "grid": [
                {
                    **{f: r[f] for f in GRID[trigger]},
                    "stable_runs_alerted": r["stable_runs_alerted"],
                    "before_collapse": r["collapsed_runs_before_collapse"],
                    "leads": [x["lead_grad_steps"] for x in r["leads"]],
                }
                for r in rows
            ],
        }
    defaults = {t: _default(t) for t in TRIGGERS}
    result["defaults"] = defaults
    result["combined_defaults"] = _combined(stable, collapsed)
    result["wall_s"] = time.perf_counter() - started
    out.mkdir(parents=True, exist_ok=True)
    (out / "thresholds.json").write_text(json.dumps(result, indent=2) + "\n")
    (out / "thresholds.md").write_text(_markdown(result))
    print((out / "thresholds.md").read_text())


def _default(trigger: str) -> dict[str, float]:
    default = getattr(GuardConfig(), trigger)
    return {field: getattr(default, field) for field in GRID[trigger]}


def _combined(stable: list[Run], collapsed: list[Run]) -> dict[str, Any]:
    """The default guard, all triggers together: alerts per stable run, first alert per
    collapsing run and which trigger it was."""
    config = GuardConfig()
    per_stable = {}
    for run in stable:
        guard = StabilityGuard(config)
        fired = [f.trigger for s, _, m in step_metrics(run) for f in guard.observe(s, m)]
        if fired:
            per_stable[_name(run)] = fired
    detections = []
    for run in collapsed:
        guard = StabilityGuard(config)
        first = None
        for step, grad_step, metrics in step_metrics(run):
            fired = guard.observe(step, metrics)
            if fired and first is None:
                first = (grad_step, [f.trigger for f in fired])
        collapse = run.verdict().step
        detections.append(
            {
                "run": _name(run),
                "collapse_grad_step": collapse,
                "first_alert_grad_step": first[0] if first else None,
                "triggers": first[1] if first else [],
                "lead_grad_steps": collapse - first[0] if first and collapse is not None else None,
            }
        )
    return {"stable_runs_alerted": per_stable, "detections": detections}


def _markdown(result: dict[str, Any]) -> str:
    lines = [
        "# Guard thresholds from the stability suites' runs",
        "",
        f"Written by `{result['command']}` "
        f"(load average {result['machine_load']:.1f}; the replay is pure Python over committed "
        f"CSVs: {result['wall_s']:.0f} s). "
        f"{result['stable_runs']} stable runs (false alarms) and {len(result['collapsed_runs'])} "
        "collapsing runs by `research/stability/criterion.py`: "
        + ", ".join(result["collapsed_runs"])
        + ".",
        "",
        "Caveat: the thresholds are chosen on these same runs (no held-out set), so the "
        "detection numbers below are in-sample.",
        "",
        f"Rule: {result['rule']}. Lead = collapse grad step − first alert grad step "
        "(positive: the alert came first; the criterion dates a collapse at the first evaluation "
        "of its tail, evaluations are 8 grad steps apart).",
        "",
        "| trigger | chosen (= default) | settings tried | stable runs alerted "
        "| collapses alerted before the criterion | leads (grad steps, per collapsing run) |",
        "|---|---|---|---|---|---|",
    ]
    for trigger, info in result["triggers"].items():
        row = info["chosen_result"]
        if row is None:
            lines.append(
                f"| {trigger} | no evidence: nothing alerts on the grid; default "
                f"{result['defaults'][trigger]} is a prior | {info['settings_tried']} | 0 | 0 | – |"
            )
            continue
        chosen = ", ".join(f"{k}={v:g}" for k, v in info["chosen"].items())
        same = "" if info["chosen"] == result["defaults"][trigger] else " (default differs!)"
        leads = ", ".join(
            "–" if x["lead_grad_steps"] is None else str(x["lead_grad_steps"]) for x in row["leads"]
        )
        lines.append(
            f"| {trigger} | {chosen}{same} | {info['settings_tried']} | "
            f"{row['stable_runs_alerted']} | {row['collapsed_runs_before_collapse']}"
            f"/{len(row['leads'])} | {leads} |"
        )
    combined = result["combined_defaults"]
    lines += ["", "## All default triggers together", ""]
    lines.append(f"Stable runs with an alert: {len(combined['stable_runs_alerted'])}")
    for name, fired in combined["stable_runs_alerted"].items():
        lines.append(f"- {name}: {', '.join(fired)}")
    lines += ["", "| collapsing run | collapse | first alert | triggers | lead |"]
    lines.append("|---|---|---|---|---|")
    for d in combined["detections"]:
        lines.append(
            f"| {d['run']} | {d['collapse_grad_step']} | {d['first_alert_grad_step']} | "
            f"{', '.join(d['triggers'])} | {d['lead_grad_steps']} |"
        )
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
