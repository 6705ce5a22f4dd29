"""Wire models of the stability guard (`config.guard`): per-step signals, triggers and actions.

The guard watches metrics keel already computes every step and acts before a run collapses. Each
trigger compares one signal with a threshold; it fires after `patience` consecutive breaching
observations and re-arms after `patience` consecutive clean ones (hysteresis in time: a signal
hovering at its threshold fires once, not every step). What a fired trigger does is its `action`:

- `alert`: a `guard` event on the job's stream and the `guard/*` metrics (every trigger's default);
- `pause`: checkpoint, then pause the job with the trigger's reason (resume through the API,
  optionally with another learning rate or algorithm);
- `rollback`: restore the newest checkpoint of weights that never breached (a breach first seen at
  step d was produced by the weights after step d − 1, so that is step d − 2; d − 1 for
  `grad_norm` and `clip`, which judge step d's update), skip the batches drawn since, scale the
  learning rate by `rollback.lr_scale` and go on; after `rollback.max_attempts` rollbacks the job
  pauses instead.

The defaults come from replaying the stress suite's stable and collapsing runs through the
detector (`research/guard_thresholds.py`, results in `research/results/guard/thresholds.md`): per
trigger, among the settings that alert on no stable run, the one that alerts on the most
collapsing runs before the collapse criterion dates them (then the largest lead, then the
tightest). Where no setting alerts on anything (the IS fraction: the suites never hit the TIS
cap), the data carry no evidence and the default is a prior. These models are the one home of
those numbers.
"""

from __future__ import annotations

from typing import Literal, get_args

from pydantic import Field

from keel.types.common import Float, FrozenConfig, Int

GuardAction = Literal["alert", "pause", "rollback"]
# The triggers in the order the guard checks them; `GuardConfig` has one field per name.
TriggerName = Literal["kl", "is_fraction", "clip", "entropy", "grad_norm", "reward", "accuracy"]
MAX_PATIENCE = 1000
MAX_WINDOW = 10_000


def _patience(default: int):
    return Field(
        default,
        ge=1,
        le=MAX_PATIENCE,
        description="Consecutive breaching observations before the trigger fires; as many clean "
        "ones re-arm it.",
    )


_ACTION = "What a firing does: alert (event + metric), pause or rollback."


class KlTrigger(FrozenConfig):
    """k3 KL(μ‖π_old) (`mismatch/kl_k3`) above `ratio` × its running baseline (the median of the
    steps seen so far that did not breach; the first `warmup` steps only build it) and above
    `min_value`: an exact-copy rollout's KL is float noise around 0, whose ratios mean nothing."""

    action: GuardAction = Field("alert", description=_ACTION)
    patience: Int = _patience(3)
    ratio: Float = Field(5.0, gt=1.0, le=1e6, description="Multiple of the baseline that breaches.")
    min_value: Float = Field(
        1e-3, ge=0.0, le=1e6, description="A KL at or below this never breaches."
    )
    warmup: Int = Field(1, ge=1, le=MAX_WINDOW, description="Steps before the trigger can breach.")


class IsFractionTrigger(FrozenConfig):
    """The share of tokens whose IS weight was truncated or masked (`is/truncated_frac`,
    `is/masked_frac`, whichever is larger) above `max_frac`."""

    action: GuardAction = Field("alert", description=_ACTION)
    patience: Int = _patience(2)
    max_frac: Float = Field(0.05, gt=0.0, le=1.0, description="The fraction that breaches.")


class ClipTrigger(FrozenConfig):
    """The share of tokens the trust-region mask drops (`clip/frac`) above `max_frac`."""

    action: GuardAction = Field("alert", description=_ACTION)
    patience: Int = _patience(3)
    max_frac: Float = Field(0.05, gt=0.0, le=1.0, description="The fraction that breaches.")


class EntropyTrigger(FrozenConfig):
    """Policy entropy (`train/entropy`) below `min_ratio` × its early level (the mean of the
    first `warmup` steps) while the reward has fallen: the mean `reward/mean` of the last
    `reward_window` steps below that of the first `reward_window` steps. A policy that grows
    confident as it gets more right is learning (the demo's happy path); one that grows confident
    without becoming right is the collapse criterion's entropy collapse. `reward_window` 0 judges
    the entropy alone."""

    action: GuardAction = Field("alert", description=_ACTION)
    patience: Int = _patience(1)
    min_ratio: Float = Field(
        0.3, gt=0.0, lt=1.0, description="Share of the early entropy below which it breaches."
    )
    warmup: Int = Field(1, ge=1, le=MAX_WINDOW, description="Steps that set the early level.")
    reward_window: Int = Field(
        4,
        ge=0,
        le=MAX_WINDOW,
        description="A breach needs the mean reward of the last this many steps below that of "
        "the first this many (0: the entropy alone).",
    )


class GradNormTrigger(FrozenConfig):
    """The gradient norm before clipping (`optim/grad_norm`) non-finite (breaches and fires at
    once, whatever `patience`), or above `ratio` × the running median of the non-breaching steps
    (after `warmup` steps)."""

    action: GuardAction = Field("alert", description=_ACTION)
    patience: Int = _patience(3)
    ratio: Float = Field(3.0, gt=1.0, le=1e6, description="Multiple of the median that breaches.")
    warmup: Int = Field(4, ge=1, le=MAX_WINDOW, description="Steps before the ratio can breach.")


class RewardTrigger(FrozenConfig):
    """The step's mean reward (`reward/mean`), averaged over the last `window` steps, below
    `min_ratio` × its running baseline (the median of the earlier averages that did not breach;
    the first `warmup` only build it), once that baseline is at least `min_baseline`. A median,
    not the running peak: the peak of a noisy per-step reward is its luckiest step."""

    action: GuardAction = Field("alert", description=_ACTION)
    patience: Int = _patience(3)
    min_ratio: Float = Field(
        0.1, gt=0.0, lt=1.0, description="Share of the baseline that breaches."
    )
    min_baseline: Float = Field(
        0.02,
        ge=0.0,
        le=1e6,
        description="A baseline below this is no reference (nothing learnt yet).",
    )
    window: Int = Field(4, ge=1, le=MAX_WINDOW, description="Steps averaged per value.")
    warmup: Int = Field(1, ge=1, le=MAX_WINDOW, description="Averages before it can breach.")


class AccuracyTrigger(FrozenConfig):
    """Held-out accuracy (`eval/accuracy`, on evaluated steps only) below `min_ratio` × its
    running peak, once the peak is at least `min_peak`."""

    action: GuardAction = Field("alert", description=_ACTION)
    patience: Int = _patience(3)
    min_ratio: Float = Field(0.2, gt=0.0, lt=1.0, description="Share of the peak that breaches.")
    min_peak: Float = Field(
        0.1, ge=0.0, le=1.0, description="A peak below this is no reference (nothing learnt yet)."
    )


class RollbackConfig(FrozenConfig):
    """How `rollback` actions go on."""

    max_attempts: Int = Field(
        3, ge=1, le=100, description="Rollbacks per job; the next rollback pauses instead."
    )
    lr_scale: Float = Field(
        0.5, gt=0.0, le=1.0, description="Factor on the learning rate after each rollback."
    )


class GuardConfig(FrozenConfig):
    """The stability guard of a run; a trigger set to null is off."""

    kl: KlTrigger | None = Field(
        default_factory=KlTrigger, description="Training–inference KL against its baseline."
    )
    is_fraction: IsFractionTrigger | None = Field(
        default_factory=IsFractionTrigger, description="IS-truncated or masked token fraction."
    )
    clip: ClipTrigger | None = Field(
        default_factory=ClipTrigger, description="Clip (trust-region mask) fraction."
    )
    entropy: EntropyTrigger | None = Field(
        default_factory=EntropyTrigger, description="Entropy against its early level."
    )
    grad_norm: GradNormTrigger | None = Field(
        default_factory=GradNormTrigger, description="Non-finite or exploding gradient norm."
    )
    reward: RewardTrigger | None = Field(
        default_factory=RewardTrigger, description="Mean reward against its running baseline."
    )
    accuracy: AccuracyTrigger | None = Field(
        default_factory=AccuracyTrigger, description="Held-out accuracy against its peak."
    )
    rollback: RollbackConfig = Field(
        default_factory=RollbackConfig,
        description="How many rollbacks a job may make and how each scales the learning rate.",
    )

    @property
    def may_roll_back(self) -> bool:
        """Whether any trigger's action is `rollback` (such a run checkpoints at step 0)."""
        triggers = (getattr(self, name) for name in get_args(TriggerName))
        return any(t is not None and t.action == "rollback" for t in triggers)
