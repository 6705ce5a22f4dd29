"""keel's own objectives (`keel_worker.core.objectives`) as Tinker losses.

`loss_fn` names a keel objective by its registry name (`minirl`, `dppo_tv`, `grpo`, ...) or as
`keel:<name>`; the prefixed form is the only one for names Tinker itself uses (`keel:cispo`,
`keel:gspo`: bare `cispo` is Tinker's loss). A datum carries

    target_tokens  the sampled tokens (int, [T])
    logprobs       log μ_old of each, from the sampler ([T])
    advantages     Â per token ([T]); the cookbook writes the trajectory's advantage on its
                   action tokens and 0 on the prompt / observation tokens
    mask           optional ([T]): the tokens the policy sampled (non-zero = trained). Without
                   it, the trained tokens are those with Â ≠ 0: a token with Â = 0 adds nothing
                   to any keel objective's loss or gradient, so the mask only decides which tokens
                   the metrics (and `seq_mean_token_mean`'s lengths) count.

π_old is the current policy, detached, at the call: one update per batch (θ = θ_old, the
first mini-batch of keel's own step), so log π_old = log π_θ in value.

`loss_fn_config` (a flat map of numbers and strings, as Tinker sends it) sets:

    norm                     the divisor of the summed loss (default 1: a plain sum). keel's step
                             divides by the mini-batch's response count (`seq_mean_token_sum`)
                             or by count × max_new_tokens (`seq_mean_token_sum_norm`); a
                             client that wants the same update passes that number here. It is a
                             constant, so chunked calls still add up to one call.
    <field>                  any hyperparameter of the objective's wire model in
                             `keel.types.algorithm` (`eps_low`, `eps_high`, `use_clip` as 0/1,
                             `clip_anchor`, `is_scope`, `length_norm`, `loss_agg`, `delta_low`,
                             `is_cap`, ...), with that model's defaults and bounds
    is_correction            an IS-correction mode (`token_truncate`, `token_mask`, ...) or
                             `none`
    is_correction.<param>    a parameter of it (`is_correction.cap`: 2.0)

`loss_agg` differs from keel's step in one way: its batch-dependent divisors (response count,
token count) are replaced by `norm`; `seq_mean_token_mean` still divides each datum by its own
trained-token count first (a per-datum quantity, so chunking does not change it).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from pydantic import BaseModel, ValidationError

from keel.types.algorithm import ALGORITHM_MODELS, NON_OBJECTIVE_FIELDS, objective_kwargs
from keel_worker.core.diagnostics import mismatch_metrics
from keel_worker.core.objectives import OBJECTIVES
from keel_worker.core.types import PolicyBatch
from keel_worker.tinker.losses import TARGET_TOKENS, LossTerms, TinkerLoss

KEEL_PREFIX = "keel:"
# tinker.types.LossFnType: these names mean Tinker's losses, never keel's objectives.
TINKER_LOSS_NAMES = frozenset(
    {
        "cross_entropy",
        "importance_sampling",
        "ppo",
        "cispo",
        "dro",
        "gspo",
        "stable_reinforce",
        "custom",
    }
)
_CORRECTION = "is_correction"


def keel_objective_names() -> list[str]:
    """Every name `KeelObjective` accepts."""
    bare = [n for n in OBJECTIVES if n not in TINKER_LOSS_NAMES]
    return sorted(bare) + sorted(KEEL_PREFIX + n for n in OBJECTIVES)


def objective_of(loss_fn: str) -> str | None:
    """The keel objective `loss_fn` names, or None."""
    name = loss_fn.removeprefix(KEEL_PREFIX)
    if name not in OBJECTIVES or (name == loss_fn and name in TINKER_LOSS_NAMES):
        return None
    return name


class KeelObjective(TinkerLoss):
    """A keel objective with its settings parsed from `loss_fn_config`."""

    required = (TARGET_TOKENS, "logprobs", "advantages")
    optional = ("mask",)

    def __init__(self, loss_fn: str, config: Mapping[str, float | str]) -> None:
        objective = objective_of(loss_fn)
        if objective is None:
            raise ValueError(f"{loss_fn!r} is not a keel objective")
        self.name = loss_fn
        self.settings, self.norm = parse_settings(objective, config)
        self.objective = OBJECTIVES[objective]
        self.kwargs = objective_kwargs(self.settings)

    def terms(self, logprobs_B_T, mask_B_T, inputs):
        advantages_B_T = inputs["advantages"]
        chosen_B_T = inputs["mask"] != 0 if "mask" in inputs else advantages_B_T != 0
        trained_B_T = mask_B_T & chosen_B_T
        batch = PolicyBatch(
            logprobs_B_T=logprobs_B_T,
            # π_old = π_θ at the call, under a stop-gradient.
            old_logprobs_B_T=logprobs_B_T.detach(),
            rollout_logprobs_B_T=inputs["logprobs"],
            advantages_B=torch.zeros(mask_B_T.shape[0], device=mask_B_T.device),
            mask_B_T=trained_B_T,
            token_advantages_B_T=advantages_B_T,
        )
        out = self.objective(batch, normalizer=self.norm, **self.kwargs)
        metrics = dict(out.metrics)
        metrics |= mismatch_metrics(logprobs_B_T.detach(), inputs["logprobs"], trained_B_T)
        return LossTerms(out.loss, None, metrics, tokens=trained_B_T.sum())


def parse_settings(objective: str, config: Mapping[str, float | str]) -> tuple[BaseModel, float]:
    """(the objective's wire model, norm) from a flat `loss_fn_config`; ValueError when a key is
    unknown or a value out of bounds."""
    model = ALGORITHM_MODELS[objective]
    raw = dict(config)
    norm = raw.pop("norm", 1.0)
    if isinstance(norm, str) or not norm > 0:
        raise ValueError(f"loss_fn_config['norm'] must be a number > 0, got {norm!r}")
    params = {
        key.removeprefix(f"{_CORRECTION}."): raw.pop(key)
        for key in list(raw)
        if key.startswith(f"{_CORRECTION}.")
    }
    fields: dict[str, Any] = dict(raw)
    allowed = set(model.model_fields) - NON_OBJECTIVE_FIELDS
    if unknown := sorted(set(fields) - allowed):
        known = sorted(allowed | {"norm"})
        raise ValueError(
            f"loss {objective!r} takes loss_fn_config keys {known} (and "
            f"'{_CORRECTION}.<param>' where it has {_CORRECTION}); unknown {unknown}"
        )
    if _CORRECTION in fields or params:
        fields[_CORRECTION] = _correction(model, fields.get(_CORRECTION), params)
    try:
        return model.model_validate(fields), float(norm)
    except ValidationError as exc:
        raise ValueError(f"loss_fn_config for {objective!r}: {exc}") from exc


def _correction(
    model: type[BaseModel], mode: float | str | None, params: dict[str, Any]
) -> dict[str, Any] | None:
    """The IS correction: `mode` ('none' or a mode name; None keeps the model's default mode)
    with `params` over it."""
    if _CORRECTION not in model.model_fields:
        raise ValueError(f"this objective has no {_CORRECTION}")
    if mode == "none":
        if params:
            raise ValueError(f"{_CORRECTION} is 'none' but {sorted(params)} were given")
        return None
    if mode is None:
        default = model().model_dump()[_CORRECTION]
        if default is None:
            raise ValueError(f"{_CORRECTION} defaults to none here: give its mode first")
        return {**default, **params}
    return {"mode": mode, **params}
