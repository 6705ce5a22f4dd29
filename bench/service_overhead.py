"""Service overhead: what the service and Routing Replay add to a job's time.

Both parts run one small job on the built-in `tiny-moe` model (`WORK`: 8 prompts × 8 responses of
≤ 32 tokens, 2 mini-batches, the addition task with its built-in verifier, no eval, a checkpoint
every `CHECKPOINT_EVERY` steps and at the end), `--steps` global steps, all in this process with
`--threads` torch threads. Each part alternates its two sides A, B, A, B, … (`--repeats` pairs)
so that load from other work on the machine falls on both alike, after one unrecorded 1-step run
of each side (imports, lazy initialisation and the device profile are paid there, not in the
first pair).

- **overhead** (target: the service path ≤ 2 % more wall time). A: `keel_worker.training.run.train`
  on the `TrainingConfig`, its wall time from the call until its last step is yielded: model build,
  every step, the checkpoint writes. B: the identical config as a job through the embedded service
  (`bench.embedded`: the real API app on a fresh SQLite database, the SDK, the worker's job loop
  `run_job` in this process, as `research/guard_service.py` runs jobs), its wall time from the SDK's
  `jobs.create` until `run_job` returns with the job's end state written: the POST, the lease, the
  same model build, steps and checkpoint writes, plus what the service adds (rollouts, rewards,
  metrics and progress in the database, heartbeats, the checkpoints' registration, the runtime
  report). Outside both clocks: the database migration and the API's start-up; no Celery worker
  picks the job from the broker (`keel up`'s worker polls it every 0.01 s).
- **replay** (target: R3 ≤ 5 % more step time). `train` with `routing_replay` `none` (A) vs `R3`
  (B) on the same work; step time is the trainer's `time/step_s` (generation, scoring, π_old
  recompute, the updates, the weight sync), the median over a run's steps after its first.

Every run also records its process CPU seconds (`cpu_s`: all of this process's threads, the API's
included), which other load on the machine disturbs less than wall time, and each step's time,
reward, mean response length and replay mode (the sides of `overhead` sample the same responses).

Results: `bench/results/service_overhead.json` and `.md`, rewritten after every finished run (an
interrupted run keeps what it measured); running one part keeps the other part's results.

    .venv/bin/python -m bench.service_overhead                          # both parts, 3 pairs each
    .venv/bin/python -m bench.service_overhead --part overhead --repeats 5 --steps 30
    .venv/bin/python -m bench.service_overhead --part replay --steps 10
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from bench.machine import describe_machine, load_averages
from keel.types import metric_names as metric

RESULTS = Path(__file__).resolve().parent / "results"
NAME = "service_overhead"
CHECKPOINT_EVERY = 5
TARGETS = {"overhead": 0.02, "replay": 0.05}  # the largest extra time B may take over A
WORK: dict[str, Any] = {
    "model": {"name": "tiny-moe"},
    "prompts_per_step": 8,
    "group_size": 8,
    "num_minibatches": 2,
    "micro_batch_size": 16,
    "rollout": {"max_new_tokens": 32},
    "eval_every": 0,
    "routing_replay": "none",
    "checkpoint_every": CHECKPOINT_EVERY,
    "seed": 0,
}
PER_STEP = {  # what each side records per step, from the trainer's metrics
    "step_s": metric.TIME_STEP,
    "generate_s": metric.TIME_GENERATE,
    "reward_mean": metric.REWARD_MEAN,
    "length_mean": metric.RESPONSE_LENGTH_MEAN,
    "replay_mode": metric.ROUTING_REPLAY_MODE,  # 0 none, 2 R2, 3 R3: the mode each step ran with
}


def training_config(work: dict[str, Any], steps: int, **overrides: Any):
    from keel.types.training import TrainingConfig

    return TrainingConfig.model_validate({**work, "steps": steps, **overrides})


# ---------------------------------------------------------------------- the sides
def run_train(config) -> dict[str, Any]:
    """`train()` in-process: wall time of the whole call, per-step metrics, checkpoints."""
    from keel_worker.training.run import train

    with tempfile.TemporaryDirectory(prefix="keel-overhead-train-") as workdir:
        started, cpu = time.perf_counter(), time.process_time()
        results = list(
            train(config, workdir=Path(workdir), resume=False, cache_dir=Path(workdir) / "models")
        )
        wall, cpu = time.perf_counter() - started, time.process_time() - cpu
    by_step = {r.step: r.metrics for r in results}
    series = {key: {s: m.get(name) for s, m in by_step.items()} for key, name in PER_STEP.items()}
    return {
        "wall_s": wall,
        "cpu_s": cpu,
        "status": "succeeded" if results and results[-1].step == config.steps else "incomplete",
        "steps_done": results[-1].step if results else 0,
        "checkpoint_steps": [r.step for r in results if r.checkpoint is not None],
        **_per_step(series),
    }


def run_service(config) -> dict[str, Any]:
    """The same config as a job through the embedded service: wall time from `jobs.create` until
    `run_job` has written the end state; then the job, its metrics and checkpoints read back."""
    from bench.embedded import embedded_service
    from keel.types.training import TrainingConfig

    with (
        tempfile.TemporaryDirectory(prefix="keel-overhead-service-") as home,
        embedded_service(Path(home)) as service,
    ):
        sdk = service.sdk
        started, cpu = time.perf_counter(), time.process_time()
        job = sdk.jobs.create(config.model_dump(mode="json"))
        outcome = service.run(job.id)
        wall, cpu = time.perf_counter() - started, time.process_time() - cpu
        done = sdk.jobs.retrieve(job.id)
        points = sdk.metrics.list(job.id, name=list(PER_STEP.values()))
        checkpoints = sdk.checkpoints.list(job.id).data
    series: dict[str, dict[int, float | None]] = {key: {} for key in PER_STEP}
    names = {name: key for key, name in PER_STEP.items()}
    for p in points:
        series[names[p.name]][p.step] = p.value
    return {
        "wall_s": wall,
        "cpu_s": cpu,
        "status": done.status,
        "run_outcome": outcome.status,
        "steps_done": done.step,
        "checkpoint_steps": sorted(c.step for c in checkpoints),
        "config_identical": TrainingConfig.model_validate(done.config) == config,
        **_per_step(series),
    }


def run_replay(mode: str) -> Callable[[Any], dict[str, Any]]:
    """`train()` with `routing_replay` = `mode`, otherwise the config it is given."""

    def side(config) -> dict[str, Any]:
        result = run_train(config.model_copy(update={"routing_replay": mode}))
        result["routing_replay"] = mode
        result["median_step_s"] = _median_step(result["step_s"])
        return result

    return side


def _per_step(series: dict[str, dict[int, float | None]]) -> dict[str, list[float | None]]:
    return {key: [values[s] for s in sorted(values)] for key, values in series.items()}


def _median_step(step_s: list[float]) -> float:
    """A run's median step time after its first step (that one also warms the new model)."""
    return statistics.median(step_s[1:] or step_s)


# ---------------------------------------------------------------------- the parts
PARTS: dict[str, dict[str, Any]] = {
    "overhead": {
        "sides": {"train": run_train, "service": run_service},
        "measure": "wall_s",
        "what": "wall time of the whole job: train() call vs service jobs.create → end state",
    },
    "replay": {
        "sides": {"none": run_replay("none"), "R3": run_replay("R3")},
        "measure": "median_step_s",
        "what": "median time/step_s after each run's first step: routing_replay none vs R3",
    },
}


def measure(
    part: str,
    *,
    repeats: int,
    steps: int,
    out: Path,
    work: dict[str, Any] = WORK,
    warmup: bool = True,
) -> dict[str, Any]:
    """Run `repeats` A/B pairs of `part`, saving the results after every finished run."""
    spec = PARTS[part]
    (a, run_a), (b, run_b) = spec["sides"].items()
    config = training_config(work, steps)
    record: dict[str, Any] = {
        "what": spec["what"],
        "sides": [a, b],
        "measure": spec["measure"],
        "target_extra": TARGETS[part],
        "steps": steps,
        "config": config.model_dump(mode="json"),
        "warmup": "one unrecorded 1-step run of each side" if warmup else "none",
        "load_before": load_averages(),
        "runs": [],
    }
    if warmup:
        for run in (run_a, run_b):
            run(training_config(work, 1))
    for pair in range(repeats):
        for side, run in ((a, run_a), (b, run_b)):
            gc.collect()
            load = load_averages()
            print(
                f"[{time.strftime('%H:%M:%S')}] {part} pair {pair + 1}/{repeats}: {side}",
                flush=True,
            )
            result = run(config)
            record["runs"].append(
                {
                    "pair": pair,
                    "side": side,
                    "load_before": load,
                    "load_after": load_averages(),
                    **result,
                }
            )
            record["load_after"] = load_averages()
            record["summary"] = summarize(record)
            _save(out, part, record)
            print(
                f"  {spec['measure']} {result[spec['measure']]:.2f} s, "
                f"cpu {result['cpu_s']:.2f} s, {result['status']}",
                flush=True,
            )
    return record


def summarize(record: dict[str, Any]) -> dict[str, Any]:
    """Medians of the measure per side, their ratio B / A, the ratio within each complete pair,
    and the same ratio of the runs' process CPU seconds (less sensitive to other load)."""
    a, b = record["sides"]

    def per_side(key: str) -> dict[str, list[float]]:
        return {side: [r[key] for r in record["runs"] if r["side"] == side] for side in (a, b)}

    values, cpu = per_side(record["measure"]), per_side("cpu_s")
    pairs = list(zip(values[a], values[b], strict=False))
    out: dict[str, Any] = {f"median_{s}": statistics.median(v) for s, v in values.items() if v}
    out["pair_ratios"] = [y / x for x, y in pairs]
    if pairs:
        ratio = out[f"median_{b}"] / out[f"median_{a}"]
        out |= {
            "ratio": ratio,
            "extra": ratio - 1,
            "median_pair_ratio": statistics.median(out["pair_ratios"]),
            "target_met": ratio - 1 <= record["target_extra"],
            "cpu_ratio": statistics.median(cpu[b]) / statistics.median(cpu[a]),
        }
    return out


# ---------------------------------------------------------------------- results files


def _save(out: Path, part: str, record: dict[str, Any]) -> None:
    """Write `part` into the results files, keeping the other part's results."""
    path = out / f"{NAME}.json"
    results = json.loads(path.read_text()) if path.is_file() else {}
    import torch

    results["machine"] = describe_machine(torch_threads=torch.get_num_threads(), nice=os.nice(0))
    results[part] = record
    out.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(results, indent=2) + "\n")
    (out / f"{NAME}.md").write_text(report(results))


def report(results: dict[str, Any]) -> str:
    m = results["machine"]
    lines = [
        "# Service overhead",
        "",
        "Written by `python -m bench.service_overhead`; what each side's clock includes is "
        "in its docstring.",
        "",
        f"Machine: {m['cpu']}, {m['cores']} cores ({m['arch']}); torch threads "
        f"{m['torch_threads']}, nice {m['nice']}. Load averages: 1/5/15 min.",
        "",
    ]
    for part in (p for p in PARTS if p in results):
        lines += _part_lines(part, results[part])
    return "\n".join(lines) + "\n"


def _part_lines(part: str, record: dict[str, Any]) -> list[str]:
    a, b = record["sides"]
    s, key = record["summary"], record["measure"]
    c = record["config"]
    lines = [
        f"## {part}: {record['what']}",
        "",
        f"`{c['model']['name']}`, {record['steps']} steps of {c['prompts_per_step']} prompts "
        f"× {c['group_size']} responses (≤ {c['rollout']['max_new_tokens']} tokens), "
        f"{c['num_minibatches']} mini-batches, checkpoint every {c['checkpoint_every']}; "
        f"warm-up: {record['warmup']}. Load {record['load_before']} before, "
        f"{record.get('load_after')} after.",
        "",
        f"Measure: `{key}`.",
        "",
        "| pair | side | status | steps | wall_s | Σ step_s | median step_s after the first "
        "| cpu_s | 1-min load before → after |",
        "|---|---|---|---:|---:|---:|---:|---:|---|",
    ]
    for r in record["runs"]:
        lines.append(
            f"| {r['pair'] + 1} | {r['side']} | {r['status']} | {r['steps_done']} | "
            f"{r['wall_s']:.2f} | {sum(r['step_s']):.2f} | {_median_step(r['step_s']):.2f} | "
            f"{r['cpu_s']:.2f} | {r['load_before'][0]} → {r['load_after'][0]} |"
        )
    lines.append("")
    if "ratio" in s:
        verdict = "met" if s["target_met"] else "not met"
        lines += [
            f"Median {a}: {s[f'median_{a}']:.2f} s; median {b}: {s[f'median_{b}']:.2f} s; "
            f"ratio {b} / {a}: **{s['ratio']:.3f}** ({s['extra']:+.1%}; target ≤ "
            f"{record['target_extra']:+.0%}: {verdict}). Per-pair ratios: "
            f"{', '.join(f'{x:.3f}' for x in s['pair_ratios'])} (median "
            f"{s['median_pair_ratio']:.3f}); process CPU seconds, {b} / {a}: "
            f"{s['cpu_ratio']:.3f}.",
            "",
        ]
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(
        prog="python -m bench.service_overhead", description=__doc__.splitlines()[0]
    )
    parser.add_argument("--part", choices=(*PARTS, "all"), default="all")
    parser.add_argument("--repeats", type=int, default=3, help="A/B pairs per part")
    parser.add_argument("--steps", type=int, default=20, help="global steps per run")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (default: 1)")
    parser.add_argument("--out", type=Path, default=RESULTS, help="where the results go")
    args = parser.parse_args()
    import torch

    torch.set_num_threads(args.threads)
    for part in PARTS if args.part == "all" else (args.part,):
        record = measure(part, repeats=args.repeats, steps=args.steps, out=args.out)
        print(part, json.dumps(record.get("summary")), flush=True)


if __name__ == "__main__":
    main()
