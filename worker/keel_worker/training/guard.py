"""The stability guard's detector: one step's metrics in, the triggers that fired out.

Pure Python (no torch, no I/O), so the job loop, `train()` and the threshold replay of
`research/guard_thresholds.py` run the same code on live metrics and on committed CSVs alike. The
thresholds and what each trigger means are `keel.types.guard` (the one home of the defaults);
this module keeps the running state each signal is judged against:

    kl          mismatch/kl_k3 > ratio × median(non-breaching steps so far), and > min_value
    is_fraction max(is/truncated_frac, is/masked_frac) > max_frac
    clip        clip/frac > max_frac
    entropy     train/entropy < min_ratio × mean(first `warmup` steps), while the mean reward
                of the last `reward_window` steps is below that of the first `reward_window`
    grad_norm   optim/grad_norm non-finite, or > ratio × median(non-breaching steps so far);
                an exact 0 (no group had a reward spread: no update) is no observation
    reward      mean(last `window` reward/mean) < min_ratio × median(non-breaching means so far),
                and that median ≥ min_baseline
    accuracy    eval/accuracy (evaluated steps only) < min_ratio × its running peak

A trigger fires after `patience` consecutive breaches and is then latched until `patience`
consecutive clean observations re-arm it. After a rollback, `rewind` puts all of it back as it
was at the restored step. A step without the signal (no evaluation this step, a
dense model's routing, a skipped update) is neither a breach nor a clean observation. What a run
does about the firings (continue, pause, roll back) is `training.guard_policy`'s.
"""

from __future__ import annotations

import math
import statistics
from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import get_args

from keel.types import metric_names as metric
from keel.types.guard import (
    AccuracyTrigger,
    ClipTrigger,
    EntropyTrigger,
    GradNormTrigger,
    GuardConfig,
    IsFractionTrigger,
    KlTrigger,
    RewardTrigger,
    TriggerName,
)

TRIGGERS: tuple[str, ...] = get_args(TriggerName)
KL, ENTROPY, GRAD_NORM = metric.MISMATCH_KL_K3, metric.TRAIN_ENTROPY, metric.OPTIM_GRAD_NORM
IS_FRACTIONS = (metric.IS_TRUNCATED_FRAC, metric.IS_MASKED_FRAC)
CLIP, REWARD, ACCURACY = metric.CLIP_FRAC, metric.REWARD_MEAN, metric.EVAL_ACCURACY
WATCHED = frozenset({KL, *IS_FRACTIONS, CLIP, ENTROPY, GRAD_NORM, REWARD, ACCURACY})
# Which action wins when several triggers fire on one step: the most cautious.
ACTION_RANK = {"alert": 0, "rollback": 1, "pause": 2}
# Step d (1-based) samples with θ_{d-1}, the weights after d − 1 steps, and updates them to θ_d.
# Most signals describe θ_{d-1} itself (its rollouts' KL and IS weights, entropy and reward, its
# held-out eval), so a breach first seen at step d means θ_{d-1} is already bad; these two
# describe the update of step d, which θ_{d-1} did not cause.
UPDATE_SIGNALS = frozenset({"grad_norm", "clip"})


@dataclass(frozen=True)
class Fired:
    """One trigger firing at `step`; `since` is the first step of the breach streak."""

    trigger: str
    action: str
    step: int
    since: int
    value: float
    reference: float
    reason: str

    @property
    def last_good_step(self) -> int:
        """The newest step whose weights never produced this breach, what a rollback restores:
        `since` − 2 for a signal of the policy (θ_{since−1} breached), `since` − 1 for one of
        the update. Below 0 there is none (the starting weights breached)."""
        return self.since - (1 if self.trigger in UPDATE_SIGNALS else 2)

    def as_event(self) -> dict:
        return {
            "trigger": self.trigger,
            "action": self.action,
            "step": self.step,
            "since": self.since,
            "value": _json_float(self.value),
            "reference": _json_float(self.reference),
            "reason": self.reason,
        }


@dataclass
class _Latch:
    """Patience and re-arming of one trigger."""

    patience: int
    breaches: int = 0
    cleans: int = 0
    since: int | None = None
    latched: bool = False

    def observe(self, step: int, breach: bool) -> bool:
        """True when this observation fires the trigger."""
        if not breach:
            self.breaches, self.since = 0, None
            self.cleans += 1
            if self.latched and self.cleans >= self.patience:
                self.latched = False
            return False
        self.cleans = 0
        self.breaches += 1
        if self.since is None:
            self.since = step
        if self.latched or self.breaches < self.patience:
            return False
        self.latched = True
        return True


@dataclass
class _Signal:
    """One trigger's running reference (baseline, early level or peak) and its latch."""

    latch: _Latch
    history: list[float] = field(default_factory=list)
    window: deque = field(default_factory=deque)
    peak: float = -math.inf
    early: list[float] = field(default_factory=list)  # the first rewards (entropy's clause)


class StabilityGuard:
    """`observe(step, metrics)` once per completed step; returns the triggers that fired."""

    def __init__(self, config: GuardConfig) -> None:
        self.config = config
        self._seen: list[tuple[int, dict[str, float]]] = []  # what `rewind` replays
        self._signals = self._fresh_signals()

    def _fresh_signals(self) -> dict[str, _Signal]:
        return {
            name: _Signal(_Latch(trigger.patience))
            for name in TRIGGERS
            if (trigger := getattr(self.config, name)) is not None
        }

    def rewind(self, step: int) -> None:
        """The detector as it stood after `step`, for a rollback to that step's checkpoint:
        baselines, windows and latches rebuilt from the observations up to it, so the abandoned
        steps leave nothing behind (a collapse's zero rewards and gradients would otherwise
        become the baselines the re-run is judged against)."""
        kept = [(s, m) for s, m in self._seen if s <= step]
        self._seen, self._signals = [], self._fresh_signals()
        for s, m in kept:
            self.observe(s, m)

    def observe(self, step: int, metrics: Mapping[str, float]) -> list[Fired]:
        self._seen.append((step, {k: metrics[k] for k in WATCHED if k in metrics}))
        fired = []
        for name, signal in self._signals.items():
            trigger = getattr(self.config, name)
            judged = _JUDGES[name](trigger, signal, metrics)
            if judged is None:
                continue
            breach, value, reference, reason = judged
            if signal.latch.observe(step, breach):
                since = signal.latch.since if signal.latch.since is not None else step
                fired.append(Fired(name, trigger.action, step, since, value, reference, reason))
        return fired


# ---------------------------------------------------------------- one judge per trigger
# Each returns (breach, value, reference, reason), or None when the step lacks the signal.


def _finite(metrics: Mapping[str, float], name: str) -> float | None:
    value = metrics.get(name)
    if value is None or not math.isfinite(value):
        return None
    return float(value)


def _against_median(signal: _Signal, value: float, warmup: int, judge):
    """`judge(baseline)` -> (breach, reason) against the median of the earlier non-breaching
    values (the first `warmup` values only build it): a median, not a peak or a mean, so one
    noisy step neither raises the bar nor drags it."""
    if len(signal.history) < warmup:
        signal.history.append(value)
        return False, value, math.nan, ""
    baseline = statistics.median(signal.history)
    breach, reason = judge(baseline)
    if not breach:
        signal.history.append(value)
    return breach, value, baseline, reason


def _kl(trigger: KlTrigger, signal: _Signal, metrics: Mapping[str, float]):
    value = _finite(metrics, KL)
    if value is None:
        return None
    return _against_median(
        signal,
        value,
        trigger.warmup,
        lambda baseline: (
            value > trigger.ratio * baseline and value > trigger.min_value,
            f"k3 KL(μ‖π_old) {value:.3g} > {trigger.ratio:g} × its baseline {baseline:.3g}",
        ),
    )


def _is_fraction(trigger: IsFractionTrigger, signal: _Signal, metrics: Mapping[str, float]):
    values = [v for name in IS_FRACTIONS if (v := _finite(metrics, name)) is not None]
    if not values:
        return None
    value = max(values)
    reason = f"IS-corrected token fraction {value:.3g} > {trigger.max_frac:g}"
    return value > trigger.max_frac, value, trigger.max_frac, reason


def _clip(trigger: ClipTrigger, signal: _Signal, metrics: Mapping[str, float]):
    value = _finite(metrics, CLIP)
    if value is None:
        return None
    reason = f"clip fraction {value:.3g} > {trigger.max_frac:g}"
    return value > trigger.max_frac, value, trigger.max_frac, reason


def _entropy(trigger: EntropyTrigger, signal: _Signal, metrics: Mapping[str, float]):
    reward_fell, reward_text = _reward_fell(trigger.reward_window, signal, metrics)
    value = _finite(metrics, ENTROPY)
    if value is None:
        return None
    if len(signal.history) < trigger.warmup:
        signal.history.append(value)
        return False, value, math.nan, ""
    early = statistics.fmean(signal.history)
    reason = f"entropy {value:.3g} < {trigger.min_ratio:g} × its early level {early:.3g}"
    return value < trigger.min_ratio * early and reward_fell, value, early, reason + reward_text


def _reward_fell(window: int, signal: _Signal, metrics: Mapping[str, float]) -> tuple[bool, str]:
    """Whether the mean reward of the last `window` steps is below that of the first `window`
    (False until 2 × `window` rewards were seen, so the two never share a step; always True
    with `window` 0), and the words the reason adds."""
    if window == 0:
        return True, ""
    reward = _finite(metrics, REWARD)
    if reward is not None:
        if len(signal.early) < window:
            signal.early.append(reward)
        else:
            signal.window.append(reward)
            if len(signal.window) > window:
                signal.window.popleft()
    if len(signal.early) < window or len(signal.window) < window:
        return False, ""
    first, last = statistics.fmean(signal.early), statistics.fmean(signal.window)
    return last < first, f", with the reward down from {first:.3g} to {last:.3g}"


def _grad_norm(trigger: GradNormTrigger, signal: _Signal, metrics: Mapping[str, float]):
    value = metrics.get(GRAD_NORM)
    if value is None:
        return None
    if not math.isfinite(value):
        signal.latch.breaches = max(signal.latch.breaches, signal.latch.patience - 1)
        return True, float(value), math.nan, f"gradient norm is {value}"
    if value == 0.0:  # no update: every group's rewards were equal, nothing to judge
        return None
    return _against_median(
        signal,
        float(value),
        trigger.warmup,
        lambda baseline: (
            value > trigger.ratio * baseline,
            f"gradient norm {value:.3g} > {trigger.ratio:g} × its baseline {baseline:.3g}",
        ),
    )


def _reward(trigger: RewardTrigger, signal: _Signal, metrics: Mapping[str, float]):
    value = _finite(metrics, REWARD)
    if value is None:
        return None
    signal.window.append(value)
    if len(signal.window) > trigger.window:
        signal.window.popleft()
    if len(signal.window) < trigger.window:
        return None
    smoothed = statistics.fmean(signal.window)
    return _against_median(
        signal,
        smoothed,
        trigger.warmup,
        lambda baseline: (
            baseline >= trigger.min_baseline and smoothed < trigger.min_ratio * baseline,
            f"reward {smoothed:.3g} < {trigger.min_ratio:g} × its baseline {baseline:.3g}",
        ),
    )


def _accuracy(trigger: AccuracyTrigger, signal: _Signal, metrics: Mapping[str, float]):
    value = _finite(metrics, ACCURACY)
    if value is None:
        return None
    signal.peak = max(signal.peak, value)
    peak = signal.peak
    breach = peak >= trigger.min_peak and value < trigger.min_ratio * peak
    reason = f"held-out accuracy {value:.3g} < {trigger.min_ratio:g} × its peak {peak:.3g}"
    return breach, value, peak, reason


_JUDGES = {
    "kl": _kl,
    "is_fraction": _is_fraction,
    "clip": _clip,
    "entropy": _entropy,
    "grad_norm": _grad_norm,
    "reward": _reward,
    "accuracy": _accuracy,
}


def strongest(fired: list[Fired]) -> Fired | None:
    """The firing whose action the step takes (pause over rollback over alert)."""
    return max(fired, key=lambda f: ACTION_RANK[f.action], default=None)


def guard_metrics(fired: list[Fired]) -> dict[str, float]:
    """The `guard/*` metrics of one step: how many triggers fired, and 1 per trigger that did."""
    metrics = {metric.GUARD_FIRED: float(len(fired))}
    metrics.update({metric.guard_trigger(f.trigger): 1.0 for f in fired})
    return metrics


def _json_float(value: float) -> float | None:
    return value if math.isfinite(value) else None
