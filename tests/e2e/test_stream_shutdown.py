"""An open event stream does not keep `keel server` or `keel up` from exiting on SIGTERM: the
stream ends with a `reconnect` event and the process exits well before its graceful-shutdown
backstop (`KEEL_SHUTDOWN_GRACE_S`) would cut it."""

from __future__ import annotations

import signal
import subprocess
import threading
import time

import httpx
import pytest

pytestmark = pytest.mark.slow

GRACE_S = 60  # the backstop, far above the bound asserted below
EXIT_BOUND_S = 15


@pytest.mark.parametrize("command", ["server", "up"])
def test_sigterm_with_an_open_stream_exits(command, tmp_path, helpers):
    env = helpers.base_env(tmp_path, shutdown_grace_s=str(GRACE_S))
    stack = helpers.Stack(tmp_path, env)
    port = helpers.free_port()
    url = f"http://127.0.0.1:{port}"
    try:
        if command == "server":
            subprocess.run(helpers.keel_cmd("migrate"), env=env, check=True, cwd=tmp_path)
            proc = stack.start("api", helpers.keel_cmd("server", "--port", str(port)))
        else:
            proc = stack.start("up", helpers.keel_cmd("up", "--port", str(port)))
        helpers.wait_until(lambda: _live(url, proc), timeout_s=90, what=f"keel {command}")
        auth = {"Authorization": f"Bearer {helpers.admin_key}"}
        # External rewards that nobody posts: the job never ends, nor does its stream.
        body = {"config": helpers.job_config(), "reward": {"type": "external"}}
        job_id = httpx.post(f"{url}/v1/jobs", json=body, headers=auth).json()["id"]

        lines: list[str] = []
        opened = threading.Event()

        def follow() -> None:
            with httpx.stream(
                "GET", f"{url}/v1/jobs/{job_id}/events", headers=auth, timeout=None
            ) as response:
                opened.set()
                lines.extend(response.iter_lines())

        reader = threading.Thread(target=follow, daemon=True)
        reader.start()
        assert opened.wait(30)
        helpers.wait_until(lambda: "event: status" in lines, timeout_s=10, what="first event")

        asked = time.monotonic()
        proc.process.send_signal(signal.SIGTERM)
        proc.process.wait(EXIT_BOUND_S + 5)  # TimeoutExpired: the stream held it
        took = time.monotonic() - asked
        assert took < EXIT_BOUND_S, f"exited only after {took:.1f} s:\n{proc.output()}"
        reader.join(5)
        assert 'data: {"reason": "shutdown"}' in lines, lines
    finally:
        stack.close()


def _live(url: str, proc) -> bool:
    assert proc.process.poll() is None, proc.output()
    try:
        return httpx.get(f"{url}/health/live", timeout=1).status_code == 200
    except httpx.HTTPError:
        return False
