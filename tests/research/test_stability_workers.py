"""The harness's worker processes die with the command that spawned them: a killed `run` or
`rerun` must not leave runs going on into its results folder."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.research.harness_cli import ROOT

PARENT = """
import multiprocessing, time
from research.stability.orchestrate import open_pool

pool = open_pool(1)
pool.submit(time.sleep, 300)  # a run that would outlive its parent
time.sleep(0.5)
print(" ".join(str(p.pid) for p in multiprocessing.active_children()), flush=True)
time.sleep(300)
"""


def _alive(pid: int) -> bool:
    """Running or sleeping; a zombie left for an init that does not reap counts as dead."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="the parent-death signal")
def test_a_killed_parent_takes_its_workers_with_it():
    parent = subprocess.Popen(
        [sys.executable, "-c", PARENT], cwd=ROOT, stdout=subprocess.PIPE, text=True
    )
    workers: list[int] = []
    try:
        workers = [int(pid) for pid in parent.stdout.readline().split()]
        assert workers and all(_alive(pid) for pid in workers)
        parent.send_signal(signal.SIGKILL)
        parent.wait(timeout=10)
        deadline = time.monotonic() + 120  # the worker may still be importing torch
        while time.monotonic() < deadline and any(_alive(pid) for pid in workers):
            time.sleep(0.2)
        assert not any(_alive(pid) for pid in workers)
    finally:
        parent.kill()
        for pid in filter(_alive, workers):
            subprocess.run(["kill", "-9", str(pid)], check=False)
