"""Rank 0 leads a job's group, the other ranks follow (docs/how-to/distributed.md).

Rank 0 runs the job loop (`jobrunner.loop.JobLoop`) with all its database work: prompts, rewards,
metrics, checkpoints registered, the guard's decisions, pause and cancel. Every collective part of
the loop (the training step, the held-out eval on the group's engine, a checkpoint, a guard
rollback, a learning-rate change) is announced first as a *directive* that `Lead.tell` broadcasts
from rank 0; the other ranks run `follow`, which receives the directives one by one and makes the
same call, so every rank calls the training session's methods in the same order (what
`training.session` requires of a data-parallel run). The loop's stop decisions are rank 0's, at
step boundaries: the ranks learn of them by the directive that follows (a checkpoint for a pause,
then `end`).

A step that rank 0 abandons inside its scoring (a pause or cancel seen while it waits for
rewards, an error) reaches the followers as `RankZeroFailed` from that step's broadcast; they
drop the step and wait for the next directive, as rank 0 drops it. `end` carries the run's
outcome, which each machine's local rank 0 writes for its worker (`group_progress`).

Directives travel on the group's side channel (`distributed.rank_zero.from_rank_zero`, bounded by
its rollout timeout): rank 0 may take that long between two of them (waiting for prompts or
rewards), which a collective's timeout would not allow.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from keel_worker.jobrunner import group_progress

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Outcome:
    """How the run ended on rank 0: what the lease holder records on the job."""

    status: str  # succeeded | paused | cancelled | failed | lost
    step: int
    reason: str | None = None
    error: str | None = None


class Lead:
    """Rank 0's side: `tell` every other rank what to do next (collective)."""

    def __init__(self, dp: Any) -> None:
        self.dp = dp

    def tell(self, kind: str, *args: Any) -> None:
        from keel_worker.distributed.rank_zero import from_rank_zero

        from_rank_zero(self.dp, lambda: (kind, *args), what=f"directive {kind}")


def follow(spec: Any, settings: Any, factory: Any, dp: Any) -> Outcome:
    """A rank other than 0: open the job's training session with the group, then carry out rank
    0's directives until `end`; returns the outcome it carries."""
    from keel_server.platform.storage import job_dir
    from keel_worker.distributed.rank_zero import RankZeroFailed, from_rank_zero
    from keel_worker.engines.vllm import VLLMOptions
    from keel_worker.jobrunner.loop import load_job_model, model_cache, task_or_none
    from keel_worker.training.evaluate import evaluate
    from keel_worker.training.schedule import StepSchedule
    from keel_worker.training.session import TrainingSession

    cfg = spec.config
    run = TrainingSession.open(
        cfg,
        workdir=job_dir(settings.artifacts_dir, spec.id),
        cache_dir=model_cache(settings),
        load=lambda: load_job_model(spec, settings, factory),
        vllm_options=VLLMOptions.from_settings(settings),
    )
    schedule = StepSchedule.of(cfg)
    task = task_or_none(cfg, spec.prompt_type, spec.reward_source)
    while True:
        group_progress.mark()
        kind, *args = from_rank_zero(dp, lambda: None, what="directive")
        try:
            if kind == "end":
                return args[0]
            if kind == "step":
                step, items = args
                run.trainer.step(
                    items,
                    _scored_by_rank_zero,
                    seed=schedule.seed_of(step),
                    drop_incomplete_groups=spec.reward_source.drop_incomplete_groups,
                )
            elif kind == "evaluate":
                evaluate(run.engine, run.tokenizer, task, cfg)
            elif kind == "checkpoint":
                step, cursor, rng = args
                run.save(step, data_cursor=cursor, rng=rng, summary={"job_id": spec.id})
            elif kind == "restore":
                run.restore(Path(args[0]))
            elif kind == "lr":
                run.set_lr(args[0])
            else:
                raise ValueError(f"unknown directive {kind!r} from rank 0")
        except RankZeroFailed as exc:
            log.info("rank 0 abandoned the %s: %s", kind, exc)


def _scored_by_rank_zero(rollouts: Any) -> Any:
    """The scorer of a following rank: never called (rank 0 scores and broadcasts)."""
    raise RuntimeError("only rank 0 scores a data-parallel step")
