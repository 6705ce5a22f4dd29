"""Authentication before the body, and per-route body limits, probed in-process and against a
real `keel server` process over raw sockets (the in-process TestClient reads whole bodies
before the app sees them, so it cannot show what the server reads)."""

from __future__ import annotations

import os
import select
import socket
import subprocess
import sys
import time
from collections.abc import Iterator

import httpx
import pytest


@pytest.mark.parametrize(
    ("path", "body"),
    [
        ("/v1/jobs", b"{not json"),
        ("/v1/jobs", b'{"config": {"steps": "many"}}'),
        ("/v1/rewards", b'{"rewards": "nope"}'),
        ("/v1/rollouts/rol_x/reward", b"[1, 2"),
        ("/v1/keys", b'{"project": 7}'),
    ],
)
@pytest.mark.parametrize("auth", [None, "Bearer keel_sk_unknown", "Basic abc"])
def test_a_bad_body_without_a_valid_key_is_401_not_422(client, path, body, auth) -> None:
    headers = {"Content-Type": "application/json"} | ({"Authorization": auth} if auth else {})
    r = client.post(path, content=body, headers=headers)
    assert r.status_code == 401, r.text
    assert r.json()["code"] == "unauthorized"


def test_each_route_has_its_own_body_limit(client, project_key, job_body, settings) -> None:
    headers = project_key("alpha")
    small, large = settings.max_small_body_bytes, settings.max_body_bytes
    assert small < large
    # A reward batch over the small limit is refused although an upload of that size is fine.
    padding = "x" * small
    r = client.post(
        "/v1/rewards", json={"rewards": [{"rollout_id": padding, "value": 1}]}, headers=headers
    )
    assert r.status_code == 413 and r.json()["code"] == "payload_too_large", r.text
    dataset = {"type": "dataset", "prompts": [{"text": "x" * 1000, "reference": "1"}] * 20}
    upload = job_body(prompts=dataset, reward={"type": "builtin", "verifier": "exact_match"})
    r = client.post("/v1/jobs", json=upload, headers=headers)
    assert r.status_code == 201, r.text
    r = client.post("/v1/jobs", json=job_body(name="x" * large), headers=headers)
    assert r.status_code == 413 and r.json()["code"] == "payload_too_large"


# ---- a real server process --------------------------------------------------------------------


@pytest.fixture
def live_api(settings, tmp_path) -> Iterator[tuple[str, int]]:
    """`keel server` on the test's database; (host, port)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    env = {k: v for k, v in os.environ.items() if not k.startswith("KEEL_")}
    env |= {
        "KEEL_HOME": str(settings.home),
        "KEEL_DATABASE_URL": settings.database_url,
        "KEEL_ADMIN_KEY": settings.admin_key,
        "KEEL_MAX_SMALL_BODY_BYTES": str(64 * 1024),
        "KEEL_MAX_BODY_BYTES": str(32 * 1024 * 1024),
    }
    log = (tmp_path / "api.log").open("wb")
    cmd = [sys.executable, "-m", "keel", "server", "--port", str(port)]
    proc = subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        assert proc.poll() is None, (tmp_path / "api.log").read_text()
        try:
            if httpx.get(f"http://127.0.0.1:{port}/health/live", timeout=1).status_code == 200:
                break
        except httpx.HTTPError:
            time.sleep(0.2)
    yield "127.0.0.1", port
    proc.terminate()
    proc.wait(15)


def _chunked_request(path: str, token: str | None) -> bytes:
    lines = [
        f"POST {path} HTTP/1.1",
        "Host: keel",
        "Content-Type: application/json",
        "Transfer-Encoding: chunked",
    ]
    if token:
        lines.append(f"Authorization: Bearer {token}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


def _status(sock: socket.socket) -> int:
    head = sock.recv(65536).split(b"\r\n", 1)[0]
    return int(head.split()[1])


def test_an_anonymous_chunked_body_is_answered_401_before_it_is_read(live_api) -> None:
    with socket.create_connection(live_api, timeout=10) as sock:
        sock.sendall(_chunked_request("/v1/jobs", None))  # headers only: no body byte sent
        readable, _, _ = select.select([sock], [], [], 10)
        assert readable, "the server waited for the body before answering"
        assert _status(sock) == 401


def test_a_chunked_body_over_the_limit_is_413_while_it_streams(live_api, settings) -> None:
    chunk = b"x" * 16384
    frame = f"{len(chunk):x}\r\n".encode() + chunk + b"\r\n"
    sent = 0
    with socket.create_connection(live_api, timeout=10) as sock:
        sock.sendall(_chunked_request("/v1/rewards", settings.admin_key))
        while sent < 64 * 1024 * 1024:
            readable, _, _ = select.select([sock], [], [], 0)
            if readable:
                break
            try:
                sock.sendall(frame)
            except (BrokenPipeError, ConnectionResetError):
                break
            sent += len(chunk)
        assert _status(sock) == 413
    # The limit is 64 KiB; kernel socket buffers account for the rest.
    assert sent < 16 * 1024 * 1024, f"the server read {sent} bytes before refusing"
