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
        dist.destroy_process_group()


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
        args=(world_size, str(rendezvous), config.model_dump_json(), str(workdir), timeout_s, resume),
        nprocs=world_size,
        start_method="spawn",
    )
    return json.loads((workdir / "results.json").read_text())
