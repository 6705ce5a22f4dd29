"""The PostgreSQL tier with its server down (tests/conftest.py): skipped on a developer's
machine, a failure in CI. Runs pytest in a subprocess against a port where nothing listens."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PG_TEST = "tests/server/test_db_lease.py::test_duplicate_delivery_finds_a_live_lease[postgres]"


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]  # closed again when this returns


@pytest.mark.parametrize(
    ("ci", "exit_code", "outcome"), [("", 0, "1 skipped"), ("true", 1, "CI=true: the PostgreSQL")]
)
def test_postgres_down_skips_locally_and_fails_in_ci(ci, exit_code, outcome):
    env = {k: v for k, v in os.environ.items() if k != "CI"}
    env.update(
        CI=ci,
        KEEL_TEST_PG_DSN=f"postgresql://postgres@127.0.0.1:{_closed_port()}/x",
        PYTHONPATH=os.pathsep.join(sys.path),
    )
    done = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", PG_TEST],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == exit_code, done.stdout + done.stderr
    assert outcome in done.stdout and "PostgreSQL not reachable" in done.stdout + done.stderr
