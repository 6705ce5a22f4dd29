"""The stability guard on the stress suite's configurations, as service jobs.

Each case is one stress-suite cell (its library config, the same cold start, dial, lr and N) sent
as a job through the real API (`create_app` + the SDK, SQLite) and run by the worker's job loop
(`run_job`, in-process), with every guard trigger at its default threshold and the case's action.
The task is the suite's sorting task as a `dataset` job (RL pool + held-out problems, the job's
own deterministic split); the held-out eval is the suite's: `eval_prompts` problems,
`eval_samples` responses each at temperature 1, every `eval_every` gradient steps.

Rules, declared before any case ran:

- **caught** (a collapsing cell): the job stopped on a guard pause (or, with `rollback`, the guard
  fired), and at every evaluation up to that step its held-out accuracy was still ≥
  `COLLAPSE_FRACTION` × its running peak: the guard acted before the fall. (An accuracy firing's
  own evaluation is read from its event: a rollback replaces the metric rows of the steps it
  re-runs.) The counterfactual is the same job with every trigger at `alert` (a case of its
  own, same seed: same prompts and evaluation, nothing acted on) where one ran, else the cell's
  harness run at that seed (`research/results/stability/stress/runs` or `pilot/`, which shares
  config and seed but not prompt order or eval problems: an approximate date), else, where no
  trigger acted, the job's own curve (it ran unguarded in effect). Its collapse by
  `research/stability/criterion.py` dates the collapse; lead = collapse grad step − the firing's
  grad step.
- **false alarm** (a stable cell): any pause or rollback. Alerts are counted, not judged.
- **recovered** (rollback): the job ran to its last step and its own eval curve does not collapse
  by the criterion.

    python -m research.guard_service [--cases ...] [--seeds 0,1,2]   # resumable, one job at a time
    python -m research.guard_service report                           # writes service.md
"""

from __future__ import annotations

import argparse
import json
import math
import tempfile
import time
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

from keel.types import metric_names as metric
from research.stability import coldstart, stress
from research.stability.criterion import COLLAPSE_FRACTION, RunSeries, judge
from research.stability.matrix import Cell, training_config
from research.stability.results import load_runs
from research.stability.suites import STRESS

RESULTS = Path(__file__).resolve().parent / "results"
STRESS_DIR = RESULTS / "stability" / "stress"
OUT = RESULTS / "guard" / "service"


@dataclass(frozen=True)
class Case:
    name: str
    cell: str  # a stress-suite matrix cell
    action: str  # every trigger's action
    stable: bool = False  # a stable recipe's case, where any pause or rollback is a false alarm


# In priority order: the declared collapsing baseline (rule C), then the recipe at the same N,
# then rollback on the baseline, then the on-policy recipe.
CASES = (
    Case("collapse-pause", "N4/minirl-noclip", "pause"),
    Case("stable-pause", "N4/minirl+R3", "pause", stable=True),
    Case("collapse-rollback", "N4/minirl-noclip", "rollback"),
    Case("stable-pause-N1", "N1/minirl", "pause", stable=True),
    # A collapse made on purpose: on-policy reinforce at 10× rule A's stable lr
    # (pilot A's own cell). `alert` acts on nothing: it is the unguarded run of the same job.
    Case("lr-collapse-alert", "A/lr0.003/fp32/N1/reinforce", "alert"),
    Case("lr-collapse-pause", "A/lr0.003/fp32/N1/reinforce", "pause"),
    Case("lr-collapse-rollback", "A/lr0.003/fp32/N1/reinforce", "rollback"),
)
SEEDS = (0, 1, 2)


def _cell(name: str) -> Cell:
    """A matrix cell of the stress regime, or one of rule A's pilots."""
    regime = stress.Regime.load(STRESS_DIR / "regime.json")
    cells, _ = stress.matrix_cells(regime)
    return next(c for c in (*cells, *stress.pilot_a_cells()) if c.name == name)


def _cold_start() -> Path:
    """The stress suite's committed cold start, the one its runs start from."""
    [balanced] = [m for m in STRESS.task.COLD_START_MIXTURES if m.name == "balanced"]
    return coldstart.pinned_path(STRESS, balanced, STRESS.sft)


def job_config(case: Case, seed: int, model_dir: Path) -> dict[str, Any]:
    """The cell's library config as a service job, with the guard armed and the suite's eval."""
    from keel.types.guard import GuardConfig
    from keel.types.training import TrainingConfig

    cell, budget = _cell(case.cell), STRESS.full
    config = training_config(cell, budget, seed=seed, model_dir=str(model_dir))
    train, held_out = STRESS.task.rl_pool(), STRESS.task.held_out()
    items = [{"prompt": p.prompt, "answer": p.answer} for p in (*train, *held_out)]
    every = max(1, budget.eval_every // cell.num_minibatches)  # global steps between evals
    guard = GuardConfig().model_dump(mode="json")
    for trigger in guard.values():
        if isinstance(trigger, dict) and "action" in trigger:
            trigger["action"] = case.action
    return TrainingConfig.model_validate(
        config.model_dump(mode="json")
        | {
            "task": {
                "name": "dataset",
                "items": items,
                "verifier": "exact_match",
                "held_out_fraction": len(held_out) / len(items),
                "split_seed": seed,
            },
            "eval_every": every,
            "eval_size": budget.eval_prompts,
            "eval_samples": budget.eval_samples,
            "eval_temperature": 1.0,
            "checkpoint_every": every,
            "checkpoint_keep_last": 3,
            "guard": guard,
        }
    ).model_dump(mode="json")


def run_case(case: Case, seed: int) -> dict[str, Any]:
    """Create the job through the API, run it in this process's worker loop, read it back."""
    from bench.embedded import embedded_service

    model_dir = _cold_start()
    with (
        tempfile.TemporaryDirectory(prefix="keel-guard-") as home,
        embedded_service(Path(home), model_roots=(model_dir.parent,)) as service,
    ):
        sdk = service.sdk
        job = sdk.jobs.create(job_config(case, seed, model_dir))
        started = time.perf_counter()
        status = service.run(job.id).status
        wall = time.perf_counter() - started
        done = sdk.jobs.retrieve(job.id)
        events = [e.data for e in sdk.jobs.events(job.id, follow=False) if e.type == "guard"]
        watched = (
            metric.EVAL_ACCURACY,
            metric.EVAL_ACCURACY_FINAL,
            metric.GUARD_FIRED,
            metric.TRAIN_ENTROPY,
            metric.REWARD_MEAN,
            metric.MISMATCH_KL_K3,
        )
        series = {
            name: {m.step: m.value for m in sdk.metrics.list(job.id, name=name)} for name in watched
        }
    return {
        "case": case.name,
        "cell": case.cell,
        "action": case.action,
        "seed": seed,
        "status": status,
        "step": done.step,
        "steps": done.config["steps"],
        "num_minibatches": done.config["num_minibatches"],
        "guard": done.guard.model_dump(mode="json"),
        "events": events,
        "metrics": {k: {str(s): v for s, v in m.items()} for k, m in series.items()},
        "wall_s": wall,
    }


# ---------------------------------------------------------------------- judging and the report
def eval_curve(result: dict[str, Any]) -> tuple[list[int], list[float]]:
    """(grad steps, held-out accuracy): the eval logged at job step d saw the policy after d − 1
    global steps; the final eval, the policy after the last one."""
    n = result["num_minibatches"]
    points = {(int(d) - 1) * n: v for d, v in result["metrics"][metric.EVAL_ACCURACY].items()}
    for d, v in result["metrics"][metric.EVAL_ACCURACY_FINAL].items():
        points[int(d) * n] = v
    steps = sorted(points)
    return steps, [points[s] for s in steps]


@cache
def _harness_runs() -> dict[tuple[str, int], Any]:
    """The stress suite's runs and pilots by (cell, seed), read once per report."""
    runs = (*load_runs(STRESS_DIR), *load_runs(STRESS_DIR / "pilot"))
    return {(r.cell, r.meta["seed"]): r.verdict() for r in runs}


def _unguarded(cell: str, seed: int) -> tuple[Any, str] | None:
    """(collapse verdict, source) of the cell run without a guard acting: the `alert` case's
    job at that seed (same prompts, same evaluation), else the harness's run."""
    for case in CASES:
        path = OUT / case.name / f"seed{seed}.json"
        if case.cell == cell and case.action == "alert" and path.is_file():
            steps, acc = eval_curve(json.loads(path.read_text()))
            return judge(RunSeries(steps, acc, [], [], [])), "job"
    verdict = _harness_runs().get((cell, seed))
    return (verdict, "harness") if verdict is not None else None


def judge_case(result: dict[str, Any]) -> dict[str, Any]:
    n = result["num_minibatches"]
    firings = [e for e in result["events"] if "to_step" not in e]
    acting = [e for e in firings if e["action"] != "alert"]
    first = acting[0] if acting else None
    fired_grad = (first["step"] - 1) * n if first else None
    steps, acc = eval_curve(result)
    seen = dict(zip(steps, acc, strict=True))
    if first is not None and first["trigger"] == "accuracy":
        # What the guard saw: a rollback re-runs the steps it abandons and replaces their metric
        # rows, so the breaching evaluation survives only in its firing's event.
        seen[fired_grad] = first["value"]
    before = [a for s, a in sorted(seen.items()) if fired_grad is None or s <= fired_grad]
    peak, above = -math.inf, True
    for a in before:
        peak = max(peak, a)
        above = above and a >= COLLAPSE_FRACTION * peak
    own = judge(RunSeries(steps, acc, [], [], []))
    verdict, source = _unguarded(result["cell"], result["seed"]) or (None, None)
    if verdict is None and not acting:  # nothing acted: the job itself ran unguarded
        verdict, source = own, "own"
    lead = (
        verdict.step - fired_grad
        if verdict is not None and verdict.step is not None and fired_grad is not None
        else None
    )
    return {
        "fired_grad_step": fired_grad,
        "trigger": first["trigger"] if first else None,
        "caught": first is not None and above,
        "alerts": sum(e["action"] == "alert" for e in firings),
        "acting": len(acting),
        "unguarded_collapse_grad_step": verdict.step if verdict else None,
        "unguarded_collapsed": verdict.collapsed if verdict else None,
        "unguarded_source": source,
        "lead_grad_steps": lead,
        "own_collapse_grad_step": own.step if own.collapsed else None,
        "recovered": result["status"] == "succeeded" and not own.collapsed,
        "final_acc": acc[-1] if acc else math.nan,
        "peak_acc": max(acc) if acc else math.nan,
    }


def report() -> str:
    lines = [
        "# The guard in service jobs on the stress suite",
        "",
        "Written by `python -m research.guard_service report` from "
        "`research/results/guard/service/*/seed*.json`; rules in "
        "`research/guard_service.py`.",
        "",
        "| case | cell | action | seed | status | step | first acting trigger (grad step) "
        "| acc ≥ ½ peak until then | unguarded run's collapse (grad step) | lead "
        "| the job's own eval collapses (grad step) | alerts | final / peak acc | wall |",
        "|" + "---|" * 14,
    ]
    judged: dict[str, list[dict[str, Any]]] = {}
    for case in CASES:
        for path in sorted((OUT / case.name).glob("seed*.json")):
            r = json.loads(path.read_text())
            j = judge_case(r)
            fired = f"{j['trigger']} ({j['fired_grad_step']})" if j["trigger"] else "none"
            collapse = (
                "no run"
                if j["unguarded_collapsed"] is None
                else "no collapse"
                if not j["unguarded_collapsed"]
                else str(j["unguarded_collapse_grad_step"])
            )
            collapse += f" ({j['unguarded_source']})" if j["unguarded_source"] else ""
            judged.setdefault(case.name, []).append(j)
            lines.append(
                f"| {case.name} | `{case.cell}` | {case.action} | {r['seed']} | {r['status']} | "
                f"{r['step']}/{r['steps']} | {fired} | {j['caught'] if j['trigger'] else '–'} | "
                f"{collapse} | {j['lead_grad_steps'] if j['lead_grad_steps'] is not None else '–'}"
                f" | {_step_or_no(j['own_collapse_grad_step'])} | {j['alerts']} | "
                f"{j['final_acc']:.3f} / {j['peak_acc']:.3f} | "
                f"{r['wall_s'] / 60:.1f} min |"
            )
    return "\n".join([*lines, "", *_summary(judged)]) + "\n"


def _summary(judged: dict[str, list[dict[str, Any]]]) -> list[str]:
    """Per case, the rule's counts: caught (of the seeds whose unguarded run collapsed), false
    alarms (stable cases: seeds with a pause or rollback), recovered (rollback cases)."""
    lines = [
        "| case | seeds | unguarded collapsed | caught before the fall | false alarms "
        "(pause or rollback, stable cases) | alerts | recovered |",
        "|" + "---|" * 7,
    ]
    for case in CASES:
        js = judged.get(case.name, [])
        if not js:
            continue
        collapsed = [j for j in js if j["unguarded_collapsed"]]
        recovered = (
            f"{sum(j['recovered'] for j in js)} of {len(js)}" if case.action == "rollback" else "–"
        )
        acts = case.action != "alert"  # an alert-only case is the counterfactual itself
        caught = f"{sum(j['caught'] for j in collapsed)} of {len(collapsed)}" if acts else "–"
        alarms = f"{sum(j['acting'] > 0 for j in js)} of {len(js)}" if case.stable else "–"
        lines.append(
            f"| {case.name} | {len(js)} | {len(collapsed)} | {caught} | {alarms} | "
            f"{sum(j['alerts'] for j in js)} | {recovered} |"
        )
    return lines


def _step_or_no(step: int | None) -> str:
    return "no" if step is None else str(step)


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m research.guard_service")
    parser.add_argument("command", nargs="?", choices=("run", "report"), default="run")
    parser.add_argument("--cases", type=lambda s: s.split(","), default=[c.name for c in CASES])
    parser.add_argument(
        "--seeds", type=lambda s: [int(x) for x in s.split(",")], default=list(SEEDS)
    )
    parser.add_argument("--out", type=Path, default=OUT, help="where run writes the results")
    args = parser.parse_args()
    if args.command == "report":
        (OUT.parent / "service.md").write_text(report())
        return
    import torch

    torch.set_num_threads(1)  # as the harness's runs: one core per job
    for case in (c for c in CASES if c.name in args.cases):
        for seed in args.seeds:
            path = args.out / case.name / f"seed{seed}.json"
            if path.is_file():
                continue
            print(f"[{time.strftime('%H:%M:%S')}] {case.name} seed {seed}", flush=True)
            result = run_case(case, seed)
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(json.dumps(result, indent=2))
            print(
                f"  {result['status']} at step {result['step']}, {result['wall_s'] / 60:.1f} min",
                flush=True,
            )


if __name__ == "__main__":
    main()
