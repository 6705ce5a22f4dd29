"""Which database errors count as a blip (`keel_server.db.transient`): on SQLite only a locked
file, never a missing table; anything raised from a blip counts too."""

from __future__ import annotations

import sqlite3

import pytest
from sqlalchemy.exc import IntegrityError, OperationalError, ProgrammingError

from keel_server.db.transient import is_transient


def _sqlite_error(message: str) -> OperationalError:
    return OperationalError("SELECT 1", {}, sqlite3.OperationalError(message))


@pytest.mark.parametrize(
    ("error", "transient"),
    [
        (_sqlite_error("database is locked"), True),
        (_sqlite_error("no such table: jobs"), False),
        (IntegrityError("INSERT", {}, sqlite3.IntegrityError("UNIQUE constraint failed")), False),
        (ValueError("not a database error"), False),
    ],
)
def test_what_counts_as_a_blip(error, transient):
    assert is_transient(error) is transient


def test_an_error_raised_from_a_blip_is_one():
    try:
        try:
            raise _sqlite_error("database is locked")
        except OperationalError as blip:
            raise RuntimeError("loading the model's source failed") from blip
    except RuntimeError as wrapped:
        assert is_transient(wrapped)


def test_an_error_raised_while_handling_a_dropped_connection_is_a_blip():
    # The shape of SQLAlchemy's psycopg pre-ping on a closed socket: the ping fails with the
    # driver's OperationalError, then resetting `autocommit` raises the driver's
    # ProgrammingError, which SQLAlchemy wraps.
    import psycopg

    message = "can't change 'autocommit' now: connection in transaction status ACTIVE"
    try:
        try:
            try:
                raise psycopg.OperationalError("connection socket closed")
            except psycopg.OperationalError:
                raise psycopg.ProgrammingError(message)  # noqa: B904 (as psycopg raises it)
        except psycopg.ProgrammingError as driver:
            raise ProgrammingError("SELECT 1", {}, driver) from driver
    except ProgrammingError as masked:
        assert is_transient(masked)
    plain = ProgrammingError("SELECT 1", {}, psycopg.ProgrammingError("syntax error"))
    assert not is_transient(plain)
