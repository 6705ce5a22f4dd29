"""Several API processes on one PostgreSQL: each holds its share of
`Settings.api_database_connections`, so one process per core cannot exhaust PostgreSQL's
`max_connections` (`keel server` tells its processes how many they are)."""

from __future__ import annotations

import pytest

from keel_server.platform.settings import Settings, api_process_connections
from keel_server.services.context import ServiceContext


@pytest.mark.parametrize(
    ("workers", "total", "each"), [(1, 50, 50), (2, 50, 25), (16, 50, 4), (3, 100, 33)]
)
def test_each_api_process_holds_its_share_of_the_connections(workers, total, each) -> None:
    settings = Settings(api_workers=workers, api_database_connections=total)
    assert api_process_connections(settings) == each


def test_one_per_core_splits_by_the_cores(monkeypatch) -> None:
    import os

    monkeypatch.setattr(os, "sched_getaffinity", lambda _: set(range(5)))
    assert api_process_connections(Settings(api_workers=0, api_database_connections=50)) == 10


@pytest.mark.services
def test_the_service_context_pool_is_the_processes_share(pg_url) -> None:
    ctx = ServiceContext.from_settings(
        Settings(database_url=pg_url, api_workers=5, api_database_connections=50)
    )
    try:
        pool = ctx.sessions.kw["bind"].pool
        assert (pool.size(), pool._max_overflow) == (10, 0)
    finally:
        ctx.close()
