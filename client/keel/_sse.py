"""Server-Sent Events parsing for `jobs.events()`, over any iterator of text lines.

Implements the parts of the WHATWG event-stream format the API uses: `id`, `event`, `data`
(multi-line joined with newlines), comments (`:` keep-alives) ignored, an event dispatched on a
blank line. `data` is decoded as JSON when it parses, else kept as text.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class ServerEvent:
    """One event of a job's stream; `id` is what `Last-Event-ID` resumes from."""

    event: str
    data: Any
    id: str | None = None


@dataclass
class _Pending:
    event: str = "message"
    id: str | None = None
    data_lines: list[str] = field(default_factory=list)


class SSEDecoder:
    """Feeds lines one at a time; returns a `ServerEvent` when a blank line ends one."""

    def __init__(self) -> None:
        self._pending = _Pending()
        self.last_event_id: str | None = None

    def feed(self, line: str) -> ServerEvent | None:
        line = line.rstrip("\r\n")
        if not line:
            return self._dispatch()
        if line.startswith(":"):
            return None
        name, _, value = line.partition(":")
        value = value.removeprefix(" ")
        if name == "data":
            self._pending.data_lines.append(value)
        elif name == "event":
            self._pending.event = value
        elif name == "id":
            self._pending.id = value
        return None

    def _dispatch(self) -> ServerEvent | None:
        pending, self._pending = self._pending, _Pending()
        if not pending.data_lines and pending.id is None:
            return None
        if pending.id is not None:
            self.last_event_id = pending.id
        text = "\n".join(pending.data_lines)
        try:
            data: Any = json.loads(text)
        except ValueError:
            data = text
        return ServerEvent(event=pending.event, data=data, id=pending.id)


def iter_events(lines: Iterator[str], decoder: SSEDecoder) -> Iterator[ServerEvent]:
    for line in lines:
        event = decoder.feed(line)
        if event is not None:
            yield event


async def aiter_events(
    lines: AsyncIterator[str], decoder: SSEDecoder
) -> AsyncIterator[ServerEvent]:
    async for line in lines:
        event = decoder.feed(line)
        if event is not None:
            yield event
