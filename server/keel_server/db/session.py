"""Engines and sessions for PostgreSQL and SQLite, configured the same way for API and worker."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from sqlalchemy import Connection, Engine, create_engine, event, text
from sqlalchemy.engine import make_url
from sqlalchemy.orm import Session, sessionmaker
from sqlalchemy.pool import QueuePool

SessionFactory = sessionmaker[Session]

# PostgreSQL: as many pooled connections as the API runs request threads (anyio's default
# thread pool, where FastAPI runs every sync route, holds 40), so concurrent requests reuse
# connections instead of opening and closing one each past SQLAlchemy's default 5 + 10 overflow
# (a PostgreSQL backend fork per request: at 16 concurrent reward posts ~10 % of the API's CPU
# went to connecting). A pool opens connections only as concurrency needs them.
PG_POOL_SIZE, PG_MAX_OVERFLOW = 40, 10
# Every database wait is bounded: connecting (an unreachable server), waiting for a pooled
# connection, and each statement (a lock held by a wedged transaction). Defaults for what
# `KEEL_DATABASE_URL` leaves unset (`?connect_timeout=…`, `?options=-c statement_timeout=…`).
PG_CONNECT_TIMEOUT_S, PG_POOL_TIMEOUT_S, PG_STATEMENT_TIMEOUT_MS = 10, 30, 300_000
# A client stopped inside a transaction (SIGSTOP, a frozen VM, a partitioned host) keeps its row
# locks: a worker stopped mid-heartbeat would block the job row, so the worker taking the job
# over would wait out the statement bound. The server ends a transaction idle this long, so the
# takeover waits at most a minute longer than the lease timeout; keel's transactions are never
# idle between statements for more than a fraction of a second.
PG_IDLE_IN_TRANSACTION_TIMEOUT_MS = 60_000


def make_engine(database_url: str, *, max_connections: int | None = None) -> Engine:
    """`max_connections` caps a PostgreSQL pool (an API process's share when several serve one
    database); None keeps `PG_POOL_SIZE` + `PG_MAX_OVERFLOW`."""
    url = make_url(database_url)
    if url.get_backend_name() != "sqlite":
        pool_size, overflow = (
            (PG_POOL_SIZE, PG_MAX_OVERFLOW) if max_connections is None else (max_connections, 0)
        )
        return create_engine(
            url,
            pool_pre_ping=True,
            pool_size=pool_size,
            max_overflow=overflow,
            pool_timeout=PG_POOL_TIMEOUT_S,
            connect_args=_pg_bounds(url.query),
        )
    if url.database and url.database != ":memory:":
        _create_private(Path(url.database))
    # API threads and the worker process share one file: WAL + a busy timeout, and every
    # transaction starts with BEGIN IMMEDIATE. A deferred transaction that reads and then writes
    # fails at once with "database is locked" when another writer committed in between (the
    # busy timeout does not apply to that upgrade); IMMEDIATE waits for the lock instead.
    # So one transaction at a time holds the file anyway; one connection per process makes the
    # others wait in the pool's FIFO queue, woken as soon as it is returned, rather than in
    # SQLite's busy handler, which sleeps up to 100 ms between retries (20 concurrent reward
    # posts: p99 1.5 s that way). Nested transactions in one thread could not work before either.
    engine = create_engine(
        url,
        connect_args={"check_same_thread": False, "timeout": 30},
        poolclass=QueuePool,
        pool_size=1,
        max_overflow=0,
        pool_timeout=30,
    )
    event.listen(engine, "connect", _sqlite_pragmas)
    event.listen(engine, "begin", _begin_immediate)
    return engine


def _pg_bounds(query) -> dict[str, object]:
    """libpq's connect timeout and the server's statement and idle-transaction timeouts, unless
    the URL sets them (its `options` replace both server bounds)."""
    args: dict[str, object] = {}
    if "connect_timeout" not in query:
        args["connect_timeout"] = PG_CONNECT_TIMEOUT_S
    if "options" not in query:
        args["options"] = (
            f"-c statement_timeout={PG_STATEMENT_TIMEOUT_MS}"
            f" -c idle_in_transaction_session_timeout={PG_IDLE_IN_TRANSACTION_TIMEOUT_MS}"
        )
    return args


def _create_private(path: Path) -> None:
    """Create the SQLite file owner-only (0600, its folder 0700 when keel makes it) before
    SQLite does: it holds API-key hashes and sealed secrets. SQLite gives its -wal and -shm
    files the database file's permissions."""
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    with contextlib.suppress(FileExistsError):
        os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))


def _begin_immediate(connection) -> None:
    connection.exec_driver_sql("BEGIN IMMEDIATE")


def _sqlite_pragmas(dbapi_connection, _record) -> None:
    dbapi_connection.isolation_level = None  # pysqlite must not emit its own BEGIN
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA busy_timeout=30000")
    cursor.close()


def make_session_factory(engine: Engine) -> SessionFactory:
    return sessionmaker(engine, expire_on_commit=False)


@contextmanager
def session_scope(factory: SessionFactory) -> Iterator[Session]:
    """One transaction: commit on success, roll back on any exception."""
    session = factory()
    try:
        yield session
        session.commit()
    except BaseException:
        session.rollback()
        raise
    finally:
        session.close()


@contextmanager
def statement_scope(factory: SessionFactory) -> Iterator[Connection]:
    """A connection whose statements each commit on their own, for work in which every write is
    one guarded (compare-and-set) statement: a transaction around them would add nothing, as each
    statement of a READ COMMITTED transaction reads the latest commits anyway. On PostgreSQL it
    saves the BEGIN and the COMMIT, a round trip each (psycopg turns autocommit on and off
    without one). On SQLite it is one transaction, as `session_scope`: every transaction there
    starts with BEGIN IMMEDIATE, and one writer at a time holds the file anyway."""
    engine = factory.kw["bind"]
    if engine.dialect.name == "sqlite":
        with engine.begin() as connection:
            yield connection
        return
    with engine.connect() as connection:
        yield connection.execution_options(isolation_level="AUTOCOMMIT")


def ping(factory: SessionFactory) -> None:
    """Raise unless the database answers a trivial query (readiness)."""
    with factory() as session:
        session.execute(text("SELECT 1"))
