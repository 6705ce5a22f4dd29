"""Dying with the parent process, so no worker outlives whoever started it.

`keel up` starts its worker as a child; the Celery worker forks pool processes that run the jobs.
If a parent is SIGKILLed, nothing tells its children: an orphaned worker keeps its job's lease
alive and a new `keel up` would start a second one beside it. Each process that must not outlive
its parent calls `die_with_parent(parent_pid)`:

- on Linux, `prctl(PR_SET_PDEATHSIG, SIGKILL)` has the kernel kill it the moment the parent dies;
- everywhere, a daemon thread polls `os.getppid()` and kills the process when the parent is gone
  (the fallback where prctl is missing, and a second guard where it is).

SIGKILL, not SIGTERM: a Celery worker's warm shutdown on SIGTERM would wait for the running job.
The job's lease is left to go stale and is taken over (`keel_server.platform.leases`).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import signal
import sys
import threading

PR_SET_PDEATHSIG = 1  # <linux/prctl.h>
WATCH_INTERVAL_S = 0.5


def die_with_parent(parent_pid: int) -> None:
    """Kill this process with SIGKILL as soon as `parent_pid` is no longer its parent."""
    if sys.platform.startswith("linux"):
        _set_pdeathsig(signal.SIGKILL)
    # Checked after prctl: a parent that died before it was set has already reparented us.
    if os.getppid() != parent_pid:
        _kill_self()
    watch_parent(parent_pid)


def watch_parent(parent_pid: int, *, interval_s: float = WATCH_INTERVAL_S) -> threading.Thread:
    """The portable fallback: a daemon thread that kills this process once it is reparented."""

    def watch() -> None:
        while os.getppid() == parent_pid:
            threading.Event().wait(interval_s)
        _kill_self()

    thread = threading.Thread(target=watch, name="keel-parent-watch", daemon=True)
    thread.start()
    return thread


def _set_pdeathsig(sig: int) -> None:
    libc = ctypes.CDLL(ctypes.util.find_library("c") or None, use_errno=True)
    if libc.prctl(PR_SET_PDEATHSIG, sig, 0, 0, 0) != 0:
        errno = ctypes.get_errno()
        raise OSError(errno, f"prctl(PR_SET_PDEATHSIG) failed: {os.strerror(errno)}")


def _kill_self() -> None:
    os.kill(os.getpid(), signal.SIGKILL)
