"""Tinker's built-in losses, as its documentation defines them, and the check of a datum's inputs.

Every loss is a SUM over tokens and data (Tinker's convention; never a mean), so the chunks of one
logical batch add up to the batch's loss and gradient. With p = log π_θ(target) (`logprobs_B_T`,
the only tensor with gradient), q = the sampler's log-probability (input `logprobs`), A = the
advantage (input `advantages`) and r = exp(p − q), the per-token terms are:

    cross_entropy        −w · p                              inputs target_tokens, weights
    importance_sampling  −r · A                              target_tokens, logprobs, advantages
    ppo                  −min(r · A, clip(r, lo, hi) · A)    same
    cispo                −sg[clip(r, lo, hi)] · p · A        same
    dro                  −(p · A − ½ β (p − q)²)             same

`lo` / `hi` are absolute ratio thresholds (`clip_low_threshold` / `clip_high_threshold`, 0.8 and
1.2 by default: Tinker's fixed ε = 0.2), from `loss_fn_config` or, per token, from datum inputs
of those names; DRO's β (`beta`) has no default and must be given. Only the 1-D form of the
inputs (one target per position) is supported; Tinker's `[N, K]` top-K cross-entropy is refused.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import Tensor

from keel_worker.tinker.batch import Datum

TARGET_TOKENS = "target_tokens"
DEFAULT_CLIP_LOW = 0.8
DEFAULT_CLIP_HIGH = 1.2
_POLICY_GRADIENT_INPUTS = (TARGET_TOKENS, "logprobs", "advantages")
_CLIP_INPUTS = ("clip_low_threshold", "clip_high_threshold")


@dataclass(frozen=True)
class LossTerms:
    """What a loss computes on one micro-batch: the summed loss (with gradient), each token's
    term (`[B, T]`, 0 at padding; None when the loss has no per-token form) and metric tensors
    keyed by keel's names, which the caller averages over the call weighted by `tokens` (the
    tokens they were computed on; extremes stay extremes)."""

    loss: Tensor
    elementwise_B_T: Tensor | None
    metrics: dict[str, Tensor] = field(default_factory=dict)
    tokens: Tensor | float = 1.0


class TinkerLoss:
    """A loss selected by name with its parsed config. Subclasses name their inputs and
    implement `terms`; `check` refuses a datum before anything runs."""

    name: str = ""
    required: tuple[str, ...] = ()
    optional: tuple[str, ...] = ()

    def check(self, index: int, datum: Datum, vocab_size: int) -> None:
        """ValueError naming the datum and the input when names, shapes or values are wrong."""
        check_datum(index, datum, self.name, self.required, self.optional, vocab_size)

    def terms(self, logprobs_B_T: Tensor, mask_B_T: Tensor, inputs: dict[str, Tensor]) -> LossTerms:
        raise NotImplementedError


def check_datum(
    index: int,
    datum: Datum,
    loss_name: str,
    required: tuple[str, ...],
    optional: tuple[str, ...],
    vocab_size: int,
) -> None:
    """The inputs of `datum` fit a loss needing `required` (and allowing `optional`)."""
    where = f"datum {index}"
    if not datum.tokens:
        raise ValueError(f"{where}: model_input has no tokens")
    if any(not 0 <= t < vocab_size for t in datum.tokens):
        raise ValueError(f"{where}: model_input holds a token id outside [0, {vocab_size})")
    names = set(datum.inputs)
    if missing := [n for n in required if n not in names]:
        raise ValueError(
            f"{where}: loss {loss_name!r} needs loss_fn_inputs {list(required)}; missing {missing}"
        )
    if unknown := sorted(names - set(required) - set(optional)):
        allowed = list(required) + list(optional)
        raise ValueError(
            f"{where}: loss {loss_name!r} takes loss_fn_inputs {allowed}; unknown {unknown}"
        )
    length = len(datum.tokens)
    for name, array in datum.inputs.items():
        if array.shape != (length,):
            raise ValueError(
                f"{where}: loss_fn_inputs[{name!r}] has shape {list(array.shape)}, expected "
                f"[{length}] (one value per model_input token; only 1-D inputs are supported)"
            )
        if name == TARGET_TOKENS:
            if array.dtype.kind not in "iu":
                raise ValueError(f"{where}: loss_fn_inputs['target_tokens'] must be integers")
            if array.size and (array.min() < 0 or array.max() >= vocab_size):
                raise ValueError(
                    f"{where}: loss_fn_inputs['target_tokens'] holds an id outside "
                    f"[0, {vocab_size})"
                )
        elif not np.isfinite(array.astype(np.float64)).all():
            raise ValueError(f"{where}: loss_fn_inputs[{name!r}] holds a non-finite value")


def _config_float(config: Mapping[str, float | str], key: str, default: float | None) -> float:
    value = config.get(key, default)
    if value is None:
        raise ValueError(f"loss_fn_config needs {key!r}")
    if isinstance(value, str) or not np.isfinite(value):
        raise ValueError(f"loss_fn_config[{key!r}] must be a finite number, got {value!r}")
    return float(value)


def _refuse_unknown_keys(name: str, config: Mapping[str, float | str], known: set[str]) -> None:
    if unknown := sorted(set(config) - known):
        raise ValueError(
            f"loss {name!r} takes loss_fn_config keys {sorted(known)}; unknown {unknown}"
        )


class CrossEntropy(TinkerLoss):
    name = "cross_entropy"
    required = (TARGET_TOKENS, "weights")

    def __init__(self, config: Mapping[str, float | str]) -> None:
        _refuse_unknown_keys(self.name, config, set())

    def terms(self, logprobs_B_T, mask_B_T, inputs):
        elementwise_B_T = -logprobs_B_T * inputs["weights"]
        return _summed(elementwise_B_T, mask_B_T)


class ImportanceSampling(TinkerLoss):
    name = "importance_sampling"
    required = _POLICY_GRADIENT_INPUTS

    def __init__(self, config: Mapping[str, float | str]) -> None:
        _refuse_unknown_keys(self.name, config, set())

    def terms(self, logprobs_B_T, mask_B_T, inputs):
        ratio_B_T = _ratio(logprobs_B_T, inputs["logprobs"], mask_B_T)
        return _summed(-ratio_B_T * inputs["advantages"], mask_B_T)


class _ClippedRatio(TinkerLoss):
    """The losses with ratio thresholds (absolute: r is clamped to [lo, hi])."""

    required = _POLICY_GRADIENT_INPUTS
    optional = _CLIP_INPUTS

    def __init__(self, config: Mapping[str, float | str]) -> None:
        _refuse_unknown_keys(self.name, config, set(_CLIP_INPUTS))
        self.low = _config_float(config, "clip_low_threshold", DEFAULT_CLIP_LOW)
        self.high = _config_float(config, "clip_high_threshold", DEFAULT_CLIP_HIGH)
        if not 0 <= self.low <= self.high:
            raise ValueError(
                f"need 0 <= clip_low_threshold <= clip_high_threshold, got {self.low}, {self.high}"
            )

    def bounds(self, inputs: dict[str, Tensor], like_B_T: Tensor) -> tuple[Tensor, Tensor]:
        """Per-token thresholds: a datum input where given, else the config's value."""
        low_B_T = inputs.get("clip_low_threshold", torch.full_like(like_B_T, self.low))
        high_B_T = inputs.get("clip_high_threshold", torch.full_like(like_B_T, self.high))
        return low_B_T, high_B_T


class PPO(_ClippedRatio):
    name = "ppo"

    def terms(self, logprobs_B_T, mask_B_T, inputs):
        advantages_B_T = inputs["advantages"]
        ratio_B_T = _ratio(logprobs_B_T, inputs["logprobs"], mask_B_T)
        low_B_T, high_B_T = self.bounds(inputs, ratio_B_T)
        clipped_B_T = torch.minimum(torch.maximum(ratio_B_T, low_B_T), high_B_T)
        objective_B_T = torch.minimum(ratio_B_T * advantages_B_T, clipped_B_T * advantages_B_T)
        return _summed(-objective_B_T, mask_B_T)


class CISPO(_ClippedRatio):
    name = "cispo"

    def terms(self, logprobs_B_T, mask_B_T, inputs):
        ratio_B_T = _ratio(logprobs_B_T.detach(), inputs["logprobs"], mask_B_T)
        low_B_T, high_B_T = self.bounds(inputs, ratio_B_T)
        # Stop-gradient: the clipped ratio is a constant weight on ∇log π_θ.
        weight_B_T = torch.minimum(torch.maximum(ratio_B_T, low_B_T), high_B_T)
        return _summed(-weight_B_T * logprobs_B_T * inputs["advantages"], mask_B_T)


class DRO(TinkerLoss):
    name = "dro"
    required = _POLICY_GRADIENT_INPUTS

    def __init__(self, config: Mapping[str, float | str]) -> None:
        _refuse_unknown_keys(self.name, config, {"beta"})
        self.beta = _config_float(config, "beta", None)

    def terms(self, logprobs_B_T, mask_B_T, inputs):
        quadratic_B_T = (logprobs_B_T - inputs["logprobs"]).square()
        objective_B_T = logprobs_B_T * inputs["advantages"] - 0.5 * self.beta * quadratic_B_T
        return _summed(-objective_B_T, mask_B_T)


def _ratio(logprobs_B_T: Tensor, sampler_B_T: Tensor, mask_B_T: Tensor) -> Tensor:
    # exp(p − q), 0 in padding (where p is 0 and q is 0 too, the ratio would be 1).
    return torch.where(mask_B_T, torch.exp(logprobs_B_T - sampler_B_T), 0.0)


def _summed(elementwise_B_T: Tensor, mask_B_T: Tensor) -> LossTerms:
    elementwise_B_T = torch.where(mask_B_T, elementwise_B_T, 0.0)
    return LossTerms(loss=elementwise_B_T.sum(), elementwise_B_T=elementwise_B_T)


BUILTIN_LOSSES: dict[str, type[TinkerLoss]] = {
    cls.name: cls for cls in (CrossEntropy, ImportanceSampling, PPO, CISPO, DRO)
}
