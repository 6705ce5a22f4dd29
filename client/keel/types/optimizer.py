"""Wire model of a run's optimizer: AdamW and gradient-norm clipping."""

from __future__ import annotations

from pydantic import Field, model_validator

from keel.types.common import Float, FrozenConfig


class OptimizerConfig(FrozenConfig):
    """AdamW and gradient clipping (the paper states none of these; docs/concepts/algorithm.md
    §3.1 item 6)."""

    lr: Float = Field(
        1e-6,
        gt=0.0,
        lt=1.0,
        description="AdamW learning rate, constant for the whole run (no schedule). Each guard "
        "rollback multiplies it by `guard.rollback.lr_scale`; a resume may set a new one.",
    )
    weight_decay: Float = Field(
        0.0,
        ge=0.0,
        le=10.0,
        description="AdamW's decoupled weight decay on the trained parameters (a LoRA run's "
        "adapters only); 0 = off.",
    )
    betas: tuple[Float, Float] = Field(
        (0.9, 0.999),
        description="AdamW's (β1, β2): decay rates of the running averages of the gradient and "
        "of its square; each in [0, 1).",
    )
    eps: Float = Field(
        1e-8,
        gt=0.0,
        le=1.0,
        description="AdamW's ε, added to the root of the squared-gradient average in the "
        "update's denominator.",
    )
    grad_clip: Float | None = Field(
        1.0, gt=0.0, le=1e6, description="Max global grad norm; None = off."
    )

    @model_validator(mode="after")
    def _betas_in_range(self) -> OptimizerConfig:
        if not all(0.0 <= b < 1.0 for b in self.betas):
            raise ValueError("betas must lie in [0, 1)")
        return self
