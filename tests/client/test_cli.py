"""The `keel` command line as a user runs it (a subprocess): operator commands on a SQLite
home, and their effect seen through the API."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import keel


def run_keel(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "keel_server.cli", *args], env=env, capture_output=True,
        text=True, timeout=120,
    )  # fmt: skip


def test_help_lists_every_command():
    out = run_keel("--help", env=dict(os.environ)).stdout
    for command in ("up", "server", "worker", "migrate", "keys", "jobs", "checkpoints"):
        assert command in out
    jobs = run_keel("jobs", "--help", env=dict(os.environ)).stdout
    for action in ("list", "show", "cancel", "pause", "resume", "events"):
        assert action in jobs


def test_migrate_then_keys_create_gives_a_working_key(tmp_path):
    from fastapi.testclient import TestClient

    from keel_server.api.app import create_app
    from keel_server.settings import Settings

    env = {k: v for k, v in os.environ.items() if not k.startswith("KEEL_")}
    env["KEEL_HOME"] = str(tmp_path / "home")
    migrated = run_keel("migrate", env=env)
    assert migrated.returncode == 0, migrated.stderr
    created = run_keel("keys", "create", "--project", "team-a", "--name", "ci", env=env)
    assert created.returncode == 0, created.stderr
    key = json.loads(created.stdout)
    assert key["project"] == "team-a" and key["key"].startswith(key["prefix"])

    settings = Settings(home=tmp_path / "home", admin_key="unused-admin-key-0123456789")
    with TestClient(create_app(settings), base_url="http://cli") as app_http:
        client = keel.Client(base_url="http://cli", api_key=key["key"], http_client=app_http)
        assert client.keys.whoami().project_id == key["project_id"]


def test_client_commands_report_errors_in_one_line(tmp_path):
    env = {k: v for k, v in os.environ.items() if not k.startswith("KEEL_")}
    result = run_keel("jobs", "show", "job_x", "--base-url", "http://127.0.0.1:9",
                      "--api-key", "k", env=env)  # fmt: skip
    assert result.returncode == 1
    assert result.stderr.startswith("error: could not connect")
