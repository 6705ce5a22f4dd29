"""`keel up` as an operator runs it, SIGKILL included.

One `keel up` per home: a second one on a home in use refuses and names the live processes. A
`keel up` killed with SIGKILL takes its worker and the worker's pool process along (nothing is
left holding the job's lease), and the next `keel up` on that home takes the job back at once,
although the lease timeout here is ten minutes: the dead holder was a process of this host.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
from pathlib import Path

import pytest

import keel
from keel_server.platform.leases import pid_running

pytestmark = pytest.mark.slow


def test_sigkilled_keel_up_leaves_no_worker_and_the_next_one_resumes_at_once(tmp_path, helpers):
    home = tmp_path / "dot-keel"
    env = helpers.base_env(tmp_path, home=str(home), lease_timeout_s="600")
    stack = helpers.Stack(tmp_path, env)
    try:
        first, client = _keel_up(stack, helpers, home, "up-1")
        pids = json.loads((home / "keel.pid").read_text())
        assert pids["keel_up"] == first.process.pid
        _second_keel_up_refuses(helpers, env, home, pids)

        job = client.jobs.create(helpers.job_config(steps=6), reward={"type": "builtin"})
        running = helpers.wait_until(
            lambda: _at_step(client, job.id, 1), timeout_s=180, what="step 1", interval_s=0.1
        )
        assert running.heartbeat_at is not None
        worker_tree = _descendants(pids["worker"])
        assert len(worker_tree) >= 2  # the Celery main process and its pool process

        os.kill(first.process.pid, signal.SIGKILL)  # keel up alone, not its process group
        first.process.wait(10)
        helpers.wait_until(
            lambda: not any(pid_running(p) for p in worker_tree),
            timeout_s=5,
            what=f"the worker processes {worker_tree} to die",
        )
        assert _stored_status(home) == "running"

        _, client = _keel_up(stack, helpers, home, "up-2")
        done = client.jobs.wait(job.id, timeout_s=180, poll_interval_s=0.5)
        assert (done.status, done.step, done.attempts) == ("succeeded", 6, 2)
        helpers.assert_every_step_once(client, job.id, steps=6)
    finally:
        stack.close()


def _keel_up(stack, helpers, home: Path, name: str):
    port = helpers.free_port()
    proc = stack.start(name, helpers.keel_cmd("up", "--port", str(port), "--home", str(home)))
    helpers.wait_until(
        lambda: "keel is up" in proc.output() or proc.process.poll() is not None,
        timeout_s=90,
        what=name,
    )
    assert proc.process.poll() is None, proc.output()
    worker_log = home / "worker.log"
    start = worker_log.stat().st_size if worker_log.exists() else 0
    helpers.wait_until(
        lambda: b"ready" in worker_log.read_bytes()[start:], timeout_s=120, what=f"{name}'s worker"
    )
    client = keel.Client(base_url=f"http://127.0.0.1:{port}", api_key=helpers.admin_key)
    return proc, client


def _second_keel_up_refuses(helpers, env, home: Path, pids: dict) -> None:
    port = str(helpers.free_port())
    second = subprocess.run(
        helpers.keel_cmd("up", "--port", port, "--home", str(home)),
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert second.returncode == 1, second.stdout + second.stderr
    assert "already running" in second.stderr and str(pids["worker"]) in second.stderr
    assert all(pid_running(pid) for pid in pids.values())


def _at_step(client, job_id: str, step: int):
    job = client.jobs.retrieve(job_id)
    return job if job.status == "running" and job.step >= step else None


def _descendants(pid: int) -> list[int]:
    found, todo = [], [pid]
    while todo:
        current = todo.pop()
        found.append(current)
        for task in Path(f"/proc/{current}/task").iterdir():
            todo += [int(c) for c in (task / "children").read_text().split()]
    return found


def _stored_status(home: Path) -> str:
    """The job's status straight from the SQLite file (no API is running now)."""
    import sqlalchemy as sa

    engine = sa.create_engine(f"sqlite:///{home / 'keel.db'}")
    try:
        with engine.connect() as conn:
            return conn.execute(sa.text("SELECT status FROM jobs")).scalar_one()
    finally:
        engine.dispose()
