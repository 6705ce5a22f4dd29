"""A database blip on PostgreSQL as tests make one: every connection of a database dropped (as a
restart or a failover drops them), and new ones refused for a while."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager

import psycopg


def admin(pg_url: str) -> psycopg.Connection:
    """A connection to the server's `postgres` database (the test's own one gets closed)."""
    server = pg_url.replace("+psycopg", "", 1).rsplit("/", 1)[0]
    return psycopg.connect(f"{server}/postgres", autocommit=True)


def drop_connections(conn: psycopg.Connection, database: str) -> int:
    """Terminate every other connection to `database`; returns how many were dropped."""
    rows = conn.execute(
        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
        "WHERE datname = %s AND pid <> pg_backend_pid()",
        (database,),
    ).fetchall()
    return sum(1 for (dropped,) in rows if dropped)


def allow_connections(conn: psycopg.Connection, database: str, allowed: bool) -> None:
    conn.execute(f'ALTER DATABASE "{database}" ALLOW_CONNECTIONS {str(allowed).lower()}')


@contextmanager
def refusing_connections(pg_url: str, *, for_s: float) -> Iterator[None]:
    """Drop every connection of the database of `pg_url` and refuse new ones for `for_s` seconds
    (in the background, so the body meets the refusal and then the database's return)."""
    database = pg_url.rsplit("/", 1)[1]
    with admin(pg_url) as conn:
        allow_connections(conn, database, False)
        drop_connections(conn, database)
        back = threading.Timer(for_s, allow_connections, (conn, database, True))
        back.start()
        try:
            yield
        finally:
            back.cancel()
            back.join()
            allow_connections(conn, database, True)
