"""Which database errors are a blip, and waiting for the database to answer again.

A PostgreSQL restart, a failover or `pg_terminate_backend` drops every connection: the statement
in flight fails with an `OperationalError` (psycopg's `AdminShutdown`, a closed connection), and
the pool's pre-ping replaces the dead connections at their next checkout. Such an error says
nothing about the job or the request, so the worker resumes the job (`jobrunner.runner`) and the
API answers 503 with `Retry-After` (`api.errors`) instead of failing for good. SQLite's
`OperationalError` also covers a missing table or a corrupt file, which are not blips: only
"database is locked" / "busy" counts there.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator

from sqlalchemy.exc import DBAPIError, InterfaceError, OperationalError

from keel_server.db.session import SessionFactory, ping

log = logging.getLogger(__name__)


def is_transient(exc: BaseException) -> bool:
    """Whether `exc`, an exception it was raised from, or one it was raised while handling, is a
    dropped connection or a database that does not answer for now. The last case is real:
    SQLAlchemy's pre-ping on a psycopg connection whose socket was closed fails, then setting
    `autocommit` back on it raises "can't change 'autocommit' now: connection in transaction
    status ACTIVE", a `ProgrammingError` whose context is the dropped connection."""
    return any(_transient_itself(e) for e in exception_chain(exc))


def exception_chain(exc: BaseException) -> Iterator[BaseException]:
    """`exc` and every exception it was raised from or while handling, each once."""
    seen: set[int] = set()
    todo: list[BaseException] = [exc]
    while todo:
        current = todo.pop()
        if id(current) in seen:
            continue
        seen.add(id(current))
        yield current
        todo += [e for e in (current.__cause__, current.__context__) if e is not None]


def _transient_itself(exc: BaseException) -> bool:
    if _psycopg_connection_error(exc):  # the driver's own, before SQLAlchemy wraps it
        return True
    if not isinstance(exc, DBAPIError):
        return False
    if exc.connection_invalidated:
        return True
    if not isinstance(exc, (OperationalError, InterfaceError)):
        return False
    if type(exc.orig).__module__.startswith("sqlite3"):
        text = str(exc.orig).lower()
        return "locked" in text or "busy" in text
    return True


def _psycopg_connection_error(exc: BaseException) -> bool:
    try:
        import psycopg
    except ImportError:  # a SQLite-only install
        return False
    return isinstance(exc, (psycopg.OperationalError, psycopg.InterfaceError))


def wait_until_reachable(
    factory: SessionFactory, *, timeout_s: float, interval_s: float = 0.5
) -> bool:
    """Ping until the database answers (True) or `timeout_s` passes (False); the wait between
    pings doubles up to 5 s."""
    deadline = time.monotonic() + timeout_s
    wait = interval_s
    while True:
        try:
            ping(factory)
            return True
        except Exception as exc:
            if not is_transient(exc):
                raise
            if time.monotonic() + wait > deadline:
                return False
            log.warning("database not reachable (%s); next try in %.1f s", type(exc).__name__, wait)
            time.sleep(wait)
            wait = min(wait * 2, 5.0)
