"""Wire config models of the policy objectives; the ONLY home of their default hyper-parameters.

One strict model per objective, discriminated by ``name`` (``AlgorithmConfig``), and one per
importance-sampling correction, discriminated by ``mode`` (``ISCorrection``). The worker turns a
model into the keyword arguments of the registered objective with :func:`objective_kwargs`; a
contract test keeps the field names equal to the objective functions' keywords.

Defaults follow docs/concepts/algorithm.md §3.1: MiniRL ε_low 0.2, ε_high 0.27, TIS cap 5 on the
full token IS weight, no length normalization, sum over tokens / mean over responses, group-mean
advantages (paper Eq. 7 and paper §4.2); the other objectives use their own papers' settings
(docs/concepts/algorithm.md §7, §8). A default marked [I] is our own pick where the source gives
none.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal, get_args

from pydantic import BaseModel, ConfigDict, Field, model_validator

from keel.types.common import Float

ObjectiveName = Literal[
    "minirl",
    "reinforce",
    "grpo",
    "cispo",
    "gspo",
    "gspo_token",
    "dr_grpo",
    "dapo",
    "decoupled_ppo_tis",
    "dppo_tv",
    "dppo_kl",
]
LossAggregation = Literal[
    "seq_mean_token_sum", "token_mean", "seq_mean_token_mean", "seq_mean_token_sum_norm"
]
AdvantageMode = Literal["group_mean", "mean_std", "rloo"]
ISScope = Literal["full", "train_infer"]
ClipAnchor = Literal["pi_old", "mu_old"]

# Fields of an algorithm model that are not keywords of its objective function: ``name`` selects
# the function and ``advantage`` is consumed earlier, by the advantage computation.
NON_OBJECTIVE_FIELDS = frozenset({"name", "advantage"})

# Upper bounds (docs/concepts/tenancy.md §7): ε_high and the IS caps/bounds are ratios; 10 and 1e6
# are far beyond any published setting, and keep an absurd value (ε_high = 2e16) out of a job.
Epsilon = Annotated[Float, Field(gt=0.0, le=1.0)]
EpsilonHigh = Annotated[Float, Field(gt=0.0, le=10.0)]
PositiveBound = Annotated[Float, Field(gt=0.0, le=1e6)]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class _Bounds(_Strict):
    lower: Float = Field(ge=0.0, le=1e6)
    upper: PositiveBound

    @model_validator(mode="after")
    def _ordered(self) -> _Bounds:
        if not self.lower < self.upper:
            raise ValueError(f"lower ({self.lower}) must be below upper ({self.upper})")
        return self


# ---- importance-sampling corrections (docs/concepts/algorithm.md §8.1–8.3) ----------------------


class TokenTruncate(_Strict):
    """TIS: w_t = min(ρ_t, cap). Cap 5 is the paper's (paper §4.2); the largest cap (1e6) is the
    untruncated ("vanilla-IS") weight in practice."""

    mode: Literal["token_truncate"] = "token_truncate"
    cap: PositiveBound = 5.0


class TokenMask(_Bounds):
    """IcePop: w_t = ρ_t if lower ≤ ρ_t ≤ upper else 0 (Ring-1T: α 0.5, β 5)."""

    mode: Literal["token_mask"] = "token_mask"
    lower: Float = Field(default=0.5, ge=0.0, le=1e6)
    upper: PositiveBound = 5.0


class SeqTruncate(_Strict):
    """Seq-TIS: every token gets min(ρ(y), cap) (Liu et al. stabilize with C = 2)."""

    mode: Literal["seq_truncate"] = "seq_truncate"
    cap: PositiveBound = 2.0


class SeqMask(_Bounds):
    """Seq-MIS: every token gets ρ(y) if lower ≤ ρ(y) ≤ upper, else the response is dropped."""

    mode: Literal["seq_mask"] = "seq_mask"
    lower: Float = Field(default=0.0, ge=0.0, le=1e6)
    upper: PositiveBound = 2.0


class GeoMask(_Bounds):
    """Geo-RS: drop y when ρ(y)^{1/|y|} leaves [lower, upper]; ``token_cap`` adds token TIS."""

    mode: Literal["geo_mask"] = "geo_mask"
    lower: Float = Field(default=0.999, ge=0.0, le=1e6)
    upper: PositiveBound = 1.001
    token_cap: PositiveBound | None = None


ISCorrection = Annotated[
    TokenTruncate | TokenMask | SeqTruncate | SeqMask | GeoMask, Field(discriminator="mode")
]

# ---- objectives -----------------------------------------------------------------------------


class MiniRLConfig(_Strict):
    """MiniRL, paper Eq. 7, with its ablation switches (docs/concepts/algorithm.md §3.1, §3.4).

    ``is_correction`` corrects the token IS weight; ``None`` drops the training–inference factor
    π_old/μ_old (the "w/o train-infer IS" ablation). ``is_scope="full"`` corrects π_θ/μ_old (the
    literal reading); ``"train_infer"`` corrects only π_old/μ_old. ``use_clip=False`` is the
    "no clipping" ablation; ``clip_anchor="mu_old"`` anchors the clip mask on the rollout policy.
    ``length_norm=True`` is the "+ length-norm" ablation (divide each response by |y|).
    """

    name: Literal["minirl"] = "minirl"
    eps_low: Epsilon = 0.2
    eps_high: EpsilonHigh = 0.27
    use_clip: bool = True
    clip_anchor: ClipAnchor = "pi_old"
    is_correction: ISCorrection | None = Field(default_factory=TokenTruncate)
    is_scope: ISScope = "full"
    length_norm: bool = False
    loss_agg: LossAggregation = "seq_mean_token_sum"
    advantage: AdvantageMode = "group_mean"

    @model_validator(mode="after")
    def _single_length_norm(self) -> MiniRLConfig:
        if self.length_norm and self.loss_agg in ("token_mean", "seq_mean_token_mean"):
            raise ValueError(
                f"length_norm=True with loss_agg={self.loss_agg!r} would normalize by length "
                "twice; use loss_agg='seq_mean_token_sum'"
            )
        return self


class ReinforceConfig(_Strict):
    """REINFORCE without any IS weight: the paper's "w/o train-infer IS" objective
    (docs/concepts/algorithm.md §8.8)."""

    name: Literal["reinforce"] = "reinforce"
    loss_agg: LossAggregation = "seq_mean_token_sum"
    advantage: AdvantageMode = "group_mean"


class GRPOConfig(_Strict):
    """GRPO as written in the paper's App. A (ε_low/ε_high of the GSPO paper's GRPO baseline)."""

    name: Literal["grpo"] = "grpo"
    eps_low: Epsilon = 0.2
    eps_high: EpsilonHigh = 0.27
    is_correction: ISCorrection | None = None
    loss_agg: LossAggregation = "seq_mean_token_mean"
    advantage: AdvantageMode = "mean_std"


class DrGRPOConfig(_Strict):
    """Dr. GRPO (docs/concepts/algorithm.md §8.6): no 1/|y|, no std; constant divisor via
    ``seq_mean_token_sum_norm``."""

    name: Literal["dr_grpo"] = "dr_grpo"
    eps_low: Epsilon = 0.2
    eps_high: EpsilonHigh = 0.2
    is_correction: ISCorrection | None = None
    loss_agg: LossAggregation = "seq_mean_token_sum_norm"
    advantage: AdvantageMode = "group_mean"


class DAPOConfig(_Strict):
    """DAPO (docs/concepts/algorithm.md §8.7): clip-higher (0.2 / 0.28), token-mean aggregation."""

    name: Literal["dapo"] = "dapo"
    eps_low: Epsilon = 0.2
    eps_high: EpsilonHigh = 0.28
    is_correction: ISCorrection | None = None
    loss_agg: LossAggregation = "token_mean"
    advantage: AdvantageMode = "mean_std"


class CISPOConfig(_Strict):
    """CISPO (docs/concepts/algorithm.md §8.5): ε_low 1.0 = no lower bound on the weight, as
    MiniMax use it in practice."""

    name: Literal["cispo"] = "cispo"
    eps_low: Epsilon = 1.0
    eps_high: EpsilonHigh = 0.27
    is_correction: ISCorrection | None = None
    loss_agg: LossAggregation = "token_mean"
    advantage: AdvantageMode = "mean_std"


class GSPOConfig(_Strict):
    """GSPO (docs/concepts/algorithm.md §8.4): sequence ratio with the paper's clip range
    3e-4 / 4e-4."""

    name: Literal["gspo"] = "gspo"
    eps_low: Epsilon = 3e-4
    eps_high: EpsilonHigh = 4e-4
    is_correction: ISCorrection | None = None
    loss_agg: LossAggregation = "seq_mean_token_mean"
    advantage: AdvantageMode = "mean_std"


class GSPOTokenConfig(_Strict):
    """GSPO-token (docs/concepts/algorithm.md §8.4): GSPO's sequence ratio with a per-token
    gradient path."""

    name: Literal["gspo_token"] = "gspo_token"
    eps_low: Epsilon = 3e-4
    eps_high: EpsilonHigh = 4e-4
    is_correction: ISCorrection | None = None
    loss_agg: LossAggregation = "seq_mean_token_mean"
    advantage: AdvantageMode = "mean_std"


class DecoupledPPOTISConfig(_Strict):
    """Decoupled PPO with TIS (Yao et al., docs/concepts/algorithm.md §8.1): symmetric ε 0.2,
    weight min(π_old/μ_old, 2) (verl's default threshold)."""

    name: Literal["decoupled_ppo_tis"] = "decoupled_ppo_tis"
    eps_low: Epsilon = 0.2
    eps_high: EpsilonHigh = 0.2
    is_correction: ISCorrection = Field(default_factory=lambda: TokenTruncate(cap=2.0))
    loss_agg: LossAggregation = "token_mean"
    advantage: AdvantageMode = "mean_std"


class DPPOTVConfig(_Strict):
    """DPPO-Binary-TV, anchored on μ_old (Qi et al., arXiv 2602.04879;
    docs/concepts/algorithm.md §8.9).

    ℓ_t = −M_t · sg[min(π_θ/μ_old, C)] · Â · log π_θ, with M_t dropping tokens whose probability
    moved more than δ from μ_old(y_t) in the direction their advantage pushes.
    """

    model_config = ConfigDict(use_attribute_docstrings=True)

    name: Literal["dppo_tv"] = "dppo_tv"
    divergence: Literal["tv"] = "tv"
    """The trust region's divergence: the absolute probability change |π_θ(y_t) − μ_old(y_t)|."""
    delta_low: Epsilon = 0.15
    """Â < 0 tokens with π_θ(y_t) − μ_old(y_t) < −δ_low get no gradient. 0.15 is the authors'
    value for Qwen3-30B-A3B-Base (verl-project/verl examples/dppo_trainer/run_qwen30b_dppo.sh)."""
    delta_high: Epsilon = 0.15
    """Â > 0 tokens with π_θ(y_t) − μ_old(y_t) > δ_high get no gradient (same source, 0.15)."""
    is_cap: PositiveBound = 10.0
    """C of the truncated IS weight min(π_θ/μ_old, C): 10 in the authors' code (sail-sg/Stable-RL
    ``compute_policy_loss_with_mask``, the paper's sanity test); ``inf`` disables truncation."""
    loss_agg: LossAggregation = "seq_mean_token_sum"
    """[I] MiniRL's sum over tokens, mean over responses, so the comparison with MiniRL differs
    in the mask only (the authors' verl example divides that sum by a constant as well)."""
    advantage: AdvantageMode = "group_mean"
    """R − group mean without std division, as in the authors' example
    (``norm_adv_by_std_in_grpo=False``) and MiniRL."""


class DPPOKLConfig(_Strict):
    """DPPO-Binary-KL, anchored on μ_old (Qi et al., arXiv 2602.04879;
    docs/concepts/algorithm.md §8.9).

    Like ``dppo_tv`` with the mask on D = KL(Bernoulli(q) ‖ Bernoulli(p)), q = μ_old(y_t),
    p = π_θ(y_t): a token is dropped when D exceeds δ and p moved the way its advantage pushes.
    """

    model_config = ConfigDict(use_attribute_docstrings=True)

    name: Literal["dppo_kl"] = "dppo_kl"
    divergence: Literal["kl"] = "kl"
    """The trust region's divergence: the binary KL D of the two Bernoulli distributions."""
    delta_low: PositiveBound = 0.05
    """Â < 0 tokens with p < q and D > δ_low get no gradient. 0.05 is the authors' value
    (verl-project/verl examples/dppo_trainer/run_qwen30b_dppo.sh)."""
    delta_high: PositiveBound = 0.05
    """Â > 0 tokens with p > q and D > δ_high get no gradient (same source, 0.05)."""
    is_cap: PositiveBound = 10.0
    """C of the truncated IS weight min(π_θ/μ_old, C), as for ``dppo_tv``."""
    loss_agg: LossAggregation = "seq_mean_token_sum"
    """[I] MiniRL's aggregation, as for ``dppo_tv``."""
    advantage: AdvantageMode = "group_mean"
    """R − group mean without std division, as for ``dppo_tv``."""


AlgorithmConfig = Annotated[
    MiniRLConfig
    | ReinforceConfig
    | GRPOConfig
    | DrGRPOConfig
    | DAPOConfig
    | CISPOConfig
    | GSPOConfig
    | GSPOTokenConfig
    | DecoupledPPOTISConfig
    | DPPOTVConfig
    | DPPOKLConfig,
    Field(discriminator="name"),
]

# The models by objective name, derived from the union above so the list is written once.
_ALGORITHM_UNION, _ = get_args(AlgorithmConfig)
ALGORITHM_MODELS: dict[str, type[BaseModel]] = {
    model.model_fields["name"].default: model for model in get_args(_ALGORITHM_UNION)
}


def objective_kwargs(cfg: BaseModel) -> dict[str, Any]:
    """Keyword arguments for ``OBJECTIVES[cfg.name]`` (all but NON_OBJECTIVE_FIELDS).

    Nested IS-correction models become plain dicts ``{"mode": ..., **params}``, the form the
    worker's core expects.
    """
    dumped = cfg.model_dump()
    return {key: value for key, value in dumped.items() if key not in NON_OBJECTIVE_FIELDS}


__all__ = [
    "ALGORITHM_MODELS",
    "NON_OBJECTIVE_FIELDS",
    "AdvantageMode",
    "AlgorithmConfig",
    "CISPOConfig",
    "ClipAnchor",
    "DAPOConfig",
    "DPPOKLConfig",
    "DPPOTVConfig",
    "DecoupledPPOTISConfig",
    "DrGRPOConfig",
    "GRPOConfig",
    "GSPOConfig",
    "GSPOTokenConfig",
    "GeoMask",
    "ISCorrection",
    "ISScope",
    "LossAggregation",
    "MiniRLConfig",
    "ObjectiveName",
    "ReinforceConfig",
    "SeqMask",
    "SeqTruncate",
    "TokenMask",
    "TokenTruncate",
    "objective_kwargs",
]
