"""The guard's defaults scored out of sample: on runs that played no part in choosing them.

Declared before any score below was computed.

**What is frozen.** `FROZEN` is `keel.types.guard`'s default of every trigger field as commit
`FROZEN_AT` left them: the last commit that moved a default (the accuracy trigger, re-chosen by
`research/guard_thresholds.py`'s rule on 233 stable and 32 collapsing runs). Nothing here refits
them.

**Which runs chose them.** The runs `guard_thresholds` replayed at `FROZEN_AT`: the suites'
per-step CSVs that commit held, listed in `results/guard/in_sample_runs.txt` (written from
`git ls-tree FROZEN_AT`, the paths moved from `bench/results/` to `research/results/`). Earlier
refits saw subsets of them, so every run on that list played a part.

**Out-of-sample runs**, three sources:

1. *Suite runs committed after `FROZEN_AT`*: every run under the suites' `runs/` folders that the
   list does not name. Replayed as `guard_thresholds` replays (one observation per CSV row).
   The fidelity reruns (`stress/reruns/<part>/runs/`, all committed after `FROZEN_AT`, which
   `guard_thresholds` never reads) are their own set, *reruns*: new seeds and new rungs of the
   mismatch ladder (added to the rules when the first reruns came in, before they were scored).
2. *Guard service jobs* (`results/guard/service/`): stress cells run as jobs through the API; the
   threshold replay never read them. Only a job whose trajectory the guard left alone is scored:
   it succeeded and no firing paused it or rolled it back. Their stored metrics are
   `train/entropy`, `reward/mean`, `mismatch/kl_k3` and `eval/accuracy` per global step, so the
   clip, IS and gradient-norm triggers see nothing there.
3. *The demo* (`results/guard/demo_metrics.json`): `make demo`'s job (SmolLM2-135M-Instruct,
   addition, MiniRL), its per-step metrics as the API returned them. A run of another model and
   task than the ones the defaults came from.

**Scores**, per source and for the guard as a whole (every default trigger at once): a run is
stable or collapsing by `research/stability/criterion.py` (the criterion the defaults were
chosen against; grad steps of a service job or the demo are global step × N). *False alarms*:
the stable runs with at least one firing, and the firings per stable run. *Caught before the
fall*: the collapsing runs whose first firing comes at a grad step before the criterion dates
the collapse; *lead* = collapse grad step − first firing grad step.

**The demo rule** (a default that alarms on the flagship demo is a wrong default).
The entropy trigger's first form fires on any entropy drop below 0.3 × its first step. But an
entropy that falls while the policy gets more right is learning, the happy path: the collapse
criterion's entropy clause (criterion 2) counts an entropy drop only "while the final held-out
accuracy is below the initial one". The guard mirrors that clause with the signal it has at
every step: an entropy breach counts only while the mean training reward of the last
`ENTROPY_REWARD_WINDOW` steps is below the mean of the first `ENTROPY_REWARD_WINDOW` steps.
`ENTROPY_REWARD_WINDOW` is the reward trigger's default `window` (4), not a fitted number; the
entropy trigger's other fields stay frozen. This rule is scored on the same out-of-sample runs
as the frozen defaults, and on the in-sample runs for the record (it was chosen on none of them).

**The re-sweep** (declared before it was scored). `guard_thresholds`'s rule, rerun with today's
code (the reward clause on) over the suite runs the tree holds now, chooses other entropy and
reward thresholds (`results/guard/resweep/`). It saw every suite run, so it is scored only on
what it did not see: the reruns, the service jobs and the demo. `RESWEEP_RULE`: it replaces the
defaults only if there it alarms on no more stable runs than the demo rule and catches strictly
more collapses before the fall; otherwise the defaults stay, and the re-sweep is kept as a
pilot.

    python -m research.guard_oos   # writes research/results/guard/out_of_sample.{json,md}
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from keel.types import metric_names as metric
from keel.types.guard import GuardConfig
from keel_worker.training.guard import StabilityGuard
from research.guard_thresholds import SUITES, step_metrics
from research.stability.criterion import RunSeries, judge
from research.stability.report_fidelity import guard_table
from research.stability.results import Run, load_runs

FROZEN_AT = "13449b42817768d16d490e042fb54dc65737ff9b"
FROZEN: dict[str, dict[str, Any]] = {
    "kl": {"action": "alert", "patience": 3, "ratio": 5.0, "min_value": 1e-3, "warmup": 1},
    "is_fraction": {"action": "alert", "patience": 2, "max_frac": 0.05},
    "clip": {"action": "alert", "patience": 3, "max_frac": 0.05},
    "entropy": {"action": "alert", "patience": 1, "min_ratio": 0.3, "warmup": 1},
    "grad_norm": {"action": "alert", "patience": 3, "ratio": 3.0, "warmup": 4},
    "reward": {
        "action": "alert",
        "patience": 3,
        "min_ratio": 0.1,
        "min_baseline": 0.02,
        "window": 4,
        "warmup": 1,
    },
    "accuracy": {"action": "alert", "patience": 3, "min_ratio": 0.2, "min_peak": 0.1},
}
ENTROPY_REWARD_WINDOW = 4

ROOT = Path(__file__).resolve().parent / "results"
GUARD = ROOT / "guard"
IN_SAMPLE = GUARD / "in_sample_runs.txt"
SERVICE = GUARD / "service"
DEMO = GUARD / "demo_metrics.json"
RERUNS = SUITES["stress"] / "reruns"
RESWEEP = GUARD / "resweep" / "thresholds.json"


def frozen_config() -> GuardConfig:
    """The defaults of `FROZEN_AT`, the entropy trigger in its first form (no reward clause)."""
    fields = {name: dict(values) for name, values in FROZEN.items()}
    fields["entropy"]["reward_window"] = 0
    return GuardConfig(**fields)


def demo_rule_config() -> GuardConfig:
    """The frozen defaults with the demo rule: entropy breaches only with a reward fall."""
    fields = {name: dict(values) for name, values in FROZEN.items()}
    fields["entropy"]["reward_window"] = ENTROPY_REWARD_WINDOW
    return GuardConfig(**fields)


def resweep_chosen() -> dict[str, dict[str, float] | None]:
    """Per trigger, the values the re-sweep chose (None where its grid gave no evidence)."""
    triggers = json.loads(RESWEEP.read_text())["triggers"]
    return {trigger: values["chosen"] for trigger, values in triggers.items()}


def resweep_config(chosen: dict[str, dict[str, float] | None]) -> GuardConfig:
    """The demo rule's defaults with each trigger the re-sweep chose a value for set to it."""
    fields = {name: dict(values) for name, values in FROZEN.items()}
    fields["entropy"]["reward_window"] = ENTROPY_REWARD_WINDOW
    for trigger, values in chosen.items():
        fields[trigger].update(values or {})
    return GuardConfig(**fields)


RESWEEP_RULE = (
    "the re-sweep replaces the defaults only if, on the runs it did not see, it alarms on no more "
    "stable runs than the demo rule and catches strictly more collapses before the fall"
)
UNSEEN_BY_RESWEEP = ("reruns", "service jobs", "the demo")


def resweep_adopted(scores: dict[str, dict[str, Any]]) -> bool:
    """`RESWEEP_RULE` on `main`'s scores."""
    mine = scores["re-sweep"]["unseen by the re-sweep"]
    base = scores["demo rule"]["unseen by the re-sweep"]
    return (
        mine["stable_alarmed"] <= base["stable_alarmed"]
        and mine["caught_before"] > base["caught_before"]
    )


@dataclass(frozen=True)
class Replayable:
    """One run as the guard sees it: (step, grad step, metrics) in order, and its verdict."""

    name: str
    source: str
    observations: list[tuple[int, int, dict[str, float]]]
    collapsed: bool
    collapse_grad_step: int | None


def in_sample_names() -> set[str]:
    return {line.strip() for line in IN_SAMPLE.read_text().splitlines() if line.strip()}


def suite_runs(*, in_sample: bool) -> Iterator[Replayable]:
    names = in_sample_names()
    for suite, root in SUITES.items():
        for run in load_runs(root):
            if (_rel(root, run) in names) == in_sample:
                source = "in-sample" if in_sample else "suite"
                yield _replayed(f"{suite}:{run.cell}@seed{run.meta['seed']}", source, run)


def rerun_runs() -> Iterator[Replayable]:
    """Rule 1's reruns: every run of every part under the stress suite's `reruns/` folder."""
    for part in sorted(p for p in RERUNS.glob("*") if p.is_dir()):
        for run in load_runs(part):
            yield _replayed(f"rerun:{part.name}:{run.cell}@seed{run.meta['seed']}", "rerun", run)


def _replayed(name: str, source: str, run: Run) -> Replayable:
    """A saved suite run as the threshold replay feeds it, judged by the collapse criterion."""
    verdict = run.verdict()
    return Replayable(name, source, step_metrics(run), verdict.collapsed, verdict.step)


def _rel(root: Path, run) -> str:
    folder = run.cell.replace("/", "__")
    path = root / "runs" / folder / f"seed{run.meta['seed']}.csv"
    return path.relative_to(ROOT.parent.parent).as_posix()


def recorded_run(name: str, source: str, record: dict[str, Any]) -> Replayable:
    """A job's stored per-step metrics ({metric: {step: value}}) as the job loop fed them."""
    n = int(record.get("num_minibatches", 1))
    by_step: dict[int, dict[str, float]] = {}
    for key, series in record["metrics"].items():
        for step, value in series.items():
            if value is not None:
                by_step.setdefault(int(step), {})[key] = float(value)
    observations = [(s, s * n, m) for s, m in sorted(by_step.items()) if s > 0]
    acc = record["metrics"].get(metric.EVAL_ACCURACY, {})
    eval_steps = sorted(int(s) for s in acc)
    entropy = [m[metric.TRAIN_ENTROPY] for _, _, m in observations if metric.TRAIN_ENTROPY in m]
    series = RunSeries(
        [s * n for s in eval_steps], [float(acc[str(s)]) for s in eval_steps], entropy, [], []
    )
    verdict = judge(series)
    return Replayable(name, source, observations, verdict.collapsed, verdict.step)


def service_runs() -> Iterator[Replayable]:
    """Rule 2: the service jobs the guard never acted on."""
    for path in sorted(SERVICE.glob("*/seed*.json")):
        record = json.loads(path.read_text())
        acted = any(e.get("action") in ("pause", "rollback") for e in record.get("events", []))
        if record.get("status") != "succeeded" or acted:
            continue
        yield recorded_run(f"service:{record['case']}@seed{record['seed']}", "service", record)


def demo_runs() -> Iterator[Replayable]:
    if DEMO.is_file():
        yield recorded_run("demo:make demo", "demo", json.loads(DEMO.read_text()))


def score(config: GuardConfig, runs: list[Replayable]) -> dict[str, Any]:
    """False alarms on the stable runs, catches and leads on the collapsing ones."""
    stable, caught, detected, per_run = 0, 0, 0, []
    alarms = 0
    for run in runs:
        guard = StabilityGuard(config)
        fired = [
            (grad, f.trigger, f.reason)
            for step, grad, m in run.observations
            for f in guard.observe(step, m)
        ]
        first = fired[0][0] if fired else None
        lead = (
            run.collapse_grad_step - first
            if first is not None and run.collapse_grad_step is not None
            else None
        )
        if not run.collapsed:
            stable += 1
            alarms += len(fired)
        else:
            detected += first is not None
            caught += lead is not None and lead > 0
        per_run.append(
            {
                "run": run.name,
                "source": run.source,
                "collapsed": run.collapsed,
                "collapse_grad_step": run.collapse_grad_step,
                "firings": len(fired),
                "first_firing_grad_step": first,
                "first_triggers": sorted({t for g, t, _ in fired if g == first}),
                "first_reason": fired[0][2] if fired else "",
                "lead_grad_steps": lead,
            }
        )
    collapsing = len(runs) - stable
    return {
        "runs": len(runs),
        "stable": stable,
        "stable_alarmed": sum(1 for r in per_run if not r["collapsed"] and r["firings"]),
        "alarms_per_stable_run": alarms / stable if stable else None,
        "collapsing": collapsing,
        "caught_before": caught,
        "alerted_at_all": detected,
        "leads": [r["lead_grad_steps"] for r in per_run if r["collapsed"]],
        "per_run": per_run,
    }


CONFIGS = {"frozen defaults": frozen_config, "demo rule": demo_rule_config}


def main() -> None:
    started = time.perf_counter()
    sets = {
        "suite runs after the fit": list(suite_runs(in_sample=False)),
        "reruns": list(rerun_runs()),
        "service jobs": list(service_runs()),
        "the demo": list(demo_runs()),
    }
    sets["all out of sample"] = [r for runs in sets.values() for r in runs]
    sets["unseen by the re-sweep"] = [r for name in UNSEEN_BY_RESWEEP for r in sets[name]]
    sets["in sample (for the record)"] = list(suite_runs(in_sample=True))
    scores = {
        label: {n: score(make(), runs) for n, runs in sets.items()}
        for label, make in CONFIGS.items()
    }
    chosen = resweep_chosen() if RESWEEP.is_file() else None
    if chosen is not None:
        resweep = resweep_config(chosen)
        scores["re-sweep"] = {
            n: score(resweep, sets[n]) for n in (*UNSEEN_BY_RESWEEP, "unseen by the re-sweep")
        }
    result: dict[str, Any] = {
        "frozen_at": FROZEN_AT,
        "frozen": FROZEN,
        "entropy_reward_window": ENTROPY_REWARD_WINDOW,
        "in_sample_listed": len(in_sample_names()),
        "machine_load": os.getloadavg()[0],
        "scores": scores,
    }
    if chosen is not None:
        result["resweep"] = {
            "rule": RESWEEP_RULE,
            "chosen": chosen,
            "adopted": resweep_adopted(scores),
        }
    result["wall_s"] = time.perf_counter() - started
    GUARD.mkdir(parents=True, exist_ok=True)
    (GUARD / "out_of_sample.json").write_text(json.dumps(result, indent=2) + "\n")
    (GUARD / "out_of_sample.md").write_text(markdown(result))
    print((GUARD / "out_of_sample.md").read_text())


def markdown(result: dict[str, Any]) -> str:
    lines = [
        "# The guard's defaults, out of sample",
        "",
        f"Written by `python -m research.guard_oos` (load average {result['machine_load']:.1f}, "
        f"{result['wall_s']:.0f} s of pure Python). Frozen: the defaults of commit "
        f"`{result['frozen_at'][:10]}`; rules in `research/guard_oos.py`. Demo rule: an entropy "
        f"breach counts only while the mean reward of the last {result['entropy_reward_window']} "
        "steps is below that of the first ones.",
        "",
        *guard_table(result),
        "",
        *_resweep_lines(result.get("resweep")),
    ]
    for label, per_set in result["scores"].items():
        lines += [f"## {label}", ""]
        for name, s in per_set.items():
            if name.startswith("in sample") or name.startswith(("all ", "unseen ")):
                continue
            flagged = [r for r in s["per_run"] if r["firings"] or r["collapsed"]]
            lines.append(f"{name}: {s['runs']} runs; those that fired or collapsed:")
            lines.append("")
            lines += [_run_line(r) for r in flagged] or ["- none"]
            lines.append("")
    return "\n".join(lines)


def _resweep_lines(resweep: dict[str, Any] | None) -> list[str]:
    if resweep is None:
        return []
    chosen = "; ".join(
        f"{t}: " + ", ".join(f"{k}={v:g}" for k, v in values.items())
        for t, values in resweep["chosen"].items()
        if values
    )
    verdict = "adopted" if resweep["adopted"] else "not adopted: the defaults stay"
    return [
        f"Re-sweep (`results/guard/resweep/`): {chosen}. Rule: {resweep['rule']}. **{verdict}**.",
        "",
    ]


def _run_line(r: dict[str, Any]) -> str:
    state = f"collapsed at {r['collapse_grad_step']}" if r["collapsed"] else "stable"
    return (
        f"- {r['run']}: {state}, {r['firings']} firings, first at "
        f"{r['first_firing_grad_step']} ({', '.join(r['first_triggers'])}: {r['first_reason']})"
    )


if __name__ == "__main__":
    main()
