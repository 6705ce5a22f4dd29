"""The wire's task names and the worker's task registry are the same set, so the API can refuse
an unknown `config.task.name` at creation instead of the worker failing the job later."""

from __future__ import annotations

from typing import get_args

from keel.types.training import TaskName
from keel_worker.training.tasks import TASKS


def test_the_wire_task_names_are_the_worker_registry() -> None:
    assert set(get_args(TaskName)) == set(TASKS)
