"""Client-submitted prompts: batches appended to a `client` job's prompt stream; listing."""

from __future__ import annotations

from keel.types.common import Page
from keel.types.jobs import REFERENCE_VERIFIERS, TERMINAL_STATUSES, BuiltinReward
from keel.types.prompts import Prompt, PromptBatch, PromptBatchResult
from keel_server.db import prompts as prompts_db
from keel_server.db import session_scope, stored
from keel_server.platform.prompt_bounds import first_too_long
from keel_server.services import convert
from keel_server.services.auth import load_job
from keel_server.services.context import Principal, ServiceContext
from keel_server.services.errors import ServiceError, invalid
from keel_server.services.paging import int_cursor, page_limit


def add_batch(
    ctx: ServiceContext,
    principal: Principal,
    job_id: str,
    batch: PromptBatch,
    *,
    idempotency_key: str | None,
) -> PromptBatchResult:
    with session_scope(ctx.sessions) as session:
        job = load_job(session, principal, job_id)
        prompt_type = stored.prompt_type(job)
        if prompt_type != "client":
            raise ServiceError(
                "conflict",
                f"job {job_id} takes its prompts from its {prompt_type} source; only jobs "
                "created with prompts.type='client' accept batches",
            )
        if job.status in TERMINAL_STATUSES:
            raise ServiceError("conflict", f"job {job_id} is already {job.status}")
        source = stored.reward_source(job)
        verifier = source.verifier if isinstance(source, BuiltinReward) else None
        if verifier in REFERENCE_VERIFIERS:
            missing = [i for i, p in enumerate(batch.prompts) if p.reference is None]
            if missing:
                raise invalid(
                    ["body", "prompts", missing[0], "reference"],
                    f"verifier `{verifier}` needs a reference on every prompt",
                )
        too_long = first_too_long(stored.training_config(job), (p.text for p in batch.prompts))
        if too_long is not None:
            index, reason = too_long
            raise invalid(["body", "prompts", index, "text"], reason)
        pairs = [(p.text, p.reference) for p in batch.prompts]
        if idempotency_key:
            earlier = prompts_db.batch_prompts(session, job_id, idempotency_key)
            if earlier:
                return _replay(job_id, idempotency_key, earlier, pairs)
        total = prompts_db.add_prompts(session, job_id, pairs, batch_key=idempotency_key)
    return PromptBatchResult(job_id=job_id, accepted=len(pairs), total=total)


def _replay(
    job_id: str, key: str, earlier: list, pairs: list[tuple[str, str | None]]
) -> PromptBatchResult:
    """What the first call with this key returned, if this batch is the same one."""
    if [(p.text, p.reference) for p in earlier] != pairs:
        raise ServiceError(
            "idempotency_conflict",
            f"Idempotency-Key {key!r} was already used on job {job_id} for a different batch of "
            "prompts; use a new key for a new batch",
            state={"idempotency_key": key, "job_id": job_id},
        )
    return PromptBatchResult(job_id=job_id, accepted=len(earlier), total=earlier[-1].index + 1)


def list_(
    ctx: ServiceContext, principal: Principal, job_id: str, *, cursor: str | None, limit: int | None
) -> Page[Prompt]:
    limit = page_limit(ctx, limit)
    start = int_cursor(cursor)[0] if cursor is not None else 0
    with session_scope(ctx.sessions) as session:
        load_job(session, principal, job_id)
        rows = prompts_db.fetch_prompts(session, job_id, start=start, limit=limit + 1)
        data = [convert.prompt(r) for r in rows[:limit]]
    has_more = len(rows) > limit
    next_cursor = str(data[-1].index + 1) if has_more else None
    return Page[Prompt](data=data, has_more=has_more, next_cursor=next_cursor)
