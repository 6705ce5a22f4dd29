"""Agent episodes (docs/concepts/agents.md): claiming them, reading them back, and what a model
call of an episode must satisfy before the API forwards it to the job's policy server.

An episode is a rollout of an agent job; its key (`keel_ep_…`) is derived from the sealing key
and its id, so it is handed out with every claim and never stored.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

from keel.types.agents import EpisodeClaim, EpisodeClaimed, EpisodeDetail
from keel.types.jobs import TERMINAL_STATUSES
from keel_server.db import episodes as episodes_db
from keel_server.db import rollouts as rollouts_db
from keel_server.db import session_scope, stored, utcnow
from keel_server.platform.security import episode_key, sealing_key, serve_secret
from keel_server.services import convert
from keel_server.services.auth import load_job, load_rollout
from keel_server.services.context import Principal, ServiceContext
from keel_server.services.errors import ServiceError, not_found

CLAIM_POLL_S = 0.2
NOT_AN_EPISODE_KEY = (
    "the OpenAI-compatible endpoint takes an episode key (`keel_ep_…`), from a claim"
)


def claim(
    ctx: ServiceContext, principal: Principal, job_id: str, req: EpisodeClaim, *, base_url: str
) -> EpisodeClaimed:
    """Claim up to `max_episodes` open episodes, waiting up to `wait_s` for some to open."""
    give_up_at = time.monotonic() + req.wait_s
    while True:
        with session_scope(ctx.sessions) as session:
            job = load_job(session, principal, job_id, reward_token_ok=True)
            if stored.prompt_type(job) != "agent":
                raise ServiceError(
                    "conflict", f"job {job_id} is not an agent job: it has no episodes"
                )
            if job.status in TERMINAL_STATUSES:
                raise ServiceError(
                    "conflict",
                    f"job {job_id} is {job.status}: it opens no more episodes",
                    state={"job_id": job_id, "status": job.status},
                )
            rollouts_db.expire_due(session, job_id)
            rows = episodes_db.claim(session, job_id, limit=req.max_episodes)
            if rows or time.monotonic() >= give_up_at:
                key = sealing_key(ctx.settings)
                return EpisodeClaimed(
                    data=[convert.episode(row, base_url, episode_key(key, row.id)) for row in rows]
                )
        time.sleep(CLAIM_POLL_S)


def retrieve(
    ctx: ServiceContext, principal: Principal, episode_id: str, *, base_url: str
) -> EpisodeDetail:
    with session_scope(ctx.sessions) as session:
        row, job = load_rollout(session, principal, episode_id)
        if stored.prompt_type(job) != "agent":
            raise not_found("episode", episode_id)
        rollouts_db.expire_due(session, row.job_id, rollout_id=row.id)
        row = rollouts_db.get_rollout(session, episode_id)
        turns = [convert.episode_turn(t) for t in episodes_db.turns_of(session, episode_id)]
        episode = convert.episode(row, base_url, None)
        return EpisodeDetail(**episode.model_dump(), turns=turns, reward=row.reward)


@dataclass(frozen=True)
class PolicyTarget:
    """Where an episode's model call goes: the job's policy server and the secret it expects."""

    url: str
    secret: str


def policy_target(ctx: ServiceContext, principal: Principal) -> PolicyTarget:
    """The policy server of an episode key's episode, once the episode and its job are open for
    a model call: 409 for an episode that ended, 503 while no worker serves the job."""
    if principal.episode_id is None:
        raise ServiceError("forbidden", NOT_AN_EPISODE_KEY)
    with session_scope(ctx.sessions) as session:
        found = episodes_db.episode_and_job(session, principal.episode_id)
        if found is None:
            raise not_found("episode", principal.episode_id)
        rollout, job = found
        if rollout.status != "awaiting_reward" or rollout.deadline_at <= utcnow():
            ended = "expired" if rollout.status != "rewarded" else "rewarded"
            raise ServiceError(
                "episode_ended",
                f"episode {rollout.id} is {ended}: it takes no more model calls",
                state={"episode_id": rollout.id, "status": ended},
            )
        if job.status in TERMINAL_STATUSES:
            raise ServiceError("episode_ended", f"job {job.id} is {job.status}")
        if job.status != "running" or not job.serve_url:
            raise ServiceError(
                "policy_unavailable",
                f"job {job.id} is {job.status} and no worker serves it now; retry shortly",
                retry_after_s=1.0,
            )
        return PolicyTarget(job.serve_url, serve_secret(sealing_key(ctx.settings), job.id))


def public_base_url(ctx: ServiceContext, request_base: str) -> str:
    """The episodes' `base_url`: `Settings.public_url`, else the URL the request came to."""
    return (ctx.settings.public_url or request_base).rstrip("/") + "/v1/openai"
