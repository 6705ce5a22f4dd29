"""SDK fixtures: the real FastAPI app in-process on a fresh migrated database, driven through
the SDK with an injected httpx client (Starlette's TestClient for `Client`, httpx's
ASGITransport for `AsyncClient`). No server, no socket, nothing of ours mocked."""

from __future__ import annotations

from collections.abc import Callable, Iterator

import httpx
import pytest
from fastapi.testclient import TestClient
from job_configs import tiny_job_config

import keel
from keel_server.api.app import create_app
from keel_server.platform.settings import Settings

ADMIN_KEY = "keel_admin_sdk_test_key_0123456789"
BASE_URL = "http://testserver"


@pytest.fixture
def settings(sqlite_url: str, tmp_path) -> Settings:
    from keel_server.migrate import upgrade

    upgrade(sqlite_url)
    return Settings(
        home=tmp_path / "home",
        database_url=sqlite_url,
        admin_key=ADMIN_KEY,
        sse_poll_interval_s=0.02,
    )


@pytest.fixture
def app(settings: Settings):
    return create_app(settings)


@pytest.fixture
def http(app) -> Iterator[TestClient]:
    with TestClient(app, base_url=BASE_URL) as test_client:
        yield test_client


@pytest.fixture
def admin(http: TestClient) -> keel.Client:
    return keel.Client(base_url=BASE_URL, api_key=ADMIN_KEY, http_client=http, max_retries=0)


@pytest.fixture
def project_client(admin: keel.Client, http: TestClient) -> Callable[[str], keel.Client]:
    """A `keel.Client` holding a fresh API key of the named project."""

    def make(project: str) -> keel.Client:
        key = admin.keys.create(project=project, name="sdk-test").key
        return keel.Client(base_url=BASE_URL, api_key=key, http_client=http, max_retries=0)

    return make


@pytest.fixture
def async_client_for(app) -> Callable[[str], keel.AsyncClient]:
    """An `AsyncClient` for an API key, on httpx's ASGITransport over the same app."""

    def make(api_key: str) -> keel.AsyncClient:
        http = httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url=BASE_URL)
        return keel.AsyncClient(base_url=BASE_URL, api_key=api_key, http_client=http)

    return make


@pytest.fixture
def small_config() -> Callable[..., dict]:
    """A valid job config small enough for a CPU test run; keyword overrides replace fields."""
    return tiny_job_config
