"""Routing Replay vocabulary shared by the API and the worker: which MoE families keel can hook,
the one wording of each "replay cannot work here" error (the API's 422 at job creation and the
worker's failure at the first step say the same), and the replay summary a job reports.

The worker's router classes (`keel_worker.engines.routing_replay.SUPPORTED_ROUTER_CLASSES`) are
those of exactly these `model_type`s; a contract test keeps the two lists equal.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from keel.types.common import ResponseModel

ResolvedReplay = Literal["none", "R2", "R3"]

# transformers `model_type` of the MoE families whose `*TopKRouter` keel hooks.
REPLAY_MOE_MODEL_TYPES: tuple[str, ...] = (
    "qwen3_moe",
    "qwen2_moe",
    "mixtral",
    "olmoe",
    "qwen3_next",
    "qwen3_5_moe",
)


def dense_replay_message(mode: str, model_name: str) -> str:
    """R2/R3 asked for a dense model (no router to replay)."""
    return (
        f"Routing Replay {mode} needs a Mixture-of-Experts model; {model_name!r} is dense "
        "(use routing_replay='none' or 'auto')"
    )


def unsupported_moe_message(mode: str, model_name: str, family: str) -> str:
    """A replay mode other than `none` asked for an MoE family whose routers keel cannot hook."""
    return (
        f"Routing Replay {mode} cannot run on {model_name!r}: it is a Mixture-of-Experts model "
        f"of family {family!r}, whose routers keel cannot hook (supported families: "
        f"{', '.join(REPLAY_MOE_MODEL_TYPES)}); use routing_replay='none' to train it without "
        "replay or routing metrics"
    )


def missing_routes_message(mode: str) -> str:
    """The rollout engine returned no routed experts for an MoE model under a replay mode that
    needs them (R3 replays them, `auto` measures with them)."""
    return (
        f"Routing Replay {mode} needs the experts the rollout engine routed each token to, and "
        "the engine returned none for this MoE model (for vLLM: enable_return_routed_experts); "
        "use routing_replay='none' or 'R2'"
    )


class RoutingReplaySummary(ResponseModel):
    """The Routing Replay mode a job runs with and why (`auto` re-decides every few steps)."""

    requested: Literal["none", "R2", "R3", "auto"] = Field(
        description="`config.routing_replay` as the job asked for it."
    )
    mode: ResolvedReplay = Field(
        description="The mode in force: the job's next steps run with it (the step metric "
        "`routing/replay_mode` records the mode each step ran with)."
    )
    reason: str = Field(description="Why: the rule's branch and the numbers it looked at.")
    decided_at_step: int = Field(
        description="The step whose measurements chose `mode` (0: before any measurement)."
    )
    switches: int = Field(0, description="How often `auto` changed the mode during the job.")
