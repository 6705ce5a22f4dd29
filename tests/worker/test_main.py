"""The worker's own entry point (`python -m keel_worker`, `keel-worker`) and `keel worker`, which
runs it as a program: the same options reach the Celery command line."""

from __future__ import annotations

import os
import subprocess
import sys

from keel_server.platform.settings import Settings
from keel_worker.main import build_parser, worker_argv


def test_options_reach_the_celery_command_line(tmp_path):
    args = build_parser().parse_args(["-Q", "gpu", "--hostname", "w1@%h", "--parent-pid", "7"])
    assert (args.queue, args.hostname, args.parent_pid) == ("gpu", "w1@%h", 7)
    argv = worker_argv(
        Settings(home=tmp_path), queue=args.queue, loglevel="debug", hostname=args.hostname
    )
    assert argv[:5] == ["worker", "-Q", "gpu", "--loglevel", "debug"]
    assert argv[argv.index("--hostname") + 1] == "w1@%h"
    assert "--without-mingle" in argv  # the filesystem broker has no fanout exchange
    redis = Settings(home=tmp_path, broker_url="redis://127.0.0.1:6379/0", job_queue="cpu")
    assert "--without-mingle" not in worker_argv(redis, queue=None, loglevel="info", hostname=None)
    assert worker_argv(redis, queue=None, loglevel="info", hostname=None)[2] == "cpu"


def test_keel_worker_runs_the_worker_program(tmp_path):
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path), "KEEL_HOME": str(tmp_path)}
    for cmd in (["-m", "keel_worker"], ["-m", "keel", "worker"]):
        done = subprocess.run(
            [sys.executable, *cmd, "--help"], capture_output=True, text=True, env=env, timeout=60
        )
        assert done.returncode == 0, done.stderr
        assert done.stdout.startswith("usage: keel-worker") and "--parent-pid" in done.stdout
    bad = subprocess.run(
        [sys.executable, "-m", "keel", "jobs", "list", "--nope"],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
    )
    assert bad.returncode == 2 and "unrecognized arguments: --nope" in bad.stderr
