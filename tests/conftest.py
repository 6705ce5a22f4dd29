"""Shared database fixtures: every test gets its own database.

`pg_url` creates a fresh PostgreSQL database on the local server (127.0.0.1:5432, trust auth) and
drops it afterwards; `sqlite_url` is a file in the test's tmp dir; `db_url` runs a test on both
(the PostgreSQL variant carries the `services` marker). Schemas come from the Alembic migrations,
so tests exercise the same DDL as production.

A PostgreSQL server that is down skips the PostgreSQL tier on a developer's machine, but fails it
in CI (`CI=true`): there a skip would turn the whole production path green without running it.
"""

from __future__ import annotations

import os
import secrets
from collections.abc import Iterator
from datetime import timedelta

import pytest

# `make test-vllm` sets it: there a vLLM that does not import fails the `vllm` tests.
REQUIRE_VLLM = os.environ.get("KEEL_REQUIRE_VLLM", "").strip() in ("1", "true", "yes")
PG_ADMIN_DSN = os.environ.get("KEEL_TEST_PG_DSN", "postgresql://postgres@127.0.0.1:5432/postgres")
IN_CI = os.environ.get("CI", "").strip().lower() in ("1", "true", "yes")


def pytest_runtest_setup(item: pytest.Item) -> None:
    """Tests marked `vllm` need the vllm package (`.venv-vllm`): skipped in the main suite,
    failed in the vLLM tier."""
    if item.get_closest_marker("vllm") is None:
        return
    import importlib.util

    if importlib.util.find_spec("vllm") is None:
        reason = "vllm is not installed (make test-vllm runs these tests in .venv-vllm)"
        if REQUIRE_VLLM:
            pytest.fail(f"{reason}; KEEL_REQUIRE_VLLM=1: the vLLM tier must run", pytrace=False)
        pytest.skip(reason)


def _pg_admin():
    import psycopg

    try:
        return psycopg.connect(PG_ADMIN_DSN, autocommit=True, connect_timeout=3)
    except psycopg.OperationalError as exc:
        reason = f"PostgreSQL not reachable at {PG_ADMIN_DSN}: {exc}"
        if IN_CI:
            pytest.fail(f"{reason} (CI=true: the PostgreSQL tier must run)", pytrace=False)
        pytest.skip(reason)


@pytest.fixture
def pg_url() -> Iterator[str]:
    """URL of a new, empty PostgreSQL database, dropped after the test."""
    name = f"keel_test_{secrets.token_hex(6)}"
    with _pg_admin() as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    base = PG_ADMIN_DSN.rsplit("/", 1)[0].replace("postgresql://", "postgresql+psycopg://", 1)
    yield f"{base}/{name}"
    with _pg_admin() as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture
def sqlite_url(tmp_path) -> str:
    return f"sqlite:///{tmp_path / 'keel.db'}"


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.services)])
def db_url(request) -> str:
    """Empty database URL, once for SQLite and once for PostgreSQL."""
    fixture = "sqlite_url" if request.param == "sqlite" else "pg_url"
    return request.getfixturevalue(fixture)


@pytest.fixture
def migrated_url(db_url: str) -> str:
    from keel_server.migrate import upgrade

    upgrade(db_url)
    return db_url


@pytest.fixture
def session_factory(migrated_url: str):
    from keel_server.db import make_engine, make_session_factory

    engine = make_engine(migrated_url)
    yield make_session_factory(engine)
    engine.dispose()


@pytest.fixture
def job_id(session_factory) -> str:
    """A queued job row, inserted straight through the DB layer (client prompts, external
    rewards), for the DB tests."""
    from keel_server.db import jobs as jobs_db
    from keel_server.db import keys as keys_db
    from keel_server.db import new_id, session_scope

    with session_scope(session_factory) as s:
        project = keys_db.get_or_create_project(s, "p")
        return jobs_db.insert_job(
            s,
            id=new_id("job"),
            project_id=project.id,
            status="queued",
            config={},
            prompt_source={"type": "client"},
            reward_source={"type": "external"},
            reward_token_hash=new_id("h"),
        ).id


@pytest.fixture
def sessions(settings):
    """A session factory on the database of the folder's `settings` fixture."""
    from keel_server.db import make_engine, make_session_factory

    engine = make_engine(settings.database_url)
    yield make_session_factory(engine)
    engine.dispose()


@pytest.fixture
def add_rollouts(sessions):
    """Write one step's rollouts as the worker does (`groups` groups × 2 samples)."""
    from keel_server.db import session_scope, utcnow
    from keel_server.db.rollouts import NewRollout, record_rollouts

    def add(job_id: str, *, step: int = 1, deadline_s: float = 600.0, groups: int = 2) -> list[str]:
        items = [
            NewRollout(g, s, f"prompt {g}", f"completion {g}.{s}", token_count=3 + s)
            for g in range(groups)
            for s in range(2)
        ]
        with session_scope(sessions) as session:
            rows = record_rollouts(
                session,
                job_id,
                step=step,
                policy_version=step - 1,
                deadline_at=utcnow() + timedelta(seconds=deadline_s),
                rollouts=items,
            )
            return [r.id for r in rows]

    return add
