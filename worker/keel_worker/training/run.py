"""The library entry point: a whole training run in-process from one `TrainingConfig`.

`train(config, workdir=...)` opens a `TrainingSession` (the latest checkpoint under `workdir`, or
the configured model), builds the task, then yields one `StepResult` per global step. Scripts,
tests and benchmarks call it, with the task's built-in verifier unless they pass `reward_fn`; the
service's job loop (`keel_worker.jobrunner`) drives the same session with rewards from the DB.

The stability guard (`config.guard`) judges every step as in the service: its firings are in each
`StepResult.guard` and the `guard/*` metrics; `pause` checkpoints and ends the run (like
`should_stop`); `rollback` restores the newest checkpoint under `workdir` of weights that never
breached (`Fired.last_good_step`), keeps the prompt stream where it is (the batches since are
skipped), scales the learning rate and runs those steps again; past `rollback.max_attempts` (or with
no checkpoint to go back to) it pauses. With a rollback trigger, a new run checkpoints once before
its first step.

Resuming is exact: weights, optimizer state, step, policy version, RNG states and the data
cursor come back from the checkpoint, and every step's sampling and shuffling seeds are derived
from (config.seed, step) alone.
"""

from __future__ import annotations

import shutil
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

from keel.types.training import TrainingConfig
from keel_worker.engines.vllm import VLLMOptions
from keel_worker.training.checkpoint import capture_rng, complete_checkpoints, prune_checkpoints
from keel_worker.training.evaluate import evaluate
from keel_worker.training.guard import Fired, StabilityGuard, guard_metrics, strongest
from keel_worker.training.schedule import StepSchedule, step_seed
from keel_worker.training.scoring import ScoreFn, task_scorer
from keel_worker.training.session import TrainingSession, build_engine
from keel_worker.training.tasks import PromptStream, build_task
from keel_worker.training.trackers import StepTrackers

__all__ = ["DEFAULT_CACHE_DIR", "StepResult", "build_engine", "step_seed", "train"]

DEFAULT_CACHE_DIR = Path.home() / ".cache" / "keel" / "models"


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
        config, workdir=workdir, cache_dir=cache_dir or DEFAULT_CACHE_DIR, device=device,
        resume=resume, vllm_options=vllm_options,
    )
    task = build_task(config.task)
    stream = PromptStream(task.train_items, seed=config.seed)
    stream.cursor = run.data_cursor
    score = reward_fn or task_scorer(task)

    def held_out() -> dict[str, float]:
        return evaluate(run.engine, run.tokenizer, task, config)

    trackers = StepTrackers.open(
        config.logging, logdir=workdir, run_id=Path(workdir).name,
        config=config.model_dump(mode="json"),
    )  # fmt: skip
    schedule = StepSchedule.of(config)
    guard, rollbacks, lr_scale = StabilityGuard(config.guard), 0, 1.0

    def save(done: int) -> Path:
        path, _ = run.save(
            done, data_cursor=stream.cursor, rng=capture_rng(),
            summary={"config": config.model_dump(mode="json")},
        )  # fmt: skip
        if config.checkpoint_keep_last is not None:
            prune_checkpoints(workdir, keep_last=config.checkpoint_keep_last)
        return path

    if run.resumed_from is None and config.guard.may_roll_back:
        save(0)
    try:
        step = run.step
        while step < config.steps:
            eval_metrics = held_out() if schedule.evaluates_before(step) else {}
            items = stream.take(config.prompts_per_step)
            metrics = run.trainer.step(items, score, seed=schedule.seed_of(step))
            metrics.update(eval_metrics)
            if schedule.evaluates_after(step):
                metrics.update({f"{k}_final": v for k, v in held_out().items()})
            done = step + 1
            fired = guard.observe(done, metrics)
            metrics.update(guard_metrics(fired))
            act = strongest([f for f in fired if f.action != "alert"])
            target = _rollback_target(workdir, act) if act and act.action == "rollback" else None
            rolling = target is not None and rollbacks < config.guard.rollback.max_attempts
            trackers.log(done, metrics)
            if rolling:
                yield StepResult(done, run.trainer.policy_version, metrics, None, tuple(fired))
                rollbacks, lr_scale = rollbacks + 1, lr_scale * config.guard.rollback.lr_scale
                step = _roll_back(run, workdir, target)
                run.set_lr(config.optimizer.lr * lr_scale)
                guard.rewind(step)
                continue
            stopping = act is not None or (should_stop is not None and should_stop())
            saved = save(done) if schedule.checkpoints_after(done) or stopping else None
            yield StepResult(done, run.trainer.policy_version, metrics, saved, tuple(fired))
            if stopping:
                return
            step = done
    finally:
        trackers.close()


def _rollback_target(workdir: Path, act: Fired) -> tuple[int, Path] | None:
    """(step, path) of the newest checkpoint under `workdir` of weights that never breached."""
    before = {s: p for s, p in complete_checkpoints(workdir).items() if s <= act.last_good_step}
    return (max(before), before[max(before)]) if before else None


def _roll_back(run: TrainingSession, workdir: Path, target: tuple[int, Path]) -> int:
    """Restore the target checkpoint and delete the later ones; returns the step to run next."""
    to_step, path = target
    run.restore(path)
    for step, later in complete_checkpoints(workdir).items():
        if step > to_step:
            shutil.rmtree(later)
    return to_step
