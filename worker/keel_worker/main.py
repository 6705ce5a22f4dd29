"""The worker's own program: `python -m keel_worker`, which `keel worker` and the `keel-worker`
console script (`keel.cli.worker_main`) replace their process with.

It starts a Celery worker for `keel.run_job` on `Settings.job_queue` (or `--queue`), one job at a
time. `--parent-pid` (given by `keel up`) makes the worker die with that process
(`keel_worker.lifeline`). The API side never imports this package; `keel worker` runs this module
as a program.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence

from keel_server.platform.settings import Settings
from keel_server.platform.storage import keep_files_private


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="keel-worker", description="a Celery worker for keel")
    add_arguments(parser)
    return parser


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--queue", "-Q", default=None, help="queue (default Settings.job_queue)")
    parser.add_argument("--loglevel", default="info")
    parser.add_argument("--hostname", "-n", default=None)
    parser.add_argument(
        "--parent-pid", type=int, default=None, help="die when this process dies (keel up)"
    )


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    keep_files_private()  # checkpoints and logs: the service user's only, as `keel up` does
    if args.parent_pid is not None:
        from keel_worker.lifeline import die_with_parent

        die_with_parent(args.parent_pid)  # before the slow imports: an early death is seen too
    from keel_worker.celery_app import app

    argv = worker_argv(
        app.keel_settings, queue=args.queue, loglevel=args.loglevel, hostname=args.hostname
    )
    app.worker_main(argv)
    return 0


def worker_argv(
    settings: Settings, *, queue: str | None, loglevel: str, hostname: str | None
) -> list[str]:
    argv = ["worker", "-Q", queue or settings.job_queue, "--loglevel", loglevel]
    argv += ["--concurrency", "1", "--prefetch-multiplier", "1"]
    if hostname:
        argv += ["--hostname", hostname]
    if settings.broker_url.startswith("filesystem://"):
        # No fanout exchange on the filesystem transport: no mingle, gossip or event heartbeat.
        argv += ["--without-mingle", "--without-gossip", "--without-heartbeat"]
    return argv
