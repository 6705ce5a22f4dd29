"""Jobs: create (validate, store, enqueue), list, retrieve, and the cooperative controls.

A job is written `queued` and committed before `keel.run_job` is enqueued, so the worker always
finds its row. Pause and cancel of a running job set `requested` for the lease holder to act on;
a job nobody runs (queued or paused) changes state at once (docs/architecture.md §5).
"""

from __future__ import annotations

import hashlib
import json
from typing import get_args

from pydantic import ValidationError
from sqlalchemy.exc import IntegrityError

from keel.types.agents import AgentPrompts
from keel.types.common import Page
from keel.types.jobs import (
    REFERENCE_VERIFIERS,
    BuiltinReward,
    DatasetPrompts,
    Job,
    JobCreate,
    JobCreated,
    JobResume,
    JobStatus,
    WebhookReward,
)
from keel_server.db import jobs as jobs_db
from keel_server.db import new_id, session_scope, stored
from keel_server.db import prompts as prompts_db
from keel_server.platform.prompt_bounds import first_too_long
from keel_server.platform.queue import enqueue_run_job
from keel_server.platform.reward_pattern import RewardPatternRefused, compile_reward_pattern
from keel_server.platform.security import (
    hash_secret,
    new_reward_token,
    new_webhook_secret,
    seal,
    sealing_key,
    unseal,
)
from keel_server.platform.webhook_targets import WebhookAllow, WebhookTargetRefused, resolve_target
from keel_server.services import convert, files
from keel_server.services.auth import load_job, require_api_key
from keel_server.services.capacity import check_distributed
from keel_server.services.context import Principal, ServiceContext
from keel_server.services.errors import ServiceError, invalid
from keel_server.services.models_check import check_model
from keel_server.services.paging import page_limit
from keel_server.services.quotas import check_active_jobs

JOB_STATUSES: tuple[str, ...] = get_args(JobStatus)


def create(
    ctx: ServiceContext, principal: Principal, req: JobCreate, *, idempotency_key: str | None
) -> tuple[JobCreated, bool]:
    """Returns (the job with its secrets, whether it was created now).

    A repeat with the same `Idempotency-Key` and the same request returns what the first call
    returned, secrets included (they are kept sealed for this); the same key with a different
    request is a 409 `idempotency_conflict` naming the key.
    """
    require_api_key(principal)
    check_model(ctx, principal, req.config)
    check_distributed(ctx, req)
    _check_deadline(ctx, req)
    _check_reward_pattern(req)
    _check_webhook_target(ctx, req)
    fingerprint = _fingerprint(req)
    if idempotency_key:
        replay = _replay(ctx, principal, idempotency_key, fingerprint)
        if replay is not None:
            if unsent(replay):  # the first answer was the broker's 503: send it now
                enqueue(ctx, replay.id)
            return replay, False
    dataset = _dataset_prompts(ctx, principal, req)
    _check_prompt_lengths(req, dataset)
    try:
        created = _insert(ctx, principal, req, dataset, idempotency_key, fingerprint)
    except IntegrityError:
        # A concurrent request with the same key won the insert: answer as its replay.
        replay = _replay(ctx, principal, idempotency_key, fingerprint) if idempotency_key else None
        if replay is None:
            raise
        return replay, False
    enqueue(ctx, created.id)
    created.num_prompts = len(dataset)
    return created, True


def _fingerprint(req: JobCreate) -> str:
    canonical = json.dumps(req.model_dump(mode="json"), sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()


def _replay(
    ctx: ServiceContext, principal: Principal, key: str, fingerprint: str
) -> JobCreated | None:
    with session_scope(ctx.sessions) as session:
        row = jobs_db.get_job_by_idempotency_key(session, principal.project_id, key)
        if row is None:
            return None
        if row.request_sha256 != fingerprint:  # rows from before revision 0002 have none
            raise ServiceError(
                "idempotency_conflict",
                f"Idempotency-Key {key!r} was already used for job {row.id} with a different "
                "request; use a new key for a new job",
                state={"idempotency_key": key, "job_id": row.id},
            )
        sealing = sealing_key(ctx.settings)
        return JobCreated(
            **convert.job(row).model_dump(),
            reward_token=unseal(sealing, row.reward_token_sealed),
            webhook_secret=unseal(sealing, row.webhook_secret) if row.webhook_secret else None,
        )


def _insert(
    ctx: ServiceContext,
    principal: Principal,
    req: JobCreate,
    dataset: list[tuple[str, str | None]],
    idempotency_key: str | None,
    fingerprint: str,
) -> JobCreated:
    token, secret = new_reward_token(), _webhook_secret(req)
    sealing = sealing_key(ctx.settings)
    with session_scope(ctx.sessions) as session:
        check_active_jobs(ctx, session, principal.project_id)
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
            reward_token_sealed=seal(sealing, token),
            webhook_secret=seal(sealing, secret) if secret else None,
            idempotency_key=idempotency_key,
            request_sha256=fingerprint,
        )
        if dataset:
            prompts_db.add_prompts(session, row.id, dataset)
        return JobCreated(
            **convert.job(row).model_dump(), reward_token=token, webhook_secret=secret
        )


def _dataset_prompts(
    ctx: ServiceContext, principal: Principal, req: JobCreate
) -> list[tuple[str, str | None]]:
    source = req.prompts
    if isinstance(source, AgentPrompts):  # a task is stored as its JSON text, like a prompt
        return [(json.dumps(task, sort_keys=True), None) for task in source.tasks]
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


def _check_prompt_lengths(req: JobCreate, dataset: list[tuple[str, str | None]]) -> None:
    if not isinstance(req.prompts, DatasetPrompts):
        return
    too_long = first_too_long(req.config, (text for text, _ in dataset))
    if too_long is not None:
        index, reason = too_long
        where = ["body", "prompts", "prompts", index, "text"]
        if req.prompts.file_id is not None:
            where = ["body", "prompts", "file_id", f"line {index + 1}"]
        raise invalid(where, reason)


def _prompt_source_summary(req: JobCreate) -> dict:
    summary = req.prompts.model_dump(mode="json", exclude={"prompts", "tasks"})
    return {k: v for k, v in summary.items() if v is not None}


def _reward_source(ctx: ServiceContext, req: JobCreate) -> dict:
    """The reward source as stored: no secret, and the effective deadline filled in."""
    source = req.reward.model_dump(mode="json", exclude={"secret"})
    source["deadline_s"] = req.reward.deadline_s or ctx.settings.reward_deadline_s
    return source


def _check_deadline(ctx: ServiceContext, req: JobCreate) -> None:
    cap_s = ctx.settings.max_reward_wait_s
    if req.reward.deadline_s is not None and req.reward.deadline_s > cap_s:
        raise invalid(
            ["body", "reward", "deadline_s"],
            f"exceeds this server's cap of {cap_s:g} s on a job's total reward wait",
        )


def _check_reward_pattern(req: JobCreate) -> None:
    if not isinstance(req.reward, BuiltinReward) or req.reward.pattern is None:
        return
    try:
        compile_reward_pattern(req.reward.pattern)
    except RewardPatternRefused as exc:
        raise invalid(["body", "reward", "pattern"], str(exc)) from exc


def _check_webhook_target(ctx: ServiceContext, req: JobCreate) -> None:
    if not isinstance(req.reward, WebhookReward):
        return
    try:
        resolve_target(str(req.reward.url), WebhookAllow.parse(ctx.settings.webhook_allow))
    except WebhookTargetRefused as exc:
        raise invalid(["body", "reward", "url"], str(exc)) from exc


def _webhook_secret(req: JobCreate) -> str | None:
    if not isinstance(req.reward, WebhookReward):
        return None
    return req.reward.secret or new_webhook_secret()


def enqueue(ctx: ServiceContext, job_id: str) -> None:
    """Send `keel.run_job`; when the broker refuses, answer 503. The job stays queued, never
    failed, with the refusal as its `error` until a worker takes it: the reaper sends it again
    once it has been queued `KEEL_QUEUED_TIMEOUT_S`, and a repeat of the create request with the
    same `Idempotency-Key` (`unsent`) sends it at once."""
    try:
        enqueue_run_job(ctx.producer, ctx.settings, job_id)
    except Exception as exc:
        note = f"the broker refused its message ({exc}); it is sent again when the broker is back"
        with session_scope(ctx.sessions) as session:
            jobs_db.note_queued(session, job_id, note)
        raise ServiceError(
            "broker_unavailable",
            f"job {job_id} is stored and stays queued, but {note}, or repeat the request with "
            "the same Idempotency-Key",
            state={"job_id": job_id, "status": "queued"},
            retry_after_s=1.0,
        ) from exc


def unsent(job: JobCreated) -> bool:
    """A queued job whose last send the broker refused."""
    return job.status == "queued" and job.error is not None


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


# ---- controls --------------------------------------------------------------------------------

_CAS_RETRIES = 5  # a concurrent state change makes a CAS miss; re-read and decide again


def cancel(ctx: ServiceContext, principal: Principal, job_id: str) -> Job:
    def attempt(session, job) -> bool:
        if job.status in ("queued", "paused"):
            return jobs_db.transition(
                session,
                job.id,
                from_statuses=(job.status,),
                to="cancelled",
                event={"reason": "cancelled by the user"},
            )
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


def resume(
    ctx: ServiceContext,
    principal: Principal,
    job_id: str,
    changes: JobResume | None = None,
    *,
    reason: str = "resumed by the user",
) -> Job:
    """Resume a paused job (or withdraw a pending pause; a queued job is enqueued again, in
    case its broker message was lost: a duplicate finds it taken and exits). `changes` (a new
    learning rate or algorithm) apply to a paused job only and are validated against its whole
    config; a new learning rate also resets the guard's rollback scale. `reason` goes on the
    status event."""
    resumed: list[str] = []
    requeue: list[str] = []
    changing = changes is not None and (changes.lr is not None or changes.algorithm is not None)

    def attempt(session, job) -> bool:
        if job.status == "paused":
            values = {"requested": None}
            event = {"reason": reason}
            if changing:
                values.update(_resumed_with(job, changes))
                event["changes"] = changes.model_dump(mode="json", exclude_none=True)
            ok = jobs_db.transition(
                session,
                job.id,
                from_statuses=("paused",),
                to="queued",
                values=values,
                event=event,
            )
            if ok:
                resumed.append(job.id)
            return ok
        if changing:
            raise ServiceError(
                "conflict",
                f"job {job.id} is {job.status}: only a paused job resumes with changes",
                state={"job_id": job.id, "status": job.status},
            )
        if job.status == "running" and job.requested == "pause":
            return jobs_db.set_requested(session, job.id, None, from_statuses=("running",))
        if job.status == "queued":  # its broker message may be lost: send another
            requeue.append(job.id)
            return True
        if job.status == "running":
            return True
        raise _finished(job, "resume")

    result = _control(ctx, principal, job_id, attempt)
    if resumed or requeue:
        # A job stays queued when the broker is away: the reaper sends it later.
        enqueue(ctx, job_id)
    return result


def _resumed_with(job, changes: JobResume) -> dict:
    """The row values of a paused job resumed with `changes` (422 when the result is invalid)."""
    try:
        config = changes.apply(stored.training_config(job))
    except ValidationError as exc:
        first = exc.errors()[0]
        raise invalid(["body", *first["loc"]], first["msg"]) from exc
    values: dict = {"config": config.model_dump(mode="json")}
    if changes.lr is not None:
        guard = stored.guard_summary(job).model_copy(update={"lr_scale": 1.0})
        values["guard"] = guard.model_dump(mode="json")
    return values


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
