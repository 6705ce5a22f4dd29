"""The guard's policy over an in-memory checkpoint store: continue on alerts, pause with the
reason, rollback only within the budget and only to weights that never breached, the learning-rate
scale compounding over rollbacks, and what carrying out a rollback does to the store and the
detector.

The trigger made to fire: `clip` at 5% with patience 1 fires on the first step whose clip fraction
is 0.5 (a signal of the step's own update: the weights of step − 1 are good); `is_fraction` at 5%
with patience 1 likewise (a signal of the policy: the weights of step − 2 are the good ones).
"""

from __future__ import annotations

from pathlib import Path

import pytest

from keel.types.guard import GuardConfig
from keel_worker.training.guard import TRIGGERS
from keel_worker.training.guard_policy import GuardPolicy, StoredCheckpoint

CLIP, IS_FRACTION = {"clip/frac": 0.5}, {"is/truncated_frac": 0.5}
QUIET = {"clip/frac": 0.0, "is/truncated_frac": 0.0}


def armed(max_attempts: int = 2, lr_scale: float = 0.5, **actions: str) -> GuardConfig:
    """Only the named triggers, each firing at its first breach with the given action."""
    off = {name: None for name in TRIGGERS if name not in actions}
    on = {name: {"max_frac": 0.05, "patience": 1, "action": a} for name, a in actions.items()}
    rollback = {"max_attempts": max_attempts, "lr_scale": lr_scale}
    return GuardConfig(**off, **on, rollback=rollback)


class MemoryStore:
    """Checkpoints by step, as the `CheckpointStore` protocol sees them."""

    def __init__(self, *steps: int) -> None:
        self.steps = set(steps)

    def latest_at_most(self, step: int) -> StoredCheckpoint | None:
        before = [s for s in self.steps if s <= step]
        return StoredCheckpoint(max(before), Path(f"step_{max(before)}")) if before else None

    def delete_after(self, step: int) -> None:
        self.steps = {s for s in self.steps if s <= step}


def run_quiet(policy: GuardPolicy, store: MemoryStore, steps: int) -> None:
    for step in range(1, steps + 1):
        assert policy.decide(step, dict(QUIET), store).action == "continue"


def test_nothing_fired_or_alerts_only_continue():
    policy, store = GuardPolicy(armed(clip="alert")), MemoryStore(0)
    metrics = dict(QUIET)
    decision = policy.decide(1, metrics, store)
    assert (decision.action, decision.fired, decision.why) == ("continue", (), "")
    assert metrics["guard/fired"] == 0.0
    metrics = dict(CLIP)
    decision = policy.decide(2, metrics, store)
    assert (decision.action, decision.acted_on, decision.why) == ("continue", None, "")
    assert [(f.trigger, f.action) for f in decision.fired] == [("clip", "alert")]
    assert (metrics["guard/fired"], metrics["guard/clip"]) == (1.0, 1.0)


def test_pause_wins_over_rollback_and_says_paused():
    policy, store = GuardPolicy(armed(clip="rollback", is_fraction="pause")), MemoryStore(0, 1)
    run_quiet(policy, store, 2)
    decision = policy.decide(3, {**CLIP, **IS_FRACTION}, store)
    assert (decision.action, decision.acted_on.trigger, decision.why) == (
        "pause",
        "is_fraction",
        "paused",
    )
    assert {f.trigger for f in decision.fired} == {"clip", "is_fraction"}


def test_rollback_targets_the_newest_checkpoint_of_weights_that_never_breached():
    # Both breach first at step 5. Clip judges step 5's update: step 4's weights are good.
    # The IS fraction judges the weights step 5 sampled with (step 4's): step 3's are good,
    # and the newer checkpoint of step 4 must not be chosen.
    for trigger, metrics, to_step in (("clip", CLIP, 4), ("is_fraction", IS_FRACTION, 3)):
        policy, store = GuardPolicy(armed(**{trigger: "rollback"})), MemoryStore(0, 2, 3, 4)
        run_quiet(policy, store, 4)
        decision = policy.decide(5, dict(metrics), store)
        assert (decision.action, decision.why) == ("rollback", "rolling back")
        assert decision.target == StoredCheckpoint(to_step, Path(f"step_{to_step}"))
        assert decision.lr_scale == 0.5


def test_no_checkpoint_from_before_the_breach_pauses_with_the_reason():
    # The IS fraction breaches at step 1, on the starting weights' own rollouts: the step-0
    # checkpoint holds the weights that breached (last good step −1).
    policy = GuardPolicy(armed(is_fraction="rollback"))
    decision = policy.decide(1, dict(IS_FRACTION), MemoryStore(0))
    assert (decision.action, decision.target, decision.lr_scale) == ("pause", None, None)
    assert decision.why == (
        "paused: no checkpoint of weights from before the breach (step ≤ -1) to roll back to"
    )
    # Checkpoints only after the last good step are no target either.
    policy = GuardPolicy(armed(clip="rollback"))
    run_quiet(policy, MemoryStore(), 2)
    decision = policy.decide(3, dict(CLIP), MemoryStore(3))
    assert decision.action == "pause" and "(step ≤ 2)" in decision.why


def test_rollbacks_compound_the_lr_scale_then_the_exhausted_budget_pauses():
    policy, store = GuardPolicy(armed(clip="rollback", max_attempts=2)), MemoryStore(0, 1, 2)
    restored = []
    run_quiet(policy, store, 1)
    for attempt, scale in ((1, 0.5), (2, 0.25)):
        decision = policy.decide(2, dict(CLIP), store)
        assert (decision.action, decision.target.step, decision.lr_scale) == ("rollback", 1, scale)
        assert policy.roll_back(decision, store, restore=restored.append) == 1
        assert (policy.rollbacks, policy.lr_scale) == (attempt, scale)
        assert policy.lr(1e-2) == pytest.approx(1e-2 * scale)
    assert restored == [Path("step_1")] * 2
    decision = policy.decide(2, dict(CLIP), store)
    assert decision.action == "pause" and decision.target is None
    assert decision.why == "paused: the 2 rollback attempts are used up"
    assert (policy.rollbacks, policy.lr_scale) == (2, 0.25)  # a pause counts nothing


def test_a_resumed_policy_counts_on_from_the_rollbacks_it_is_given():
    policy = GuardPolicy(armed(clip="rollback", max_attempts=2), rollbacks=1, lr_scale=0.5)
    store = MemoryStore(0)
    assert policy.lr(1e-2) == pytest.approx(5e-3)
    decision = policy.decide(1, dict(CLIP), store)
    assert (decision.action, decision.lr_scale) == ("rollback", 0.25)
    policy.roll_back(decision, store, restore=lambda path: None)
    assert policy.decide(1, dict(CLIP), store).why.endswith("the 2 rollback attempts are used up")
    exhausted = GuardPolicy(armed(clip="rollback", max_attempts=2), rollbacks=2)
    assert exhausted.decide(1, dict(CLIP), MemoryStore(0)).action == "pause"


def test_roll_back_drops_the_later_checkpoints_and_rewinds_the_detector():
    policy, store = GuardPolicy(armed(clip="rollback")), MemoryStore(0, 1, 2, 3)
    run_quiet(policy, store, 3)
    assert policy.decide(4, dict(CLIP), store).action == "rollback"
    # Latched: the same breach at the next step fires nothing more...
    assert policy.decide(5, dict(CLIP), store).fired == ()
    policy, store = GuardPolicy(armed(clip="rollback")), MemoryStore(0, 1, 2, 3)
    run_quiet(policy, store, 3)
    decision = policy.decide(4, dict(CLIP), store)
    store.steps.add(4)  # a checkpoint the diverged run wrote
    assert policy.roll_back(decision, store, restore=lambda path: None) == 3
    assert store.steps == {0, 1, 2, 3}
    # ...but after the rollback the detector is as it was at step 3: the re-run step 4 is judged
    # afresh and fires again.
    again = policy.decide(4, dict(CLIP), store)
    assert (again.action, again.target.step) == ("rollback", 3)


def test_only_a_run_that_may_roll_back_checkpoints_first():
    assert GuardPolicy(armed(clip="rollback", is_fraction="alert")).checkpoints_first
    assert not GuardPolicy(armed(clip="pause", is_fraction="alert")).checkpoints_first
