"""Open a run where it left off, and save it so it can be opened again: the state that both the
in-process `train()` and the service's job loop carry from step to step.

`TrainingSession.open` loads the latest checkpoint under `workdir` (weights, optimizer, policy
version, RNG states, data cursor) or, for a new run, the configured model; builds the rollout
engine and the `Trainer`. `save` writes the matching checkpoint. Keeping both in one place keeps
resume exact for every caller.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from keel.types.training import TrainingConfig
from keel_worker.engines.base import RolloutEngine
from keel_worker.engines.models import LoadedModel, is_moe_model, load_model
from keel_worker.engines.vllm import VLLMOptions
from keel_worker.training.checkpoint import (
    TrainerState,
    checkpoint_dir,
    latest_checkpoint,
    load_checkpoint,
    restore_rng,
    save_checkpoint,
)
from keel_worker.training.step import Trainer


def build_engine(
    config: TrainingConfig,
    model: torch.nn.Module,
    tokenizer,
    *,
    workdir: Path,
    vllm_options: VLLMOptions | None = None,
) -> RolloutEngine:
    """The configured rollout engine; `vllm` needs the worker's `vllm_options`
    (`VLLMOptions.from_settings`)."""
    if config.rollout.engine == "vllm":
        from keel_worker.engines.vllm import VLLMEngine

        if vllm_options is None:
            raise ValueError("rollout engine 'vllm' needs vllm_options (VLLMOptions.from_settings)")
        return VLLMEngine.from_model(
            model, tokenizer, precision=config.rollout.precision, workdir=workdir / "vllm",
            options=vllm_options,
        )
    from keel_worker.engines.hf import HFEngine

    return HFEngine(model, tokenizer, precision=config.rollout.precision)


def _load_by_name(config: TrainingConfig, cache_dir: Path) -> LoadedModel:
    if config.model.name is None:
        raise ValueError(
            "model.checkpoint_id names a checkpoint of the service (a job's model); in-process, "
            "pass the checkpoint's directory as model.name"
        )
    return load_model(config.model.name, cache_dir=cache_dir)


@dataclass
class TrainingSession:
    """A run's live objects plus where it resumes: `step` completed steps, `data_cursor`."""

    config: TrainingConfig
    workdir: Path
    model: torch.nn.Module
    tokenizer: Any
    engine: RolloutEngine
    trainer: Trainer
    step: int = 0
    data_cursor: int = 0
    resumed_from: Path | None = None

    @classmethod
    def open(
        cls,
        config: TrainingConfig,
        *,
        workdir: Path,
        cache_dir: Path,
        device: str | None = None,
        resume: bool = True,
        load: Callable[[], LoadedModel] | None = None,
        vllm_options: VLLMOptions | None = None,
    ) -> TrainingSession:
        """`load` obtains the configured model for a new run (default: `load_model` of
        `config.model.name`); the service passes one that applies its model policy, and its
        `Settings`' vLLM knobs as `vllm_options`."""
        workdir = Path(workdir)
        workdir.mkdir(parents=True, exist_ok=True)
        device = device or ("cuda" if torch.cuda.is_available() else "cpu")
        torch.manual_seed(config.seed)
        ckpt = latest_checkpoint(workdir) if resume else None
        state: TrainerState | None = None
        if ckpt is not None:
            model, tokenizer, state = load_checkpoint(ckpt)
        else:
            loaded = load() if load else _load_by_name(config, cache_dir)
            model, tokenizer = loaded.model, loaded.tokenizer
        model.eval()
        # The engine copies the weights before the trainer's copy moves to its device: the `hf`
        # engine samples on the CPU even on a CUDA worker, because its decode loop builds its
        # tokens, cache and sampling generator on the CPU (engines/hf.py); a GPU worker samples
        # with `vllm` (RolloutConfig.engine says so). Each step's weight sync copies across.
        engine = build_engine(
            config, model, tokenizer, workdir=workdir, vllm_options=vllm_options
        )
        model.to(device)
        trainer = Trainer(config, model, tokenizer, engine, is_moe=is_moe_model(model))
        session = cls(config, workdir, model, tokenizer, engine, trainer, resumed_from=ckpt)
        if state is not None:
            trainer.optimizer.load_state_dict(state.optimizer)
            trainer.policy_version = state.policy_version
            if state.routing_replay is not None:
                trainer.auto.load_state_dict(state.routing_replay)
            restore_rng(state.rng)
            session.step, session.data_cursor = state.step, state.data_cursor
        return session

    def restore(self, path: Path) -> TrainerState:
        """Roll the live run back to the checkpoint at `path`: weights (trainer and engine),
        optimizer state, policy version and RNG states; returns the checkpoint's state."""
        model, _, state = load_checkpoint(path)
        self.model.load_state_dict(model.state_dict())
        self.trainer.optimizer.load_state_dict(state.optimizer)
        self.trainer.policy_version = state.policy_version
        self.engine.load_weights(self.model)
        restore_rng(state.rng)
        return state

    def set_lr(self, lr: float) -> None:
        """The learning rate of every parameter group (a resumed optimizer state keeps the one
        it was saved with)."""
        for group in self.trainer.optimizer.param_groups:
            group["lr"] = lr

    def save(
        self, step: int, *, data_cursor: int, rng: dict[str, Any], summary: dict[str, Any]
    ) -> tuple[Path, TrainerState]:
        """Checkpoint the run as it stands after `step` completed steps."""
        state = TrainerState(
            step=step,
            policy_version=self.trainer.policy_version,
            data_cursor=data_cursor,
            optimizer=self.trainer.optimizer.state_dict(),
            rng=rng,
            routing_replay=self.trainer.auto.state_dict(),
        )
        path = save_checkpoint(
            checkpoint_dir(self.workdir, step), model=self.model, tokenizer=self.tokenizer,
            state=state, summary=summary,
        )
        return path, state
