"""Data-parallel training on k gloo ranks (FSDP2) against one process, on this CPU.

Two measurements, each in fresh spawned processes:

- `memory`: per-rank bytes of the parameters and the AdamW state after one step, summed over the
  tensors' LOCAL shards (`DTensor.to_local()`; whole tensors in a single process), for k = 1, 2
  (about 1/k is expected; the rank-0 rollout engine's copy is outside this count and reported
  apart, as is the process's peak RSS).
- `time`: step time of 2 ranks × 1 thread against 1 process × 2 threads on the same work
  (`--model`, default SmolLM2-135M-Instruct: 2 prompts × 4 samples, ≤ 16 new tokens, 2
  mini-batches of micro-batches of 2), median over the steps after a warm-up one, with the
  generation / training split. Rank 0 samples every rollout (distributed.rank_zero), so the
  generation phase is not parallel; the update is.

The machine is shared (2 cores, other jobs running): the results file records the CPU and the
`uptime` load around each measurement, and the numbers are this machine's, not a scaling claim.

    .venv/bin/python bench/distributed_step.py            # both, SmolLM2-135M
    .venv/bin/python bench/distributed_step.py --model tiny-dense --steps 4
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import sys
import tempfile
import time
from datetime import timedelta
from pathlib import Path

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from machine import describe_machine, uptime  # a sibling (this script's folder is on sys.path)

RESULTS = Path(__file__).resolve().parent / "results"
RESULT_FILE = RESULTS / "distributed_step.json"
SMOLLM2 = "smollm2-135m-instruct"


def _config(model: str, steps: int):
    from keel.types.training import TrainingConfig

    return TrainingConfig(
        model={"name": model},
        prompts_per_step=2,
        group_size=4,
        num_minibatches=2,
        micro_batch_size=2,
        rollout={"max_new_tokens": 16, "temperature": 1.0},
        optimizer={"lr": 1e-5, "grad_clip": 1.0},
        steps=steps,
        eval_every=0,
        seed=0,
    )


def _local_bytes(tensor: torch.Tensor) -> int:
    from torch.distributed.tensor import DTensor

    local = tensor.to_local() if isinstance(tensor, DTensor) else tensor
    return local.numel() * local.element_size()


def _state_bytes(model: torch.nn.Module, optimizer: torch.optim.Optimizer) -> dict[str, int]:
    params = sum(_local_bytes(p) for p in model.parameters())
    optim = sum(
        _local_bytes(v)
        for state in optimizer.state.values()
        for v in state.values()
        if isinstance(v, torch.Tensor) and v.dim() > 0
    )
    return {"param_bytes": params, "optimizer_bytes": optim, "total_bytes": params + optim}


def _rank(rank, world, rendezvous, model, steps, threads, cache_dir, out_file) -> None:
    from keel.types import metric_names as metric
    from keel_worker.distributed import group
    from keel_worker.training.schedule import step_seed
    from keel_worker.training.scoring import task_scorer
    from keel_worker.training.session import TrainingSession
    from keel_worker.training.tasks import PromptStream, build_task

    torch.set_num_threads(threads)
    if world > 1:
        dist.init_process_group(
            "gloo",
            init_method=f"file://{rendezvous}",
            rank=rank,
            world_size=world,
            timeout=timedelta(seconds=600),
        )
    config = _config(model, steps)
    with tempfile.TemporaryDirectory() as workdir:
        run = TrainingSession.open(
            config, workdir=Path(workdir), cache_dir=Path(cache_dir), resume=False
        )
        task = build_task(config.task)
        stream, score = PromptStream(task.train_items, seed=config.seed), task_scorer(task)
        steps_out = []
        for step in range(steps):
            items = stream.take(config.prompts_per_step)
            t0 = time.perf_counter()
            metrics = run.trainer.step(items, score, seed=step_seed(config.seed, step))
            wall = time.perf_counter() - t0
            steps_out.append(
                {
                    "wall_s": wall,
                    "generate_s": metrics[metric.TIME_GENERATE],
                    "train_s": metrics[metric.TIME_RECOMPUTE] + metrics[metric.TIME_UPDATE],
                    "sync_s": metrics[metric.TIME_SYNC],
                }
            )
        mine = {
            "rank": rank,
            **_state_bytes(run.model, run.trainer.optimizer),
            "peak_rss_bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
            "steps": steps_out,
        }
        engine = getattr(run.engine, "engine", run.engine)
        if engine is not None:
            mine["engine_copy_bytes"] = sum(_local_bytes(p) for p in engine.model.parameters())
    every = [mine]
    if world > 1:
        every = [None] * world
        dist.all_gather_object(every, mine)
        group.shutdown()
    if rank == 0:
        Path(out_file).write_text(json.dumps(every))


def measure(model: str, *, world: int, threads: int, steps: int, cache_dir: Path) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        out_file = Path(tmp) / "ranks.json"
        load_before = uptime()
        mp.start_processes(
            _rank,
            args=(world, str(Path(tmp) / "rdzv"), model, steps, threads, str(cache_dir), out_file),
            nprocs=world,
            start_method="spawn",
        )
        ranks = json.loads(out_file.read_text())
    walls = [s["wall_s"] for s in ranks[0]["steps"][1:]] or [ranks[0]["steps"][0]["wall_s"]]
    return {
        "ranks": world,
        "threads_per_rank": threads,
        "uptime_before": load_before,
        "uptime_after": uptime(),
        "median_step_s": statistics.median(walls),
        "median_generate_s": statistics.median(s["generate_s"] for s in ranks[0]["steps"][1:])
        if steps > 1
        else None,
        "median_train_s": statistics.median(s["train_s"] for s in ranks[0]["steps"][1:])
        if steps > 1
        else None,
        "per_rank": ranks,
    }


def render_markdown(result: dict) -> str:
    """The results file as the benchmarks page shows it."""
    mem, runs = result["memory"], result["runs"]
    mib = 1024 * 1024
    lines = [
        f"# Data-parallel step (FSDP2, gloo), {result['model']}",
        "",
        f"{result['work']}; CPU {result['machine']['cpu']}, {result['machine']['cores']} cores "
        f"(shared: the load averages are in `distributed_step.json`).",
        "",
        "| ranks × threads | params + AdamW state per rank | median step | generate | train |",
        "|---|---|---|---|---|",
    ]
    for run in runs:
        per_rank = ", ".join(f"{r['total_bytes'] / mib:.1f} MiB" for r in run["per_rank"])
        gen, train = run.get("median_generate_s"), run.get("median_train_s")
        lines.append(
            f"| {run['ranks']} × {run['threads_per_rank']} | {per_rank} | "
            f"{run['median_step_s']:.2f} s | "
            f"{'—' if gen is None else f'{gen:.2f} s'} | "
            f"{'—' if train is None else f'{train:.2f} s'} |"
        )
    ratios = ", ".join(f"{x:.3f}" for x in mem["k2_over_k1"])
    lines += [
        "",
        f"Per-rank parameter + optimizer bytes on 2 ranks over 1 process: {ratios} (1/k = 0.5 "
        "expected; measured from the tensors' local shards). Rank 0 also holds the rollout "
        "engine's full copy, which this count leaves out. Rank 0 samples every rollout, so "
        "generation is not parallel; only the update is split. On this shared, oversubscribed "
        "machine one process on two threads is far slower than on one (the 1 × 1 control): "
        "the time comparison says more about the load than about data parallelism.",
        "",
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--model", default=SMOLLM2)
    parser.add_argument("--steps", type=int, default=3, help="steps per run; the first warms up")
    parser.add_argument("--cache-dir", type=Path, default=Path.home() / ".cache/keel/models")
    parser.add_argument("--render", action="store_true", help="only rewrite the .md from .json")
    args = parser.parse_args(argv)
    if args.render:
        result = json.loads(RESULT_FILE.read_text())
        RESULT_FILE.with_suffix(".md").write_text(render_markdown(result))
        return
    one = measure(args.model, world=1, threads=2, steps=args.steps, cache_dir=args.cache_dir)
    two = measure(args.model, world=2, threads=1, steps=args.steps, cache_dir=args.cache_dir)
    # A control: one process on one thread. On a loaded 2-core machine two OpenMP threads can be
    # far slower than one (each waits for the other's slice), which 1 × 2 alone would hide.
    single = measure(args.model, world=1, threads=1, steps=args.steps, cache_dir=args.cache_dir)
    per_rank_1 = one["per_rank"][0]["total_bytes"]
    result = {
        "benchmark": "distributed_step",
        "command": "python bench/distributed_step.py " + " ".join(argv or sys.argv[1:]),
        "machine": describe_machine(torch=torch.__version__, backend="gloo"),
        "shared_machine": "yes: 2 cores shared with other jobs; see the uptime loads",
        "model": args.model,
        "work": "2 prompts x 4 samples, <=16 new tokens, 2 mini-batches, micro-batch 2, fp32",
        "memory": {
            "k1_bytes_per_rank": per_rank_1,
            "k2_bytes_per_rank": [r["total_bytes"] for r in two["per_rank"]],
            "k2_over_k1": [r["total_bytes"] / per_rank_1 for r in two["per_rank"]],
        },
        "time": {
            "1_process_x_2_threads_step_s": one["median_step_s"],
            "2_ranks_x_1_thread_step_s": two["median_step_s"],
            "1_process_x_1_thread_step_s": single["median_step_s"],
        },
        "runs": [one, two, single],
    }
    RESULTS.mkdir(exist_ok=True)
    RESULT_FILE.write_text(json.dumps(result, indent=2) + "\n")
    RESULT_FILE.with_suffix(".md").write_text(render_markdown(result))
    print(json.dumps({k: result[k] for k in ("memory", "time")}, indent=2))


if __name__ == "__main__":
    main()
