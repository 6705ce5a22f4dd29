"""The `keel` command line (argparse): the SDK's program, so every install of keel-rl runs it.

User commands go through the SDK to a running server (`--base-url`/`KEEL_BASE_URL`,
`--api-key`/`KEEL_API_KEY`): `jobs list|show|cancel|pause|resume|events`,
`checkpoints list|download [--kind K]`. They import only the SDK and the standard library.

Operator commands (`up`, `server`, `worker`, `migrate`, `keys create`) act on this machine and
are the server's (`keel_server.cli`). `OPERATOR_COMMANDS` lists them here with the pip extra that
installs what they run, so `keel --help` shows them on every install; their arguments go
unparsed to `keel_server.cli.run`, which is imported only when one of them runs. Where that
import (or a dependency a command imports later) is missing, the command prints one line naming
the extra and exits 1.

The server is reached through `importlib.import_module`, not a static import: it is an installed
extra that plugs into this program, and the SDK's import contract forbids depending on it. An
entry-point group would say the same through package metadata, but one distribution installs all
three packages (pyproject.toml says why), so the metadata would list the commands on installs
that cannot run them, and a source checkout on PYTHONPATH would see the installed copy's
entry points rather than its own.
"""

from __future__ import annotations

import argparse
import importlib
import json
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, get_args

from keel import Client, KeelError
from keel.types.checkpoints import DEFAULT_CHECKPOINT_KIND, CheckpointKind

# Packages of this repository: a missing one of these is a bug, not a missing extra.
_OWN_PACKAGES = frozenset({"keel", "keel_server", "keel_worker"})


# What each extra installs, for the error line (`worker` includes `server`).
EXTRAS = {"server": "the server", "worker": "the server and a worker"}


@dataclass(frozen=True)
class OperatorCommand:
    help: str
    extra: str  # the pip extra (a key of EXTRAS) that installs everything the command runs


OPERATOR_COMMANDS: dict[str, OperatorCommand] = {
    # `keel up` runs one worker beside the API: without the worker extra the API would come up
    # and the jobs never run.
    "up": OperatorCommand("embedded service: API + one worker, SQLite, no servers", "worker"),
    "server": OperatorCommand("run the API server (uvicorn)", "server"),
    "worker": OperatorCommand("run a Celery worker for keel.run_job (= keel-worker)", "worker"),
    "migrate": OperatorCommand("upgrade the database schema to the newest revision", "server"),
    "keys": OperatorCommand("API keys", "server"),
}


def main(argv: Sequence[str] | None = None) -> int:
    try:
        return dispatch(build_parser(), argv)
    except KeyboardInterrupt:
        return 130
    except (KeelError, FileExistsError) as exc:  # expected failures: one line, no traceback
        print(f"error: {exc}", file=sys.stderr)
        return 1


def worker_main() -> int:
    """`keel-worker`: `keel worker` under the name the images and compose files run. An operator
    command like the others, so an install without the worker extra gets the line naming it
    instead of a traceback (`keel worker` replaces this process with the worker's own program)."""
    return main(["worker", *sys.argv[1:]])


def dispatch(parser: argparse.ArgumentParser, argv: Sequence[str] | None) -> int:
    """Parse `argv` and run the chosen command. A command that sets `forward_unknown` gets the
    arguments it does not declare as `args.passthrough` (an operator command here, `keel worker`
    in `keel_server.cli`); for the others they are an error."""
    args, passthrough = parser.parse_known_args(argv)
    if passthrough and not getattr(args, "forward_unknown", False):
        parser.error(f"unrecognized arguments: {' '.join(passthrough)}")
    args.passthrough = passthrough
    if not hasattr(args, "func"):
        parser.print_help()
        return 2
    return args.func(args) or 0


def build_parser() -> argparse.ArgumentParser:
    extras: dict[str, list[str]] = {}
    for name, command in OPERATOR_COMMANDS.items():
        extras.setdefault(command.extra, []).append(name)
    needs = "; ".join(f"{', '.join(names)}: 'keel-rl[{extra}]'" for extra, names in extras.items())
    parser = argparse.ArgumentParser(
        prog="keel",
        description="keel: RL fine-tuning service",
        epilog=f"The operator commands need an extra installed ({needs}).",
    )
    sub = parser.add_subparsers(metavar="COMMAND")
    _operator_commands(sub)
    _client_commands(sub)
    return parser


# ---------------------------------------------------------------- operator commands


def _operator_commands(sub: argparse._SubParsersAction) -> None:
    # No arguments of their own (and no --help): `keel_server.cli` parses them all.
    for name, command in OPERATOR_COMMANDS.items():
        parser = sub.add_parser(name, help=command.help, add_help=False)
        parser.set_defaults(func=_run_operator(name, command), forward_unknown=True)


def _run_operator(name: str, command: OperatorCommand) -> Callable[[argparse.Namespace], int]:
    def run(args: argparse.Namespace) -> int:
        try:
            # The installed server extra, imported only now (see the module docstring).
            operator_cli = importlib.import_module("keel_server.cli")
            return operator_cli.run([name, *args.passthrough])
        except ModuleNotFoundError as exc:
            if not _is_missing_extra(exc):
                raise
            print(
                f"error: 'keel {name}' needs {EXTRAS[command.extra]}: "
                f"pip install 'keel-rl[{command.extra}]' (missing: {exc.name})",
                file=sys.stderr,
            )
            return 1

    return run


def _is_missing_extra(exc: ModuleNotFoundError) -> bool:
    """A third-party module, or the server package itself, is not installed; a module of ours
    that is missing inside an installed package is a bug, left to raise."""
    name = exc.name or ""
    return name == "keel_server" or name.partition(".")[0] not in _OWN_PACKAGES


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
        "--algorithm",
        type=json.loads,
        default=None,
        help='a new config.algorithm as JSON, e.g. \'{"name": "minirl"}\'',
    )
    resume.set_defaults(func=_with_client(_jobs_resume))
    events = jobs.add_parser("events", parents=[common], help="follow a job's events (SSE)")
    events.add_argument("job_id")
    events.add_argument("--last-event-id", default=None)
    events.add_argument(
        "--no-follow",
        dest="follow",
        action="store_false",
        help="print the events so far and exit (a running or paused job's stream stays open)",
    )
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
        "--kind",
        choices=get_args(CheckpointKind),
        default=DEFAULT_CHECKPOINT_KIND,
        help="weights (the HF model dir, default), adapter (PEFT, LoRA jobs), merged (a plain "
        "HF dir), full (with the trainer state, to resume elsewhere)",
    )
    dl.add_argument("--overwrite", action="store_true")
    dl.set_defaults(func=_with_client(_checkpoints_download))


def _with_client(fn: Callable[[Client, argparse.Namespace], int]) -> Callable[..., int]:
    def run(args: argparse.Namespace) -> int:
        # A command someone waits on: an address where nothing listens is an error at once
        # (after the usual retries), not after the SDK's reconnect window for long-lived clients.
        with Client(base_url=args.base_url, api_key=args.api_key, reconnect_window_s=0) as client:
            return fn(client, args)

    return run


def _jobs_list(client: Client, args: argparse.Namespace) -> int:
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


def _job_action(verb: str) -> Callable[[Client, argparse.Namespace], int]:
    def act(client: Client, args: argparse.Namespace) -> int:
        method = client.jobs.retrieve if verb == "show" else getattr(client.jobs, verb)
        print_json(method(args.job_id))
        return 0

    return act


def _jobs_resume(client: Client, args: argparse.Namespace) -> int:
    print_json(client.jobs.resume(args.job_id, lr=args.lr, algorithm=args.algorithm))
    return 0


def _jobs_events(client: Client, args: argparse.Namespace) -> int:
    events = client.jobs.events(args.job_id, last_event_id=args.last_event_id, follow=args.follow)
    for event in events:
        print(json.dumps(event.model_dump(mode="json")), flush=True)
    return 0


def _checkpoints_list(client: Client, args: argparse.Namespace) -> int:
    for ckpt in client.checkpoints.list(args.job_id).data:
        flags = " pinned" if ckpt.pinned else ""
        if ckpt.deleted_at is not None:
            print(f"{ckpt.id}  step {ckpt.step:>6}  deleted by retention{flags}")
            continue
        print(f"{ckpt.id}  step {ckpt.step:>6}{flags}")
        for kind, archive in ckpt.kinds.items():
            print(f"    {kind:<8} {archive.size_bytes:>14} B  sha256 {archive.sha256}")
    return 0


def _checkpoints_download(client: Client, args: argparse.Namespace) -> int:
    path = client.checkpoints.download(
        args.checkpoint_id, args.dest, kind=args.kind, overwrite=args.overwrite
    )
    print(path)
    return 0


def print_json(model: Any) -> None:
    """A wire model as indented JSON (also `keel keys create`'s output)."""
    print(json.dumps(model.model_dump(mode="json"), indent=2))
