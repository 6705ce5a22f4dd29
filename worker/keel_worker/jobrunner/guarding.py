"""The stability guard of one service job: the detector (`keel_worker.training.guard`) fed with
each completed step's metrics, and what its firings leave in the database.

Every firing (whatever its action) becomes a `guard` event, counts in the job's guard summary
(`jobs.guard`, served as `Job.guard`) and pins the newest checkpoint of weights that never breached,
so retention never deletes the state a user may want back. The loop (`jobrunner.loop`) carries
out `pause` and `rollback`; this module keeps the bookkeeping they need: the rollback budget and
the learning-rate scale rollbacks leave.

A resumed job (a crash, a pause) warms the detector with the metric rows of the steps it already
ran, so baselines, peaks and latches are what they were: a trigger that fired before the pause
does not fire again on the same breach.
"""

from __future__ import annotations

from keel.types.guard import GuardConfig
from keel.types.jobs import GuardSummary
from keel_server.db import SessionFactory, session_scope
from keel_server.db.checkpoints import latest_at_most, pin_checkpoint
from keel_server.db.jobs import record_guard
from keel_server.db.metrics import step_metrics
from keel_worker.training.guard import Fired, StabilityGuard, guard_metrics, strongest


class JobGuard:
    def __init__(
        self, config: GuardConfig, summary: GuardSummary, *, factory: SessionFactory, job_id: str
    ) -> None:
        self.config = config
        self.summary = summary
        self.factory = factory
        self.job_id = job_id
        self.detector = StabilityGuard(config)

    def warm(self, steps_done: int) -> None:
        """Replay the stored metrics of steps 1..steps_done (their firings are history)."""
        with session_scope(self.factory) as session:
            for step in range(1, steps_done + 1):
                stored = step_metrics(session, self.job_id, step)
                self.detector.observe(step, {k: v for k, v in stored.items() if v is not None})

    def observe(self, step: int, metrics: dict[str, float]) -> list[Fired]:
        """Judge a completed step; adds its `guard/*` metrics to `metrics`."""
        fired = self.detector.observe(step, metrics)
        metrics.update(guard_metrics(fired))
        return fired

    def record(self, session, owner: str, fired: list[Fired], *, note: str = "") -> None:
        """Events, summary and pinned checkpoints of this step's firings (in the step's
        transaction). `note` says what the guard did about the strongest one."""
        if not fired:
            return
        events = []
        for f in fired:
            kept = latest_at_most(session, self.job_id, f.last_good_step)
            if kept is not None:
                pin_checkpoint(session, kept.id)
            events.append({**f.as_event(), "kept_checkpoint_step": kept.step if kept else None})
        last = strongest(fired)
        reason = f"{last.trigger} at step {last.step}: {last.reason}"
        reason += f"; {note}" if note else ""
        self.summary = self.summary.model_copy(update={
            "triggers": self.summary.triggers + len(fired), "last_reason": reason,
            "last_trigger": last.trigger, "last_step": last.step,
        })  # fmt: skip
        record_guard(session, self.job_id, owner, self.summary.model_dump(mode="json"), events)

    def rollback_budget_left(self) -> bool:
        return self.summary.rollbacks < self.config.rollback.max_attempts

    def rolled_back(self, session, owner: str, *, to_step: int, fired: Fired) -> float:
        """Count a rollback to `to_step`; returns the new learning-rate scale."""
        scale = self.summary.lr_scale * self.config.rollback.lr_scale
        self.summary = self.summary.model_copy(
            update={"rollbacks": self.summary.rollbacks + 1, "lr_scale": scale}
        )
        event = {
            "trigger": fired.trigger, "action": "rollback", "step": fired.step,
            "to_step": to_step, "lr_scale": scale, "rollbacks": self.summary.rollbacks,
            "reason": f"rolled back to the checkpoint of step {to_step}, skipping the batches "
            f"of steps {to_step + 1}..{fired.step}; learning rate × {scale:g}",
        }  # fmt: skip
        record_guard(session, self.job_id, owner, self.summary.model_dump(mode="json"), [event])
        self.detector.rewind(to_step)
        return scale
