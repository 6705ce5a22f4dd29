"""Jobs: create (validate, store, enqueue), list, retrieve, and the cooperative controls.

A job is written `queued` and committed before `keel.run_job` is enqueued, so the worker always
finds its row. Pause and cancel of a running job set `requested` for the lease holder to act on;
a job nobody runs (queued or paused) changes state at once (architecture.md §5).
"""

from __future__ import annotations

from typing import get_args

from keel.types.common import Page
from keel.types.jobs import (
    REFERENCE_VERIFIERS,
    DatasetPrompts,
    Job,
    JobCreate,
    JobCreated,
    JobStatus,
    WebhookReward,
)
from keel_server.db import jobs as jobs_db
from keel_server.db import new_id, session_scope
from keel_server.db import prompts as prompts_db
from keel_server.queue import enqueue_run_job
from keel_server.security import hash_secret, new_reward_token, new_webhook_secret
from keel_server.services import convert, files
from keel_server.services.auth import load_job, require_api_key
from keel_server.services.context import Principal, ServiceContext
from keel_server.services.errors import ServiceError, invalid
from keel_server.services.models_check import check_model

JOB_STATUSES: tuple[str, ...] = get_args(JobStatus)


def create(
    ctx: ServiceContext, principal: Principal, req: JobCreate, *, idempotency_key: str | None
) -> tuple[JobCreated, bool]:
    """Returns (the job with its one-time secrets, whether it was created now).

    A repeat with the same `Idempotency-Key` returns the first job (secrets are not shown again).
    """
    require_api_key(principal)
    check_model(req.config.model.name, req.config.routing_replay, ctx.settings)
    dataset = _dataset_prompts(ctx, principal, req)
    with session_scope(ctx.sessions) as session:
        if idempotency_key:
            existing = jobs_db.get_job_by_idempotency_key(
                session, principal.project_id, idempotency_key
            )
            if existing is not None:
                return JobCreated(**convert.job(existing).model_dump(), reward_token=""), False
        token = new_reward_token()
        secret = _webhook_secret(req)
        row = jobs_db.insert_job(
            session,
            id=new_id("job"),
            project_id=principal.project_id,
            name=req.name,
            status="queued",
            config=req.config.model_dump(mode="json"),
            prompt_source=_prompt_source_summary(req),
            reward_source=_reward_source(ctx, req),
            steps=req.config.steps,
            reward_token_hash=hash_secret(token),
            webhook_secret=secret,
            idempotency_key=idempotency_key,
        )
        if dataset:
            prompts_db.add_prompts(session, row.id, dataset)
        created = JobCreated(
            **convert.job(row).model_dump(), reward_token=token, webhook_secret=secret
        )
    _enqueue(ctx, created.id)
    created.num_prompts = len(dataset)
    return created, True


def _dataset_prompts(
    ctx: ServiceContext, principal: Principal, req: JobCreate
) -> list[tuple[str, str | None]]:
    source = req.prompts
    if not isinstance(source, DatasetPrompts):
        return []
    if source.prompts is not None:
        return [(p.text, p.reference) for p in source.prompts]
    items = files.read_prompts(ctx, principal, source.file_id)
    verifier = getattr(req.reward, "verifier", None)
    if verifier in REFERENCE_VERIFIERS and any(ref is None for _, ref in items):
        raise invalid(
            ["body", "prompts", "file_id"],
            f"verifier `{verifier}` needs a `reference` on every line of the file",
        )
    return items


def _prompt_source_summary(req: JobCreate) -> dict:
    summary = req.prompts.model_dump(mode="json", exclude={"prompts"})
    return {k: v for k, v in summary.items() if v is not None}


def _reward_source(ctx: ServiceContext, req: JobCreate) -> dict:
    """The reward source as stored: no secret, and the effective deadline filled in."""
    source = req.reward.model_dump(mode="json", exclude={"secret"})
    source["deadline_s"] = req.reward.deadline_s or ctx.settings.reward_deadline_s
    return source


def _webhook_secret(req: JobCreate) -> str | None:
    if not isinstance(req.reward, WebhookReward):
        return None
    return req.reward.secret or new_webhook_secret()


def _enqueue(ctx: ServiceContext, job_id: str) -> None:
    try:
        enqueue_run_job(ctx.producer, ctx.settings, job_id)
    except Exception as exc:
        with session_scope(ctx.sessions) as session:
            jobs_db.transition(
                session,
                job_id,
                from_statuses=("queued",),
                to="failed",
                values={"error": f"could not enqueue the job: {exc}"},
            )
        raise ServiceError(
            "broker_unavailable", f"the job {job_id} was stored but the broker refused it: {exc}"
        ) from exc


def retrieve(ctx: ServiceContext, principal: Principal, job_id: str) -> Job:
    with session_scope(ctx.sessions) as session:
        return convert.job(load_job(session, principal, job_id))


def list_(
    ctx: ServiceContext,
    principal: Principal,
    *,
    statuses: list[str],
    cursor: str | None,
    limit: int | None,
) -> Page[Job]:
    require_api_key(principal)
    unknown = sorted(set(statuses) - set(JOB_STATUSES))
    if unknown:
        raise invalid(["query", "status"], f"unknown status {unknown}; use {list(JOB_STATUSES)}")
    limit = page_limit(ctx, limit)
    with session_scope(ctx.sessions) as session:
        rows = jobs_db.list_jobs(
            session, principal.project_id, statuses=statuses, before_id=cursor, limit=limit
        )
        data = [convert.job(r) for r in rows[:limit]]
    has_more = len(rows) > limit
    return Page[Job](data=data, has_more=has_more, next_cursor=data[-1].id if has_more else None)


def page_limit(ctx: ServiceContext, limit: int | None) -> int:
    if limit is None:
        return ctx.settings.page_size_default
    if not 1 <= limit <= ctx.settings.page_size_max:
        raise invalid(["query", "limit"], f"must be between 1 and {ctx.settings.page_size_max}")
    return limit


# ---- controls --------------------------------------------------------------------------------

_CAS_RETRIES = 5  # a concurrent state change makes a CAS miss; re-read and decide again


def cancel(ctx: ServiceContext, principal: Principal, job_id: str) -> Job:
    def attempt(session, job) -> bool:
        if job.status in ("queued", "paused"):
            return jobs_db.transition(
                session, job.id, from_statuses=(job.status,), to="cancelled",
                event={"reason": "cancelled by the user"},
            )  # fmt: skip
        if job.status == "running":
            return jobs_db.set_requested(session, job.id, "cancel", from_statuses=("running",))
        raise _finished(job, "cancel")

    return _control(ctx, principal, job_id, attempt)


def pause(ctx: ServiceContext, principal: Principal, job_id: str) -> Job:
    def attempt(session, job) -> bool:
        if job.status == "paused" or job.requested == "pause":
            return True
        if job.status == "queued":
            return jobs_db.transition(session, job.id, from_statuses=("queued",), to="paused")
        if job.status == "running":
            if job.requested == "cancel":
                raise ServiceError("conflict", f"job {job.id} is being cancelled")
            return jobs_db.set_requested(session, job.id, "pause", from_statuses=("running",))
        raise _finished(job, "pause")

    return _control(ctx, principal, job_id, attempt)


def resume(ctx: ServiceContext, principal: Principal, job_id: str) -> Job:
    enqueue: list[str] = []

    def attempt(session, job) -> bool:
        if job.status == "paused":
            ok = jobs_db.transition(
                session, job.id, from_statuses=("paused",), to="queued",
                values={"requested": None},
            )  # fmt: skip
            if ok:
                enqueue.append(job.id)
            return ok
        if job.status == "running" and job.requested == "pause":
            return jobs_db.set_requested(session, job.id, None, from_statuses=("running",))
        if job.status in ("queued", "running"):
            return True
        raise _finished(job, "resume")

    result = _control(ctx, principal, job_id, attempt)
    if enqueue:
        _enqueue(ctx, job_id)
    return result


def _control(ctx: ServiceContext, principal: Principal, job_id: str, attempt) -> Job:
    for _ in range(_CAS_RETRIES):
        with session_scope(ctx.sessions) as session:
            job = load_job(session, principal, job_id)
            if attempt(session, job):
                return convert.job(jobs_db.get_job(session, job_id))
    raise ServiceError("conflict", f"job {job_id} kept changing state; try again")


def _finished(job, verb: str) -> ServiceError:
    return ServiceError(
        "conflict",
        f"cannot {verb} job {job.id}: it is already {job.status}",
        state={"job_id": job.id, "status": job.status},
    )
