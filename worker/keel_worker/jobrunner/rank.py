"""The program each rank of a job's group runs, started by `jobrunner.group_agent`:
`python -m keel_worker.jobrunner.rank <job id> --owner <lease owner>`.

torchrun's environment (`RANK`, `WORLD_SIZE`, `MASTER_ADDR`, ...) places it in the group; the
worker's settings arrive as `KEEL_*` variables (`jobrunner.group.settings_env`). Rank 0 does the
job loop's database work (prompts, rollouts, metrics, checkpoints, events) under the worker's lease
owner id; the others follow it. Stop decisions (pause, cancel, a lost lease) are rank 0's, taken
at step boundaries and broadcast (`agree_on_stop`), so every rank leaves the same step. A rank
dies with its launcher agent (`lifeline`) and marks its progress for the worker's stall watch
(`jobrunner.group_progress`). `--probe` runs `jobrunner.group_probe` instead of the job's
training: the same group, rendezvous and control with a few all-reduces per step.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import threading
from collections.abc import Sequence
from dataclasses import asdict

from torch.distributed.elastic.multiprocessing.errors import record

from keel_server.db import session_scope
from keel_server.db.jobs import get_job
from keel_server.platform.settings import Settings, get_settings
from keel_worker.jobrunner import group_progress
from keel_worker.jobrunner.control import JobControl, StopRun
from keel_worker.jobrunner.follow import Lead, Outcome, follow
from keel_worker.lifeline import die_with_parent

log = logging.getLogger(__name__)


class RankControl(JobControl):
    """Rank 0's `JobControl`. The worker that launched the group holds the lease: this one only
    reads the job's row each heartbeat interval (a pending pause or cancel; a lease no longer
    held is a lost one), and passes the loop's progress to that worker through its rank file
    (`group_progress`), whose watchdog bounds each phase. Every check the loop makes is also a
    progress mark (a rank that waits for prompts or rewards keeps checking: waiting, not
    stalled)."""

    def beat(self) -> None:
        if self._lost:
            return
        with session_scope(self.factory) as session:
            job = get_job(session, self.job_id)
            held = job is not None and job.status == "running" and job.lease_owner == self.owner
            requested = job.requested if held else None
        if not held:
            log.warning("job %s: no longer running under %s", self.job_id, self.owner)
            self._lost = True
        self._requested = requested
        if self.stop_reason() is None:
            self._stop_seen.clear()
        else:
            self._stop_seen.set()

    def progress(self, phase: str, *, bound_s: float | None = None) -> None:
        super().progress(phase, bound_s=bound_s)
        group_progress.mark(phase=phase, bound_s=bound_s)

    def stop_reason(self) -> str | None:
        if threading.current_thread() is not self._thread:  # not the heartbeat's own checks
            group_progress.mark()
        return super().stop_reason()

    def wait_for_stop(self, timeout_s: float) -> bool:
        group_progress.mark()
        return super().wait_for_stop(timeout_s)


def agree_on_stop(reason: str | None) -> str | None:
    """Rank 0's stop reason, on every rank (a collective: every rank calls it at the same point
    of the same step)."""
    import torch.distributed as dist

    box = [reason]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="keel-rank")
    parser.add_argument("job_id", nargs="?", default=None)
    parser.add_argument("--owner", default=None, help="the lease owner id of the worker")
    parser.add_argument("--probe", action="store_true", help="all-reduces instead of training")
    parser.add_argument("--probe-steps", type=int, default=2)
    parser.add_argument("--probe-step-s", type=float, default=0.0)
    parser.add_argument("--probe-stall-rank", type=int, default=None)
    return parser


@record
def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    die_with_parent(os.getppid())  # the launcher agent
    rank = int(os.environ["RANK"])
    logging.basicConfig(
        level=logging.INFO, format=f"%(asctime)s rank {rank} %(name)s %(levelname)s %(message)s"
    )
    group_progress.start(rank)
    settings = get_settings()
    if args.probe:
        from keel_worker.jobrunner.group_probe import run_probe

        run_probe(
            settings,
            job_id=args.job_id,
            owner=args.owner,
            steps=args.probe_steps,
            step_s=args.probe_step_s,
            stall_rank=args.probe_stall_rank,
        )
        return 0
    outcome = run_job_rank(args.job_id, args.owner, settings)
    if int(os.environ.get("LOCAL_RANK", "0")) == 0:  # every machine's lease holder reads it
        group_progress.write_outcome(**asdict(outcome))
    return 0


def run_job_rank(job_id: str, owner: str, settings: Settings) -> Outcome:
    """This rank's part of the job: rank 0 runs the job loop and tells the others what to do
    (`jobrunner.follow`); every rank returns rank 0's outcome."""
    from keel_server.platform.security import sealing_key
    from keel_worker.distributed.group import init_from_env, shutdown
    from keel_worker.jobrunner.loop import JobLoop
    from keel_worker.jobrunner.runner import describe, session_factory
    from keel_worker.jobrunner.spec import JobSpec

    dp = init_from_env(
        collective_timeout_s=settings.collective_timeout_s,
        rollout_timeout_s=settings.rollout_wait_timeout_s,
    )
    factory = session_factory(settings)
    with session_scope(factory) as session:
        spec = JobSpec.from_row(get_job(session, job_id), sealing_key=sealing_key(settings))
    try:
        if dp.rank != 0:
            return follow(spec, settings, factory, dp)
        lead = Lead(dp)
        loop = None
        with RankControl(
            factory,
            job_id,
            owner,
            interval_s=settings.heartbeat_interval_s,
            db_wait_s=settings.db_recovery_wait_s,
        ) as ctl:
            try:
                loop = JobLoop(spec, settings, factory, ctl, lead=lead)
                status = loop.run()
                outcome = Outcome(status, loop.step_reached, reason=loop.end_reason)
            except StopRun:
                outcome = Outcome("lost", loop.step_reached if loop else 0)
            except Exception as exc:
                step = loop.step_reached if loop else 0
                log.exception("job %s failed at step %d", job_id, step)
                outcome = Outcome("failed", step, error=describe(exc, step))
        lead.tell("end", outcome)
        return outcome
    finally:
        shutdown()


if __name__ == "__main__":
    sys.exit(main())
