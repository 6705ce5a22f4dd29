"""Authentication (API keys, the admin bootstrap key, per-job reward tokens, per-episode keys) and
the one place where ownership is checked: a resource of another project, or of another job for a
reward token, or another episode for an episode key, is reported as not found (404, never 403,
so ids do not leak)."""

from __future__ import annotations

from sqlalchemy import Connection
from sqlalchemy.orm import Session

from keel_server.db import checkpoints as ckpt_db
from keel_server.db import episodes as episodes_db
from keel_server.db import jobs as jobs_db
from keel_server.db import keys as keys_db
from keel_server.db import rollouts as rollouts_db
from keel_server.db import session_scope
from keel_server.db.models import Checkpoint, Job, Rollout
from keel_server.platform.security import (
    EPISODE_KEY_PREFIX,
    REWARD_TOKEN_PREFIX,
    episode_of_key,
    hash_secret,
    same_secret,
    sealing_key,
)
from keel_server.services.context import Principal, ServiceContext
from keel_server.services.errors import ServiceError, not_found

ADMIN_PROJECT = "default"
REWARD_TOKEN_SCOPE = "a reward token may only list its job's pending rollouts and post rewards"
EPISODE_KEY_SCOPE = "an episode key may only call the model for its episode and post its reward"
_TOKEN_PREFIXES = (REWARD_TOKEN_PREFIX, EPISODE_KEY_PREFIX)


def authenticate(ctx: ServiceContext, token: str | None) -> Principal:
    """The caller of `token`, looked up in the database (a verified reward token is remembered;
    `known_reward_token` answers for it without a query, and the route guard asks it first)."""
    if not token:
        raise ServiceError("unauthorized", "missing API key: send `Authorization: Bearer <key>`")
    with session_scope(ctx.sessions) as session:
        admin = ctx.settings.admin_key
        if admin and same_secret(token, admin):
            project = keys_db.get_or_create_project(session, ADMIN_PROJECT)
            return Principal(project.id, is_admin=True)
        if token.startswith(EPISODE_KEY_PREFIX):
            principal = _episode_principal(ctx, session, token)
            if principal is not None:
                ctx.reward_tokens.put(hash_secret(token), principal)
                return principal
        elif token.startswith(REWARD_TOKEN_PREFIX):
            token_hash = hash_secret(token)
            job = jobs_db.get_job_by_reward_token_hash(session, token_hash)
            if job is not None:
                principal = Principal(job.project_id, job_id=job.id)
                ctx.reward_tokens.put(token_hash, principal)
                return principal
        else:
            key = keys_db.find_active_key(session, hash_secret(token))
            if key is not None:
                return Principal(key.project_id, key_id=key.id)
    raise ServiceError("unauthorized", "unknown or revoked API key")


def still_valid(ctx: ServiceContext, principal: Principal) -> bool:
    """Whether the key `principal` authenticated with is still active (an open event stream
    asks; the admin key, reward tokens and episode keys cannot be revoked)."""
    if principal.key_id is None:
        return True
    with session_scope(ctx.sessions) as session:
        row = keys_db.get_key(session, principal.key_id)
        return row is not None and row.revoked_at is None


def _episode_principal(ctx: ServiceContext, session: Session, token: str) -> Principal | None:
    """An episode key is verified by its MAC (no lookup), then its episode names the job."""
    rollout_id = episode_of_key(sealing_key(ctx.settings), token)
    found = episodes_db.episode_and_job(session, rollout_id) if rollout_id else None
    if found is None:
        return None
    _, job = found
    return Principal(job.project_id, job_id=job.id, episode_id=rollout_id)


def known_reward_token(ctx: ServiceContext, token: str | None) -> Principal | None:
    """The principal of a reward token or episode key this process has already verified, without
    a query (see `RewardTokenCache`: both name the same job and episode for good); None for
    anything else, which `authenticate` looks up. (A cached token was found not to be the admin
    key when it was verified; the admin key is fixed per process.)"""
    if not token or not token.startswith(_TOKEN_PREFIXES):
        return None
    return ctx.reward_tokens.get(hash_secret(token))


def require_api_key(principal: Principal) -> None:
    if principal.is_reward_token:
        raise ServiceError("forbidden", _scope(principal))


def _scope(principal: Principal) -> str:
    return EPISODE_KEY_SCOPE if principal.episode_id else REWARD_TOKEN_SCOPE


def load_job(
    session: Session, principal: Principal, job_id: str, *, reward_token_ok: bool = False
) -> Job:
    job = jobs_db.get_job(session, job_id, project_id=principal.project_id)
    if job is None or (principal.is_reward_token and job.id != principal.job_id):
        raise not_found("job", job_id)
    if principal.is_reward_token and (not reward_token_ok or principal.episode_id):
        raise ServiceError("forbidden", _scope(principal))
    return job


def load_rollout(session: Session, principal: Principal, rollout_id: str) -> tuple[Rollout, Job]:
    """The rollout and its job, read together; a rollout of another project's job, or of another
    job than a reward token's, is not found (as `load_job` would say of the job)."""
    found = rollouts_db.get_rollout_and_job(session, rollout_id, project_id=principal.project_id)
    _check_rollout_owner(principal, rollout_id, None if found is None else found[1].id)
    return found


def load_reward_target(
    session: Session | Connection, principal: Principal, rollout_id: str
) -> rollouts_db.RewardTarget:
    """`load_rollout` for a reward post: the rollout with its job's status and reward source, as
    one plain row."""
    found = rollouts_db.reward_target(session, rollout_id, project_id=principal.project_id)
    _check_rollout_owner(principal, rollout_id, None if found is None else found.job_id)
    return found


def _check_rollout_owner(principal: Principal, rollout_id: str, job_id: str | None) -> None:
    """Not found unless the rollout exists in the principal's project (`job_id` is its job's,
    None when it does not), is of a reward token's job, and is an episode key's episode."""
    if job_id is None or (principal.is_reward_token and job_id != principal.job_id):
        raise not_found("rollout", rollout_id)
    if principal.episode_id and principal.episode_id != rollout_id:
        raise not_found("rollout", rollout_id)


def load_checkpoint(session: Session, principal: Principal, checkpoint_id: str) -> Checkpoint:
    require_api_key(principal)
    row = ckpt_db.get_checkpoint(session, checkpoint_id)
    if row is None:
        raise not_found("checkpoint", checkpoint_id)
    try:
        load_job(session, principal, row.job_id)
    except ServiceError as exc:
        raise not_found("checkpoint", checkpoint_id) from exc
    return row
