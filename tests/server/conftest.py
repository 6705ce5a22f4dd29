"""API fixtures: the real FastAPI app in-process on a fresh, migrated database (PostgreSQL under
the `services` marker, and SQLite), a filesystem broker and artifacts dir under tmp_path."""

from __future__ import annotations

from collections.abc import Callable, Iterator

import pytest
from fastapi.testclient import TestClient
from job_configs import tiny_job_config

from keel_server.api.app import create_app
from keel_server.platform.settings import Settings

ADMIN_KEY = "keel_admin_test_key_0123456789"


@pytest.fixture
def settings(migrated_url: str, tmp_path) -> Settings:
    return Settings(
        home=tmp_path / "home",
        database_url=migrated_url,
        admin_key=ADMIN_KEY,
        max_body_bytes=64 * 1024,
        max_small_body_bytes=8 * 1024,
        webhook_allow="127.0.0.1",  # the tests' receivers are local
        sse_poll_interval_s=0.05,
    )


@pytest.fixture
def client(settings: Settings) -> Iterator[TestClient]:
    with TestClient(create_app(settings)) as test_client:
        yield test_client


@pytest.fixture
def admin() -> dict[str, str]:
    return {"Authorization": f"Bearer {ADMIN_KEY}"}


@pytest.fixture
def project_key(client: TestClient, admin) -> Callable[[str], dict[str, str]]:
    """Auth headers of a new API key in the named project (created on first use)."""

    def make(project: str) -> dict[str, str]:
        r = client.post("/v1/keys", json={"project": project, "name": "test"}, headers=admin)
        assert r.status_code == 201, r.text
        return {"Authorization": f"Bearer {r.json()['key']}"}

    return make


@pytest.fixture
def job_body() -> Callable[..., dict]:
    """A valid small job create body; keyword overrides replace top-level fields, and
    `config={...}` updates the config."""
    return make_job_body


def make_job_body(**overrides) -> dict:
    config = tiny_job_config(**overrides.pop("config", {}))
    return {"config": config, **overrides}
