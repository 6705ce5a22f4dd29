"""The API through a database blip, on PostgreSQL: connections dropped
between requests are replaced (the next request answers as before), and while the database
refuses connections every request answers 503 with `Retry-After` (the SDK retries a 503), not a
500; once it accepts them again the API answers without a restart."""

from __future__ import annotations

import pytest
from fastapi.testclient import TestClient
from pg_blip import admin, allow_connections, drop_connections

from keel_server.api.app import create_app
from keel_server.platform.settings import Settings

pytestmark = pytest.mark.services

ADMIN_KEY = "keel_admin_blip_test_0123456789"


def test_requests_during_and_after_a_database_blip(pg_url: str, tmp_path):
    from keel_server.migrate import upgrade

    upgrade(pg_url)
    database = pg_url.rsplit("/", 1)[1]
    settings = Settings(home=tmp_path / "home", database_url=pg_url, admin_key=ADMIN_KEY)
    auth = {"Authorization": f"Bearer {ADMIN_KEY}"}
    with TestClient(create_app(settings)) as client, admin(pg_url) as conn:
        assert client.get("/v1/jobs", headers=auth).status_code == 200
        assert drop_connections(conn, database) >= 1  # the pooled connection of that request
        assert client.get("/v1/jobs", headers=auth).status_code == 200

        allow_connections(conn, database, False)
        try:
            drop_connections(conn, database)
            down = client.get("/v1/jobs", headers=auth)
            assert down.status_code == 503, down.text
            assert down.json()["code"] == "unavailable"
            assert "database" in down.json()["detail"]
            assert int(down.headers["retry-after"]) >= 1
        finally:
            allow_connections(conn, database, True)
        assert client.get("/v1/jobs", headers=auth).status_code == 200
