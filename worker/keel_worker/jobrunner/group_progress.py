"""What the ranks of a job's group tell the worker that launched them, through files in the
group's folder on this machine (`$KEEL_GROUP_DIR`): who they are, that they make progress, and
(rank 0) how the run ended.

- `rank-<r>.json`: the rank's pid, its agent's pid and its host, written when it starts; its
  modification time is the rank's last progress mark (`mark()`: a step, a phase, a check while
  it waits for prompts or rewards). The worker stops a group whose newest mark is older than the
  stall bound (`Settings.group_stall_timeout_s`), and kills these pids when it tears the group
  down (each rank runs in a session of its own). Rank 0's file also names the phase its job loop
  entered last (and that phase's bound), which the worker reports as the job's progress, so the
  lease holder's phase watchdog (`jobrunner.control`) bounds a group's phases as it bounds one
  process's.
- `outcome.json`: the run's end state (succeeded | paused | cancelled, the step reached, the
  reason of a pause), which the ranks agreed on and each machine's local rank 0 writes; the lease
  holder records it on the job (it alone ends the job).

Files, not a socket: they need no server in the worker, survive the death of any rank, and a
crashed group leaves them for the post-mortem. Outside a group every function here is a no-op.
"""

from __future__ import annotations

import json
import os
import socket
import time
from dataclasses import dataclass
from pathlib import Path

GROUP_DIR_ENV = "KEEL_GROUP_DIR"
OUTCOME_FILE = "outcome.json"

_mine: Path | None = None  # this rank's file, once `start` ran in this process


def start(rank: int) -> None:
    """Register this rank (pid, host) in the group folder, if it runs in one."""
    global _mine
    folder = os.environ.get(GROUP_DIR_ENV)
    if not folder:
        return
    path = Path(folder) / f"rank-{rank}.json"
    data = {"rank": rank, "pid": os.getpid(), "agent_pid": os.getppid()}
    _write_json(path, {**data, "host": socket.gethostname()})
    _mine = path


def mark(*, phase: str | None = None, bound_s: float | None = None) -> None:
    """This rank made progress (cheap: one utime); `phase`: rank 0's loop entered that phase of
    the job (`jobrunner.progress`), which may take up to `bound_s`, for its worker's watchdog."""
    if _mine is None:
        return
    if phase is None:
        os.utime(_mine)
        return
    data = json.loads(_mine.read_text())
    _write_json(_mine, {**data, "phase": phase, "bound_s": bound_s, "phase_at": time.time()})


def write_outcome(
    status: str, step: int, reason: str | None = None, error: str | None = None
) -> None:
    """The run's end state, for the worker to record (written by each machine's local rank 0)."""
    folder = os.environ.get(GROUP_DIR_ENV)
    if folder:
        data = {"status": status, "step": step, "reason": reason}
        _write_json(Path(folder) / OUTCOME_FILE, {**data, **({"error": error} if error else {})})


@dataclass(frozen=True)
class RankFile:
    rank: int
    pid: int
    agent_pid: int  # the launcher agent that started it
    host: str
    last_mark: float  # time.time() of the rank's last progress mark
    phase: tuple[str, float | None, float] | None = None  # (phase, its bound, when) of rank 0


def read_ranks(folder: Path) -> list[RankFile]:
    """The ranks registered in `folder` (a file being replaced is skipped this time)."""
    ranks = []
    for path in sorted(folder.glob("rank-*.json")):
        try:
            data = json.loads(path.read_text())
            mtime = path.stat().st_mtime
            phase = (data["phase"], data["bound_s"], data["phase_at"]) if "phase" in data else None
            ranks.append(
                RankFile(data["rank"], data["pid"], data["agent_pid"], data["host"], mtime, phase)
            )
        except (OSError, ValueError, KeyError):
            continue
    return ranks


def read_outcome(folder: Path) -> dict | None:
    try:
        return json.loads((folder / OUTCOME_FILE).read_text())
    except (OSError, ValueError):
        return None


def reset(folder: Path) -> None:
    """An empty folder for a new launch (a previous attempt's files removed)."""
    folder.mkdir(parents=True, exist_ok=True)
    for path in folder.iterdir():
        if path.is_file():
            path.unlink()


def _write_json(path: Path, data: dict) -> None:
    tmp = path.with_suffix(f".{os.getpid()}.tmp")
    tmp.write_text(json.dumps(data))
    tmp.replace(path)
