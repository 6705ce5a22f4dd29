"""The event streams this API process holds open, and when each must end.

An SSE stream holds a connection and polls the database until its job ends, which may be days:
300 streams of one key made a plain GET take 1.9 s instead of 10 ms. So each caller (an API key,
the admin key, a job's reward token) may hold `sse_max_streams_per_key` streams per process
(429 past it), and a stream ends after `sse_max_age_s` with a `reconnect` event, after which the
client resumes from its last event id (the SDK does so itself). A stream also ends with
`reconnect` as soon as its key is revoked (at once in the process that revoked it, within
`sse_key_check_s` in the others: the reconnect then gets its 401) and when the process is asked
to stop (`drain`): an open stream must not keep `keel server` or `keel up` from exiting.
"""

from __future__ import annotations

import threading
import weakref
from dataclasses import dataclass, field

from keel_server.services.errors import ServiceError


@dataclass(eq=False)
class StreamSlot:
    """One open stream of `owner`; `closed_because` is set when it must end now."""

    registry: StreamRegistry
    owner: str
    closed_because: str | None = None
    _released: bool = field(default=False, repr=False)

    def release(self) -> None:
        self.registry._release(self)

    def bind(self, iterator: object) -> None:
        """Release the slot when `iterator` is dropped without having run its `finally` (a
        response that never started streaming)."""
        weakref.finalize(iterator, self.release)


class StreamRegistry:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._open: dict[str, set[StreamSlot]] = {}
        self.draining = False

    def open(self, owner: str, *, limit: int) -> StreamSlot:
        """A slot for one more stream of `owner`, or a 429 when it holds `limit` already."""
        with self._lock:
            slots = self._open.setdefault(owner, set())
            if len(slots) >= limit:
                raise ServiceError(
                    "rate_limited",
                    f"this key already has {len(slots)} open event streams (the limit per key "
                    "is KEEL_SSE_MAX_STREAMS_PER_KEY); close one first",
                    retry_after_s=1.0,
                )
            slot = StreamSlot(self, owner)
            slots.add(slot)
            return slot

    def count(self, owner: str) -> int:
        with self._lock:
            return len(self._open.get(owner, ()))

    def close_owner(self, owner: str, reason: str) -> int:
        """Ask every stream of `owner` to end (its key was revoked); returns how many."""
        with self._lock:
            slots = list(self._open.get(owner, ()))
        for slot in slots:
            slot.closed_because = reason
        return len(slots)

    def drain(self) -> None:
        """The process is stopping: every stream ends at its next poll. Safe in a signal handler
        (it only sets a flag)."""
        self.draining = True

    def _release(self, slot: StreamSlot) -> None:
        with self._lock:
            if slot._released:
                return
            slot._released = True
            slots = self._open.get(slot.owner)
            if slots is not None:
                slots.discard(slot)
                if not slots:
                    del self._open[slot.owner]
