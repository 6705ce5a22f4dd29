"""Lease holders and the reaper (docs/architecture.md §5), on SQLite and PostgreSQL, real processes.

- `owner_is_dead` is true only for an owner of this host and pid namespace whose process exited;
- a fresh lease whose holder is known dead is taken over at once; a live holder keeps it;
- the API process, with no worker anywhere, re-enqueues each job whose holder is dead or whose
  heartbeat is stale (not a live one), and shows the heartbeat on the job.
"""

from __future__ import annotations

import base64
import json
import os
import socket
import subprocess
import sys
import time
from datetime import timedelta

from fastapi.testclient import TestClient

from keel_server.api.app import create_app
from keel_server.db import jobs as jobs_db
from keel_server.db import session_scope, utcnow
from keel_server.platform.leases import new_owner, owner_is_dead


def exited_owner() -> str:
    """The lease owner id of a process of this host that has exited."""
    code = "from keel_server.platform.leases import new_owner; print(new_owner())"
    done = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        check=True,
        env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)},
    )
    return done.stdout.strip()


def test_only_an_exited_process_of_this_host_is_dead():
    dead = exited_owner()
    host, namespace, pid, tag = dead.rsplit(":", 3)
    assert owner_is_dead(dead)
    assert not owner_is_dead(new_owner())  # this process
    assert not owner_is_dead(f"{host}:{namespace}:{os.getpid()}:{tag}")
    assert not owner_is_dead(f"elsewhere-{socket.gethostname()}:{namespace}:{pid}:{tag}")
    assert not owner_is_dead(f"{host}:4026599999:{pid}:{tag}")  # another pid namespace
    for junk in (None, "", "dead", "host:1:2", f"{host}:{namespace}:²:{tag}"):
        assert not owner_is_dead(junk)


def test_a_dead_holder_of_this_host_loses_a_fresh_lease_at_once(client, admin, job_body, sessions):
    job_id = client.post("/v1/jobs", json=job_body(), headers=admin).json()["id"]
    dead, alive = exited_owner(), new_owner()
    with session_scope(sessions) as s:
        assert jobs_db.take_lease(s, job_id, dead, lease_timeout_s=600).acquired
    with session_scope(sessions) as s:  # fresh heartbeat: only the dead-owner rule lets it go
        held = jobs_db.take_lease(s, job_id, alive, lease_timeout_s=600)
        assert (held.acquired, held.reason) == (False, "held")
        taken = jobs_db.take_lease(s, job_id, alive, lease_timeout_s=600, dead_owner=dead)
        assert taken.acquired and taken.job.attempts == 2
    with session_scope(sessions) as s:  # and a live holder is never "dead"
        again = jobs_db.take_lease(s, job_id, dead, lease_timeout_s=600, dead_owner=dead)
        assert (again.acquired, again.job.lease_owner) == (False, alive)


def test_the_api_alone_reenqueues_orphaned_jobs(admin, job_body, sessions, settings):
    fast = settings.model_copy(update={"reaper_interval_s": 0.1})
    broker = fast.broker_dir
    with TestClient(create_app(fast)) as api:
        ids = [api.post("/v1/jobs", json=job_body(), headers=admin).json()["id"] for _ in "abc"]
        dead_holder, stale_heartbeat, live = ids
        before = set(broker.glob("*.msg"))  # the `queued` jobs were enqueued when created
        long_ago = utcnow() - timedelta(seconds=3600)
        with session_scope(sessions) as s:
            jobs_db.take_lease(s, dead_holder, exited_owner(), lease_timeout_s=600)
            jobs_db.take_lease(
                s, stale_heartbeat, "other-host:1:2:x", lease_timeout_s=60, now=long_ago
            )
            jobs_db.take_lease(s, live, new_owner(), lease_timeout_s=60)
        deadline = time.monotonic() + 20
        while len(_enqueued(broker, before)) < 2 and time.monotonic() < deadline:
            time.sleep(0.05)
        time.sleep(0.5)  # further sweeps must not repeat them within a lease timeout
        shown = api.get(f"/v1/jobs/{live}", headers=admin).json()
    assert sorted(_enqueued(broker, before)) == sorted([dead_holder, stale_heartbeat])
    with session_scope(sessions) as s:
        heartbeat = jobs_db.get_job(s, live).heartbeat_at
    assert shown["heartbeat_at"] is not None
    assert shown["heartbeat_at"].replace("Z", "+00:00") == heartbeat.isoformat()


def _enqueued(broker, before: set) -> list[str]:
    """Job ids of the `keel.run_job` messages the filesystem broker got since `before`."""
    ids = []
    for path in set(broker.glob("*.msg")) - before:
        message = json.loads(path.read_text())
        assert message["headers"]["task"] == "keel.run_job"
        args, _kwargs, _embed = json.loads(base64.b64decode(message["body"]))
        ids += args
    return ids
