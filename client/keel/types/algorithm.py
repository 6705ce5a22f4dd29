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

from keel.types.common import Float, FrozenConfig

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


# Field descriptions shared by several models (what the reference page and the OpenAPI
# document show); ρ is the ratio an IS correction corrects.
_NAME = "Picks this objective; the other fields are its hyperparameters."
_LOSS_AGG = (
    "How per-token terms become one loss per mini-batch: `seq_mean_token_sum` sums each "
    "response's tokens and averages over responses; `token_mean` divides by all tokens; "
    "`seq_mean_token_mean` averages each response's tokens first; `seq_mean_token_sum_norm` "
    "divides `seq_mean_token_sum` by `rollout.max_new_tokens` too. The divisor counts the whole "
    "mini-batch (docs/concepts/algorithm.md §9.2)."
)
_ADVANTAGE = (
    "Â of a response from its group's rewards: `group_mean` R − the group mean; `mean_std` "
    "that divided by the group's standard deviation (+1e-6); `rloo` R − the mean of the other "
    "members. Equal rewards give Â = 0; each needs `group_size` ≥ 2."
)
_CLIP_LOW = "PPO clip on r_t = π_θ/π_old: a token with Â < 0 and r_t < 1 − ε_low gets no gradient."
_CLIP_HIGH = (
    "PPO clip on r_t = π_θ/π_old: a token with Â > 0 and r_t > 1 + ε_high gets no gradient."
)
_SEQ_CLIP_LOW = (
    "Clip on the sequence ratio s = (π_θ(y)/π_old(y))^(1/|y|): a response with Â < 0 and "
    "s < 1 − ε_low gets no gradient."
)
_SEQ_CLIP_HIGH = (
    "Clip on the sequence ratio s: a response with Â > 0 and s > 1 + ε_high gets no gradient."
)
_CISPO_LOW = (
    "The weight r_t = π_θ/π_old is clamped from below at 1 − ε_low under a stop-gradient (no "
    "token loses its gradient); 1.0 = no lower clamp."
)
_CISPO_HIGH = "The weight r_t = π_θ/π_old is clamped from above at 1 + ε_high (stop-gradient)."
_TRAIN_INFER_IS = (
    "Optional training–inference factor: each token's term is multiplied by the corrected "
    "ρ = π_old/μ_old (a mode of the IS-correction tables); null = no factor, as published."
)


class _Bounds(FrozenConfig):
    lower: Float = Field(ge=0.0, le=1e6)
    upper: PositiveBound

    @model_validator(mode="after")
    def _ordered(self) -> _Bounds:
        if not self.lower < self.upper:
            raise ValueError(f"lower ({self.lower}) must be below upper ({self.upper})")
        return self


# ---- importance-sampling corrections (docs/concepts/algorithm.md §8.1–8.3) ----------------------


class TokenTruncate(FrozenConfig):
    """TIS: w_t = min(ρ_t, cap). Cap 5 is the paper's (paper §4.2); the largest cap (1e6) is the
    untruncated ("vanilla-IS") weight in practice."""

    mode: Literal["token_truncate"] = Field(
        "token_truncate", description="Picks TIS: each token's weight is truncated at `cap`."
    )
    cap: PositiveBound = Field(
        5.0,
        description="C: a token's weight is min(ρ_t, C), an upper bound only; 5 is the "
        "paper's, 1e6 leaves the weight untruncated in practice.",
    )


class TokenMask(_Bounds):
    """IcePop: w_t = ρ_t if lower ≤ ρ_t ≤ upper else 0 (Ring-1T: α 0.5, β 5)."""

    mode: Literal["token_mask"] = Field(
        "token_mask", description="Picks IcePop: tokens whose ratio leaves the bounds get weight 0."
    )
    lower: Float = Field(
        default=0.5,
        ge=0.0,
        le=1e6,
        description="α: a token with ρ_t < α gets weight 0 (ρ_t = α is kept); below `upper`.",
    )
    upper: PositiveBound = Field(
        5.0, description="β: a token with ρ_t > β gets weight 0 (ρ_t = β is kept)."
    )


class SeqTruncate(FrozenConfig):
    """Seq-TIS: every token gets min(ρ(y), cap) (Liu et al. stabilize with C = 2)."""

    mode: Literal["seq_truncate"] = Field(
        "seq_truncate",
        description="Picks Seq-TIS: one truncated weight per response, on all its tokens.",
    )
    cap: PositiveBound = Field(
        2.0,
        description="C: every token of a response gets min(ρ(y), C), ρ(y) the product of its "
        "token ratios.",
    )


class SeqMask(_Bounds):
    """Seq-MIS: every token gets ρ(y) if lower ≤ ρ(y) ≤ upper, else the response is dropped."""

    mode: Literal["seq_mask"] = Field(
        "seq_mask",
        description="Picks Seq-MIS: a response whose ratio ρ(y) leaves the bounds is dropped.",
    )
    lower: Float = Field(
        default=0.0,
        ge=0.0,
        le=1e6,
        description="A response with ρ(y) below this gets weight 0 on every token; a kept "
        "one's tokens get ρ(y). Below `upper`.",
    )
    upper: PositiveBound = Field(
        2.0, description="A response with ρ(y) above this gets weight 0 on every token."
    )


class GeoMask(_Bounds):
    """Geo-RS: drop y when ρ(y)^{1/|y|} leaves [lower, upper]; ``token_cap`` adds token TIS."""

    mode: Literal["geo_mask"] = Field(
        "geo_mask",
        description="Picks Geo-RS: rejects a response by its geometric-mean ratio, whatever "
        "its length.",
    )
    lower: Float = Field(
        default=0.999,
        ge=0.0,
        le=1e6,
        description="A response with ρ(y)^(1/|y|) below this gets weight 0 on every token. "
        "Below `upper`.",
    )
    upper: PositiveBound = Field(
        1.001, description="A response with ρ(y)^(1/|y|) above this gets weight 0 on every token."
    )
    token_cap: PositiveBound | None = Field(
        None,
        description="The weight of a kept response's tokens: min(ρ_t, token_cap) "
        "(Geo-RS-Token-TIS), or 1 when null (pure rejection).",
    )


ISCorrection = Annotated[
    TokenTruncate | TokenMask | SeqTruncate | SeqMask | GeoMask, Field(discriminator="mode")
]

# ---- objectives -----------------------------------------------------------------------------


class MiniRLConfig(FrozenConfig):
    """MiniRL, paper Eq. 7, with its ablation switches (docs/concepts/algorithm.md §3.1, §3.4).

    ``is_correction`` corrects the token IS weight; ``None`` drops the training–inference factor
    π_old/μ_old (the "w/o train-infer IS" ablation). ``is_scope="full"`` corrects π_θ/μ_old (the
    literal reading); ``"train_infer"`` corrects only π_old/μ_old. ``use_clip=False`` is the
    "no clipping" ablation; ``clip_anchor="mu_old"`` anchors the clip mask on the rollout policy.
    ``length_norm=True`` is the "+ length-norm" ablation (divide each response by |y|).
    """

    name: Literal["minirl"] = Field("minirl", description=_NAME)
    eps_low: Epsilon = Field(
        0.2,
        description="Clip mask on r_t = π_θ/π_anchor (`clip_anchor`): a token with Â < 0 and "
        "r_t < 1 − ε_low gets no gradient (docs/concepts/algorithm.md §3.1).",
    )
    eps_high: EpsilonHigh = Field(
        0.27,
        description="Clip mask: a token with Â > 0 and r_t > 1 + ε_high gets no gradient.",
    )
    use_clip: bool = Field(
        True,
        description='false: no clip mask, every token keeps its gradient (the "no clipping" '
        "ablation); ε_low and ε_high then only feed the `clip/*` metrics.",
    )
    clip_anchor: ClipAnchor = Field(
        "pi_old",
        description="The denominator of the mask's ratio: `pi_old`, the trainer's recomputed "
        "old policy (MiniRL), or `mu_old`, the rollout engine's (the anchor DPPO argues for).",
    )
    is_correction: ISCorrection | None = Field(
        default_factory=TokenTruncate,
        description="Correction of the token IS weight w_t (a mode of the IS-correction "
        "tables; default TIS, cap 5). Null drops the training–inference factor: w_t = "
        'π_θ/π_old (the "w/o train-infer IS" ablation).',
    )
    is_scope: ISScope = Field(
        "full",
        description="What `is_correction` corrects: `full`, the whole weight π_θ/μ_old; "
        "`train_infer`, only π_old/μ_old, times an uncorrected π_θ/π_old "
        "(docs/concepts/algorithm.md §9.1). On-policy the two agree.",
    )
    length_norm: bool = Field(
        False,
        description="true: divide each response's terms by its length |y| (the \"+ "
        'length-norm" ablation); refused with `token_mean` or `seq_mean_token_mean`, which '
        "already do.",
    )
    loss_agg: LossAggregation = Field("seq_mean_token_sum", description=_LOSS_AGG)
    advantage: AdvantageMode = Field("group_mean", description=_ADVANTAGE)

    @model_validator(mode="after")
    def _single_length_norm(self) -> MiniRLConfig:
        if self.length_norm and self.loss_agg in ("token_mean", "seq_mean_token_mean"):
            raise ValueError(
                f"length_norm=True with loss_agg={self.loss_agg!r} would normalize by length "
                "twice; use loss_agg='seq_mean_token_sum'"
            )
        return self


class ReinforceConfig(FrozenConfig):
    """REINFORCE without any IS weight: the paper's "w/o train-infer IS" objective
    (docs/concepts/algorithm.md §8.8)."""

    name: Literal["reinforce"] = Field("reinforce", description=_NAME)
    loss_agg: LossAggregation = Field("seq_mean_token_sum", description=_LOSS_AGG)
    advantage: AdvantageMode = Field("group_mean", description=_ADVANTAGE)


class GRPOConfig(FrozenConfig):
    """GRPO as written in the paper's App. A (ε_low/ε_high of the GSPO paper's GRPO baseline)."""

    name: Literal["grpo"] = Field("grpo", description=_NAME)
    eps_low: Epsilon = Field(0.2, description=_CLIP_LOW)
    eps_high: EpsilonHigh = Field(0.27, description=_CLIP_HIGH)
    is_correction: ISCorrection | None = Field(None, description=_TRAIN_INFER_IS)
    loss_agg: LossAggregation = Field("seq_mean_token_mean", description=_LOSS_AGG)
    advantage: AdvantageMode = Field("mean_std", description=_ADVANTAGE)


class DrGRPOConfig(FrozenConfig):
    """Dr. GRPO (docs/concepts/algorithm.md §8.6): no 1/|y|, no std; constant divisor via
    ``seq_mean_token_sum_norm``."""

    name: Literal["dr_grpo"] = Field("dr_grpo", description=_NAME)
    eps_low: Epsilon = Field(0.2, description=_CLIP_LOW)
    eps_high: EpsilonHigh = Field(0.2, description=_CLIP_HIGH)
    is_correction: ISCorrection | None = Field(None, description=_TRAIN_INFER_IS)
    loss_agg: LossAggregation = Field("seq_mean_token_sum_norm", description=_LOSS_AGG)
    advantage: AdvantageMode = Field("group_mean", description=_ADVANTAGE)


class DAPOConfig(FrozenConfig):
    """DAPO (docs/concepts/algorithm.md §8.7): clip-higher (0.2 / 0.28), token-mean aggregation."""

    name: Literal["dapo"] = Field("dapo", description=_NAME)
    eps_low: Epsilon = Field(0.2, description=_CLIP_LOW)
    eps_high: EpsilonHigh = Field(0.28, description=_CLIP_HIGH)
    is_correction: ISCorrection | None = Field(None, description=_TRAIN_INFER_IS)
    loss_agg: LossAggregation = Field("token_mean", description=_LOSS_AGG)
    advantage: AdvantageMode = Field("mean_std", description=_ADVANTAGE)


class CISPOConfig(FrozenConfig):
    """CISPO (docs/concepts/algorithm.md §8.5): ε_low 1.0 = no lower bound on the weight, as
    MiniMax use it in practice."""

    name: Literal["cispo"] = Field("cispo", description=_NAME)
    eps_low: Epsilon = Field(1.0, description=_CISPO_LOW)
    eps_high: EpsilonHigh = Field(0.27, description=_CISPO_HIGH)
    is_correction: ISCorrection | None = Field(None, description=_TRAIN_INFER_IS)
    loss_agg: LossAggregation = Field("token_mean", description=_LOSS_AGG)
    advantage: AdvantageMode = Field("mean_std", description=_ADVANTAGE)


class GSPOConfig(FrozenConfig):
    """GSPO (docs/concepts/algorithm.md §8.4): sequence ratio with the paper's clip range
    3e-4 / 4e-4."""

    name: Literal["gspo"] = Field("gspo", description=_NAME)
    eps_low: Epsilon = Field(3e-4, description=_SEQ_CLIP_LOW)
    eps_high: EpsilonHigh = Field(4e-4, description=_SEQ_CLIP_HIGH)
    is_correction: ISCorrection | None = Field(None, description=_TRAIN_INFER_IS)
    loss_agg: LossAggregation = Field("seq_mean_token_mean", description=_LOSS_AGG)
    advantage: AdvantageMode = Field("mean_std", description=_ADVANTAGE)


class GSPOTokenConfig(FrozenConfig):
    """GSPO-token (docs/concepts/algorithm.md §8.4): GSPO's sequence ratio with a per-token
    gradient path."""

    name: Literal["gspo_token"] = Field("gspo_token", description=_NAME)
    eps_low: Epsilon = Field(3e-4, description=_SEQ_CLIP_LOW)
    eps_high: EpsilonHigh = Field(4e-4, description=_SEQ_CLIP_HIGH)
    is_correction: ISCorrection | None = Field(None, description=_TRAIN_INFER_IS)
    loss_agg: LossAggregation = Field("seq_mean_token_mean", description=_LOSS_AGG)
    advantage: AdvantageMode = Field("mean_std", description=_ADVANTAGE)


class DecoupledPPOTISConfig(FrozenConfig):
    """Decoupled PPO with TIS (Yao et al., docs/concepts/algorithm.md §8.1): symmetric ε 0.2,
    weight min(π_old/μ_old, 2) (verl's default threshold)."""

    name: Literal["decoupled_ppo_tis"] = Field("decoupled_ppo_tis", description=_NAME)
    eps_low: Epsilon = Field(0.2, description=_CLIP_LOW)
    eps_high: EpsilonHigh = Field(0.2, description=_CLIP_HIGH)
    is_correction: ISCorrection = Field(
        default_factory=lambda: TokenTruncate(cap=2.0),
        description="The training–inference factor: each token's term is multiplied by the "
        "corrected ρ = π_old/μ_old (default TIS, min(ρ, 2)); any IS-correction mode, not null.",
    )
    loss_agg: LossAggregation = Field("token_mean", description=_LOSS_AGG)
    advantage: AdvantageMode = Field("mean_std", description=_ADVANTAGE)


class DPPOTVConfig(FrozenConfig):
    """DPPO-Binary-TV, anchored on μ_old (Qi et al., arXiv 2602.04879;
    docs/concepts/algorithm.md §8.9).

    ℓ_t = −M_t · sg[min(π_θ/μ_old, C)] · Â · log π_θ, with M_t dropping tokens whose probability
    moved more than δ from μ_old(y_t) in the direction their advantage pushes.
    """

    model_config = ConfigDict(use_attribute_docstrings=True)

    name: Literal["dppo_tv"] = "dppo_tv"
    """Picks this objective; the other fields are its hyperparameters."""
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


class DPPOKLConfig(FrozenConfig):
    """DPPO-Binary-KL, anchored on μ_old (Qi et al., arXiv 2602.04879;
    docs/concepts/algorithm.md §8.9).

    Like ``dppo_tv`` with the mask on D = KL(Bernoulli(q) ‖ Bernoulli(p)), q = μ_old(y_t),
    p = π_θ(y_t): a token is dropped when D exceeds δ and p moved the way its advantage pushes.
    """

    model_config = ConfigDict(use_attribute_docstrings=True)

    name: Literal["dppo_kl"] = "dppo_kl"
    """Picks this objective; the other fields are its hyperparameters."""
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
