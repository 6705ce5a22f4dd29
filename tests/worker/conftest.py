"""Fixtures of the job tests: a migrated SQLite database with fast polls (`settings`; a module
overrides it for other settings) and the admin's SDK on the in-process API (`sdk`); `sessions`
comes from the root conftest."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from in_process import admin_sdk, job_settings

import keel
from keel_server.platform.settings import Settings


@pytest.fixture
def settings(sqlite_url: str, tmp_path) -> Settings:
    return job_settings(sqlite_url, tmp_path)


@pytest.fixture
def sdk(settings: Settings) -> Iterator[keel.Client]:
    with admin_sdk(settings) as client:
        yield client
