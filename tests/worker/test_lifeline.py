"""`keel_worker.lifeline` with real processes: a child that called `die_with_parent` (prctl and
the parent watch) or only `watch_parent` (the portable fallback) dies within seconds of its
parent's SIGKILL; one whose parent is already gone when it calls `die_with_parent` dies at once.

Each test runs test → parent → child: the parent starts the child, prints the child's pid and
sleeps until it is killed.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time

import pytest

from keel_server.platform.leases import pid_running

CHILD = textwrap.dedent(
    """
    import os, sys, time
    from keel_worker.lifeline import {call}
    {call}(os.getppid())
    print("armed", flush=True)
    time.sleep(120)
    """
)
PARENT = textwrap.dedent(
    """
    import subprocess, sys, time
    child = subprocess.Popen([sys.executable, "-c", sys.argv[1]], stdout=subprocess.PIPE)
    assert child.stdout.readline().strip() == b"armed"
    print(child.pid, flush=True)
    time.sleep(120)
    """
)


def _wait_gone(pid: int, timeout_s: float) -> float | None:
    start = time.monotonic()
    while time.monotonic() - start < timeout_s:
        if not pid_running(pid):
            return time.monotonic() - start
        time.sleep(0.05)
    return None


@pytest.mark.parametrize("call", ["die_with_parent", "watch_parent"])
def test_child_dies_with_its_sigkilled_parent(call):
    parent = subprocess.Popen(
        [sys.executable, "-c", PARENT, CHILD.format(call=call)],
        stdout=subprocess.PIPE,
        env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)},
    )
    try:
        child_pid = int(parent.stdout.readline())
        time.sleep(0.3)
        assert pid_running(child_pid)  # it outlives nothing yet
        parent.send_signal(signal.SIGKILL)
        parent.wait(10)
        assert _wait_gone(child_pid, timeout_s=5.0) is not None, f"{call}: the child outlived it"
    finally:
        if parent.poll() is None:
            parent.kill()


def test_a_parent_already_gone_kills_the_caller_at_once():
    code = "from keel_worker.lifeline import die_with_parent; die_with_parent(1); print('alive')"
    done = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        timeout=30,
        env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)},
    )
    assert done.returncode == -signal.SIGKILL and "alive" not in done.stdout
