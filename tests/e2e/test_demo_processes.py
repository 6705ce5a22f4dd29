"""`demo_processes.stop_demo` ends a demo and what it started in a session of its own (as
`scripts/demo.py` starts `keel up`), so a failed demo test orphans nothing."""

from __future__ import annotations

import subprocess
import sys
import time

from demo_processes import processes_using, stop_demo

# A stand-in for the demo: it starts a long-lived child in a new session naming the home (as
# the demo starts `keel up --home …`), then runs on.
FAKE_DEMO = """
import subprocess, sys, time
subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)", sys.argv[1]],
                 start_new_session=True)
time.sleep(120)
"""


def test_stop_demo_kills_the_demo_and_the_service_it_started_in_its_own_session(tmp_path):
    home = tmp_path / "dot-keel"
    demo = subprocess.Popen([sys.executable, "-c", FAKE_DEMO, str(home)], start_new_session=True)
    deadline = time.monotonic() + 30
    while len(processes_using(home)) < 2 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert len(processes_using(home)) == 2  # the demo and its "keel up"
    stop_demo(demo, home)
    assert demo.poll() is not None
    assert processes_using(home) == []
