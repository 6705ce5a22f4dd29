"""Agent episodes: claiming an episode (a rollout of an agent job) and its turns.

A claim is a compare-and-set on `rollouts.claimed_at`, so two harnesses claiming at once never get
the same episode. Turns are appended by the worker that serves the episode, one row per call,
in the transaction that answers it; the trainer reads them back as the episode's token-exact
sequences (docs/concepts/agents.md §2).
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from datetime import datetime
from typing import Any

from sqlalchemy import select, update
from sqlalchemy.orm import Session, load_only

from keel_server.db.base import utcnow
from keel_server.db.models import EpisodeTurn, Job, Rollout


def claim(
    session: Session, job_id: str, *, limit: int, now: datetime | None = None
) -> list[Rollout]:
    """Up to `limit` open, unclaimed episodes of the job, oldest step first, now claimed."""
    now = now or utcnow()
    key = (Rollout.step, Rollout.group_index, Rollout.sample_index)
    candidates = (
        select(Rollout.id)
        .where(
            Rollout.job_id == job_id,
            Rollout.status == "awaiting_reward",
            Rollout.claimed_at.is_(None),
            Rollout.deadline_at > now,
        )
        .order_by(*key)
        .limit(limit)
    )
    ids = list(session.execute(candidates).scalars())
    if not ids:
        return []
    # Claimed only where still unclaimed: a harness that claimed one in between keeps it.
    claimed = session.execute(
        update(Rollout)
        .where(Rollout.id.in_(ids), Rollout.claimed_at.is_(None))
        .values(claimed_at=now)
        .returning(Rollout.id)
        .execution_options(synchronize_session=False)
    )
    rows = select(Rollout).where(Rollout.id.in_(list(claimed.scalars()))).order_by(*key)
    return list(session.execute(rows.execution_options(populate_existing=True)).scalars())


# What authenticating an episode key and checking a model call read, on every call: not the
# job's config or summaries (large JSON), which load only when touched.
_EPISODE_COLUMNS = (Rollout.id, Rollout.job_id, Rollout.status, Rollout.deadline_at)
_JOB_COLUMNS = (Job.id, Job.project_id, Job.status, Job.serve_url)


def episode_and_job(session: Session, rollout_id: str) -> tuple[Rollout, Job] | None:
    stmt = (
        select(Rollout, Job)
        .join(Job, Rollout.job_id == Job.id)
        .where(Rollout.id == rollout_id)
        .options(load_only(*_EPISODE_COLUMNS), load_only(*_JOB_COLUMNS))
        .execution_options(populate_existing=True)
    )
    row = session.execute(stmt).one_or_none()
    return None if row is None else (row[0], row[1])


def add_turn(session: Session, rollout_id: str, *, completion: str, **fields: Any) -> EpisodeTurn:
    """Append the next turn of an episode and show its reply as the rollout's completion."""
    turn = EpisodeTurn(rollout_id=rollout_id, created_at=utcnow(), **fields)
    session.add(turn)
    rollout = session.get(Rollout, rollout_id)
    if rollout is not None:
        rollout.completion = completion
        rollout.token_count += len(fields["sampled_ids"])
        rollout.finish_reason = fields["finish_reason"]
    session.flush()
    return turn


def turns_of(session: Session, rollout_id: str) -> list[EpisodeTurn]:
    stmt = select(EpisodeTurn).where(EpisodeTurn.rollout_id == rollout_id)
    return list(session.execute(stmt.order_by(EpisodeTurn.index)).scalars())


def step_turns(session: Session, rollout_ids: Sequence[str]) -> dict[str, list[EpisodeTurn]]:
    """The turns of each of `rollout_ids` (a step's episodes), in order; [] for none."""
    turns: dict[str, list[EpisodeTurn]] = defaultdict(list)
    if rollout_ids:
        stmt = (
            select(EpisodeTurn)
            .where(EpisodeTurn.rollout_id.in_(list(rollout_ids)))
            .order_by(EpisodeTurn.rollout_id, EpisodeTurn.index)
        )
        for turn in session.execute(stmt).scalars():
            turns[turn.rollout_id].append(turn)
    return {rollout_id: turns.get(rollout_id, []) for rollout_id in rollout_ids}
