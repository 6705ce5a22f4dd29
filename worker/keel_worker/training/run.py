"""The library entry point: a whole training run in-process from one `TrainingConfig`.

`train(config, workdir=...)` loads the model (or the latest checkpoint under `workdir`), builds
the task, the rollout engine and the `Trainer`, then yields one `StepResult` per global step. The
service's worker and the benchmarks call it; the worker passes its own `reward_fn` (rewards that
arrive through the database), everyone else gets the task's built-in verifier.

Resuming is exact: weights, optimizer state, step, policy version, RNG states and the data
cursor come back from the checkpoint, and every step's sampling and shuffling seeds are derived
from (config.seed, step) alone.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import torch

from keel.types.training import TrainingConfig
from keel_worker.engines.base import RolloutEngine
from keel_worker.engines.models import is_moe_model, load_model
from keel_worker.training.checkpoint import (
    TrainerState,
    capture_rng,
    checkpoint_dir,
    latest_checkpoint,
    load_checkpoint,
    restore_rng,
    save_checkpoint,
)
from keel_worker.training.evaluate import evaluate
from keel_worker.training.scoring import ScoreFn, task_scorer
from keel_worker.training.step import Trainer
from keel_worker.training.tasks import PromptStream, build_task

DEFAULT_CACHE_DIR = Path.home() / ".cache" / "keel" / "models"


@dataclass(frozen=True)
class StepResult:
    """What one global step produced. `step` counts completed steps (1 after the first)."""

    step: int
    policy_version: int
    metrics: dict[str, float]
    checkpoint: Path | None = None


def step_seed(seed: int, step: int) -> int:
    """Sampling/shuffling seed of one step: a function of (seed, step) only, for exact resume."""
    return (seed * 1_000_003 + step * 7_919 + 17) % (2**31 - 1)


def build_engine(
    config: TrainingConfig, model: torch.nn.Module, tokenizer, *, workdir: Path
) -> RolloutEngine:
    if config.rollout.engine == "vllm":
        from keel_worker.engines.vllm import VLLMEngine

        return VLLMEngine.from_model(
            model, tokenizer, precision=config.rollout.precision, workdir=workdir / "vllm"
        )
    from keel_worker.engines.hf import HFEngine

    return HFEngine(model, tokenizer, precision=config.rollout.precision)


def train(
    config: TrainingConfig,
    *,
    workdir: Path,
    reward_fn: ScoreFn | None = None,
    resume: bool = True,
    cache_dir: Path | None = None,
    device: str | None = None,
    should_stop: Callable[[], bool] | None = None,
) -> Iterator[StepResult]:
    """Run `config.steps` global steps (fewer when resuming), yielding each step's metrics.

    `should_stop` is polled after every step; when it returns True the run checkpoints (so a
    later call resumes exactly there), yields that step and ends: cooperative pause / cancel.
    """
    workdir = Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    torch.manual_seed(config.seed)

    ckpt = latest_checkpoint(workdir) if resume else None
    state: TrainerState | None = None
    if ckpt is not None:
        model, tokenizer, state = load_checkpoint(ckpt)
    else:
        loaded = load_model(config.model.name, cache_dir=cache_dir or DEFAULT_CACHE_DIR)
        model, tokenizer = loaded.model, loaded.tokenizer
    model.eval()

    task = build_task(config.task)
    # The engine takes its own copy of the weights where the model was loaded (the `hf` engine
    # samples on the CPU); only then does the trainer's copy move to the training device.
    engine = build_engine(config, model, tokenizer, workdir=workdir)
    model.to(device)
    trainer = Trainer(config, model, tokenizer, engine, is_moe=is_moe_model(model))
    stream = PromptStream(task.train_items, seed=config.seed)
    start = 0
    if state is not None:
        trainer.optimizer.load_state_dict(state.optimizer)
        trainer.policy_version = state.policy_version
        stream.cursor = state.data_cursor
        restore_rng(state.rng)
        start = state.step
    score = reward_fn or task_scorer(task)

    def held_out() -> dict[str, float]:
        return evaluate(
            engine, tokenizer, task, size=config.eval_size,
            max_new_tokens=config.rollout.max_new_tokens,
        )

    for step in range(start, config.steps):
        due_eval = config.eval_every > 0 and step % config.eval_every == 0
        eval_metrics = held_out() if due_eval else {}
        items = stream.take(config.prompts_per_step)
        metrics = trainer.step(items, score, seed=step_seed(config.seed, step))
        metrics.update(eval_metrics)
        done = step + 1
        if done == config.steps and config.eval_every > 0:
            # The policy after the last update, so a run always reports where it ended.
            metrics.update({f"{k}_final": v for k, v in held_out().items()})
        saved = None
        every = config.checkpoint_every
        stopping = should_stop is not None and should_stop()
        if (every and done % every == 0) or done == config.steps or stopping:
            saved = save_checkpoint(
                checkpoint_dir(workdir, done),
                model=model,
                tokenizer=tokenizer,
                state=TrainerState(
                    step=done,
                    policy_version=trainer.policy_version,
                    data_cursor=stream.cursor,
                    optimizer=trainer.optimizer.state_dict(),
                    rng=capture_rng(),
                ),
                summary={"config": config.model_dump(mode="json")},
            )
        yield StepResult(done, trainer.policy_version, metrics, saved)
        if stopping:
            return
