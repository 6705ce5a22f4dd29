"""The library entry point: a whole training run in-process from one `TrainingConfig`.

`train(config, workdir=...)` opens a `TrainingSession` (the latest checkpoint under `workdir`, or
the configured model), builds the task, then yields one `StepResult` per global step. Scripts,
tests and benchmarks call it, with the task's built-in verifier unless they pass `reward_fn`; the
service's job loop (`keel_worker.jobrunner`) drives the same session with rewards from the DB.

Resuming is exact: weights, optimizer state, step, policy version, RNG states and the data
cursor come back from the checkpoint, and every step's sampling and shuffling seeds are derived
from (config.seed, step) alone.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

from keel.types.training import TrainingConfig
from keel_worker.engines.vllm import VLLMOptions
from keel_worker.training.checkpoint import capture_rng
from keel_worker.training.evaluate import evaluate
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
        return evaluate(
            run.engine, run.tokenizer, task, size=config.eval_size,
            max_new_tokens=config.rollout.max_new_tokens,
        )

    trackers = StepTrackers.open(
        config.logging, logdir=workdir, run_id=Path(workdir).name,
        config=config.model_dump(mode="json"),
    )  # fmt: skip
    schedule = StepSchedule.of(config)
    try:
        for step in range(run.step, config.steps):
            eval_metrics = held_out() if schedule.evaluates_before(step) else {}
            items = stream.take(config.prompts_per_step)
            metrics = run.trainer.step(items, score, seed=schedule.seed_of(step))
            metrics.update(eval_metrics)
            if schedule.evaluates_after(step):
                metrics.update({f"{k}_final": v for k, v in held_out().items()})
            done = step + 1
            saved = None
            stopping = should_stop is not None and should_stop()
            if schedule.checkpoints_after(done) or stopping:
                saved, _ = run.save(
                    done, data_cursor=stream.cursor, rng=capture_rng(),
                    summary={"config": config.model_dump(mode="json")},
                )
            trackers.log(done, metrics)
            yield StepResult(done, run.trainer.policy_version, metrics, saved)
            if stopping:
                return
    finally:
        trackers.close()
