"""Scoring: the boundary between sampled rollouts and rewards.

The step calls one function, `score(rollouts) -> rewards`, with one entry per response. A reward of
`None` means "no reward arrived" (e.g. an external reward service missed its deadline): the whole
group of that response is dropped from the update, never scored as 0 (docs/architecture.md §6). The
built-in scorer applies a task's verifier; the service's worker passes its own function that
publishes rollouts and waits for rewards in the database.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

from keel.types.training import TaskItem
from keel_worker.training.tasks import Task


@dataclass(frozen=True)
class Rollout:
    """One sampled completion, as a reward function sees it."""

    group_index: int  # which prompt of the step
    sample_index: int  # which of the group's G responses
    item: TaskItem
    completion: str
    token_count: int
    finish_reason: str
    policy_version: int


ScoreFn = Callable[[Sequence[Rollout]], Sequence[float | None]]


def task_scorer(task: Task) -> ScoreFn:
    """A `ScoreFn` that applies the task's verifier to every completion."""

    def score(rollouts: Sequence[Rollout]) -> list[float | None]:
        return [task.reward(r.completion, r.item) for r in rollouts]

    return score


@dataclass(frozen=True)
class ScoredGroups:
    """Which groups of a step train: group indices, by what their members' rewards allow."""

    complete: list[int]  # every member has a reward
    partial: list[int]  # kept with only their rewarded members (at least two)
    dropped: int

    @property
    def kept(self) -> bool:
        return bool(self.complete or self.partial)


def scored_groups(
    rewards: Sequence[float | None], group_size: int, *, keep_partial: bool
) -> ScoredGroups:
    """Split the step's groups by their missing rewards (None). A group missing one is dropped,
    or with `keep_partial` kept with its rewarded members when at least two have one (a group
    baseline from a single member would give it a zero advantage)."""
    complete, partial, dropped = [], [], 0
    for g in range(len(rewards) // group_size):
        present = sum(r is not None for r in rewards[g * group_size : (g + 1) * group_size])
        if present == group_size:
            complete.append(g)
        elif keep_partial and present >= 2:
            partial.append(g)
        else:
            dropped += 1
    return ScoredGroups(complete, partial, dropped)
