"""The `keel` command line as a user runs it (a subprocess): operator commands on a SQLite
home, and their effect seen through the API."""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys

import keel
from keel_server.cli import build_parser


def run_keel(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "keel_server.cli", *args], env=env, capture_output=True,
        text=True, timeout=120,
    )  # fmt: skip


def _subcommands(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    (action,) = (a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return dict(action.choices)


def test_the_parser_has_every_command_and_action():
    # From the parser itself: deleting a subcommand fails here even if its name stays in a help
    # string somewhere.
    commands = _subcommands(build_parser())
    expected = {"up", "server", "worker", "migrate", "keys", "jobs", "checkpoints"}
    assert set(commands) == expected
    assert set(_subcommands(commands["jobs"])) == {
        "list", "show", "cancel", "pause", "resume", "events",
    }  # fmt: skip
    assert set(_subcommands(commands["checkpoints"])) == {"list", "download"}
    assert set(_subcommands(commands["keys"])) == {"create"}


def test_help_runs_as_a_program():
    result = run_keel("--help", env=dict(os.environ))
    assert result.returncode == 0 and "usage" in result.stdout


def test_migrate_then_keys_create_gives_a_working_key(tmp_path):
    from fastapi.testclient import TestClient

    from keel_server.api.app import create_app
    from keel_server.platform.settings import Settings

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


def test_jobs_resume_parses_a_new_lr_and_algorithm():
    args = build_parser().parse_args(
        ["jobs", "resume", "job_x", "--lr", "5e-7", "--algorithm", '{"name": "grpo"}']
    )
    assert (args.job_id, args.lr, args.algorithm) == ("job_x", 5e-7, {"name": "grpo"})
    plain = build_parser().parse_args(["jobs", "resume", "job_x"])
    assert (plain.lr, plain.algorithm) == (None, None)


def test_jobs_events_follows_unless_told_not_to():
    assert build_parser().parse_args(["jobs", "events", "job_x"]).follow is True
    assert build_parser().parse_args(["jobs", "events", "job_x", "--no-follow"]).follow is False
