"""The processes a demo run leaves, and how a test ends them all.

`scripts/demo.py` starts `keel up` in a session of its own (so Ctrl-C reaches only the demo), and
`keel up` starts its worker in that session. Killing the demo alone, when a test gives up on it,
orphans both, and the worker trains on for minutes, slowing every later test. `stop_demo` kills
the demo's process group (start the demo with `start_new_session=True`) and the group of every
process that names the demo's keel home (`keel up --home …`, its worker's environment).
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import time
from pathlib import Path


def processes_using(home: Path) -> list[int]:
    """Processes whose environment names this keel home (the worker) or whose command line does
    (`keel up --home ...`)."""
    marker = str(home).encode()
    found = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit() or int(proc.name) == os.getpid():
            continue
        try:
            blobs = (proc / "cmdline").read_bytes() + (proc / "environ").read_bytes()
        except OSError:
            continue
        if marker in blobs:
            found.append(int(proc.name))
    return found


def stop_demo(demo: subprocess.Popen, home: Path, *, timeout_s: float = 10.0) -> None:
    """SIGKILL the demo's group and every group using `home`, never this test's own group;
    waits until none is left (or `timeout_s`)."""
    own = os.getpgrp()
    deadline = time.monotonic() + timeout_s
    while True:
        groups = {demo.pid} if demo.poll() is None else set()
        for pid in processes_using(home):
            with contextlib.suppress(ProcessLookupError):
                groups.add(os.getpgid(pid))
        groups.discard(own)
        if not groups or time.monotonic() > deadline:
            break
        for group in groups:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(group, signal.SIGKILL)
        time.sleep(0.1)
    demo.wait(timeout_s)
