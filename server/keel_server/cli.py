"""The `keel` command line (argparse).

Operator commands act on this machine: `up` (embedded service), `server`, `worker` (runs the
worker's own entry point, `python -m keel_worker`, as a program: this package never imports the
worker), `migrate`, `keys create` (writes the key straight into the database named by Settings).
Client commands go through the SDK to a running server (`--base-url`/`KEEL_BASE_URL`,
`--api-key`/`KEEL_API_KEY`): `jobs list|show|cancel|pause|resume|events`,
`checkpoints list|download [--kind K]`.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, get_args

from keel.types.checkpoints import DEFAULT_CHECKPOINT_KIND, CheckpointKind
from keel_server.platform.settings import Settings, get_settings


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args, passthrough = parser.parse_known_args(argv)
    if passthrough and not getattr(args, "forward_unknown", False):
        parser.error(f"unrecognized arguments: {' '.join(passthrough)}")
    args.passthrough = passthrough
    if not hasattr(args, "func"):
        parser.print_help()
        return 2
    try:
        return args.func(args) or 0
    except KeyboardInterrupt:
        return 130
    except Exception as exc:  # one readable line instead of a traceback for expected failures
        from keel import KeelError
        from keel_server.embedded import HomeInUse

        if not isinstance(exc, KeelError | FileExistsError | HomeInUse):
            raise
        print(f"error: {exc}", file=sys.stderr)
        return 1


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="keel", description="keel: RL fine-tuning service")
    sub = parser.add_subparsers(metavar="COMMAND")
    _operator_commands(sub)
    _client_commands(sub)
    return parser


# ---------------------------------------------------------------- operator commands


def _operator_commands(sub: argparse._SubParsersAction) -> None:
    up = sub.add_parser("up", help="embedded service: API + one worker, SQLite, no servers")
    up.add_argument("--host", default="127.0.0.1")
    up.add_argument("--port", type=int, default=8000)
    up.add_argument("--home", type=Path, default=None, help="state folder (default .keel)")
    up.set_defaults(func=_up)

    server = sub.add_parser("server", help="run the API server (uvicorn)")
    server.add_argument("--host", default="127.0.0.1")
    server.add_argument("--port", type=int, default=8000)
    server.add_argument("--workers", type=int, default=1)
    server.set_defaults(func=_server)

    # Its options (--queue, --loglevel, --hostname, --help, ...) belong to `keel-worker`.
    worker = sub.add_parser(
        "worker", help="run a Celery worker for keel.run_job (= keel-worker)", add_help=False
    )
    worker.set_defaults(func=_worker, forward_unknown=True)

    migrate = sub.add_parser("migrate", help="upgrade the database schema to the newest revision")
    migrate.add_argument("--revision", default="head")
    migrate.set_defaults(func=_migrate)

    keys = sub.add_parser("keys", help="API keys").add_subparsers(metavar="ACTION")
    create = keys.add_parser("create", help="create an API key (printed once)")
    create.add_argument("--project", default=None, help="project name (created if new)")
    create.add_argument("--name", default=None)
    create.set_defaults(func=_keys_create)


def _up(args: argparse.Namespace) -> int:
    from keel_server.embedded import embedded_settings, up

    home = (args.home or Path(Settings().home)).resolve()
    up(embedded_settings(home), host=args.host, port=args.port)
    return 0


def _server(args: argparse.Namespace) -> int:
    import uvicorn

    uvicorn.run("keel_server.main:app", host=args.host, port=args.port, workers=args.workers)
    return 0


def _worker(args: argparse.Namespace) -> int:
    os.execv(sys.executable, [sys.executable, "-m", "keel_worker", *args.passthrough])


def _migrate(args: argparse.Namespace) -> int:
    from keel_server.migrate import upgrade

    settings = get_settings()
    upgrade(settings.database_url, args.revision)
    print(f"database at {args.revision}: {_redact(settings.database_url)}")
    return 0


def _keys_create(args: argparse.Namespace) -> int:
    from keel.types.keys import ApiKeyCreate
    from keel_server.db import keys as keys_db
    from keel_server.db import session_scope
    from keel_server.services import keys as keys_service
    from keel_server.services.auth import ADMIN_PROJECT
    from keel_server.services.context import Principal, ServiceContext

    ctx = ServiceContext.from_settings(get_settings())
    try:
        with session_scope(ctx.sessions) as session:
            admin_project = keys_db.get_or_create_project(session, ADMIN_PROJECT)
        admin = Principal(admin_project.id, is_admin=True)
        request = ApiKeyCreate(project=args.project, name=args.name)
        created = keys_service.create(ctx, admin, request)
    finally:
        ctx.close()
    _print_json(created)
    return 0


def _redact(url: str) -> str:
    head, sep, tail = url.rpartition("@")
    return f"{head.split('://')[0]}://***@{tail}" if sep else url


# ---------------------------------------------------------------- client commands


def _client_commands(sub: argparse._SubParsersAction) -> None:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--base-url", default=None, help="default $KEEL_BASE_URL")
    common.add_argument("--api-key", default=None, help="default $KEEL_API_KEY")

    jobs = sub.add_parser("jobs", help="list and control jobs").add_subparsers(metavar="ACTION")
    ls = jobs.add_parser("list", parents=[common], help="list jobs, newest first")
    ls.add_argument("--status", default=None, help="e.g. running or queued,running")
    ls.add_argument("--limit", type=int, default=None)
    ls.add_argument("--cursor", default=None, help="`next_cursor` of the previous page")
    ls.set_defaults(func=_with_client(_jobs_list))
    for verb in ("show", "cancel", "pause"):
        action = jobs.add_parser(verb, parents=[common], help=f"{verb} a job")
        action.add_argument("job_id")
        action.set_defaults(func=_with_client(_job_action(verb)))
    resume = jobs.add_parser("resume", parents=[common], help="resume a paused job")
    resume.add_argument("job_id")
    resume.add_argument("--lr", type=float, default=None, help="a new learning rate")
    resume.add_argument(
        "--algorithm", type=json.loads, default=None,
        help='a new config.algorithm as JSON, e.g. \'{"name": "minirl"}\'',
    )  # fmt: skip
    resume.set_defaults(func=_with_client(_jobs_resume))
    events = jobs.add_parser("events", parents=[common], help="follow a job's events (SSE)")
    events.add_argument("job_id")
    events.add_argument("--last-event-id", default=None)
    events.add_argument(
        "--no-follow", dest="follow", action="store_false",
        help="print the events so far and exit (a running or paused job's stream stays open)",
    )  # fmt: skip
    events.set_defaults(func=_with_client(_jobs_events))

    ckpts = sub.add_parser("checkpoints", help="a job's checkpoints").add_subparsers(
        metavar="ACTION"
    )
    cl = ckpts.add_parser("list", parents=[common], help="list a job's checkpoints")
    cl.add_argument("job_id")
    cl.set_defaults(func=_with_client(_checkpoints_list))
    dl = ckpts.add_parser("download", parents=[common], help="download and unpack a checkpoint")
    dl.add_argument("checkpoint_id")
    dl.add_argument("dest", type=Path, help="directory to create")
    dl.add_argument(
        "--kind", choices=get_args(CheckpointKind), default=DEFAULT_CHECKPOINT_KIND,
        help="weights (the HF model dir, default), adapter (PEFT, LoRA jobs), merged (a plain "
        "HF dir), full (with the trainer state, to resume elsewhere)",
    )  # fmt: skip
    dl.add_argument("--overwrite", action="store_true")
    dl.set_defaults(func=_with_client(_checkpoints_download))


def _with_client(fn: Callable[[Any, argparse.Namespace], int]) -> Callable[..., int]:
    def run(args: argparse.Namespace) -> int:
        from keel import Client

        with Client(base_url=args.base_url, api_key=args.api_key) as client:
            return fn(client, args)

    return run


def _jobs_list(client: Any, args: argparse.Namespace) -> int:
    page = client.jobs.list(status=args.status, limit=args.limit, cursor=args.cursor)
    print(f"{'id':<32} {'status':<10} {'step':>9}  name")
    for job in page.data:
        steps = f"{job.step}/{job.steps if job.steps is not None else '?'}"
        print(f"{job.id:<32} {job.status:<10} {steps:>9}  {job.name or ''}")
        if job.guard.last_reason:
            print(f"{'':<32} guard: {job.guard.last_reason}")
    if page.has_more:
        print(f"... more: --cursor {page.next_cursor}")
    return 0


def _job_action(verb: str) -> Callable[[Any, argparse.Namespace], int]:
    def act(client: Any, args: argparse.Namespace) -> int:
        method = client.jobs.retrieve if verb == "show" else getattr(client.jobs, verb)
        _print_json(method(args.job_id))
        return 0

    return act


def _jobs_resume(client: Any, args: argparse.Namespace) -> int:
    _print_json(client.jobs.resume(args.job_id, lr=args.lr, algorithm=args.algorithm))
    return 0


def _jobs_events(client: Any, args: argparse.Namespace) -> int:
    events = client.jobs.events(args.job_id, last_event_id=args.last_event_id, follow=args.follow)
    for event in events:
        print(json.dumps(event.model_dump(mode="json")), flush=True)
    return 0


def _checkpoints_list(client: Any, args: argparse.Namespace) -> int:
    for ckpt in client.checkpoints.list(args.job_id).data:
        flags = " pinned" if ckpt.pinned else ""
        if ckpt.deleted_at is not None:
            print(f"{ckpt.id}  step {ckpt.step:>6}  deleted by retention{flags}")
            continue
        print(f"{ckpt.id}  step {ckpt.step:>6}{flags}")
        for kind, archive in ckpt.kinds.items():
            print(f"    {kind:<8} {archive.size_bytes:>14} B  sha256 {archive.sha256}")
    return 0


def _checkpoints_download(client: Any, args: argparse.Namespace) -> int:
    path = client.checkpoints.download(
        args.checkpoint_id, args.dest, kind=args.kind, overwrite=args.overwrite
    )
    print(path)
    return 0


def _print_json(model: Any) -> None:
    print(json.dumps(model.model_dump(mode="json"), indent=2))


if __name__ == "__main__":
    sys.exit(main())
