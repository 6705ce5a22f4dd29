"""Event streams and keys against a real `keel server` process (the in-process TestClient reads
a whole response before returning it, so it cannot hold a stream open).

- A key holds at most `sse_max_streams_per_key` streams (429 past it); other keys are not held
  back by it.
- A stream ends after `sse_max_age_s` with a `reconnect` event, and the SDK resumes it from its
  last event id: every event arrives once.
- Revoking a key ends its open streams: at once when this process revoked it, within
  `sse_key_check_s` when another one did (here: the row changed in the database directly).
- A key minted by a project key is revoked with it; the admin key revokes any project's key, a
  project key no other project's.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import ExitStack

import httpx
import pytest
import sqlalchemy as sa
from job_configs import tiny_job_config

import keel

ADMIN = "keel_admin_streams_test_0123456789"
MAX_STREAMS, MAX_AGE_S, KEY_CHECK_S = 2, 1.5, 0.3


@pytest.fixture
def server(sqlite_url: str, tmp_path) -> Iterator[str]:
    from keel_server.migrate import upgrade

    upgrade(sqlite_url)
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    env = {k: v for k, v in os.environ.items() if not k.startswith("KEEL_")}
    env |= {
        "KEEL_HOME": str(tmp_path / "home"),
        "KEEL_DATABASE_URL": sqlite_url,
        "KEEL_ADMIN_KEY": ADMIN,
        "KEEL_SSE_POLL_INTERVAL_S": "0.05",
        "KEEL_SSE_MAX_STREAMS_PER_KEY": str(MAX_STREAMS),
        "KEEL_SSE_MAX_AGE_S": str(MAX_AGE_S),
        "KEEL_SSE_KEY_CHECK_S": str(KEY_CHECK_S),
    }
    log = tmp_path / "api.log"
    cmd = [sys.executable, "-m", "keel", "server", "--port", str(port)]
    proc = subprocess.Popen(cmd, env=env, stdout=log.open("wb"), stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    while True:
        assert proc.poll() is None, log.read_text()
        assert time.monotonic() < deadline, log.read_text()
        try:
            if httpx.get(f"{url}/health/live", timeout=1).status_code == 200:
                break
        except httpx.HTTPError:
            time.sleep(0.2)
    yield url
    proc.kill()
    proc.wait(15)


def _auth(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def _new_key(url: str, by: str, project: str | None = None) -> tuple[str, str]:
    """(id, secret) of a key minted by `by`."""
    body = {"name": "t"} | ({"project": project} if project else {})
    r = httpx.post(f"{url}/v1/keys", json=body, headers=_auth(by))
    assert r.status_code == 201, r.text
    return r.json()["id"], r.json()["key"]


def _queued_job(url: str, key: str) -> str:
    """A job no worker runs: its stream never ends on its own."""
    body = {"config": tiny_job_config(), "reward": {"type": "builtin"}}
    r = httpx.post(f"{url}/v1/jobs", json=body, headers=_auth(key))
    assert r.status_code == 201, r.text
    return r.json()["id"]


def _open(stack: ExitStack, url: str, key: str, job_id: str) -> httpx.Response:
    client = stack.enter_context(httpx.Client(timeout=10))
    return stack.enter_context(
        client.stream("GET", f"{url}/v1/jobs/{job_id}/events", headers=_auth(key))
    )


def _read_to_end(response: httpx.Response, timeout_s: float) -> list[tuple[str, object]]:
    """(event, data) of every event until the server ends the stream; fails past `timeout_s`."""
    events, name = [], "message"
    deadline = time.monotonic() + timeout_s
    for line in response.iter_lines():
        assert time.monotonic() < deadline, f"the stream still runs: {events}"
        if line.startswith("event: "):
            name = line.removeprefix("event: ")
        elif line.startswith("data: "):
            events.append((name, json.loads(line.removeprefix("data: "))))
            name = "message"
    return events


def test_a_key_holds_at_most_its_streams(server):
    _, key = _new_key(server, ADMIN, "alpha")
    _, other = _new_key(server, ADMIN, "alpha")
    job_id = _queued_job(server, key)
    with ExitStack() as held:
        for _ in range(MAX_STREAMS):
            assert _open(held, server, key, job_id).status_code == 200
        over = httpx.get(f"{server}/v1/jobs/{job_id}/events", headers=_auth(key), timeout=10)
        assert over.status_code == 429, over.text
        assert over.json()["code"] == "rate_limited" and "Retry-After" in over.headers
        with ExitStack() as others:  # the cap is per key: the project's other key still streams
            assert _open(others, server, other, job_id).status_code == 200
    # Both closed: the key may stream again (the server notices the close at its next poll).
    deadline = time.monotonic() + 10
    while True:
        with ExitStack() as again:
            if _open(again, server, key, job_id).status_code == 200:
                break
        assert time.monotonic() < deadline, "the closed streams were never released"
        time.sleep(0.1)


def test_a_stream_ends_at_its_age_and_the_sdk_resumes_it(server):
    _, key = _new_key(server, ADMIN, "alpha")
    job_id = _queued_job(server, key)
    with ExitStack() as stack:
        opened = time.monotonic()
        events = _read_to_end(_open(stack, server, key, job_id), timeout_s=MAX_AGE_S + 10)
    assert time.monotonic() - opened >= MAX_AGE_S
    assert [name for name, _ in events] == ["status", "reconnect"]
    assert events[-1][1] == {"reason": "max_age"}

    # The SDK follows the job across several aged-out streams and sees each event once.
    client = keel.Client(base_url=server, api_key=key, max_retries=0)
    seen: list[keel.types.JobEvent] = []
    reader = threading.Thread(target=lambda: seen.extend(client.jobs.events(job_id)))
    reader.start()
    time.sleep(2.5 * MAX_AGE_S)
    client.jobs.cancel(job_id)
    reader.join(30)
    assert not reader.is_alive()
    assert [(e.type, e.data["status"]) for e in seen] == [
        ("status", "queued"),
        ("status", "cancelled"),
    ]


def test_revoking_a_key_ends_its_streams_and_those_of_the_keys_it_minted(server, sqlite_url):
    parent_id, parent = _new_key(server, ADMIN, "alpha")
    _, child = _new_key(server, parent)  # a project key mints a key of its own project
    _, grandchild = _new_key(server, child)
    job_id = _queued_job(server, parent)
    with ExitStack() as stack:
        streams = [_open(stack, server, k, job_id) for k in (parent, child, grandchild)]
        revoked_at = time.monotonic()
        # The admin (project "default") revokes a key of project alpha.
        r = httpx.delete(f"{server}/v1/keys/{parent_id}", headers=_auth(ADMIN))
        assert r.status_code == 200 and r.json()["revoked_at"] is not None, r.text
        for stream in streams:
            events = _read_to_end(stream, timeout_s=5)
            assert events[-1] == ("reconnect", {"reason": "revoked"})
        assert time.monotonic() - revoked_at < 5
    for key in (parent, child, grandchild):
        assert httpx.get(f"{server}/v1/jobs", headers=_auth(key)).status_code == 401


def test_a_revocation_by_another_process_ends_the_stream_within_the_key_check(server, sqlite_url):
    key_id, key = _new_key(server, ADMIN, "alpha")
    job_id = _queued_job(server, key)
    with ExitStack() as stack:
        stream = _open(stack, server, key, job_id)
        engine = sa.create_engine(sqlite_url)
        with engine.begin() as conn:  # as another API process would, through the database
            conn.execute(
                sa.text("UPDATE api_keys SET revoked_at = CURRENT_TIMESTAMP WHERE id = :id"),
                {"id": key_id},
            )
        engine.dispose()
        revoked_at = time.monotonic()
        events = _read_to_end(stream, timeout_s=KEY_CHECK_S + 5)
        assert events[-1] == ("reconnect", {"reason": "revoked"})
        assert time.monotonic() - revoked_at < KEY_CHECK_S + 2


def test_only_the_admin_revokes_another_projects_key(server):
    alpha_id, _ = _new_key(server, ADMIN, "alpha")
    _, beta = _new_key(server, ADMIN, "beta")
    refused = httpx.delete(f"{server}/v1/keys/{alpha_id}", headers=_auth(beta))
    assert refused.status_code == 404, refused.text
    assert httpx.delete(f"{server}/v1/keys/{alpha_id}", headers=_auth(ADMIN)).status_code == 200


def test_what_keel_server_writes_is_its_users_alone(server, tmp_path):
    _, key = _new_key(server, ADMIN, "alpha")
    lines = b'{"text": "1 + 1 =", "reference": "2"}\n'
    r = httpx.post(f"{server}/v1/files", files={"file": ("p.jsonl", lines)}, headers=_auth(key))
    assert r.status_code == 201, r.text
    stored = tmp_path / "home" / "artifacts" / "files" / f"{r.json()['id']}.jsonl"
    assert stored.stat().st_mode & 0o077 == 0, oct(stored.stat().st_mode)
    assert stored.parent.stat().st_mode & 0o077 == 0
