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

from torch.distributed.elastic.multiprocessing.errors import record

from keel_server.platform.settings import get_settings
from keel_worker.jobrunner import group_progress
from keel_worker.jobrunner.control import JobControl
from keel_worker.lifeline import die_with_parent

log = logging.getLogger(__name__)


class RankControl(JobControl):
    """Rank 0's `JobControl`: every check the loop makes is also a progress mark (a rank that
    waits for prompts or rewards keeps checking, so it is waiting, not stalled)."""

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
    raise SystemExit("keel-rank: training a job on several ranks needs keel_worker.distributed")


if __name__ == "__main__":
    sys.exit(main())
