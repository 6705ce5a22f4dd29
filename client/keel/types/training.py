"""Wire models for one training run: model, task, rollout, optimizer and the step schedule.

These are the only place where the defaults of a run live (docs/house-style.md rule 1). The
schedule follows docs/concepts/algorithm.md §3.3: each global step samples `prompts_per_step`
prompts × `group_size` responses, splits them into `num_minibatches` mini-batches and applies one
AdamW update per mini-batch. Routing Replay `auto` is decided from measured routing disagreement by
the rule in `keel_worker.training.replay_auto` (docs/concepts/routing-replay.md §4), re-decided
every `routing_replay_every` steps.
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, model_validator

from keel.types.algorithm import AlgorithmConfig
from keel.types.common import MAX_INT, Float, Int, Text
from keel.types.guard import GuardConfig
from keel.types.prompts import MAX_PROMPT_CHARS

RoutingReplayMode = Literal["none", "R2", "R3", "auto"]
# Verifiers that compare a completion with a reference answer (a dataset task's, or a builtin
# reward source's): `math_verify` is the paper's math reward (symbolic equivalence, HF Math-Verify).
VerifierName = Literal["exact_match", "numeric", "math_verify"]
# The worker's task registry (`keel_worker.training.tasks.TASKS`) has exactly these names; a
# contract test keeps them equal, so an unknown task is a 422 at job creation.
TaskName = Literal["addition", "dataset"]
# What each one does, and which serving stack does it: keel_worker/engines/precision.py.
RolloutPrecision = Literal[
    "fp32",
    "bf16",
    "fp8",
    "fp8_tensor",
    "int4",
    "int3",
    "int4_channel",
    "int4_router",
    "kv_fp8",
    "int4_kv_fp8",
    "int2",
    "int3_kv_fp8",
]

# Advantage modes that subtract a baseline estimated from the other members of the group: with a
# single response per prompt every advantage would be exactly zero (or undefined for rloo).
GROUP_ADVANTAGE_MODES = frozenset({"group_mean", "mean_std", "rloo"})

# Upper bounds of the schedule (docs/concepts/tenancy.md §7): far above any run keel is built for,
# low enough that no request can ask a worker for unbounded memory or time.
MAX_STEPS = 1_000_000
MAX_RESPONSES_PER_STEP = 65_536
MAX_TASK_ITEMS = 1_000_000


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


DEFAULT_MODEL = "smollm2-135m-instruct"


class ModelConfig(_Strict):
    """Which policy to train: a model by `name`, or one of the project's own checkpoints by
    `checkpoint_id` (how a user continues training), never both."""

    name: str | None = Field(
        DEFAULT_MODEL,
        min_length=1,
        max_length=1024,
        description="A built-in model name, a hub id 'org/name' (needs a machine that is "
        "online), or an absolute path to a Hugging Face directory or .gguf file under a model "
        "root the operator allows (`KEEL_MODEL_ROOTS`). Null when `checkpoint_id` is given.",
    )
    checkpoint_id: Text | None = Field(
        None,
        min_length=1,
        max_length=40,
        description="Start from the weights of a checkpoint of this project (`ckpt_…`): a full "
        "fine-tune's weights, or a LoRA job's merged weights (base + adapter). The new job "
        "starts at step 0 with a fresh optimizer; another project's id is a 404.",
    )

    @model_validator(mode="before")
    @classmethod
    def _checkpoint_replaces_the_default_name(cls, data: object) -> object:
        if isinstance(data, dict) and data.get("checkpoint_id") is not None and "name" not in data:
            return {**data, "name": None}
        return data

    @model_validator(mode="after")
    def _one_source(self) -> ModelConfig:
        if (self.name is None) == (self.checkpoint_id is None):
            raise ValueError("give the model as exactly one of 'name' or 'checkpoint_id'")
        return self

    @property
    def label(self) -> str:
        """How messages name the model: its name, or its checkpoint id."""
        return self.name if self.name is not None else f"checkpoint {self.checkpoint_id}"


class TaskItem(_Strict):
    """One prompt with its reference answer."""

    prompt: Text = Field(
        min_length=1,
        max_length=MAX_PROMPT_CHARS,
        description="The user turn; the chat template is applied.",
    )
    answer: Text = Field(
        max_length=MAX_PROMPT_CHARS, description="Reference answer the verifier compares against."
    )


class TaskConfig(_Strict):
    """Where prompts and built-in rewards come from.

    `name` is a built-in task (`addition`) or `dataset`, which needs `items` and scores with
    `verifier`. Either way a deterministic held-out split is kept for evaluation.
    """

    name: TaskName = Field(
        "addition",
        description="`addition`: the built-in task, the 100 sums a + b of digits 0–9, rewarded "
        "1 when the completion's last integer is the sum; `dataset`: the `items` given here, "
        "scored by `verifier`.",
    )
    items: list[TaskItem] | None = Field(
        None, max_length=MAX_TASK_ITEMS, description="The prompts of a `dataset` task."
    )
    verifier: VerifierName = Field(
        "numeric", description="How a `dataset` task scores a completion against its answer."
    )
    held_out_fraction: Float = Field(
        0.2, gt=0.0, lt=1.0, description="Share of the items kept out of training for eval."
    )
    split_seed: Int = Field(
        0, ge=0, le=MAX_INT, description="Seed of the deterministic train / held-out split."
    )

    @model_validator(mode="after")
    def _items_only_for_datasets(self) -> TaskConfig:
        if self.name == "dataset" and not self.items:
            raise ValueError("task 'dataset' needs a non-empty 'items' list")
        if self.name != "dataset" and self.items is not None:
            raise ValueError(f"built-in task {self.name!r} takes no 'items'; use name='dataset'")
        if self.items is not None and len(self.items) < 2:
            raise ValueError("a dataset needs at least 2 items (one to train, one held out)")
        return self


class RolloutConfig(_Strict):
    """How the inference engine samples (the μ_θold of docs/concepts/algorithm.md §1.1)."""

    engine: Literal["hf", "vllm"] = Field(
        "hf",
        description="`hf`: transformers on the CPU, also on a CUDA worker (its decode loop is "
        "CPU-only; the trainer still uses the GPU); `vllm`: the GPU rollout engine.",
    )
    precision: RolloutPrecision = Field(
        "fp32",
        description="Inference weights: fp32 (exact copy), bf16, fp8 (float8_e4m3fn, a scale per "
        "output channel), fp8_tensor (one scale per tensor, fp8 activations, as vLLM's fp8), "
        "int4 (4-bit, a scale and zero point per group of 128 inputs, as AWQ/GPTQ), int3 (the "
        "same with 3 bits, as GPTQ bits=3), int4_channel (symmetric 4-bit, one scale per output "
        "channel, no groups), int4_router (int4 with the MoE router gates quantized too, as "
        "bitsandbytes 4-bit), kv_fp8 (fp32 weights, keys and values in an fp8 KV cache with "
        "scale 1, as vLLM's kv_cache_dtype=fp8), int4_kv_fp8 and int3_kv_fp8 (both), int2 (2-bit, "
        "groups of 16, as llama.cpp Q2_K). Every one but fp32, bf16 and fp8 is an emulation of "
        "the `hf` engine.",
    )
    max_new_tokens: Int = Field(
        64,
        ge=1,
        le=32768,
        description="Longest response in tokens (one that reaches it ends with finish reason "
        "`length`); also the held-out eval's limit and the constant divisor of "
        "`seq_mean_token_sum_norm`.",
    )
    temperature: Float = Field(
        1.0,
        gt=0.0,
        le=10.0,
        description="Sampling temperature T of the rollouts. The trainer divides its logits by "
        "the same T, so π_θ and μ are the same distribution; the held-out eval uses "
        "`eval_temperature`.",
    )
    top_p: Float = Field(
        1.0,
        gt=0.0,
        le=1.0,
        description="Nucleus sampling: draw only from the smallest set of most likely tokens "
        "whose probability mass reaches top_p; 1 = off. As with top_k, μ is reported from the "
        "full distribution.",
    )
    top_k: Int = Field(
        0,
        ge=0,
        le=1_000_000,
        description="Sample only among the k most likely tokens; 0 = off. Like top_p, it "
        "truncates what is drawn while μ is reported from the full distribution (vLLM's raw "
        "logprobs), a sampling mismatch no IS weight sees.",
    )


class OptimizerConfig(_Strict):
    """AdamW and gradient clipping (the paper states none of these; docs/concepts/algorithm.md
    §3.1 item 6)."""

    lr: Float = Field(
        1e-6,
        gt=0.0,
        lt=1.0,
        description="AdamW learning rate, constant for the whole run (no schedule). Each guard "
        "rollback multiplies it by `guard.rollback.lr_scale`; a resume may set a new one.",
    )
    weight_decay: Float = Field(
        0.0,
        ge=0.0,
        le=10.0,
        description="AdamW's decoupled weight decay on the trained parameters (a LoRA run's "
        "adapters only); 0 = off.",
    )
    betas: tuple[Float, Float] = Field(
        (0.9, 0.999),
        description="AdamW's (β1, β2): decay rates of the running averages of the gradient and "
        "of its square; each in [0, 1).",
    )
    eps: Float = Field(
        1e-8,
        gt=0.0,
        le=1.0,
        description="AdamW's ε, added to the root of the squared-gradient average in the "
        "update's denominator.",
    )
    grad_clip: Float | None = Field(
        1.0, gt=0.0, le=1e6, description="Max global grad norm; None = off."
    )

    @model_validator(mode="after")
    def _betas_in_range(self) -> OptimizerConfig:
        if not all(0.0 <= b < 1.0 for b in self.betas):
            raise ValueError("betas must lie in [0, 1)")
        return self


class WandbConfig(_Strict):
    """Weights & Biases run of a job (the worker needs the `wandb` extra). `online` reads the
    worker's own W&B login (`WANDB_API_KEY`); `offline` keeps the run under the job's artifacts
    for `wandb sync`."""

    project: Text = Field(
        min_length=1,
        max_length=128,
        description="The W&B project of the run; the run is named after the job (its run "
        "directory in-process) and a resumed job continues it.",
    )
    mode: Literal["online", "offline"] = Field(
        "online",
        description="`online`: log to W&B as it runs; `offline`: write the run under the "
        "job's artifacts only.",
    )


class LoggingConfig(_Strict):
    """Where the worker also writes each step's metrics, under keel's own metric names."""

    tensorboard: bool = Field(
        False,
        description="Event files under the job's artifacts `tensorboard/` folder "
        "(the worker needs the `tensorboard` extra).",
    )
    wandb: WandbConfig | None = Field(None, description="A W&B run per job; None = off.")


LoraModuleName = Annotated[Text, Field(min_length=1, max_length=256)]
LoraTargets = (
    Literal["all-linear"] | Annotated[list[LoraModuleName], Field(min_length=1, max_length=256)]
)


class LoraConfig(_Strict):
    """Train low-rank adapters (LoRA, arXiv 2106.09685) with `peft` instead of every weight.

    Each adapted linear layer W (out × in) becomes W + (alpha / rank) · B A with A (rank × in)
    and B (out × rank, zero at the start, so step 0 samples the base model exactly); only A and
    B are trained and carry optimizer state. The routers of an MoE model stay frozen (they are
    never adapted, and naming one in `target_modules` is an error): routing changes only through
    the adapted layers around it, and Routing Replay hooks the same router modules as in full
    fine-tuning. The rollout engine samples from the merged weights W + (alpha / rank) · B A at
    its precision. LoRA usually wants a learning rate about 10× that of full fine-tuning.
    """

    rank: Int = Field(16, ge=1, le=1024, description="r: the inner dimension of A and B.")
    alpha: Float = Field(32.0, gt=0.0, le=1e6, description="The update is scaled by alpha / rank.")
    dropout: Float = Field(
        0.0,
        ge=0.0,
        lt=1.0,
        description="Dropout on each adapter's input in the gradient forwards only (π_old and "
        "the rollouts never use it); 0 = off, the paper's setting. With dropout > 0 the ratio "
        "π_θ/π_old of the first mini-batch is no longer exactly 1 at θ = θ_old.",
    )
    target_modules: LoraTargets = Field(
        "all-linear",
        description="`all-linear`: every `nn.Linear` of the decoder (attention, dense and "
        "shared-expert MLPs), not the LM head, embeddings or routers; fused MoE expert "
        "tensors are not adapted. Or a list of module names, each matching a module's full "
        "name or its last parts (`q_proj` matches every `...self_attn.q_proj`), as in peft.",
    )


MAX_PROCESSES = 1024
MAX_NODES = 256


class DistributedConfig(_Strict):
    """How many processes train the job (docs/how-to/distributed.md). With `processes` × `nodes`
    > 1 the worker that leases the job starts that many ranks with torch.distributed's launcher
    (c10d rendezvous, FSDP2 sharding); the default, 1, trains in the worker's own process."""

    processes: Int = Field(
        1,
        ge=1,
        le=MAX_PROCESSES,
        description="Trainer processes (ranks) on each machine, one per GPU; at most what a "
        "live worker advertises (`KEEL_WORKER_MAX_PROCESSES`), a 422 past it.",
    )
    nodes: Int = Field(
        1,
        ge=1,
        le=MAX_NODES,
        description="Machines the job spans, each running `processes` ranks; more than 1 needs "
        "that many live workers advertising `processes` and a reachable rendezvous.",
    )
    tensor_parallel: Int | None = Field(
        None,
        ge=1,
        le=64,
        description="GPUs one vLLM rollout engine shards the model over (`rollout.engine` "
        "`vllm` only); None = the worker's `KEEL_VLLM_TENSOR_PARALLEL_SIZE`.",
    )

    @property
    def world_size(self) -> int:
        return self.processes * self.nodes


def _default_algorithm() -> AlgorithmConfig:
    return TypeAdapter(AlgorithmConfig).validate_python({"name": "minirl"})


class TrainingConfig(_Strict):
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
