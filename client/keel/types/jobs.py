"""Wire types of the jobs resource: the create request, the job, its events.

A job is a `TrainingConfig` (model, algorithm, rollout, optimizer, steps, ...; owned by
`keel.types.training`, whose validators reject impossible settings at creation) plus where its
prompts come from and how its rollouts are rewarded (docs/architecture.md §6).
"""

from __future__ import annotations

import re
from datetime import datetime
from typing import Annotated, Any, Literal, get_args

from pydantic import Field, HttpUrl, model_validator

from keel.types.agents import AgentPrompts
from keel.types.algorithm import AlgorithmConfig
from keel.types.common import Float, Int, RequestModel, ResponseModel, Text
from keel.types.prompts import PromptIn
from keel.types.routing import RoutingReplaySummary
from keel.types.training import TrainingConfig, VerifierName

JobStatus = Literal["queued", "running", "paused", "succeeded", "failed", "cancelled"]
TERMINAL_STATUSES: frozenset[str] = frozenset({"succeeded", "failed", "cancelled"})
JobRequest = Literal["pause", "cancel"]

# What a running job's worker is doing, as it last reported (each report is progress).
JobPhase = Literal[
    "load", "prompts", "generate", "rewards", "update", "evaluate", "checkpoint", "calls"
]
JOB_PHASES: tuple[str, ...] = get_args(JobPhase)
# A builtin reward source's verifier: the task's own reward, one that compares with each prompt's
# reference (keel.types.training.VerifierName), or a regular expression the completion must match.
RewardVerifier = Literal["task", "regex"] | VerifierName
REFERENCE_VERIFIERS: frozenset[str] = frozenset(get_args(VerifierName))


# ---- prompt sources ----------------------------------------------------------------------------


class TaskPrompts(RequestModel):
    """Prompts of `config.task` (a built-in task, or its inline `dataset` items)."""

    type: Literal["task"] = Field(
        "task", description="`task`: the training split of `config.task`, in shuffled epochs."
    )


class DatasetPrompts(RequestModel):
    """A fixed dataset given at creation: inline, or a JSONL file uploaded to `/v1/files`.

    The worker cycles through it in order (epochs) from a data cursor kept in checkpoints.
    """

    type: Literal["dataset"] = Field(
        "dataset", description="`dataset`: a fixed list of prompts, cycled through in order."
    )
    prompts: list[PromptIn] | None = Field(
        default=None,
        min_length=1,
        description="The prompts inline, each with an optional reference; give this or `file_id`.",
    )
    file_id: Text | None = Field(
        default=None,
        max_length=40,
        description="A JSONL file uploaded to `POST /v1/files`, one prompt object per line; "
        "give this or `prompts`.",
    )

    @model_validator(mode="after")
    def _exactly_one(self) -> DatasetPrompts:
        if (self.prompts is None) == (self.file_id is None):
            raise ValueError("give exactly one of `prompts` (inline) or `file_id` (uploaded)")
        return self


class ClientPrompts(RequestModel):
    """Prompts posted by the client in batches; the job waits when it runs out."""

    type: Literal["client"] = Field(
        "client",
        description="`client`: prompts posted to `POST /v1/jobs/{id}/prompts`, used in the "
        "order they arrive.",
    )


PromptSource = Annotated[
    TaskPrompts | DatasetPrompts | ClientPrompts | AgentPrompts, Field(discriminator="type")
]
# The `type` of each prompt source: a stored job keeps the source without its inline prompts.
PromptSourceType = Literal["task", "dataset", "client", "agent"]
# What a stored job's prompt source may be besides: `tinker`, a model made through the
# Tinker-compatible API (never through `POST /v1/jobs`), whose calls are its prompts.
StoredPromptType = Literal[PromptSourceType, "tinker"]


# ---- reward sources ----------------------------------------------------------------------------


MAX_DEADLINE_S = 7 * 24 * 3600.0


class _RewardBase(RequestModel):
    deadline_s: Float | None = Field(
        default=None,
        gt=0,
        le=MAX_DEADLINE_S,
        description="Seconds a rollout waits for its reward (at most 7 days); default server's.",
    )
    min_value: Float | None = Field(default=None, description="Rewards below are rejected (422).")
    max_value: Float | None = Field(default=None, description="Rewards above are rejected (422).")
    drop_incomplete_groups: bool = Field(
        default=True, description="Drop a group with an expired member (never scored as 0)."
    )

    @model_validator(mode="after")
    def _range(self) -> _RewardBase:
        both = self.min_value is not None and self.max_value is not None
        if both and self.min_value > self.max_value:
            raise ValueError("min_value must not exceed max_value")
        return self


class BuiltinReward(_RewardBase):
    """A verifier run inside the worker (`task` = the built-in task's own reward)."""

    type: Literal["builtin"] = Field(
        "builtin", description="`builtin`: scored inside the worker by `verifier`."
    )
    verifier: RewardVerifier = Field(
        default="task",
        description="`task`: the reward of `config.task`; `exact_match`/`numeric`/`math_verify`: "
        "compare the completion with each prompt's `reference`; `regex`: 1 when `pattern` "
        "matches somewhere in the completion, else 0.",
    )
    pattern: Text | None = Field(
        default=None,
        min_length=1,
        max_length=1000,
        description="The `regex` verifier's pattern, in RE2 syntax (linear time: no "
        "backreferences or lookaround; the API refuses those with a 422).",
    )

    @model_validator(mode="after")
    def _pattern_only_for_regex(self) -> BuiltinReward:
        if (self.verifier == "regex") != (self.pattern is not None):
            raise ValueError("`pattern` goes with the `regex` verifier, and only with it")
        if self.pattern is not None:
            try:
                re.compile(self.pattern)
            except re.error as exc:
                raise ValueError(f"`pattern` is not a regular expression: {exc}") from None
        return self


class WebhookReward(_RewardBase):
    """Each step's rollouts are POSTed to `url`, signed (see `keel.webhooks`)."""

    type: Literal["webhook"] = Field(
        "webhook",
        description="`webhook`: each step's rollouts are POSTed to `url`; rewards come back "
        "in the reply or are posted later.",
    )
    url: HttpUrl = Field(
        description="Where each step's rollouts go, in one signed POST per step. It must "
        "resolve to a public address unless the operator allows it (`KEEL_WEBHOOK_ALLOW`)."
    )
    secret: Text | None = Field(
        default=None,
        min_length=16,
        max_length=200,
        description="HMAC key; generated and returned once if unset.",
    )
    timeout_s: Float = Field(
        default=10.0,
        gt=0,
        le=300.0,
        description="Seconds one delivery attempt may take, connect to the reply's last byte.",
    )
    max_attempts: Int = Field(
        default=5,
        ge=1,
        le=20,
        description="Delivery attempts per step, the first included. Connection errors, 408, "
        "409, 425, 429 and 5xx are retried after `KEEL_WEBHOOK_BACKOFF_S`, doubled each time up "
        "to `KEEL_WEBHOOK_BACKOFF_MAX_S`, until the reward deadline; another 4xx fails at "
        "once. Undelivered rollouts still accept posted rewards.",
    )


class ExternalReward(_RewardBase):
    """No push: reward services poll `awaiting_reward` rollouts with the job's reward token."""

    type: Literal["external"] = Field(
        "external",
        description="`external`: nothing is pushed; reward services read the awaiting "
        "rollouts and post rewards with the job's reward token.",
    )


RewardSource = Annotated[
    BuiltinReward | WebhookReward | ExternalReward, Field(discriminator="type")
]


# ---- jobs --------------------------------------------------------------------------------------


class JobCreate(RequestModel):
    name: Text | None = Field(
        default=None, max_length=200, description="A label of your choice; need not be unique."
    )
    config: TrainingConfig = Field(
        description="The training run (`TrainingConfig`): model, task, objective, schedule."
    )
    prompts: PromptSource = Field(
        default_factory=TaskPrompts,
        description="Where training prompts come from, by `type`: `task`, `dataset`, `client`, "
        "or `agent` (episodes your harness runs through the OpenAI-compatible endpoint).",
    )
    reward: RewardSource = Field(
        default_factory=BuiltinReward,
        description="How rollouts are rewarded, by `type`: `builtin`, `webhook` or `external`.",
    )

    @model_validator(mode="after")
    def _sources_fit(self) -> JobCreate:
        reward, prompts = self.reward, self.prompts
        if isinstance(prompts, AgentPrompts) and not isinstance(reward, ExternalReward):
            raise ValueError(
                "agent episodes are rewarded by the harness that runs them: use "
                '`reward: {"type": "external"}`'
            )
        if not isinstance(reward, BuiltinReward):
            return self
        if reward.verifier == "task" and not isinstance(prompts, TaskPrompts):
            raise ValueError(
                "the `task` verifier scores `config.task` prompts only; use a reference verifier "
                f"({', '.join(sorted(REFERENCE_VERIFIERS))}), `regex`, or a webhook/external "
                "reward source"
            )
        if reward.verifier in REFERENCE_VERIFIERS and isinstance(prompts, TaskPrompts):
            raise ValueError(f"verifier `{reward.verifier}` needs dataset or client prompts")
        inline = isinstance(prompts, DatasetPrompts) and prompts.prompts
        if reward.verifier in REFERENCE_VERIFIERS and inline:
            missing = [i for i, p in enumerate(prompts.prompts) if p.reference is None]
            if missing:
                raise ValueError(
                    f"verifier `{reward.verifier}` needs a `reference` on every prompt; "
                    f"missing at positions {missing[:10]}"
                )
        return self


class GuardSummary(ResponseModel):
    """What the stability guard (`config.guard`) did so far in a job."""

    triggers: int = Field(default=0, description="Trigger firings so far (alerts included).")
    last_reason: str | None = Field(
        default=None, description="Why the last trigger fired (and what the guard did)."
    )
    last_trigger: str | None = Field(default=None, description="The last trigger that fired.")
    last_step: int | None = Field(default=None, description="The step it fired at.")
    rollbacks: int = Field(default=0, description="Rollbacks done (bounded by the config).")
    lr_scale: float = Field(
        default=1.0,
        description="Factor the rollbacks left on `config.optimizer.lr`; a resume with a new "
        "learning rate resets it to 1.",
    )


class DeviceProfile(ResponseModel):
    """What one device of the worker computes natively, as advertised and measured at job start."""

    device: str = Field(description="`cpu` or `cuda:<index>`.")
    name: str = Field(description="CPU model name or GPU name.")
    capability: str = Field(
        description="torch's CPU capability (AVX2, AVX512, ...) or the CUDA compute capability."
    )
    bf16_support: list[str] = Field(
        description="What the device advertises for bf16: its CPU flags among amx_bf16 and "
        "avx512_bf16, or `cuda`; empty when nothing."
    )
    gemm_size: int = Field(description="Side of the square GEMM timed per dtype.")
    gemm_gflops: dict[str, float] = Field(description="Measured GFLOP/s per dtype (fp32, bf16).")
    bf16_native: bool = Field(
        description="bf16 is advertised and measured at least as fast as fp32: bf16 work runs in "
        "bf16; otherwise it runs in fp32 on bf16-rounded values."
    )


class ComputeChoice(ResponseModel):
    """Where a part of the job computes and in which dtype, for the precision it was asked for."""

    device: str = Field(description="The device it runs on (`cpu`, `cuda`).")
    requested: str = Field(description="`rollout.precision` or `train_dtype` as configured.")
    compute_dtype: Literal["fp32", "bf16"] = Field(
        description="The dtype the arithmetic runs in. fp32 under a bf16 request means emulated "
        "bf16: the same bf16-rounded weights and activations, computed in fp32 because the device "
        "is faster there."
    )


class JobRuntime(ResponseModel):
    """The compute choices the worker made for the job from its measured device profiles."""

    rollout: ComputeChoice = Field(description="The rollout engine.")
    training: ComputeChoice = Field(description="The trainer's forward and backward passes.")
    devices: list[DeviceProfile] = Field(description="The profiles the choices were made from.")


class Job(ResponseModel):
    id: str
    project_id: str
    name: str | None = None
    status: JobStatus
    requested: JobRequest | None = Field(
        default=None, description="A pause or cancel the worker has not acted on yet."
    )
    config: dict[str, Any]
    prompts: dict[str, Any] = Field(description="Prompt source without inline prompts.")
    reward: dict[str, Any] = Field(description="Reward source without its secret.")
    num_prompts: int = 0
    step: int = Field(default=0, description="Last step whose update completed.")
    steps: int | None = None
    policy_version: int = 0
    error: str | None = None
    attempts: int = 0
    created_at: datetime
    updated_at: datetime
    started_at: datetime | None = None
    finished_at: datetime | None = None
    heartbeat_at: datetime | None = Field(
        default=None,
        description="Last lease heartbeat of the worker running the job; a running job whose "
        "heartbeat is older than the server's lease timeout is taken over and resumed.",
    )
    phase: JobPhase | None = Field(
        default=None,
        description="What the worker running the job is doing (load, prompts, generate, "
        "rewards, update, evaluate, checkpoint, calls); null when no worker runs it.",
    )
    progress_at: datetime | None = Field(
        default=None,
        description="When the worker last made progress (entered a phase). A job with no "
        "progress for the server's bound for its phase is failed as stuck, naming the phase.",
    )
    routing_replay: RoutingReplaySummary | None = Field(
        default=None,
        description="The Routing Replay mode the job runs with and why (`auto` re-decides from "
        "measurements); None until its first step.",
    )
    guard: GuardSummary = Field(
        default_factory=GuardSummary, description="The stability guard's triggers and reason."
    )
    runtime: JobRuntime | None = Field(
        default=None,
        description="Set by the worker when it starts the job: the compute dtypes it chose and "
        "the measured GEMM rates behind them (null until a worker has started it).",
    )


class JobCreated(Job):
    """Returned once by `POST /v1/jobs`: the only time the secrets are shown."""

    reward_token: str = Field(
        description="Token that may only read and reward this job's rollouts."
    )
    webhook_secret: str | None = None


class JobResume(RequestModel):
    """Optional changes a paused job resumes with (`POST /v1/jobs/{id}/resume`), validated
    against the job's whole config as at creation."""

    lr: Float | None = Field(
        default=None,
        gt=0.0,
        lt=1.0,
        description="A new AdamW learning rate (`config.optimizer.lr`); resets the guard's "
        "rollback scale to 1.",
    )
    algorithm: AlgorithmConfig | None = Field(
        default=None, description="Another objective (`config.algorithm`), e.g. with clipping."
    )

    def apply(self, config: TrainingConfig) -> TrainingConfig:
        """The job's config with these changes; raises pydantic's ValidationError when the
        result is not a valid run."""
        changed = config.model_dump(mode="json")
        if self.lr is not None:
            changed["optimizer"]["lr"] = self.lr
        if self.algorithm is not None:
            changed["algorithm"] = self.algorithm.model_dump(mode="json")
        return TrainingConfig.model_validate(changed)


EventType = Literal["status", "metrics", "checkpoint", "webhook", "guard", "prompts"]


class JobEvent(ResponseModel):
    """One Server-Sent Event of `GET /v1/jobs/{id}/events` (its `id:` is `id`)."""

    id: int
    job_id: str
    type: EventType
    data: dict[str, Any]
    created_at: datetime
