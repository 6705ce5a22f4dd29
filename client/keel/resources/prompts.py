"""`client.prompts`: submit a job's prompts in batches and list them; `client.files`: upload a
JSONL prompt file for a dataset job."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from keel.resources._base import AsyncResource, Call, SyncResource, body, parse
from keel.types.common import Page
from keel.types.prompts import FileObject, Prompt, PromptBatchResult


def _prompt_item(prompt: Any) -> Any:
    return {"text": prompt} if isinstance(prompt, str) else body(prompt)


def _create(job_id: str, prompts: list[Any]) -> Call:
    payload = {"prompts": [_prompt_item(p) for p in prompts]}
    return Call("POST", f"/v1/jobs/{job_id}/prompts", PromptBatchResult, json=payload)


def _list(job_id: str, limit: int | None, cursor: str | None) -> Call:
    params = {"limit": limit, "cursor": cursor}
    return Call("GET", f"/v1/jobs/{job_id}/prompts", Page[Prompt], params=params)


class Prompts(SyncResource):
    def create(self, job_id: str, prompts: list[Any]) -> PromptBatchResult:
        """Append prompts (strings, dicts or `PromptIn`) to a `client` prompt-source job."""
        return self._run(_create(job_id, prompts))

    def list(
        self, job_id: str, *, limit: int | None = None, cursor: str | None = None
    ) -> Page[Prompt]:
        return self._run(_list(job_id, limit, cursor))


class AsyncPrompts(AsyncResource):
    async def create(self, job_id: str, prompts: list[Any]) -> PromptBatchResult:
        """Append prompts (strings, dicts or `PromptIn`) to a `client` prompt-source job."""
        return await self._run(_create(job_id, prompts))

    async def list(
        self, job_id: str, *, limit: int | None = None, cursor: str | None = None
    ) -> Page[Prompt]:
        return await self._run(_list(job_id, limit, cursor))


def _upload_args(path: str | Path) -> dict[str, Any]:
    file_path = Path(path)
    content = file_path.read_bytes()
    return {"files": {"file": (file_path.name, content, "application/jsonl")}}


class Files(SyncResource):
    def create(self, path: str | Path) -> FileObject:
        """Upload a JSONL file of `{"text", "reference"}` lines; use its id as `file_id`."""
        data = self._transport.request("POST", "/v1/files", **_upload_args(path))
        return parse(FileObject, data)

    def delete(self, file_id: str) -> None:
        """Delete an uploaded file; jobs created from it keep their prompts."""
        self._transport.request("DELETE", f"/v1/files/{file_id}")


class AsyncFiles(AsyncResource):
    async def create(self, path: str | Path) -> FileObject:
        """Upload a JSONL file of `{"text", "reference"}` lines; use its id as `file_id`."""
        data = await self._transport.request("POST", "/v1/files", **_upload_args(path))
        return parse(FileObject, data)

    async def delete(self, file_id: str) -> None:
        """Delete an uploaded file; jobs created from it keep their prompts."""
        await self._transport.request("DELETE", f"/v1/files/{file_id}")
