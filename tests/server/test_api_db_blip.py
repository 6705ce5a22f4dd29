"""The API through a database blip, on PostgreSQL: connections dropped
between requests are replaced (the next request answers as before), and while the database
refuses connections every request answers 503 with `Retry-After` (the SDK retries a 503), not a
500; once it accepts them again the API answers without a restart."""

from __future__ import annotations

import psycopg
import pytest
from fastapi.testclient import TestClient

from keel_server.api.app import create_app
from keel_server.platform.settings import Settings

pytestmark = pytest.mark.services

ADMIN_KEY = "keel_admin_blip_test_0123456789"


def _admin(pg_url: str):
    """A connection to the server's `postgres` database (the test's own one gets closed)."""
    server = pg_url.replace("+psycopg", "", 1).rsplit("/", 1)[0]
    return psycopg.connect(f"{server}/postgres", autocommit=True)


def _drop_connections(admin, database: str) -> int:
    rows = admin.execute(
        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
        "WHERE datname = %s AND pid <> pg_backend_pid()",
        (database,),
    ).fetchall()
    return sum(1 for (dropped,) in rows if dropped)


def test_requests_during_and_after_a_database_blip(pg_url: str, tmp_path):
    from keel_server.migrate import upgrade

    upgrade(pg_url)
    database = pg_url.rsplit("/", 1)[1]
    settings = Settings(home=tmp_path / "home", database_url=pg_url, admin_key=ADMIN_KEY)
    auth = {"Authorization": f"Bearer {ADMIN_KEY}"}
    with TestClient(create_app(settings)) as client, _admin(pg_url) as admin:
        assert client.get("/v1/jobs", headers=auth).status_code == 200
        assert _drop_connections(admin, database) >= 1  # the pooled connection of that request
        assert client.get("/v1/jobs", headers=auth).status_code == 200

        admin.execute(f'ALTER DATABASE "{database}" ALLOW_CONNECTIONS false')
        try:
            _drop_connections(admin, database)
            down = client.get("/v1/jobs", headers=auth)
            assert down.status_code == 503, down.text
            assert down.json()["code"] == "unavailable"
            assert "database" in down.json()["detail"]
            assert int(down.headers["retry-after"]) >= 1
        finally:
            admin.execute(f'ALTER DATABASE "{database}" ALLOW_CONNECTIONS true')
        assert client.get("/v1/jobs", headers=auth).status_code == 200
