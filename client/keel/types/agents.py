"""Wire types of agent jobs: episodes a harness claims, and the OpenAI-compatible calls it makes.

An agent job (`prompts: {"type": "agent", "tasks": [...]}`) hands out, per step, G episodes of
each of `prompts_per_step` tasks. An episode is a rollout (its id is the rollout's id) that the
harness drives through `POST /v1/openai/chat/completions` with the episode's own key, turn after
turn, and then rewards once (docs/concepts/agents.md).

The OpenAI request models accept what the `openai` SDK sends for the features keel serves and
refuse the rest by name (`stream`, `n` > 1, ...): a harness finds out at its first call, not from
silently different behaviour. The answers are OpenAI's objects with a `keel` object added (the
sampled token ids, their log-probabilities and the policy version that sampled them), laid out
by the worker (`keel_worker.agents.replies`); only their error envelope is typed here.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

from pydantic import Field, model_validator

from keel.types.common import Float, Int, RequestModel, ResponseModel, Text

MAX_TASKS = 10_000
MAX_CLAIM = 256
MAX_MESSAGES = 1_000
MAX_NEW_TOKENS_CAP = 32_768


# ---- the prompt source of an agent job ---------------------------------------------------------


class AgentPrompts(RequestModel):
    """Tasks the job hands to an agent harness, one episode group per task and step."""

    type: Literal["agent"] = Field(
        "agent",
        description="`agent`: episodes driven by your harness through the OpenAI-compatible "
        "endpoint; `prompts_per_step` tasks per step, `group_size` episodes of each.",
    )
    tasks: list[dict[str, Any]] = Field(
        min_length=1,
        max_length=MAX_TASKS,
        description="Task payloads (any JSON objects), handed out in order and cycled; each "
        "episode carries its task to the harness.",
    )


# ---- episodes ----------------------------------------------------------------------------------


class EpisodeClaim(RequestModel):
    max_episodes: Int = Field(
        default=1, ge=1, le=MAX_CLAIM, description="Episodes to claim at most (1 to 256)."
    )
    wait_s: Float = Field(
        default=0.0,
        ge=0.0,
        le=60.0,
        description="Seconds to wait for open episodes when none are open now (at most 60).",
    )


class Episode(ResponseModel):
    """One episode of an agent job: run it with `base_url` + `api_key`, then reward it."""

    id: str = Field(description="The episode's id: its rollout id (reward it there).")
    job_id: str
    step: int = Field(description="The training step the episode belongs to (1-based).")
    group_index: int = Field(description="Which task of the step (the advantage group).")
    sample_index: int = Field(description="Which of the group's G episodes.")
    task: dict[str, Any] = Field(description="The task payload, as given at job creation.")
    base_url: str = Field(description="OpenAI-compatible base URL serving the live policy.")
    api_key: str | None = Field(
        default=None,
        description="The episode's own key (`keel_ep_…`): valid for this episode's calls and "
        "its reward only. Given when the episode is claimed.",
    )
    status: Literal["awaiting_reward", "rewarded", "expired"]
    deadline_at: datetime = Field(description="After this the episode expires (never scored 0).")


class EpisodeClaimed(ResponseModel):
    data: list[Episode]


class EpisodeTurn(ResponseModel):
    """One call of an episode, as the dashboard shows it."""

    index: int
    sequence_index: int = Field(
        description="Which training sequence of the episode the turn extends: a history that "
        "was edited or branched starts a new one."
    )
    messages: list[dict[str, Any]] = Field(
        description="The messages the harness added since the previous turn (all of them on a "
        "new sequence)."
    )
    reply: dict[str, Any] = Field(description="The assistant message keel answered with.")
    context_tokens: int = Field(description="Tokens added as context (no loss) before sampling.")
    sampled_tokens: int = Field(description="Tokens the policy sampled (the trained ones).")
    policy_version: int
    finish_reason: str
    created_at: datetime


class EpisodeDetail(Episode):
    turns: list[EpisodeTurn]
    reward: float | None = None


# ---- the OpenAI-compatible surface ---------------------------------------------------------------


class _OpenAIRequest(RequestModel):
    # The `openai` SDK sends only what the caller set; fields keel does not serve are refused
    # by name below rather than ignored.
    model: Text | None = Field(
        default=None, max_length=200, description="Ignored: the episode's job names the model."
    )
    max_tokens: Int | None = Field(default=None, ge=1, le=MAX_NEW_TOKENS_CAP)
    temperature: Float | None = Field(default=None, ge=0.0, le=2.0)
    top_p: Float | None = Field(default=None, gt=0.0, le=1.0)
    n: Int | None = Field(default=None, ge=1, le=1, description="One choice per call.")
    stream: bool | None = Field(default=None, description="Not served: must be false.")
    seed: Int | None = Field(default=None, description="Ignored: the engine seeds the batch.")
    user: Text | None = Field(default=None, max_length=200)
    logprobs: Any = None
    top_logprobs: Int | None = Field(default=None, ge=0, le=0)
    stop: Any = Field(default=None, description="Not served: must be absent.")

    @model_validator(mode="after")
    def _served(self):
        if self.stream:
            raise ValueError("`stream` is not served; call without streaming")
        if self.stop not in (None, [], ""):
            raise ValueError("`stop` sequences are not served; the policy stops at its EOS")
        return self


class ChatCompletionRequest(_OpenAIRequest):
    messages: list[dict[str, Any]] = Field(min_length=1, max_length=MAX_MESSAGES)
    tools: list[dict[str, Any]] | None = Field(default=None, max_length=128)
    tool_choice: str | dict[str, Any] | None = None
    max_completion_tokens: Int | None = Field(default=None, ge=1, le=MAX_NEW_TOKENS_CAP)
    parallel_tool_calls: bool | None = None
    logprobs: bool | None = None


class CompletionRequest(_OpenAIRequest):
    prompt: Text | list[Int] = Field(
        description="The whole prompt text (tokenized as is), or its token ids."
    )
    echo: bool | None = Field(default=None, description="Not served: must be false.")
    logprobs: Int | None = Field(default=None, ge=0, le=1)

    @model_validator(mode="after")
    def _no_echo(self):
        if self.echo:
            raise ValueError("`echo` is not served")
        if isinstance(self.prompt, list) and not self.prompt:
            raise ValueError("`prompt` holds no token")
        return self


class OpenAIError(ResponseModel):
    message: str
    type: str = Field(description="`invalid_request_error` (4xx) or `server_error` (5xx).")
    param: str | None = None
    code: str = Field(description="keel's error code (`keel.types.errors.ErrorCode`).")


class OpenAIErrorBody(ResponseModel):
    """The error envelope of the OpenAI-compatible routes, as OpenAI's own."""

    error: OpenAIError
