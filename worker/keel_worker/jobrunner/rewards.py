"""Rewards of one step from the job's reward source, through the database (docs/architecture.md §6).

Every step's rollouts are written to the database first, so clients and reward services see
them whatever the source:

- `builtin`: a verifier runs here and the rows are written already rewarded.
- `webhook`: the awaiting rows are POSTed, signed, to the receiver (`keel.webhooks`,
  retried with backoff on connection errors, 408, 429 and 5xx, for no longer than the reward
  deadline, the operator's wait cap and the job's pause or cancel allow); scores it answers
  inline are recorded at once, the rest arrive through the API before the deadline.
- `external`: nothing is pushed; reward services poll and post.

Then the step waits until no rollout is still `awaiting_reward` (each rewarded, or expired at its
deadline). An expired rollout scores `None`, never 0: the trainer drops its whole group.

A resumed step finds its rollouts already in the database (the engine is seeded per step, so the
regenerated completions are the same): the rows and every reward already posted are reused. A
row whose stored completion differs from the regenerated one scores `None` rather than lend its
reward to another completion.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import timedelta

from keel.types.jobs import BuiltinReward, RewardSource, WebhookReward
from keel.types.rewards import RewardItem, reward_problem
from keel_server.db import SessionFactory, session_scope, utcnow
from keel_server.db.events import append_event
from keel_server.db.models import Rollout as RolloutRow
from keel_server.db.rollouts import (
    NewRollout,
    record_rollouts,
    set_reward,
    step_rollouts,
    wait_for_rewards,
)
from keel_server.platform.reward_pattern import compile_reward_pattern
from keel_server.platform.settings import Settings
from keel_server.platform.webhook_targets import WebhookAllow
from keel_worker.jobrunner.control import JobControl, StopRun
from keel_worker.jobrunner.webhook import (
    DeliveryLimits,
    WebhookDeliveryError,
    deliver,
    payload_for,
)
from keel_worker.training.scoring import Rollout
from keel_worker.training.tasks import VERIFIERS, Task

log = logging.getLogger(__name__)

Verifier = Callable[[Rollout], float]


def builtin_verifier(source: BuiltinReward, task: Task | None) -> Verifier:
    """The worker-side verifier named by a `builtin` reward source."""
    if source.verifier == "task":
        if task is None:
            raise ValueError("the `task` verifier needs config.task to name a built-in task")
        return lambda r: task.reward(r.completion, r.item)
    if source.verifier == "regex":
        assert source.pattern is not None  # the wire model requires it with `regex`
        pattern = compile_reward_pattern(source.pattern)  # linear time: RE2, not `re`
        return lambda r: 1.0 if pattern.search(r.completion) else 0.0
    verifier = VERIFIERS[source.verifier]
    return lambda r: verifier(r.completion, r.item.answer)


class RewardWaitExceeded(RuntimeError):
    """The job spent more than `Settings.max_reward_wait_s` waiting for rewards: it fails
    rather than hold its worker."""


@dataclass
class RewardContext:
    """What every step's scorer of one job needs."""

    factory: SessionFactory
    settings: Settings
    control: JobControl
    job_id: str
    source: RewardSource
    webhook_secret: str | None
    verifier: Verifier | None  # builtin sources only
    waited_s: float = 0.0  # time this run has spent waiting for rewards, all steps together

    @property
    def deadline_s(self) -> float:
        return self.source.deadline_s or self.settings.reward_deadline_s


class StepScorer:
    """The `ScoreFn` of one global step: one reward (or None) per rollout, in order."""

    def __init__(self, ctx: RewardContext, *, step: int, policy_version: int) -> None:
        self.ctx = ctx
        self.step = step
        self.policy_version = policy_version
        self.delivery_failures = 0  # webhook deliveries of this step that failed for good

    def __call__(self, rollouts: Sequence[Rollout]) -> list[float | None]:
        rewards = self._score(rollouts)
        # The trainer's next phase after scoring is the update (advantages, π_old, mini-batches,
        # weight sync): reported here, where the job loop sees the step's inside.
        self.ctx.control.progress("update")
        return rewards

    def _score(self, rollouts: Sequence[Rollout]) -> list[float | None]:
        ctx = self.ctx
        # Rows expire at their deadline, and the whole wait is capped: a wait bounded by both.
        wait_bound_s = min(ctx.deadline_s, ctx.settings.max_reward_wait_s - ctx.waited_s)
        ctx.control.progress("rewards", bound_s=max(wait_bound_s, 0.0) + ctx.settings.stall_grace_s)
        computed = [ctx.verifier(r) for r in rollouts] if ctx.verifier else None
        rows, fresh = self._rows(rollouts, computed)
        if computed is not None:
            return list(computed)
        # A webhook delivery is reward waiting too: it counts against the operator's cap.
        started = time.monotonic()
        cap_s = ctx.settings.max_reward_wait_s
        if isinstance(ctx.source, WebhookReward):
            awaiting = rows if fresh else [r for r in rows if r.status == "awaiting_reward"]
            self._push(awaiting, cap_left_s=cap_s - ctx.waited_s)

        def over_cap() -> bool:
            return ctx.waited_s + (time.monotonic() - started) > cap_s

        result = wait_for_rewards(
            ctx.factory,
            ctx.job_id,
            self.step,
            poll_interval_s=ctx.settings.reward_poll_interval_s,
            should_stop=lambda: over_cap() or ctx.control.stop_reason() is not None,
        )
        ctx.waited_s += time.monotonic() - started
        if not result.complete:
            if ctx.control.stop_reason() is None:
                raise RewardWaitExceeded(
                    f"the job waited {ctx.waited_s:.0f} s for rewards in total, over the "
                    f"operator's cap of {cap_s:g} s (KEEL_MAX_REWARD_WAIT_S)"
                )
            raise StopRun(ctx.control.stop_reason())
        return _match(rollouts, result.rollouts)

    def _rows(
        self, rollouts: Sequence[Rollout], computed: list[float] | None
    ) -> tuple[list[RolloutRow], bool]:
        """This step's rows: inserted now (fresh), or found from before a resume."""
        with session_scope(self.ctx.factory) as session:
            existing = step_rollouts(session, self.ctx.job_id, self.step)
            if existing:
                return existing, False
            rows = record_rollouts(
                session,
                self.ctx.job_id,
                step=self.step,
                policy_version=self.policy_version,
                deadline_at=utcnow() + timedelta(seconds=self.ctx.deadline_s),
                rollouts=[_new_rollout(r) for r in rollouts],
                rewards=computed,
            )
            return rows, True

    def _push(self, rows: list[RolloutRow], *, cap_left_s: float) -> None:
        """Deliver the awaiting rows to the webhook and record the rewards it answers inline;
        the delivery ends by the rows' reward deadline and the job's remaining wait cap."""
        if not rows:
            return
        ctx, source, settings = self.ctx, self.ctx.source, self.ctx.settings
        assert isinstance(source, WebhookReward)
        payload = payload_for(ctx.job_id, self.step, rows)
        deadline_left_s = (min(r.deadline_at for r in rows) - utcnow()).total_seconds()
        limits = DeliveryLimits(
            attempt_timeout_s=source.timeout_s,
            max_attempts=source.max_attempts,
            backoff_s=settings.webhook_backoff_s,
            backoff_max_s=settings.webhook_backoff_max_s,
            max_reply_bytes=settings.webhook_max_reply_bytes,
            total_s=min(deadline_left_s, cap_left_s),
        )
        try:
            reply = deliver(
                str(source.url),
                ctx.webhook_secret or "",
                payload,
                allow=WebhookAllow.parse(settings.webhook_allow),
                limits=limits,
                wait=ctx.control.wait_for_stop,
            )
        except WebhookDeliveryError as exc:
            ctx.control.check()  # stopped by a pause or cancel: not a delivery failure
            # The rows stay awaiting: the receiver may still post, else they expire. The job's
            # owner sees the failure as an event and the step's `webhook/delivery_failures`.
            log.warning("job %s step %d: webhook delivery failed: %s", ctx.job_id, self.step, exc)
            self.delivery_failures += 1
            event = {"step": self.step, "delivered": False, "error": str(exc)}
            with session_scope(ctx.factory) as session:
                append_event(session, ctx.job_id, "webhook", event)
            return
        self._record_inline({r.id for r in rows}, reply.rewards)

    def _record_inline(self, allowed_ids: set[str], items: list[RewardItem]) -> None:
        low, high = self.ctx.source.min_value, self.ctx.source.max_value
        with session_scope(self.ctx.factory) as session:
            for item in items:
                value = float(item.value)
                problem = reward_problem(value, min_value=low, max_value=high)
                if item.rollout_id not in allowed_ids or problem:
                    log.warning("job %s: ignoring inline reward %s", self.ctx.job_id, item)
                    continue
                set_reward(session, item.rollout_id, value)


def db_text(text: str) -> str:
    """Text as the database stores it: PostgreSQL text cannot hold NUL, which an untrained
    byte-level model can sample; it becomes U+FFFD, the replacement character."""
    return text.replace("\x00", "\ufffd")


def _new_rollout(r: Rollout) -> NewRollout:
    return NewRollout(
        group_index=r.group_index,
        sample_index=r.sample_index,
        prompt=db_text(r.item.prompt),
        reference=db_text(r.item.answer) if r.item.answer else None,
        completion=db_text(r.completion),
        token_count=r.token_count,
        finish_reason=r.finish_reason,
    )


def _match(rollouts: Sequence[Rollout], rows: list[RolloutRow]) -> list[float | None]:
    """Reward per rollout from its row; expired, missing or mismatched rows give None."""
    by_key = {(row.group_index, row.sample_index): row for row in rows}
    rewards: list[float | None] = []
    for r in rollouts:
        row = by_key.get((r.group_index, r.sample_index))
        usable = (
            row is not None and row.status == "rewarded" and row.completion == db_text(r.completion)
        )
        rewards.append(row.reward if usable else None)
    return rewards
