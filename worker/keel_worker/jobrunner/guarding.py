"""The stability guard of one service job in the database: the guard policy
(`keel_worker.training.guard_policy`, the same one `train()` runs) seeded from the job's guard
summary, and what its decisions leave behind.

Every firing (whatever its action) becomes a `guard` event, counts in the job's guard summary
(`jobs.guard`, served as `Job.guard`) and pins the newest checkpoint of weights that never breached,
so retention never deletes the state a user may want back. The loop (`jobrunner.loop`) calls the
policy and carries out `pause` and `rollback`; this module records them. The rollback budget and the
learning-rate scale live in the policy; the summary's `rollbacks` and `lr_scale` are copies of them,
and seed the policy again when the job resumes.

A resumed job (a crash, a pause) warms the detector with the metric rows of the steps it already
ran, so baselines, peaks and latches are what they were: a trigger that fired before the pause
does not fire again on the same breach.
"""

from __future__ import annotations

from sqlalchemy.orm import Session

from keel.types.guard import GuardConfig
from keel.types.jobs import GuardSummary
from keel_server.db import SessionFactory, session_scope
from keel_server.db.jobs import record_guard
from keel_server.db.metrics import step_metrics
from keel_worker.jobrunner.checkpoints import JobCheckpoints
from keel_worker.training.guard import strongest
from keel_worker.training.guard_policy import Decision, GuardPolicy, good_checkpoint


class JobGuard:
    def __init__(
        self, config: GuardConfig, summary: GuardSummary, *, factory: SessionFactory, job_id: str
    ) -> None:
        self.summary = summary
        self.factory = factory
        self.job_id = job_id
        self.policy = GuardPolicy(config, rollbacks=summary.rollbacks, lr_scale=summary.lr_scale)

    def warm(self, steps_done: int) -> None:
        """Replay the stored metrics of steps 1..steps_done (their firings are history)."""
        with session_scope(self.factory) as session:
            for step in range(1, steps_done + 1):
                stored = step_metrics(session, self.job_id, step)
                self.policy.remember(step, {k: v for k, v in stored.items() if v is not None})

    def record(self, store: JobCheckpoints, owner: str, decision: Decision) -> None:
        """Events, summary and pinned checkpoints of a step's firings (in the step's
        transaction, `store.session`); the summary's reason ends with what the guard did."""
        if not decision.fired:
            return
        events = []
        for f in decision.fired:
            kept = good_checkpoint(store, f)
            if kept is not None:
                store.pin(kept)
            events.append({**f.as_event(), "kept_checkpoint_step": kept.step if kept else None})
        last = strongest(list(decision.fired))
        reason = f"{last.trigger} at step {last.step}: {last.reason}"
        reason += f"; {decision.why}" if decision.why else ""
        self.summary = self.summary.model_copy(
            update={
                "triggers": self.summary.triggers + len(decision.fired),
                "last_reason": reason,
                "last_trigger": last.trigger,
                "last_step": last.step,
            }
        )
        summary = self.summary.model_dump(mode="json")
        record_guard(store.session, self.job_id, owner, summary, events)

    def rolled_back(self, session: Session, owner: str, decision: Decision) -> None:
        """The event and summary of a rollback the policy carried out (`GuardPolicy.roll_back`)."""
        assert decision.target is not None and decision.acted_on is not None, decision
        to_step, fired, scale = decision.target.step, decision.acted_on, self.policy.lr_scale
        self.summary = self.summary.model_copy(
            update={"rollbacks": self.policy.rollbacks, "lr_scale": scale}
        )
        event = {
            "trigger": fired.trigger,
            "action": "rollback",
            "step": fired.step,
            "to_step": to_step,
            "lr_scale": scale,
            "rollbacks": self.summary.rollbacks,
            "reason": f"rolled back to the checkpoint of step {to_step}, skipping the batches "
            f"of steps {to_step + 1}..{fired.step}; learning rate × {scale:g}",
        }
        record_guard(session, self.job_id, owner, self.summary.model_dump(mode="json"), [event])
