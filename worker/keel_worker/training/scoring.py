"""Scoring: the boundary between sampled rollouts and rewards.

The step calls one function, `score(rollouts) -> rewards`, with one entry per response. A reward of
`None` means "no reward arrived" (e.g. an external reward service missed its deadline): the whole
group of that response is dropped from the update, never scored as 0 (docs/architecture.md §6). The
built-in scorer applies a task's verifier; the service's worker passes its own function that
publishes rollouts and waits for rewards in the database.

`scored_groups` decides which groups train and `group_advantages` gives their members advantages
(docs/concepts/algorithm.md §3.1 item 1), for the step's responses as for an agent step's
episodes, whose advantage each of their sequences then shares.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch

from keel.types import metric_names as metric
from keel.types.training import TaskItem
from keel_worker.core.advantages import compute_advantages
from keel_worker.training.metrics import MetricSink
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


def group_advantages(
    rewards: Sequence[float | None],
    groups: ScoredGroups,
    *,
    group_size: int,
    mode: str,
    sink: MetricSink,
) -> tuple[list[int], torch.Tensor]:
    """(kept, advantages_R): the indices of the members that train, group by group, and one
    advantage per entry of `rewards` (0 where dropped), by core's `mode`.

    Complete groups go through core in one [P, G] tensor; a partial group (kept members only)
    is its own [1, M] group, so its baseline comes from the members that have a reward. Adds
    `advantage/*` to `sink` when some group is kept.
    """
    G = group_size
    complete = [[g * G + s for s in range(G)] for g in groups.complete]
    partial = [
        [g * G + s for s in range(G) if rewards[g * G + s] is not None] for g in groups.partial
    ]
    parts = ([complete] if complete else []) + [[members] for members in partial]
    advantages_R = torch.zeros(len(rewards))
    if not parts:
        return [], advantages_R
    advantages, zero_variance = [], []
    for part in parts:
        rewards_P_G = torch.tensor([[rewards[r] for r in m] for m in part], dtype=torch.float32)
        advantages_P_G, zero_variance_P = compute_advantages(rewards_P_G, mode=mode)
        advantages.append(advantages_P_G.flatten())
        zero_variance.append(zero_variance_P)
    sink.add(metric.ADVANTAGE_ZERO_VARIANCE_FRAC, torch.cat(zero_variance).float().mean())
    sink.add(metric.ADVANTAGE_ABS_MEAN, torch.cat(advantages).abs().mean())
    kept = [r for part in parts for members in part for r in members]
    advantages_R[kept] = torch.cat(advantages)
    return kept, advantages_R
