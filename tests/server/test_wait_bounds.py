"""Every outbound wait of the API and the worker is bounded (issue: no silent hang): each
PostgreSQL statement and connect, and each Redis socket of the broker."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from sqlalchemy import text

from keel_server.db import make_engine
from keel_server.platform.queue import celery_config
from keel_server.platform.settings import Settings


@pytest.mark.services
def test_a_postgres_statement_is_bounded_unless_the_url_says_otherwise(pg_url: str) -> None:
    engine = make_engine(pg_url)
    with engine.connect() as conn:
        assert conn.execute(text("SHOW statement_timeout")).scalar_one() == "5min"
        assert conn.execute(text("SHOW idle_in_transaction_session_timeout")).scalar_one() == "1min"
        # The bound is real: a statement past it is cancelled by the server.
        conn.execute(text("SET statement_timeout = 200"))
        with pytest.raises(Exception, match="statement timeout"):
            conn.execute(text("SELECT pg_sleep(5)"))
    engine.dispose()
    own = make_engine(f"{pg_url}?options=-c%20statement_timeout%3D7000")
    with own.connect() as conn:
        assert conn.execute(text("SHOW statement_timeout")).scalar_one() == "7s"
    own.dispose()


# A client that takes a row lock in a transaction and is then stopped (as SIGSTOP stops a worker
# between a heartbeat's UPDATE and its COMMIT), with the idle-transaction bound shortened to 1 s.
_LOCK_AND_STOP = """
import os, signal, sys
from sqlalchemy import text
from keel_server.db import make_engine

conn = make_engine(sys.argv[1]).connect()
conn.execute(text("UPDATE probe SET n = n + 1"))
print("locked", flush=True)
os.kill(os.getpid(), signal.SIGSTOP)
"""


@pytest.mark.services
def test_a_client_stopped_inside_a_transaction_loses_its_row_locks(pg_url: str) -> None:
    engine = make_engine(pg_url)
    with engine.begin() as conn:
        conn.execute(text("CREATE TABLE probe (n integer)"))
        conn.execute(text("INSERT INTO probe VALUES (0)"))
    server = Path(__file__).resolve().parents[2] / "server"
    env = {**os.environ, "PYTHONPATH": f"{server}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    bound = "?options=-c%20idle_in_transaction_session_timeout%3D1000"
    holder = subprocess.Popen(
        [sys.executable, "-c", _LOCK_AND_STOP, pg_url + bound], stdout=subprocess.PIPE, env=env
    )
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == b"locked"
        with engine.connect() as conn:
            conn.execute(text("SET statement_timeout = 30000"))  # fail in 30 s, not 5 min
            started = time.monotonic()
            conn.execute(text("UPDATE probe SET n = n + 10"))
            waited = time.monotonic() - started
            conn.commit()
            # It waited on the stopped holder's lock, until the server ended that transaction
            # (rolled back: the holder's +1 is gone).
            assert 0.5 < waited < 10, waited
            assert conn.execute(text("SELECT n FROM probe")).scalar_one() == 10
    finally:
        holder.kill()
        holder.wait()
    engine.dispose()


def test_the_redis_broker_sockets_are_bounded(tmp_path) -> None:
    settings = Settings(home=tmp_path, broker_url="redis://127.0.0.1:6379/5")
    options = celery_config(settings)["broker_transport_options"]
    assert options["socket_timeout"] > 0 and options["socket_connect_timeout"] > 0
    from keel_worker.celery_app import make_celery

    worker_options = make_celery(settings).conf.broker_transport_options
    assert worker_options["socket_timeout"] == options["socket_timeout"]
    assert worker_options["visibility_timeout"] > 0
