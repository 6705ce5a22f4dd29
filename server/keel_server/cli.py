"""The operator commands of `keel`: they act on this machine, so they are the server's.

`up` (embedded service), `server`, `worker` (runs the worker's own entry point,
`python -m keel_worker`, as a program: this package never imports the worker), `migrate`,
`keys create` (writes the key straight into the database named by Settings). The SDK's `keel`
program (`keel.cli`) lists them, with their help lines, and hands their arguments to `run`; the
user commands (`keel jobs ...`, `keel checkpoints ...`) are the SDK's own.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path

from keel.cli import OPERATOR_COMMANDS, dispatch, print_json
from keel_server.platform.settings import Settings, api_process_count, get_settings


def run(argv: Sequence[str]) -> int:
    """Run one operator command, `argv` = [name, its arguments...], as `keel.cli` hands it."""
    try:
        return dispatch(build_parser(), argv)
    except Exception as exc:  # a home in use is a one-line error, not a traceback
        from keel_server.embedded import HomeInUse  # sqlalchemy and alembic: only when needed

        if not isinstance(exc, HomeInUse):
            raise
        print(f"error: {exc}", file=sys.stderr)
        return 1


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="keel", description="keel's operator commands")
    register(parser.add_subparsers(metavar="COMMAND"))
    return parser


def register(sub: argparse._SubParsersAction) -> None:
    """Add the commands of `keel.cli.OPERATOR_COMMANDS`, with their arguments, to `sub`."""

    def add(name: str, **kwargs: object) -> argparse.ArgumentParser:
        line = OPERATOR_COMMANDS[name].help
        return sub.add_parser(name, help=line, description=line, **kwargs)

    up = add("up")
    up.add_argument("--host", default="127.0.0.1")
    up.add_argument("--port", type=int, default=8000)
    up.add_argument("--home", type=Path, default=None, help="state folder (default .keel)")
    up.set_defaults(func=_up)

    server = add("server")
    server.add_argument("--host", default="127.0.0.1")
    server.add_argument("--port", type=int, default=8000)
    server.add_argument(
        "--workers",
        type=int,
        default=None,
        help="API processes; 0 = one per CPU core (default: KEEL_API_WORKERS, else 1)",
    )
    server.set_defaults(func=_server)

    # Its options (--queue, --loglevel, --hostname, --help, ...) belong to `keel-worker`.
    worker = add("worker", add_help=False)
    worker.set_defaults(func=_worker, forward_unknown=True)

    migrate = add("migrate")
    migrate.add_argument("--revision", default="head")
    migrate.set_defaults(func=_migrate)

    keys = add("keys").add_subparsers(metavar="ACTION")
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

    from keel_server.platform.storage import keep_files_private

    keep_files_private()  # uploads, downloads' temp files, the SQLite file: this user's only
    from keel_server.platform.telemetry import MULTIPROCESS_DIR_VARIABLE

    workers = api_processes(get_settings().api_workers if args.workers is None else args.workers)
    # Each process reads its Settings from this environment: the count tells it its share of the
    # database connections (`Settings.api_database_connections`).
    os.environ["KEEL_API_WORKERS"] = str(workers)
    get_settings.cache_clear()
    with contextlib.ExitStack() as stack:
        if workers > 1 and MULTIPROCESS_DIR_VARIABLE not in os.environ:
            # The processes' Prometheus counts, added up by whichever one a scrape reaches
            # (keel_server.platform.telemetry); a fresh folder, so no earlier run's counts.
            shared = stack.enter_context(tempfile.TemporaryDirectory(prefix="keel-metrics-"))
            os.environ[MULTIPROCESS_DIR_VARIABLE] = shared
        uvicorn.run(
            "keel_server.main:app",
            host=args.host,
            port=args.port,
            workers=workers,
            timeout_graceful_shutdown=get_settings().shutdown_grace_s,
        )
    return 0


def api_processes(workers: int) -> int:
    """`keel server --workers N`: N processes, or one per CPU core for 0."""
    try:
        return api_process_count(workers)
    except ValueError as exc:
        raise SystemExit(f"error: --workers: {exc}") from None


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
    print_json(created)
    return 0


def _redact(url: str) -> str:
    head, sep, tail = url.rpartition("@")
    return f"{head.split('://')[0]}://***@{tail}" if sep else url
