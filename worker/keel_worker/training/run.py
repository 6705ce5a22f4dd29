"""The library entry point: a whole training run in-process from one `TrainingConfig`.

`train(config, workdir=...)` opens a `TrainingSession` (the latest checkpoint under `workdir`, or
the configured model), builds the task, then yields one `StepResult` per global step. Scripts,
tests and benchmarks call it, with the task's built-in verifier unless they pass `reward_fn`; the
service's job loop (`keel_worker.jobrunner`) drives the same session with rewards from the DB.

The stability guard (`config.guard`) judges every step by the service's policy
(`training.guard_policy`, over the checkpoints under `workdir`): its firings are in each
`StepResult.guard` and the `guard/*` metrics; `pause` checkpoints and ends the run (like
`should_stop`); `rollback` restores the newest checkpoint of weights that never breached, keeps the
prompt stream where it is (the batches since are skipped), scales the learning rate and runs those
steps again. With a rollback trigger, a new run checkpoints once before its first step. The
rollback budget counts from this call: a resumed run starts with none used.

Resuming is exact: weights, optimizer state, step, policy version, RNG states and the data
cursor come back from the checkpoint, and every step's sampling and shuffling seeds are derived
from (config.seed, step) alone.

Under torchrun (an initialised process group of k ranks, `distributed.group.init_from_env`) every
rank calls `train` with the same arguments and runs the same steps in lockstep: the session is
data-parallel (`TrainingSession`), every rank yields the same `StepResult`s (rank 0's metrics),
rank 0 alone writes the trackers and prunes checkpoints, and `should_stop` is rank 0's answer.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

from keel.types import metric_names as metric
from keel.types.training import TrainingConfig
from keel_worker.distributed.group import GroupFailure
from keel_worker.distributed.rank_zero import from_rank_zero
from keel_worker.engines.vllm import VLLMOptions
from keel_worker.training.checkpoint import WorkdirCheckpoints, capture_rng, prune_checkpoints
from keel_worker.training.evaluate import evaluate
from keel_worker.training.guard import Fired
from keel_worker.training.guard_policy import GuardPolicy
from keel_worker.training.schedule import StepSchedule, step_seed
from keel_worker.training.scoring import ScoreFn, task_scorer
from keel_worker.training.session import TrainingSession, build_engine
from keel_worker.training.tasks import PromptStream, build_task
from keel_worker.training.trackers import StepTrackers

__all__ = ["DEFAULT_CACHE_DIR", "StepResult", "build_engine", "step_seed", "train"]

DEFAULT_CACHE_DIR = Path.home() / ".cache" / "keel" / "models"


def _rank_zero_answer(dp, should_stop: Callable[[], bool]) -> Callable[[], bool]:
    """`should_stop` asked on rank 0, its answer on every rank (collective)."""

    def agreed() -> bool:
        return from_rank_zero(dp, should_stop, what="stop decision")

    return agreed


@dataclass(frozen=True)
class _ReadOnly:
    """A workdir's checkpoints as a rank other than 0 sees them: it finds them, rank 0 deletes."""

    store: WorkdirCheckpoints

    def latest_at_most(self, step: int):
        return self.store.latest_at_most(step)

    def delete_after(self, step: int) -> None:
        return None


@dataclass(frozen=True)
class StepResult:
    """What one global step produced. `step` counts completed steps (1 after the first)."""

    step: int
    policy_version: int
    metrics: dict[str, float]
    checkpoint: Path | None = None
    guard: tuple[Fired, ...] = ()  # the guard's firings at this step


def train(
    config: TrainingConfig,
    *,
    workdir: Path,
    reward_fn: ScoreFn | None = None,
    resume: bool = True,
    cache_dir: Path | None = None,
    device: str | None = None,
    should_stop: Callable[[], bool] | None = None,
    vllm_options: VLLMOptions | None = None,
) -> Iterator[StepResult]:
    """Run `config.steps` global steps (fewer when resuming), yielding each step's metrics.

    `vllm_options` (`VLLMOptions.from_settings(Settings())`) is needed by `rollout.engine = "vllm"`.

    `should_stop` is polled after every step; when it returns True the run checkpoints (so a
    later call resumes exactly there), yields that step and ends: cooperative pause / cancel.
    """
    run = TrainingSession.open(
        config,
        workdir=workdir,
        cache_dir=cache_dir or DEFAULT_CACHE_DIR,
        device=device,
        resume=resume,
        vllm_options=vllm_options,
    )
    task = build_task(config.task)
    stream = PromptStream(task.train_items, seed=config.seed)
    stream.cursor = run.data_cursor
    score = reward_fn or task_scorer(task)

    def held_out() -> dict[str, float]:
        return evaluate(run.engine, run.tokenizer, task, config)

    writer = run.dp is None or run.dp.is_writer
    if run.dp is not None and should_stop is not None:
        should_stop = _rank_zero_answer(run.dp, should_stop)
    trackers = (
        StepTrackers.open(
            config.logging,
            logdir=workdir,
            run_id=Path(workdir).name,
            config=config.model_dump(mode="json"),
        )
        if writer
        else StepTrackers([])
    )
    schedule = StepSchedule.of(config)
    policy, checkpoints = GuardPolicy(config.guard), WorkdirCheckpoints(workdir)
    if not writer:  # a rollback's deletions are rank 0's; the other ranks only read
        checkpoints = _ReadOnly(checkpoints)

    def save(done: int) -> Path:
        path, _ = run.save(
            done,
            data_cursor=stream.cursor,
            rng=capture_rng(),
            summary={"config": config.model_dump(mode="json")},
        )
        if config.checkpoint_keep_last is not None and writer:
            prune_checkpoints(workdir, keep_last=config.checkpoint_keep_last)
        return path

    if run.resumed_from is None and policy.checkpoints_first:
        save(0)
    try:
        step = run.step
        while step < config.steps:
            eval_metrics = held_out() if schedule.evaluates_before(step) else {}
            items = stream.take(config.prompts_per_step)
            metrics = run.trainer.step(items, score, seed=schedule.seed_of(step))
            metrics.update(eval_metrics)
            if schedule.evaluates_after(step):
                metrics.update({metric.final(k): v for k, v in held_out().items()})
            done = step + 1
            decision = policy.decide(done, metrics, checkpoints)
            trackers.log(done, metrics)
            if decision.action == "rollback":
                yield StepResult(done, run.trainer.policy_version, metrics, None, decision.fired)
                step = policy.roll_back(decision, checkpoints, restore=run.restore)
                run.set_lr(policy.lr(config.optimizer.lr))
                continue
            stopping = decision.action == "pause" or (should_stop is not None and should_stop())
            saved = save(done) if schedule.checkpoints_after(done) or stopping else None
            yield StepResult(done, run.trainer.policy_version, metrics, saved, decision.fired)
            if stopping:
                return
            step = done
    except Exception as exc:
        if run.dp is None or isinstance(exc, GroupFailure):
            raise
        raise run.dp.failure(exc) from exc
    finally:
        trackers.close()
