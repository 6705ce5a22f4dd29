"""A job of several ranks, run by the worker that holds its lease (docs/how-to/distributed.md).

The Celery process keeps the lease, its heartbeat, pause and cancel (`control.JobControl`) and
starts this machine's launcher agent (`group_agent`: torch.distributed's `elastic_launch`, c10d
rendezvous hosted here, run id = the job id) in a process of its own, which starts the ranks
(`rank`). Then it watches the group until it ends, and ends it when it must:

- the ranks finish: rank 0's outcome (succeeded | paused | cancelled, or failed with rank 0's
  error) is the job's end;
- a rank dies: the agent ends the others and reports which rank died and how; the job fails with
  that reason, or, killed by a signal (the OOM killer, a lost machine), is put back in the queue
  to resume from its latest checkpoint, up to `group_requeues` times (`runner`). If the agent
  has not ended the group `group_stop_grace_s` after a rank of this machine died, the worker
  does;
- no rank marks progress for `group_stall_timeout_s` (a wedged collective, a hung rank; before
  any rank of this machine started, that plus the rendezvous timeout): the worker ends the group
  and the job fails (or is re-queued, as for a killed rank), saying so;
- pause or cancel: rank 0 sees it at a step boundary and every rank stops there (a pause
  checkpoints first); a group still running `group_stop_grace_s` later (inside a long step) is
  ended by the worker, and the job is paused (it resumes from its latest checkpoint) or cancelled;
- the lease is lost: the group is ended at once and the job left to its new holder.

Ending the group: SIGTERM to the agent's process group (the agent passes it to its ranks), then,
after a few seconds, SIGKILL to it and to each rank of this machine (the ranks run in sessions of
their own). Every rank also dies with the agent (`lifeline`), and the agent with this process.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from keel.types.training import DistributedConfig
from keel_server.db import SessionFactory, session_scope
from keel_server.db.jobs import get_job
from keel_server.platform.capacity import Advertised, refusal
from keel_server.platform.leases import pid_running
from keel_server.platform.settings import Settings
from keel_server.platform.storage import job_dir
from keel_worker.advertise import max_processes, rollout_engines
from keel_worker.jobrunner import group_progress
from keel_worker.jobrunner.control import JobControl, StopRun

log = logging.getLogger(__name__)

AGENT_MODULE = "keel_worker.jobrunner.group_agent"
RANK_MODULE = "keel_worker.jobrunner.rank"
WATCH_INTERVAL_S = 0.2
TERMINATE_WAIT_S = 5.0  # SIGTERM to SIGKILL when the worker ends a group
END_OF_STOP = {"pause": "paused", "cancel": "cancelled"}


@dataclass(frozen=True)
class GroupEnd:
    """How a group run ended: the job's end state and what goes on it."""

    status: str  # succeeded | paused | cancelled | failed | lost
    step: int | None = None  # rank 0's last step, when it reported one
    error: str | None = None
    reason: str | None = None
    # A failure a new attempt may not repeat (a rank killed by a signal, a stall), unlike an
    # error of the job's own code or a rendezvous that never formed.
    retryable: bool = False


def own_refusal(request: DistributedConfig, settings: Settings) -> str | None:
    """Why this worker cannot run its machine's share of `request` (its own advertisement)."""
    mine = Advertised("this worker", max_processes(settings), rollout_engines())
    refused = refusal(request.model_copy(update={"nodes": 1}), [mine])
    return f"distributed.{refused[0]} {refused[1]}" if refused else None


def settings_env(settings: Settings) -> dict[str, str | None]:
    """`settings` as the `KEEL_*` variables that rebuild it in a rank (None: unset the variable,
    so the field's default applies)."""
    env: dict[str, str | None] = {}
    for name in Settings.model_fields:
        value = getattr(settings, name)
        key = f"KEEL_{name.upper()}"
        if value is None:
            env[key] = None
        elif isinstance(value, tuple):
            env[key] = os.pathsep.join(str(v) for v in value)
        elif isinstance(value, bool):
            env[key] = "true" if value else "false"
        elif isinstance(value, dict | list):
            env[key] = json.dumps(value)
        else:
            env[key] = str(value)
    return env


def free_port(host: str) -> int:
    with socket.socket() as sock:
        sock.bind((host, 0))
        return sock.getsockname()[1]


class RankGroup:
    """This machine's part of one job's group: launch, watch, end (see the module docstring)."""

    def __init__(
        self,
        job_id: str,
        request: DistributedConfig,
        settings: Settings,
        control: JobControl | Following,
        *,
        endpoint: str | None = None,
        rank_args: tuple[str, ...] = (),
        on_rendezvous: Callable[[str], None] | None = None,
    ) -> None:
        """`endpoint` None: this worker holds the lease and hosts the rendezvous (telling
        `on_rendezvous` where, for the other machines); else it joins the one there."""
        self.job_id = job_id
        self.request = request
        self.settings = settings
        self.control = control
        self.endpoint = endpoint
        self.hosting = endpoint is None
        self.rank_args = rank_args
        self.on_rendezvous = on_rendezvous
        folder = "group" if self.hosting else f"group-join-{socket.gethostname()}-{os.getpid()}"
        self.folder = job_dir(settings.artifacts_dir, job_id) / folder
        self.result_file = self.folder / "agent.json"
        self.process: subprocess.Popen | None = None
        self._phase: tuple[str, float | None, float] | None = None  # rank 0's, last reported

    # ------------------------------------------------------------------ launch
    def command(self, endpoint: str) -> list[str]:
        s, r = self.settings, self.request
        return [
            sys.executable,
            "-m",
            AGENT_MODULE,
            "--nnodes",
            str(r.nodes),
            "--nproc-per-node",
            str(r.processes),
            "--rdzv-endpoint",
            endpoint,
            "--run-id",
            self.job_id,
            *(["--is-host"] if self.hosting else []),
            "--local-addr",
            s.rendezvous_host,
            "--join-timeout-s",
            f"{s.rendezvous_timeout_s:g}",
            "--result-file",
            str(self.result_file),
            "--parent-pid",
            str(os.getpid()),
            "--",
            RANK_MODULE,
            self.job_id,
            "--owner",
            self.control.owner,
            *self.rank_args,
        ]

    def environment(self) -> dict[str, str]:
        env = dict(os.environ)
        for key, value in settings_env(self.settings).items():
            if value is None:
                env.pop(key, None)
            else:
                env[key] = value
        env[group_progress.GROUP_DIR_ENV] = str(self.folder)
        return env

    def run(self) -> GroupEnd:
        """Launch the group, watch it to its end, leave nothing running. Raises StopRun("lost")
        when the lease is lost."""
        group_progress.reset(self.folder)
        host = self.settings.rendezvous_host
        endpoint = self.endpoint or f"{host}:{self.settings.rendezvous_port or free_port(host)}"
        log.info(
            "job %s: %s %d rank(s) x %d machine(s), rendezvous %s",
            self.job_id,
            "launching" if self.hosting else "joining with",
            self.request.processes,
            self.request.nodes,
            endpoint,
        )
        with (self.folder / "agent.log").open("ab") as out:
            self.process = subprocess.Popen(
                self.command(endpoint),
                env=self.environment(),
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # its own process group: ended as one
            )
        if self.hosting and self.request.nodes > 1 and self.on_rendezvous is not None:
            self.on_rendezvous(endpoint)
        try:
            return self._watch()
        finally:
            self.end()

    # ------------------------------------------------------------------ watch
    def _watch(self) -> GroupEnd:
        assert self.process is not None
        started = time.time()
        stop_since: float | None = None
        dead_since: float | None = None
        grace, stall = self.settings.group_stop_grace_s, self.settings.group_stall_timeout_s
        while True:
            code = self.process.poll()
            if code is not None:
                return self._ended(code)
            reason = self.control.stop_reason()
            if reason == "lost" and not self.hosting and self._finishing():
                continue  # the job ended with its ranks: theirs is the end to report
            if reason == "lost":
                self.end()
                raise StopRun("lost")
            now = time.monotonic()
            stop_since = (stop_since or now) if reason is not None else None
            if stop_since is not None and now - stop_since > grace:
                return self._ended_by_worker(
                    END_OF_STOP[reason],
                    reason=f"the ranks did not stop within {grace:g} s of the {reason} request; "
                    "the worker ended them",
                )
            ranks = group_progress.read_ranks(self.folder)
            self._report_phase(ranks)
            idle = time.time() - max([started, *(r.last_mark for r in ranks)])
            # Before its ranks start, the group may wait for the other machines: the agents
            # bound that wait by the rendezvous timeout, this watch by both bounds together.
            if idle > stall + (0 if ranks else self.settings.rendezvous_timeout_s):
                return self._ended_by_worker(
                    "failed",
                    retryable=True,
                    error=f"no progress from the job's ranks for {idle:.0f} s (the bound is "
                    f"{stall:g} s, KEEL_GROUP_STALL_TIMEOUT_S): a rank hung or a collective "
                    "wedged; the worker ended the group",
                )
            dead = [r for r in ranks if r.host == socket.gethostname() and not pid_running(r.pid)]
            dead_since = (dead_since or now) if dead else None
            if dead_since is not None and now - dead_since > grace:
                return self._ended_by_worker(
                    "failed",
                    retryable=True,
                    error=f"rank {dead[0].rank} (pid {dead[0].pid}) died and the launcher did "
                    f"not end the group within {grace:g} s; the worker ended it",
                )
            time.sleep(WATCH_INTERVAL_S)

    def _report_phase(self, ranks: list[group_progress.RankFile]) -> None:
        """Rank 0's latest phase, as this worker's progress (its heartbeat stores it on the job,
        its watchdog bounds it)."""
        phase = next((r.phase for r in ranks if r.rank == 0 and r.phase is not None), None)
        if phase is not None and phase != self._phase and hasattr(self.control, "progress"):
            self._phase = phase
            self.control.progress(phase[0], bound_s=phase[1])

    def _finishing(self) -> bool:
        """This machine's ranks wrote the run's end and its agent exits within a few seconds."""
        assert self.process is not None
        if group_progress.read_outcome(self.folder) is None:
            return False
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.process.wait(TERMINATE_WAIT_S)
        return self.process.poll() is not None

    def _ended(self, code: int) -> GroupEnd:
        """The agent exited on its own: read how the group ended."""
        outcome = group_progress.read_outcome(self.folder)
        if code == 0 and outcome is not None:
            return GroupEnd(
                outcome["status"],
                outcome.get("step"),
                error=outcome.get("error"),
                reason=outcome.get("reason"),
            )
        if code == 0:
            return GroupEnd("failed", error="the ranks exited without rank 0's outcome")
        result = self._agent_result()
        # A rank killed by a signal, or the agent itself (code < 0: the OOM killer, kill -9).
        killed = code < 0 or any(f.get("signal") for f in (result or {}).get("failures", []))
        return GroupEnd("failed", error=describe_failure(result, code), retryable=killed)

    def _ended_by_worker(
        self,
        status: str,
        *,
        error: str | None = None,
        reason: str | None = None,
        retryable: bool = False,
    ) -> GroupEnd:
        log.warning("job %s: ending its rank group: %s", self.job_id, error or reason)
        self.end()
        return GroupEnd(status, error=error, reason=reason, retryable=retryable)

    def _agent_result(self) -> dict | None:
        try:
            return json.loads(self.result_file.read_text())
        except (OSError, ValueError):
            return None

    # ------------------------------------------------------------------ end
    def end(self) -> None:
        """End the agent and every rank of this machine (a no-op once they are gone)."""
        process = self.process
        if process is not None and process.poll() is None:
            _signal_group(process.pid, signal.SIGTERM)
            with contextlib.suppress(subprocess.TimeoutExpired):
                process.wait(TERMINATE_WAIT_S)
            _signal_group(process.pid, signal.SIGKILL)
            process.wait()
        host = socket.gethostname()
        for rank in group_progress.read_ranks(self.folder):
            if rank.host == host and _is_rank_process(rank.pid):
                _signal_group(rank.pid, signal.SIGKILL)


class Following:
    """The control of a machine that joined another worker's job: it stops when the job is no
    longer running under the lease owner it joined (ended, paused, taken over), checked every
    `interval_s`; pause and cancel themselves reach its ranks from rank 0."""

    def __init__(
        self, factory: SessionFactory, job_id: str, owner: str, *, interval_s: float
    ) -> None:
        self.factory = factory
        self.job_id = job_id
        self.owner = owner
        self.interval_s = interval_s
        self._checked_at = -float("inf")
        self._reason: str | None = None

    def stop_reason(self) -> str | None:
        now = time.monotonic()
        if self._reason is None and now - self._checked_at >= self.interval_s:
            self._checked_at = now
            with session_scope(self.factory) as session:
                job = get_job(session, self.job_id)
                held = job is not None and job.status == "running"
                if not held or job.lease_owner != self.owner:
                    self._reason = "lost"
        return self._reason


def describe_failure(result: dict | None, code: int) -> str:
    """The job's error for a group whose agent exited with `code`, from its result file."""
    if result is None:
        return f"the launcher agent exited with code {code} without a report"
    if "error" in result:
        return f"the rank group did not run: {result['error']}"
    parts = []
    for f in sorted(result.get("failures", []), key=_root_cause_first):
        how = f"was killed by {f['signal']}" if f.get("signal") else f"exited with {f['exitcode']}"
        text = f"rank {f['rank']} (pid {f['pid']}) {how}"
        message = (f.get("message") or "").strip()
        if message and not message.startswith(("Signal", "To enable traceback")):
            text += f": {message}"
        parts.append(text)
    return "; ".join(parts) or f"the launcher agent exited with code {code}"


def _root_cause_first(failure: dict) -> tuple[int, int]:
    """A rank killed from outside (SIGKILL, SIGSEGV) first, then one that exited with an error,
    then those the agent itself ended with SIGTERM once another had failed."""
    signal_name = failure.get("signal")
    order = 2 if signal_name == "SIGTERM" else 0 if signal_name else 1
    return order, failure["rank"]


def _signal_group(pid: int, sig: int) -> None:
    """Signal `pid`'s process group when it leads one, else `pid` alone."""
    with contextlib.suppress(ProcessLookupError, PermissionError):
        if os.getpgid(pid) == pid:
            os.killpg(pid, sig)
        else:
            os.kill(pid, sig)


def _is_rank_process(pid: int) -> bool:
    """A live rank of keel (not a reused pid): its command line names the rank module."""
    try:
        return RANK_MODULE.encode() in Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return False
