"""The step cadence of a run, one home for both drivers (`training.run.train` and the service's
`jobrunner.loop.JobLoop`): which steps evaluate, which checkpoint, and each step's seed.

Steps are counted 0-based while they run (`step`) and by completed updates afterwards (`done =
step + 1`). Held-out evaluation runs before the update of every `eval_every`-th step (step 0:
the policy before any training) and once more after the last update ("final"), so a run always
reports where it started and where it ended; a checkpoint follows every `checkpoint_every`-th
completed step and always the last one.
"""

from __future__ import annotations

from dataclasses import dataclass

from keel.types.training import TrainingConfig


def step_seed(seed: int, step: int) -> int:
    """Sampling/shuffling seed of one step: a function of (seed, step) only, for exact resume."""
    return (seed * 1_000_003 + step * 7_919 + 17) % (2**31 - 1)


@dataclass(frozen=True)
class StepSchedule:
    steps: int
    eval_every: int  # 0 = never evaluate
    checkpoint_every: int  # 0 = only after the last step
    seed: int

    @classmethod
    def of(cls, config: TrainingConfig) -> StepSchedule:
        return cls(config.steps, config.eval_every, config.checkpoint_every, config.seed)

    def evaluates_before(self, step: int) -> bool:
        return self.eval_every > 0 and step % self.eval_every == 0

    def evaluates_after(self, step: int) -> bool:
        """The final evaluation, after the update of the last step."""
        return self.eval_every > 0 and step + 1 == self.steps

    def checkpoints_after(self, done: int) -> bool:
        every = self.checkpoint_every
        return (every > 0 and done % every == 0) or done == self.steps

    def seed_of(self, step: int) -> int:
        return step_seed(self.seed, step)
