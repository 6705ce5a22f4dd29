"""Uploaded JSONL prompt files: validated line by line at upload, read back at job creation."""

from __future__ import annotations

import json
from pathlib import Path

from pydantic import ValidationError

from keel.types.prompts import FileObject, PromptIn
from keel_server.db import keys as files_db
from keel_server.db import new_id, session_scope
from keel_server.platform.storage import files_dir
from keel_server.services.auth import require_api_key
from keel_server.services.context import Principal, ServiceContext
from keel_server.services.errors import ServiceError, invalid, not_found

MAX_LINE_ERRORS = 20


def upload(ctx: ServiceContext, principal: Principal, filename: str, content: bytes) -> FileObject:
    require_api_key(principal)
    prompts = parse_jsonl(content)
    file_id = new_id("file")
    folder = files_dir(ctx.settings.artifacts_dir)
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{file_id}.jsonl"
    path.write_bytes(content)
    with session_scope(ctx.sessions) as session:
        row = files_db.insert_file(
            session,
            principal.project_id,
            file_id=file_id,
            filename=filename[:255],
            path=str(path),
            num_prompts=len(prompts),
            size_bytes=len(content),
        )
        return FileObject(
            id=row.id,
            filename=row.filename,
            num_prompts=row.num_prompts,
            size_bytes=row.size_bytes,
            created_at=row.created_at,
        )


def parse_jsonl(content: bytes) -> list[PromptIn]:
    """Every non-blank line must be a `PromptIn` object; errors name the line (1-based)."""
    try:
        text = content.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise invalid(["body", "file"], f"not UTF-8 text: {exc}") from exc
    prompts, errors = [], []
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            prompts.append(PromptIn.model_validate(json.loads(line)))
        except (json.JSONDecodeError, ValidationError) as exc:
            msg = str(exc).splitlines()[0] if isinstance(exc, json.JSONDecodeError) else _first(exc)
            errors.append({"loc": ["body", "file", f"line {number}"], "msg": msg})
            if len(errors) >= MAX_LINE_ERRORS:
                break
    if errors:
        first = errors[0]
        raise ServiceError("validation_error", f"{first['loc'][-1]}: {first['msg']}", errors=errors)
    if not prompts:
        raise invalid(["body", "file"], "the file holds no prompts")
    return prompts


def _first(exc: ValidationError) -> str:
    err = exc.errors()[0]
    return f"{'.'.join(str(p) for p in err['loc']) or 'line'}: {err['msg']}"


def read_prompts(
    ctx: ServiceContext, principal: Principal, file_id: str
) -> list[tuple[str, str | None]]:
    with session_scope(ctx.sessions) as session:
        row = files_db.get_file(session, file_id, project_id=principal.project_id)
        if row is None:
            raise not_found("file", file_id)
        path = Path(row.path)
    return [(p.text, p.reference) for p in parse_jsonl(path.read_bytes())]
