"""The service in one process for tests that run jobs: the API over FastAPI's TestClient, the
SDK on top of it, and `run_job` called directly (no Celery worker)."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from fastapi.testclient import TestClient

import keel
from keel_server.api.app import create_app
from keel_server.migrate import upgrade
from keel_server.platform.settings import Settings

ADMIN_KEY = "keel_admin_in_process_test_0123456789"
BASE_URL = "http://testserver"


def job_settings(database_url: str, tmp_path: Path, **overrides) -> Settings:
    """Settings over a migrated database, with fast heartbeats and reward polls."""
    upgrade(database_url)
    base = {
        "home": tmp_path / "home",
        "database_url": database_url,
        "admin_key": ADMIN_KEY,
        "heartbeat_interval_s": 0.2,
        "reward_poll_interval_s": 0.05,
    }
    return Settings(**{**base, **overrides})


@contextmanager
def admin_sdk(settings: Settings) -> Iterator[keel.Client]:
    """The admin's SDK client on the in-process API of `settings`."""
    with TestClient(create_app(settings), base_url=BASE_URL) as http:
        yield keel.Client(base_url=BASE_URL, api_key=ADMIN_KEY, http_client=http, max_retries=0)
