"""A job's prompt source as the training loop sees it: `take(n)` prompts and a data cursor.

- `task`: the built-in task's shuffled epochs (`training.tasks.PromptStream`).
- `dataset`: the prompts stored at creation, read in order and cycled (epochs); an `agent` job's
  tasks likewise (each stored as its JSON text).
- `client`: prompts posted by the client; when the stream runs dry the job says so once (a
  `prompts` event: how many it waits for) and waits (heartbeating, cancellable) until enough
  arrive, for at most `Settings.max_prompt_wait_s`; then it pauses with the reason, freeing its
  worker.

The cursor is the number of prompts handed out so far; checkpoints keep it so a resumed job
continues exactly where it stopped.
"""

from __future__ import annotations

import time
from typing import Protocol

from keel.types.jobs import StoredPromptType
from keel.types.training import TaskItem
from keel_server.db import SessionFactory, session_scope
from keel_server.db.events import append_event
from keel_server.db.prompts import count_prompts, fetch_prompts, wait_for_prompts
from keel_worker.jobrunner.control import JobControl, StopRun
from keel_worker.training.tasks import PromptStream, Task


class PromptSource(Protocol):
    cursor: int

    def take(self, n: int) -> list[TaskItem]: ...


class TaskPromptSource:
    """The built-in task's training split."""

    def __init__(self, task: Task, *, seed: int, cursor: int) -> None:
        self._stream = PromptStream(task.train_items, seed=seed, cursor=cursor)

    @property
    def cursor(self) -> int:
        return self._stream.cursor

    @cursor.setter
    def cursor(self, value: int) -> None:
        self._stream.cursor = value

    def take(self, n: int) -> list[TaskItem]:
        return self._stream.take(n)


class DbPromptSource:
    """Prompts stored in the database (`dataset`, `agent`: cycled; `client`: waited for)."""

    def __init__(
        self,
        factory: SessionFactory,
        job_id: str,
        *,
        cycle: bool,
        cursor: int,
        control: JobControl,
        poll_interval_s: float,
        max_wait_s: float,
    ) -> None:
        self.factory = factory
        self.job_id = job_id
        self.cycle = cycle
        self.cursor = cursor
        self.control = control
        self.poll_interval_s = poll_interval_s
        self.max_wait_s = max_wait_s

    def take(self, n: int) -> list[TaskItem]:
        total = self._wait_for(n)
        indices = [(self.cursor + i) % total if self.cycle else self.cursor + i for i in range(n)]
        with session_scope(self.factory) as session:
            rows = {
                p.index: p
                for start, length in _contiguous_runs(indices)
                for p in fetch_prompts(session, self.job_id, start=start, limit=length)
            }
        self.cursor += n
        return [TaskItem(prompt=rows[i].text, answer=rows[i].reference or "") for i in indices]

    def _wait_for(self, n: int) -> int:
        """The job's prompt count once `n` prompts past the cursor can be read (a dataset
        cycles, so one prompt is enough); a pause, cancel or lost lease raises `StopRun`, and so
        does a wait past `max_wait_s` (a pause with its reason)."""
        needed = 1 if self.cycle else self.cursor + n
        with session_scope(self.factory) as session:
            total = count_prompts(session, self.job_id)
            if total >= needed:
                return total
            event = {"waiting_for": needed, "available": total, "max_wait_s": self.max_wait_s}
            append_event(session, self.job_id, "prompts", event)
        started = time.monotonic()
        total = wait_for_prompts(
            self.factory,
            self.job_id,
            needed=needed,
            poll_interval_s=self.poll_interval_s,
            should_stop=lambda: (
                self.control.stop_reason() is not None
                or time.monotonic() - started > self.max_wait_s
            ),
        )
        if total >= needed:
            return total
        if self.control.stop_reason() is not None:
            raise StopRun(self.control.stop_reason())
        raise StopRun(
            "pause",
            f"no prompts arrived in {self.max_wait_s:g} s (KEEL_MAX_PROMPT_WAIT_S): the job has "
            f"{total} and the next step needs {needed}; post prompts, then resume it",
        )


def _contiguous_runs(indices: list[int]) -> list[tuple[int, int]]:
    """(start, length) of each run of consecutive values in the sorted, de-duplicated indices."""
    runs: list[tuple[int, int]] = []
    for index in sorted(set(indices)):
        if runs and runs[-1][0] + runs[-1][1] == index:
            runs[-1] = (runs[-1][0], runs[-1][1] + 1)
        else:
            runs.append((index, 1))
    return runs


def make_prompt_source(
    kind: StoredPromptType,
    *,
    task: Task | None,
    seed: int,
    cursor: int,
    factory: SessionFactory,
    job_id: str,
    control: JobControl,
    poll_interval_s: float,
    max_wait_s: float,
) -> PromptSource:
    if kind == "task":
        if task is None:
            raise ValueError("prompt source `task` needs config.task to name a built-in task")
        return TaskPromptSource(task, seed=seed, cursor=cursor)
    return DbPromptSource(
        factory,
        job_id,
        cycle=kind in ("dataset", "agent"),
        cursor=cursor,
        control=control,
        poll_interval_s=poll_interval_s,
        max_wait_s=max_wait_s,
    )
