"""Wire model of one training run, `TrainingConfig`: the step schedule, with the run's parts.

These are the only place where the defaults of a run live (docs/house-style.md rule 1). The
schedule follows docs/concepts/algorithm.md §3.3: each global step samples `prompts_per_step`
prompts × `group_size` responses, splits them into `num_minibatches` mini-batches and applies one
AdamW update per mini-batch. Routing Replay `auto` is decided from measured routing disagreement by
the rule in `keel_worker.training.replay_auto` (docs/concepts/routing-replay.md §4), re-decided
every `routing_replay_every` steps.

Each part has a module of its own (`model`, `task`, `sampling`, `optimizer`, `trackers`,
`distributed`, and `algorithm` and `guard`); this one re-exports the parts' names, so
`keel.types.training` still names every piece of a run's config.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field, TypeAdapter, model_validator

from keel.types.algorithm import AlgorithmConfig
from keel.types.common import MAX_INT, Float, FrozenConfig, Int
from keel.types.distributed import MAX_NODES, MAX_PROCESSES, DistributedConfig
from keel.types.guard import GuardConfig
from keel.types.model import DEFAULT_MODEL, LoraConfig, LoraModuleName, LoraTargets, ModelConfig
from keel.types.optimizer import OptimizerConfig
from keel.types.sampling import RolloutConfig, RolloutPrecision
from keel.types.task import MAX_TASK_ITEMS, TaskConfig, TaskItem, TaskName, VerifierName
from keel.types.trackers import LoggingConfig, WandbConfig

__all__ = [
    "DEFAULT_MODEL",
    "GROUP_ADVANTAGE_MODES",
    "MAX_NODES",
    "MAX_PROCESSES",
    "MAX_RESPONSES_PER_STEP",
    "MAX_STEPS",
    "MAX_TASK_ITEMS",
    "DistributedConfig",
    "LoggingConfig",
    "LoraConfig",
    "LoraModuleName",
    "LoraTargets",
    "ModelConfig",
    "OptimizerConfig",
    "RolloutConfig",
    "RolloutPrecision",
    "RoutingReplayMode",
    "TaskConfig",
    "TaskItem",
    "TaskName",
    "TrainingConfig",
    "VerifierName",
    "WandbConfig",
]

RoutingReplayMode = Literal["none", "R2", "R3", "auto"]

# Advantage modes that subtract a baseline estimated from the other members of the group: with a
# single response per prompt every advantage would be exactly zero (or undefined for rloo).
GROUP_ADVANTAGE_MODES = frozenset({"group_mean", "mean_std", "rloo"})

# Upper bounds of the schedule (docs/concepts/tenancy.md §7): far above any run keel is built for,
# low enough that no request can ask a worker for unbounded memory or time.
MAX_STEPS = 1_000_000
MAX_RESPONSES_PER_STEP = 65_536


def _default_algorithm() -> AlgorithmConfig:
    return TypeAdapter(AlgorithmConfig).validate_python({"name": "minirl"})


class TrainingConfig(FrozenConfig):
    """One whole run, in-process or as a service job."""

    model: ModelConfig = Field(
        default_factory=ModelConfig,
        description="The policy to train: a model by name, or a checkpoint of this project.",
    )
    task: TaskConfig = Field(
        default_factory=TaskConfig,
        description="The built-in task or inline dataset: its training prompts, its held-out "
        "split for eval and its verifier.",
    )
    algorithm: AlgorithmConfig = Field(
        default_factory=_default_algorithm,
        description="The objective, picked by `algorithm.name` (default `minirl`), with its "
        "own fields and defaults (the Algorithms tables).",
    )
    rollout: RolloutConfig = Field(
        default_factory=RolloutConfig,
        description="How the inference engine samples the responses.",
    )
    optimizer: OptimizerConfig = Field(
        default_factory=OptimizerConfig, description="AdamW and gradient-norm clipping."
    )
    logging: LoggingConfig = Field(
        default_factory=LoggingConfig,
        description="Metric sinks besides keel's own store: TensorBoard, W&B.",
    )
    guard: GuardConfig = Field(
        default_factory=GuardConfig,
        description="The stability guard: signals, thresholds and actions (keel.types.guard).",
    )
    distributed: DistributedConfig = Field(
        default_factory=DistributedConfig,
        description="Trainer processes per machine, machines, and the vLLM tensor-parallel "
        "size; the default trains in one process.",
    )
    lora: LoraConfig | None = Field(
        None, description="Train LoRA adapters instead of all weights; None = full fine-tuning."
    )
    prompts_per_step: Int = Field(
        8,
        ge=1,
        le=4096,
        description="B: prompts drawn per global step; the step samples B × `group_size` "
        "responses (at most 65,536).",
    )
    group_size: Int = Field(
        8,
        ge=1,
        le=1024,
        description="G: responses sampled per prompt. Each response's advantage is measured "
        "against its group's rewards, so the group advantages need G ≥ 2.",
    )
    num_minibatches: Int = Field(
        1,
        ge=1,
        le=1024,
        description="N: optimizer updates per global step. The step's B × G responses (less "
        "any dropped group) are shuffled and split into N mini-batches, one AdamW step each; N "
        "must divide B × G, and N = 1 is on-policy.",
    )
    micro_batch_size: Int = Field(
        16,
        ge=1,
        le=4096,
        description="Responses per forward/backward pass, a memory knob: a mini-batch's "
        "micro-batches accumulate into one update with one loss divisor, so the gradient does "
        "not depend on it.",
    )
    routing_replay: RoutingReplayMode = Field(
        "auto",
        description="Routing Replay for MoE models: `none`, `R2` (replay the trainer's π_old "
        "routes), `R3` (replay the engine's routes), or `auto`: chosen from the measured "
        "per-layer routing disagreement (engine vs trainer, θ_old vs θ), as "
        "docs/concepts/routing-replay.md explains. Dense models always run without replay.",
    )
    routing_replay_every: Int = Field(
        10,
        ge=0,
        le=MAX_STEPS,
        description="With `auto`: the first step measures and decides, then every k-th step "
        "decides again from its own measurements (0 = decide once, after the first step).",
    )
    train_dtype: Literal["fp32", "bf16"] = Field(
        "fp32", description="bf16 = autocast for the training forwards (weights stay fp32)."
    )
    steps: Int = Field(
        10,
        ge=1,
        le=MAX_STEPS,
        description="Global steps of the run, each one rollout and `num_minibatches` updates; a "
        "resumed run goes on up to this count.",
    )
    seed: Int = Field(
        0,
        ge=0,
        le=MAX_INT,
        description="Seeds the order of the task's training prompts, each step's sampling and "
        "mini-batch shuffle (from seed and step alone, so a resume draws the same) and torch "
        "at start (LoRA's initial A). The held-out split has `task.split_seed`.",
    )
    eval_every: Int = Field(
        10, ge=0, le=MAX_STEPS, description="Held-out eval every k steps; 0 = off."
    )
    eval_size: Int = Field(
        32, ge=1, le=10_000, description="Held-out prompts per evaluation (at most)."
    )
    eval_temperature: Float = Field(
        0.0,
        ge=0.0,
        le=10.0,
        description="Sampling temperature of the held-out eval; 0 = greedy (the default). The "
        "paper's avg@k is temperature 1 with `eval_samples` = k.",
    )
    eval_samples: Int = Field(
        1,
        ge=1,
        le=64,
        description="Responses per held-out prompt; `eval/accuracy` is their mean reward. "
        "More than 1 needs `eval_temperature` > 0 (greedy responses are all the same).",
    )
    checkpoint_every: Int = Field(
        0, ge=0, le=MAX_STEPS, description="Checkpoint every k steps; 0 = at the end."
    )
    checkpoint_keep_last: Int | None = Field(
        None,
        ge=1,
        le=MAX_STEPS,
        description="Retention: keep the files of the newest k checkpoints and delete older "
        "ones' after each save (their rows stay, marked deleted); pinned checkpoints and the "
        "newest one are never deleted. None = keep every checkpoint.",
    )

    @property
    def responses_per_step(self) -> int:
        return self.prompts_per_step * self.group_size

    @property
    def minibatch_size(self) -> int:
        return self.responses_per_step // self.num_minibatches

    @model_validator(mode="after")
    def _schedule_is_possible(self) -> TrainingConfig:
        n_responses = self.responses_per_step
        if n_responses > MAX_RESPONSES_PER_STEP:
            raise ValueError(
                f"prompts_per_step × group_size = {n_responses} exceeds "
                f"{MAX_RESPONSES_PER_STEP} responses per step"
            )
        if n_responses % self.num_minibatches:
            raise ValueError(
                f"num_minibatches={self.num_minibatches} does not divide prompts_per_step × "
                f"group_size = {n_responses}"
            )
        if self.eval_samples > 1 and self.eval_temperature == 0.0:
            raise ValueError(
                f"eval_samples={self.eval_samples} with eval_temperature=0 repeats one greedy "
                "response; set eval_temperature > 0 or eval_samples=1"
            )
        tp = self.distributed.tensor_parallel
        if tp is not None and tp > 1 and self.rollout.engine != "vllm":
            raise ValueError(
                f"distributed.tensor_parallel={tp} shards a vLLM engine; set rollout.engine "
                "to 'vllm' or leave tensor_parallel unset"
            )
        mode = self.algorithm.advantage
        if self.group_size == 1 and mode in GROUP_ADVANTAGE_MODES:
            raise ValueError(
                f"group_size=1 with the group-based advantage {mode!r} gives zero advantages; "
                "use group_size ≥ 2"
            )
        return self
