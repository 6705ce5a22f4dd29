"""A rank group's check of itself: every rank all-reduces a tensor of ones each step and checks
the sum is the world size, under the job's control when it runs for a job (rank 0 records each
step as the job's progress, pause and cancel stop every rank at a step boundary).

It exercises what a training job's group needs from the launcher (the rendezvous of every machine,
the process group, the lease, the stop decisions, the progress marks, the outcome) without a
model, so an operator can check that machines reach each other (docs/how-to/distributed.md,
"Several machines") and the tests can kill, stall and cancel ranks cheaply. `stall_rank` hangs that
rank in the second step without marking progress: what a wedged collective looks like from
outside.
"""

from __future__ import annotations

import logging
import os
import time
from datetime import timedelta

import torch
import torch.distributed as dist

from keel_server.db import session_scope
from keel_server.db.jobs import record_progress
from keel_server.platform.settings import Settings
from keel_worker.jobrunner import group_progress
from keel_worker.jobrunner.control import StopRun

log = logging.getLogger(__name__)
END_OF_STOP = {"pause": "paused", "cancel": "cancelled"}


def run_probe(
    settings: Settings,
    *,
    job_id: str | None,
    owner: str | None,
    steps: int,
    step_s: float,
    stall_rank: int | None,
) -> None:
    from keel_worker.jobrunner.rank import RankControl, agree_on_stop
    from keel_worker.jobrunner.runner import session_factory

    # The stall watch, not this timeout, is what stops a wedged probe (the tests rely on it).
    dist.init_process_group("gloo", timeout=timedelta(seconds=2 * settings.group_stall_timeout_s))
    rank, world = dist.get_rank(), dist.get_world_size()
    factory = session_factory(settings) if job_id and rank == 0 else None
    control = None
    if factory is not None:
        control = RankControl(
            factory,
            job_id,
            owner,
            interval_s=settings.heartbeat_interval_s,
            db_wait_s=settings.db_recovery_wait_s,
        )
        control.__enter__()
    status, done = "succeeded", 0
    try:
        for step in range(steps):
            reason = agree_on_stop(control.stop_reason() if control else None)
            if reason == "lost":
                raise StopRun("lost")
            if reason is not None:
                status = END_OF_STOP[reason]
                break
            if rank == stall_rank and step == 1:
                log.warning("probe: rank %d stalls on purpose", rank)
                while True:
                    time.sleep(3600)
            ones = torch.ones(1)
            dist.all_reduce(ones)
            if int(ones.item()) != world:
                raise RuntimeError(f"all_reduce gave {ones.item()}, not the world size {world}")
            group_progress.mark()
            done = step + 1
            if factory is not None:
                with session_scope(factory) as session:
                    record_progress(session, job_id, owner, step=done, policy_version=0)
            time.sleep(step_s)
        log.info("probe: rank %d of %d ran %d steps: %s", rank, world, done, status)
        if int(os.environ.get("LOCAL_RANK", "0")) == 0:  # every machine's lease holder reads it
            group_progress.write_outcome(status, done)
    finally:
        if control is not None:
            control.__exit__(None, None, None)
        dist.destroy_process_group()
