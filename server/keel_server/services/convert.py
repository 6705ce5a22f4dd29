"""Row → wire-type conversions (one place, so every endpoint shows a resource the same way)."""

from __future__ import annotations

import json

from keel.types.agents import Episode, EpisodeTurn
from keel.types.checkpoints import Checkpoint
from keel.types.jobs import Job
from keel.types.prompts import Prompt
from keel.types.rollouts import Rollout
from keel_server.db import models, stored
from keel_server.db.rollouts import RewardState


def job(row: models.Job) -> Job:
    return Job(
        id=row.id,
        project_id=row.project_id,
        name=row.name,
        status=row.status,
        requested=row.requested,
        config=row.config,
        prompts=row.prompt_source,
        reward=row.reward_source,
        num_prompts=row.num_prompts,
        step=row.step,
        steps=row.steps,
        policy_version=row.policy_version,
        error=row.error,
        attempts=row.attempts,
        created_at=row.created_at,
        updated_at=row.updated_at,
        started_at=row.started_at,
        finished_at=row.finished_at,
        heartbeat_at=row.heartbeat_at,
        phase=row.phase,
        progress_at=row.progress_at,
        routing_replay=row.routing_replay,
        guard=stored.guard_summary(row),
        runtime=row.runtime,
    )


def rollout(row: models.Rollout) -> Rollout:
    return Rollout(
        id=row.id,
        job_id=row.job_id,
        step=row.step,
        group_index=row.group_index,
        sample_index=row.sample_index,
        prompt=row.prompt,
        reference=row.reference,
        completion=row.completion,
        token_count=row.token_count,
        finish_reason=row.finish_reason,
        status=row.status,
        reward=row.reward,
        policy_version=row.policy_version,
        deadline_at=row.deadline_at,
        created_at=row.created_at,
        rewarded_at=row.rewarded_at,
        expired_at=row.expired_at,
    )


def checkpoint(row: models.Checkpoint) -> Checkpoint:
    return Checkpoint(
        id=row.id,
        job_id=row.job_id,
        step=row.step,
        policy_version=row.policy_version,
        kinds=row.kinds,
        pinned=row.pinned,
        deleted_at=row.deleted_at,
        created_at=row.created_at,
    )


def prompt(row: models.Prompt) -> Prompt:
    return Prompt(
        id=row.id,
        job_id=row.job_id,
        index=row.index,
        text=row.text,
        reference=row.reference,
        created_at=row.created_at,
    )


def rollout_state(row: RewardState) -> dict:
    """The state a 409 about a reward carries."""
    return {
        "rollout_id": row.id,
        "status": row.status,
        "reward": row.reward,
        "deadline_at": row.deadline_at.isoformat(),
    }


def episode(row: models.Rollout, base_url: str, api_key: str | None) -> Episode:
    return Episode(
        id=row.id,
        job_id=row.job_id,
        step=row.step,
        group_index=row.group_index,
        sample_index=row.sample_index,
        task=json.loads(row.prompt),
        base_url=base_url,
        api_key=api_key,
        status=row.status,
        deadline_at=row.deadline_at,
    )


def episode_turn(row: models.EpisodeTurn) -> EpisodeTurn:
    return EpisodeTurn(
        index=row.index,
        sequence_index=row.sequence_index,
        messages=row.messages,
        reply=row.reply,
        context_tokens=len(row.context_ids),
        sampled_tokens=len(row.sampled_ids),
        policy_version=row.policy_version,
        finish_reason=row.finish_reason,
        created_at=row.created_at,
    )
