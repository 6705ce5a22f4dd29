"""The stability guard's policy: what a run does about the triggers one step fired.

The one driver of the rule for both loops (docs/house-style.md rule 23): the in-process
`training.run.train` over the checkpoints of its workdir (`training.checkpoint.WorkdirCheckpoints`)
and the service's job loop over the job's checkpoint rows (`jobrunner.checkpoints.JobCheckpoints`).
What differs between them is only where checkpoints are, the `CheckpointStore` protocol below; the
detector (`training.guard`) judges, this module decides:

    continue   nothing fired, or alerts only
    pause      the strongest non-alert firing says pause; or says rollback, but the
               `rollback.max_attempts` budget is used up, or no checkpoint of weights that never
               breached (step ≤ `Fired.last_good_step`) is left to go back to
    rollback   restore that checkpoint, drop the later ones, rewind the detector to its step and
               run the steps from there again, the learning rate scaled by `rollback.lr_scale`
               once more (the scale compounds over the rollbacks of a run)

A run whose triggers may roll back checkpoints once before its first step
(`checkpoints_first`), so a breach in the first steps has weights to go back to.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, Protocol

from keel.types.guard import GuardConfig
from keel_worker.training.guard import Fired, StabilityGuard, guard_metrics, strongest

Action = Literal["continue", "pause", "rollback"]


@dataclass(frozen=True)
class StoredCheckpoint:
    """A complete checkpoint: the weights after `step` completed steps, at `path`."""

    step: int
    path: Path


class CheckpointStore(Protocol):
    """Where a run's checkpoints are, as far as a rollback needs them."""

    def latest_at_most(self, step: int) -> StoredCheckpoint | None:
        """The complete checkpoint with the highest step ≤ `step`, if any."""
        ...

    def delete_after(self, step: int) -> None:
        """Drop the checkpoints past `step`: the diverged states a rollback abandons, which a
        resume must never pick up."""
        ...


@dataclass(frozen=True)
class Decision:
    """What the run does after a judged step, and why.

    `fired` is every firing of the step (alerts too); `acted_on` the strongest non-alert one.
    `why` is "" when nothing acts, else what the guard does about `acted_on` ("paused",
    "rolling back", or "paused: " and why it could not roll back). A rollback carries the
    checkpoint it restores and the learning-rate scale it leaves (on the configured lr).
    """

    action: Action
    fired: tuple[Fired, ...] = ()
    acted_on: Fired | None = None
    why: str = ""
    target: StoredCheckpoint | None = None
    lr_scale: float | None = None


def good_checkpoint(store: CheckpointStore, fired: Fired) -> StoredCheckpoint | None:
    """The newest checkpoint of weights that never produced `fired`'s breach: what a rollback
    restores (and what the service pins so retention keeps it)."""
    return store.latest_at_most(fired.last_good_step)


class GuardPolicy:
    """`decide` once per completed step; `roll_back` carries out a rollback decision.

    `rollbacks` and `lr_scale` are what earlier rollbacks of the run left (a resumed job's
    guard summary; a fresh `train()` starts from none).
    """

    def __init__(self, config: GuardConfig, *, rollbacks: int = 0, lr_scale: float = 1.0) -> None:
        self.config = config
        self.detector = StabilityGuard(config)
        self.rollbacks = rollbacks
        self.lr_scale = lr_scale

    @property
    def checkpoints_first(self) -> bool:
        """Whether a new run checkpoints at step 0 (some trigger may roll back to it)."""
        return self.config.may_roll_back

    def lr(self, base_lr: float) -> float:
        """The learning rate the rollbacks so far leave on `base_lr`."""
        return base_lr * self.lr_scale

    def remember(self, step: int, metrics: Mapping[str, float]) -> None:
        """Feed the detector a step run before this process (a resumed job): its firings are
        history, acted on back then."""
        self.detector.observe(step, metrics)

    def decide(self, step: int, metrics: dict[str, float], store: CheckpointStore) -> Decision:
        """Judge completed step `step`; adds its `guard/*` metrics to `metrics`."""
        fired = tuple(self.detector.observe(step, metrics))
        metrics.update(guard_metrics(list(fired)))
        act = strongest([f for f in fired if f.action != "alert"])
        if act is None:
            return Decision("continue", fired)
        if act.action != "rollback":
            return Decision("pause", fired, act, "paused")
        if self.rollbacks >= self.config.rollback.max_attempts:
            n = self.config.rollback.max_attempts
            return Decision("pause", fired, act, f"paused: the {n} rollback attempts are used up")
        target = good_checkpoint(store, act)
        if target is None:
            why = (
                "paused: no checkpoint of weights from before the breach "
                f"(step ≤ {act.last_good_step}) to roll back to"
            )
            return Decision("pause", fired, act, why)
        scale = self.lr_scale * self.config.rollback.lr_scale
        return Decision("rollback", fired, act, "rolling back", target, scale)

    def roll_back(
        self, decision: Decision, store: CheckpointStore, *, restore: Callable[[Path], object]
    ) -> int:
        """Restore the decision's checkpoint (`restore`: the run's weights, optimizer and RNG),
        drop the later ones, rewind the detector to it and count the rollback; returns the step
        to run next. The caller sets the learning rate to `lr(base_lr)`."""
        assert decision.action == "rollback" and decision.target is not None, decision
        assert decision.lr_scale is not None
        to_step = decision.target.step
        restore(decision.target.path)
        store.delete_after(to_step)
        self.detector.rewind(to_step)
        self.rollbacks, self.lr_scale = self.rollbacks + 1, decision.lr_scale
        return to_step
