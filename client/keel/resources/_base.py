"""What every resource shares: a `Call` describes one REST call; the sync and async bases run it.

Each public method of a resource builds its `Call` with one pure function shared by both twins,
so `Jobs.create` and `AsyncJobs.create` cannot drift apart: they differ only by `await`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from pydantic import BaseModel, TypeAdapter

from keel._transport import AsyncTransport, SyncTransport


@dataclass(frozen=True)
class Call:
    """One HTTP request and the wire type its JSON answer parses into (None = raw JSON)."""

    method: str
    path: str
    response_type: Any = None
    params: dict[str, Any] = field(default_factory=dict)
    json: Any = None


def body(value: Any) -> Any:
    """JSON-ready request body: models are dumped, containers recursed, the rest kept as is.

    The server validates strictly; the SDK does not re-validate so callers see the server's own
    422 envelope naming the field."""
    if isinstance(value, BaseModel):
        return value.model_dump(mode="json")
    if isinstance(value, dict):
        return {k: body(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [body(v) for v in value]
    return value


def parse(response_type: Any, data: Any) -> Any:
    if response_type is None:
        return data
    return TypeAdapter(response_type).validate_python(data)


class SyncResource:
    def __init__(self, transport: SyncTransport) -> None:
        self._transport = transport

    def _run(self, call: Call) -> Any:
        data = self._transport.request(call.method, call.path, params=call.params, json=call.json)
        return parse(call.response_type, data)


class AsyncResource:
    def __init__(self, transport: AsyncTransport) -> None:
        self._transport = transport

    async def _run(self, call: Call) -> Any:
        data = await self._transport.request(
            call.method, call.path, params=call.params, json=call.json
        )
        return parse(call.response_type, data)
