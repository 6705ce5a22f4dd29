"""The step cadence both drivers (`train()` and the job loop) follow."""

from __future__ import annotations

from keel.types.training import TrainingConfig
from keel_worker.training.schedule import StepSchedule, step_seed


def _schedule(**fields) -> StepSchedule:
    return StepSchedule.of(TrainingConfig(**fields))


def test_eval_before_every_kth_step_and_after_the_last():
    s = _schedule(steps=10, eval_every=4)
    assert [step for step in range(10) if s.evaluates_before(step)] == [0, 4, 8]
    assert [step for step in range(10) if s.evaluates_after(step)] == [9]


def test_no_eval_when_eval_every_is_zero():
    s = _schedule(steps=3, eval_every=0)
    assert not any(s.evaluates_before(i) or s.evaluates_after(i) for i in range(3))


def test_checkpoint_every_kth_completed_step_and_always_the_last():
    assert [
        d for d in range(1, 11) if _schedule(steps=10, checkpoint_every=3).checkpoints_after(d)
    ] == [3, 6, 9, 10]
    assert [d for d in range(1, 6) if _schedule(steps=5).checkpoints_after(d)] == [5]


def test_seeds_depend_on_seed_and_step_only():
    s = _schedule(seed=3)
    assert s.seed_of(4) == step_seed(3, 4) == _schedule(seed=3, steps=99).seed_of(4)
    assert len({s.seed_of(i) for i in range(100)}) == 100
