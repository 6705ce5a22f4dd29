"""The `keel` command line as a user runs it (a subprocess): the SDK's program, its user
commands without the server, operator commands on a SQLite home and their effect seen through the
API, and the extra an operator command names where the server is not installed."""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys

import pytest

import keel
from keel.cli import OPERATOR_COMMANDS, build_parser, main
from keel_server import cli as operator_cli


def run_keel(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "keel", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )


def _subcommands(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    (action,) = (a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return dict(action.choices)


def test_the_parser_has_every_command_and_action():
    # From the parsers themselves: deleting a subcommand fails here even if its name stays in a
    # help string somewhere.
    commands = _subcommands(build_parser())
    operator = {"up", "server", "worker", "migrate", "keys"}
    assert set(commands) == operator | {"jobs", "checkpoints"}
    assert set(OPERATOR_COMMANDS) == operator
    assert set(_subcommands(commands["jobs"])) == {
        "list",
        "show",
        "cancel",
        "pause",
        "resume",
        "events",
    }
    assert set(_subcommands(commands["checkpoints"])) == {"list", "download"}
    # The server's parser declares the arguments of exactly the commands the SDK lists.
    served = _subcommands(operator_cli.build_parser())
    assert set(served) == operator
    assert set(_subcommands(served["keys"])) == {"create"}


def test_operator_commands_hand_their_arguments_to_the_server(capsys):
    with pytest.raises(SystemExit) as exited:
        main(["up", "--help"])
    assert exited.value.code == 0
    out = capsys.readouterr().out
    assert out.startswith("usage: keel up") and "--home HOME" in out
    args = operator_cli.build_parser().parse_args(["keys", "create", "--project", "team-a"])
    assert (args.project, args.name) == ("team-a", None)


def test_server_runs_the_processes_asked_for_or_one_per_core(monkeypatch):
    from keel_server.platform.settings import get_settings

    args = operator_cli.build_parser().parse_args(["server", "--workers", "3"])
    assert args.workers == 3
    assert operator_cli.build_parser().parse_args(["server"]).workers is None  # the setting's
    assert operator_cli.api_processes(3) == 3
    cores = len(os.sched_getaffinity(0))
    assert operator_cli.api_processes(0) == cores
    monkeypatch.setattr(os, "sched_getaffinity", lambda _: {0, 1, 2, 3, 4})
    assert operator_cli.api_processes(0) == 5  # the cores it may use, not the machine's
    with pytest.raises(SystemExit, match="--workers"):
        operator_cli.api_processes(-1)
    get_settings.cache_clear()
    monkeypatch.setenv("KEEL_API_WORKERS", "0")
    try:
        assert get_settings().api_workers == 0
    finally:
        get_settings.cache_clear()


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
    result = run_keel(
        "jobs", "show", "job_x", "--base-url", "http://127.0.0.1:9", "--api-key", "k", env=env
    )
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


# The import names of the server extra's packages, blocked below as on an install of the SDK alone.
SERVER_IMPORTS = ("pydantic_settings", "fastapi", "sqlalchemy", "alembic", "uvicorn", "celery")
_SDK_ONLY = """
import contextlib, io, json, sys
from keel.cli import main

class NotInstalled:
    def find_spec(self, name, path=None, target=None):
        if name.partition(".")[0] in {blocked!r}:
            raise ModuleNotFoundError(f"No module named {{name!r}}", name=name)

sys.meta_path.insert(0, NotInstalled())
results = {{}}
for argv in {argvs!r}:
    err = io.StringIO()
    with contextlib.redirect_stderr(err):
        code = main(argv)
    results[" ".join(argv)] = [code, err.getvalue()]
print(json.dumps(results))
"""


def test_without_the_server_operator_commands_name_their_extra():
    # `keel up` runs a worker beside the API, so it names the worker extra (which has the server's).
    extras = {name: command.extra for name, command in OPERATOR_COMMANDS.items()}
    server = {"server": "server", "migrate": "server", "keys": "server"}
    assert extras == {"up": "worker", "worker": "worker", **server}
    argvs = [[name, *rest] for name in OPERATOR_COMMANDS for rest in ([], ["--help"])]
    code = _SDK_ONLY.format(blocked=SERVER_IMPORTS, argvs=argvs)
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    results = json.loads(done.stdout)
    assert len(results) == len(argvs)
    for argv, (returncode, stderr) in results.items():
        name = argv.split()[0]
        assert returncode == 1
        assert stderr.startswith(f"error: 'keel {name}' needs ")
        assert f"pip install 'keel-rl[{extras[name]}]' (missing: pydantic_settings)" in stderr
        assert stderr.count("\n") == 1  # one line, no traceback


def test_user_commands_never_import_the_server():
    watched = ("keel_server", "keel_worker", *SERVER_IMPORTS)
    code = (
        "import sys; from keel.cli import main\n"
        "code = main(['jobs', 'show', 'job_x', '--base-url', 'http://127.0.0.1:9', "
        "'--api-key', 'k'])\n"
        f"print(code, sorted(m for m in sys.modules if m.partition('.')[0] in {watched!r}))"
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith("KEEL_")}
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=60
    )
    assert done.stdout == "1 []\n", done.stdout + done.stderr
    assert done.stderr.startswith("error: could not connect")


def test_a_missing_module_of_ours_is_a_bug_not_a_missing_extra():
    from keel.cli import _is_missing_extra

    assert _is_missing_extra(ModuleNotFoundError("x", name="pydantic_settings"))
    assert _is_missing_extra(ModuleNotFoundError("x", name="keel_server"))
    assert not _is_missing_extra(ModuleNotFoundError("x", name="keel_server.settings"))
    assert not _is_missing_extra(ModuleNotFoundError("x", name="keel.nothing"))
