"""One machine's launcher agent for a job's rank group: torch.distributed's `elastic_launch` with a
c10d rendezvous (run id = the job id), in a process of its own so the Celery process that holds the
job's lease keeps heartbeating, pausing and cancelling around it (`jobrunner.group`).

`python -m keel_worker.jobrunner.group_agent [options] -- <rank module> [rank args]` starts
`--nproc-per-node` ranks of `python -m <rank module>` once `--nnodes` agents have joined the
rendezvous at `--rdzv-endpoint`. The agent hosting the rendezvous store (`--is-host`) is the worker
that leased the job; the others join it from their own machines (docs/how-to/distributed.md,
"Several machines"). No restarts: a rank that fails ends the group, and the worker decides what
happens to the job. The agent writes what happened to `--result-file` (JSON): `{"ok": true}`, or
the failed ranks with their exit codes and signals, or the error that stopped the rendezvous.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from collections.abc import Sequence
from pathlib import Path

log = logging.getLogger(__name__)
MONITOR_INTERVAL_S = 0.5  # how often the agent looks at its ranks: the delay before it sees a death
SHUTDOWN_TIMEOUT_S = 5  # SIGTERM to SIGKILL when the agent ends its ranks
MESSAGE_CHARS = 500


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="keel-group-agent")
    parser.add_argument("--nnodes", type=int, required=True)
    parser.add_argument("--nproc-per-node", type=int, required=True)
    parser.add_argument("--rdzv-endpoint", required=True, help="host:port of the c10d store")
    parser.add_argument("--run-id", required=True, help="the job id")
    parser.add_argument("--is-host", action="store_true", help="host the rendezvous store")
    parser.add_argument("--local-addr", default=None, help="address the other ranks reach")
    parser.add_argument("--join-timeout-s", type=float, default=600.0)
    parser.add_argument("--result-file", type=Path, required=True)
    parser.add_argument("--parent-pid", type=int, default=None, help="die with this process")
    parser.add_argument("rank_command", nargs=argparse.REMAINDER, help="-- <module> [args]")
    return parser


def launch_config(args: argparse.Namespace):
    from torch.distributed.launcher.api import LaunchConfig

    return LaunchConfig(
        min_nodes=args.nnodes,
        max_nodes=args.nnodes,
        nproc_per_node=args.nproc_per_node,
        run_id=args.run_id,
        role="keel-rank",
        rdzv_backend="c10d",
        rdzv_endpoint=args.rdzv_endpoint,
        rdzv_configs={
            "join_timeout": args.join_timeout_s,
            "is_host": args.is_host,
            "last_call_timeout": 1,
        },
        max_restarts=0,
        monitor_interval=MONITOR_INTERVAL_S,
        start_method="spawn",
        local_addr=args.local_addr,
        shutdown_timeout=SHUTDOWN_TIMEOUT_S,
    )


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    command = args.rank_command[1:] if args.rank_command[:1] == ["--"] else args.rank_command
    if not command:
        raise SystemExit("keel-group-agent: no rank module after --")
    if args.parent_pid is not None:
        from keel_worker.lifeline import die_with_parent

        die_with_parent(args.parent_pid)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    result = run(args, command)
    tmp = args.result_file.with_suffix(".tmp")
    tmp.write_text(json.dumps(result))
    tmp.replace(args.result_file)
    return 0 if result["ok"] else 1


def run(args: argparse.Namespace, command: list[str]) -> dict:
    """Launch the ranks and wait for them; what happened, as the result file holds it."""
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.launcher.api import elastic_launch

    module, *rank_args = command
    try:
        # A string entrypoint is a program: each rank is `python -u -m <module> ...`.
        elastic_launch(launch_config(args), sys.executable)("-u", "-m", module, *rank_args)
    except ChildFailedError as exc:
        failures = [
            {
                "rank": rank,
                "local_rank": f.local_rank,
                "pid": f.pid,
                "exitcode": f.exitcode,
                "signal": f.signal_name() if f.exitcode < 0 else None,
                "message": _message(f.message),
            }
            for rank, f in sorted(exc.failures.items())
        ]
        return {"ok": False, "failures": failures, "agent_pid": os.getpid()}
    except Exception as exc:  # the rendezvous timed out, the store was unreachable, ...
        log.exception("the rank group did not run")
        return {"ok": False, "error": f"{type(exc).__name__}: {exc}"[:2000]}
    return {"ok": True}


def _message(message: object) -> str:
    """A failed rank's own error: the exception line of its error file, not the traceback."""
    if isinstance(message, dict):
        message = message.get("message", "")
    return str(message)[:MESSAGE_CHARS]


if __name__ == "__main__":
    sys.exit(main())
