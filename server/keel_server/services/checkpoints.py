"""Checkpoints: list, retrieve, and open one for the streamed (deterministic tar) download."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

from keel.types.checkpoints import Checkpoint
from keel.types.common import Page
from keel_server.db import checkpoints as ckpt_db
from keel_server.db import session_scope
from keel_server.services import convert
from keel_server.services.auth import load_checkpoint, load_job
from keel_server.services.context import Principal, ServiceContext
from keel_server.services.errors import ServiceError
from keel_server.services.paging import int_cursor, page_limit
from keel_server.storage import iter_archive


def list_(
    ctx: ServiceContext, principal: Principal, job_id: str, *, cursor: str | None, limit: int | None
) -> Page[Checkpoint]:
    limit = page_limit(ctx, limit)
    after = int_cursor(cursor)[0] if cursor is not None else None
    with session_scope(ctx.sessions) as session:
        load_job(session, principal, job_id)
        rows = ckpt_db.list_checkpoints(session, job_id, after_step=after, limit=limit)
        data = [convert.checkpoint(r) for r in rows[:limit]]
    has_more = len(rows) > limit
    next_cursor = str(data[-1].step) if has_more else None
    return Page[Checkpoint](data=data, has_more=has_more, next_cursor=next_cursor)


def retrieve(ctx: ServiceContext, principal: Principal, checkpoint_id: str) -> Checkpoint:
    with session_scope(ctx.sessions) as session:
        return convert.checkpoint(load_checkpoint(session, principal, checkpoint_id))


def open_download(
    ctx: ServiceContext, principal: Principal, checkpoint_id: str
) -> tuple[Checkpoint, Iterator[bytes]]:
    """The checkpoint and an iterator over exactly `size_bytes` bytes hashing to `sha256`."""
    with session_scope(ctx.sessions) as session:
        row = load_checkpoint(session, principal, checkpoint_id)
        meta, path = convert.checkpoint(row), Path(row.path)
    if not path.is_dir():
        raise ServiceError("not_found", f"the files of checkpoint {checkpoint_id} are gone")
    return meta, iter_archive(path)
