"""Run `train()` on k gloo ranks in spawned processes, for the data-parallel tests.

A module of its own (not conftest.py): `torch.multiprocessing` pickles the rank function by its
module's name, and the spawned processes import it from `tests/` on the path they inherit.
Each rank joins the group through a file rendezvous in the test's tmp dir, trains with one thread,
and rank 0 writes what it yielded to `results.json`.
"""

from __future__ import annotations

import json
import os
from datetime import timedelta
from pathlib import Path

import torch
import torch.distributed as dist
import torch.multiprocessing as mp


def tiny_config(**overrides):
    """2 prompts × 4 responses of ≤ 8 tokens in 2 mini-batches of micro-batches of 2 (so each
    rank has micro-batches to run, π_old is recomputed and R3 replays)."""
    from job_configs import merge_config, tiny_job_config

    from keel.types.training import TrainingConfig

    step = {
        "group_size": 4,
        "num_minibatches": 2,
        "micro_batch_size": 2,
        "rollout": {"max_new_tokens": 8},
    }
    return TrainingConfig.model_validate(merge_config(tiny_job_config(**step), overrides))


def parity_reward(rollouts):
    """Varied rewards on an untrained model: 1.0 when the completion's byte sum is even."""
    return [float(sum(r.completion.encode()) % 2 == 0) for r in rollouts]


def _rank(
    rank: int,
    world_size: int,
    rendezvous: str,
    config_json: str,
    workdir: str,
    timeout_s: float,
    resume: bool,
) -> None:
    from keel.types.training import TrainingConfig
    from keel_worker.distributed import group
    from keel_worker.training.run import train

    torch.set_num_threads(1)
    dist.init_process_group(
        "gloo",
        init_method=f"file://{rendezvous}",
        rank=rank,
        world_size=world_size,
        timeout=timedelta(seconds=timeout_s),
    )
    try:
        config = TrainingConfig.model_validate_json(config_json)
        results = [
            {"step": r.step, "metrics": r.metrics}
            for r in train(
                config,
                workdir=Path(workdir),
                reward_fn=parity_reward,
                resume=resume,
                cache_dir=Path(workdir) / "cache",
            )
        ]
        if rank == 0:
            (Path(workdir) / "results.json").write_text(json.dumps(results))
    finally:
        group.shutdown()


def train_on_ranks(
    config, workdir: Path, *, world_size: int = 2, timeout_s: float = 60.0, resume: bool = False
) -> list[dict]:
    """Run `train(config)` on `world_size` gloo ranks; rank 0's step results."""
    workdir.mkdir(parents=True, exist_ok=True)
    rendezvous = workdir / "rendezvous"
    rendezvous.unlink(missing_ok=True)
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    mp.start_processes(
        _rank,
        args=(
            world_size,
            str(rendezvous),
            config.model_dump_json(),
            str(workdir),
            timeout_s,
            resume,
        ),
        nprocs=world_size,
        start_method="spawn",
    )
    return json.loads((workdir / "results.json").read_text())


def _rank_that_may_die(
    rank: int, world_size: int, rendezvous: str, config_json: str, workdir: str, timeout_s: float
) -> None:
    """Rank 1 SIGKILLs itself at its first update (mid-step, after the rollouts and π_old);
    rank 0 writes how it ended to `rank0.json`."""
    import signal
    import time

    from keel_worker.training.step import Trainer

    if rank == 1:

        def die(*_args, **_kwargs):
            os.kill(os.getpid(), signal.SIGKILL)

        Trainer._update = die
    started = time.monotonic()
    try:
        _rank(rank, world_size, rendezvous, config_json, workdir, timeout_s, False)
        outcome = {"error": None}
    except BaseException as exc:
        outcome = {"error": f"{type(exc).__name__}: {exc}"}
        raise
    finally:
        if rank == 0:
            outcome["ended_at"] = time.time()
            outcome["ran_s"] = time.monotonic() - started
            (Path(workdir) / "rank0.json").write_text(json.dumps(outcome))


def kill_one_rank(config, workdir: Path, *, timeout_s: float, wait_s: float) -> dict:
    """Start 2 ranks, rank 1 SIGKILLs itself mid-step; how rank 0 ended (`rank0.json`) with
    `dead_at` (when the parent saw rank 1 gone) and `exitcode`."""
    import time

    workdir.mkdir(parents=True, exist_ok=True)
    rendezvous = workdir / "rendezvous"
    rendezvous.unlink(missing_ok=True)
    ctx = mp.get_context("spawn")
    args = (2, str(rendezvous), config.model_dump_json(), str(workdir), timeout_s)
    procs = [ctx.Process(target=_rank_that_may_die, args=(r, *args)) for r in range(2)]
    for p in procs:
        p.start()
    procs[1].join(wait_s)
    dead_at = time.time()
    procs[0].join(wait_s)
    for p in procs:
        if p.is_alive():  # a hang: end it, the test fails on exitcode None
            p.kill()
            p.join()
    outcome = json.loads((workdir / "rank0.json").read_text())
    return {**outcome, "dead_at": dead_at, "exitcode": procs[0].exitcode}
