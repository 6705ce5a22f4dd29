"""Every outbound wait of the API and the worker is bounded (issue: no silent hang): each
PostgreSQL statement and connect, and each Redis socket of the broker."""

from __future__ import annotations

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
        # The bound is real: a statement past it is cancelled by the server.
        conn.execute(text("SET statement_timeout = 200"))
        with pytest.raises(Exception, match="statement timeout"):
            conn.execute(text("SELECT pg_sleep(5)"))
    engine.dispose()
    own = make_engine(f"{pg_url}?options=-c%20statement_timeout%3D7000")
    with own.connect() as conn:
        assert conn.execute(text("SHOW statement_timeout")).scalar_one() == "7s"
    own.dispose()


def test_the_redis_broker_sockets_are_bounded(tmp_path) -> None:
    settings = Settings(home=tmp_path, broker_url="redis://127.0.0.1:6379/5")
    options = celery_config(settings)["broker_transport_options"]
    assert options["socket_timeout"] > 0 and options["socket_connect_timeout"] > 0
    from keel_worker.celery_app import make_celery

    worker_options = make_celery(settings).conf.broker_transport_options
    assert worker_options["socket_timeout"] == options["socket_timeout"]
    assert worker_options["visibility_timeout"] > 0
