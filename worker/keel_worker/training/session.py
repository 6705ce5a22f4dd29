"""Open a run where it left off, and save it so it can be opened again: the state that both the
in-process `train()` and the service's job loop carry from step to step.

`TrainingSession.open` loads the latest checkpoint under `workdir` (weights, optimizer, policy
version, RNG states, data cursor) or, for a new run, the configured model; builds the rollout
engine and the `Trainer`. `save` writes the matching checkpoint. Keeping both in one place keeps
resume exact for every caller.

A LoRA run (`config.lora`) wraps the configured model in adapters (`training.lora`); resuming
one reloads that base model and puts the checkpoint's adapter tensors back, never the merged
top-level weights (unmerging them would not give W back exactly).

Data-parallel: opened in a process of an initialised torch.distributed group of k ≥ 2 ranks
(torchrun; `distributed.group.init_from_env`), every rank opens the same session: the model is
sharded with FSDP2 (`distributed.sharding`), rank 0 alone holds the rollout engine and every rank
reaches it through a `distributed.rank_zero.RankZeroEngine`, and `save` writes a sharded checkpoint
plus rank 0's consolidated weights (`distributed.checkpoint`). Every rank calls every method in
the same order. LoRA is refused there (`LORA_UNDER_FSDP`).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from keel.types.training import TrainingConfig
from keel_worker.distributed import group as distributed_group
from keel_worker.distributed.checkpoint import (
    has_sharded_state,
    load_full_optimizer,
    load_sharded,
    save_distributed_checkpoint,
)
from keel_worker.distributed.group import DataParallel
from keel_worker.distributed.rank_zero import RankZeroEngine
from keel_worker.distributed.sharding import shard_policy
from keel_worker.engines.base import RolloutEngine
from keel_worker.engines.models import LoadedModel, is_moe_model, load_model
from keel_worker.engines.vllm import VLLMOptions
from keel_worker.training.checkpoint import (
    TrainerState,
    checkpoint_dir,
    latest_checkpoint,
    load_policy,
    load_trainer_state,
    restore_rng,
    save_checkpoint,
)
from keel_worker.training.lora import adapter_state, apply_lora, load_adapter_state
from keel_worker.training.step import Trainer


def build_engine(
    config: TrainingConfig,
    model: torch.nn.Module,
    tokenizer,
    *,
    workdir: Path,
    vllm_options: VLLMOptions | None = None,
    share_weights: bool = False,
) -> RolloutEngine:
    """The configured rollout engine; `vllm` needs the worker's `vllm_options`
    (`VLLMOptions.from_settings`). `share_weights`: an fp32 `hf` engine aliases `model`'s weights
    (`HFEngine`), for a caller whose `model` trains unsharded on the CPU."""
    if config.rollout.engine == "vllm":
        from keel_worker.engines.vllm import VLLMEngine

        if vllm_options is None:
            raise ValueError("rollout engine 'vllm' needs vllm_options (VLLMOptions.from_settings)")
        return VLLMEngine.from_model(
            model,
            tokenizer,
            precision=config.rollout.precision,
            workdir=workdir / "vllm",
            options=vllm_options,
        )
    from keel_worker.engines.hf import HFEngine

    return HFEngine(
        model, tokenizer, precision=config.rollout.precision, share_weights=share_weights
    )


LORA_UNDER_FSDP = (
    "LoRA is not supported on more than one trainer process yet (FSDP2 would shard the frozen "
    "base with the adapters); run a LoRA job on one process"
)


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
    dp: DataParallel | None = None  # this rank, in a data-parallel run

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
        dp = distributed_group.current(device=device)
        if dp is not None and config.lora is not None:
            raise ValueError(LORA_UNDER_FSDP)
        device = str(dp.device) if dp is not None else device
        device = device or ("cuda" if torch.cuda.is_available() else "cpu")
        torch.manual_seed(config.seed)
        ckpt = latest_checkpoint(workdir) if resume else None
        state = _trainer_state(ckpt, config) if ckpt is not None else None
        if ckpt is not None and config.lora is None:
            model, tokenizer = load_policy(ckpt)
        else:
            loaded = load() if load else _load_by_name(config, cache_dir)
            model, tokenizer = loaded.model, loaded.tokenizer
            if config.lora is not None:
                model = apply_lora(model, config.lora)
                if state is not None:
                    load_adapter_state(model, state.adapter)
        model.eval()
        # The engine copies the weights before the trainer's copy moves to its device: the `hf`
        # engine samples on the CPU even on a CUDA worker, because its decode loop builds its
        # tokens, cache and sampling generator on the CPU (engines/hf.py); a GPU worker samples
        # with `vllm` (RolloutConfig.engine says so). Each step's weight sync copies across.
        # Data-parallel: rank 0 alone holds an engine; the others receive its batches.
        # A CPU run of one process shares its fp32 weights with the engine: the sync is then a
        # no-op; FSDP2 replaces the weights with shards, and a GPU trainer's are on another device.
        engine = None
        if dp is None or dp.is_writer:
            share = dp is None and torch.device(device).type == "cpu"
            engine = build_engine(
                config,
                model,
                tokenizer,
                workdir=workdir,
                vllm_options=vllm_options,
                share_weights=share,
            )
        is_moe = is_moe_model(model)
        model.to(device)
        root_call = None
        if dp is not None:
            root_call = shard_policy(model, dp)
            engine = RankZeroEngine(engine, dp)
        trainer = Trainer(
            config, model, tokenizer, engine, is_moe=is_moe, dp=dp, root_call=root_call
        )
        session = cls(config, workdir, model, tokenizer, engine, trainer, resumed_from=ckpt, dp=dp)
        if state is not None:
            session._load_optimizer(ckpt, state)
            trainer.policy_version = state.policy_version
            if state.routing_replay is not None:
                trainer.auto.load_state_dict(state.routing_replay)
            restore_rng(state.rng)
            session.step, session.data_cursor = state.step, state.data_cursor
        return session

    def _load_optimizer(self, ckpt: Path, state: TrainerState) -> None:
        _load_optimizer_into(
            self.model, self.trainer.optimizer, ckpt, state, sharded=self.dp is not None
        )

    def restore(self, path: Path) -> TrainerState:
        """Roll the live run back to the checkpoint at `path`: weights (trainer and engine),
        optimizer state, policy version and RNG states; returns the checkpoint's state."""
        state = _trainer_state(path, self.config)
        if has_sharded_state(path):  # weights and optimizer, resharded onto this run
            load_sharded(path, self.model, self.trainer.optimizer)
        elif self.dp is not None:
            raise ValueError(f"{path} has no sharded state to restore a data-parallel run from")
        elif self.config.lora is None:
            model, _ = load_policy(path)
            self.model.load_state_dict(model.state_dict())
            self.trainer.optimizer.load_state_dict(state.optimizer)
        else:  # the base weights never change: only the adapters go back
            load_adapter_state(self.model, state.adapter)
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
        """Checkpoint the run as it stands after `step` completed steps (collective in a
        data-parallel run, where rank 0 writes all but the other ranks' shards)."""
        sharded = self.dp is not None
        state = TrainerState(
            step=step,
            policy_version=self.trainer.policy_version,
            data_cursor=data_cursor,
            optimizer={} if sharded else self.trainer.optimizer.state_dict(),
            rng=rng,
            routing_replay=self.trainer.auto.state_dict(),
            adapter=adapter_state(self.model) if self.config.lora is not None else None,
        )
        if self.dp is not None:
            path = save_distributed_checkpoint(
                checkpoint_dir(self.workdir, step),
                model=self.model,
                optimizer=self.trainer.optimizer,
                tokenizer=self.tokenizer,
                state=state,
                summary=summary,
                dp=self.dp,
            )
            return path, state
        path = save_checkpoint(
            checkpoint_dir(self.workdir, step),
            model=self.model,
            tokenizer=self.tokenizer,
            state=state,
            summary=summary,
        )
        return path, state


def _load_optimizer_into(
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    ckpt: Path,
    state: TrainerState,
    *,
    sharded: bool,
) -> None:
    """The checkpoint's optimizer state into this run's optimizer, whichever kind wrote it."""
    if has_sharded_state(ckpt):  # written by k ranks: DCP reshards it (or loads it whole)
        load_sharded(ckpt, model, optimizer)
    elif sharded:  # written by one process, resumed on k ranks
        load_full_optimizer(model, optimizer, state.optimizer)
    else:
        optimizer.load_state_dict(state.optimizer)


def _trainer_state(ckpt: Path, config: TrainingConfig) -> TrainerState:
    """The checkpoint's trainer state, refused when it comes from the other kind of run."""
    state = load_trainer_state(ckpt)
    if (state.adapter is None) != (config.lora is None):
        written = "full fine-tuning" if state.adapter is None else "LoRA"
        raise ValueError(
            f"{ckpt} was written by a {written} run; this run's config.lora does not match"
        )
    return state
