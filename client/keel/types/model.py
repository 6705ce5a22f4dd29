"""Wire models of the policy a run trains: which model it starts from, and whether it trains
every weight or low-rank adapters (LoRA).
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field, model_validator

from keel.types.common import Float, FrozenConfig, Int, Text

DEFAULT_MODEL = "smollm2-135m-instruct"


class ModelConfig(FrozenConfig):
    """Which policy to train: a model by `name`, or one of the project's own checkpoints by
    `checkpoint_id` (how a user continues training), never both."""

    name: str | None = Field(
        DEFAULT_MODEL,
        min_length=1,
        max_length=1024,
        description="A built-in model name, a hub id 'org/name' (needs a machine that is "
        "online), or an absolute path to a Hugging Face directory or .gguf file under a model "
        "root the operator allows (`KEEL_MODEL_ROOTS`). Null when `checkpoint_id` is given.",
    )
    checkpoint_id: Text | None = Field(
        None,
        min_length=1,
        max_length=40,
        description="Start from the weights of a checkpoint of this project (`ckpt_…`): a full "
        "fine-tune's weights, or a LoRA job's merged weights (base + adapter). The new job "
        "starts at step 0 with a fresh optimizer; another project's id is a 404.",
    )

    @model_validator(mode="before")
    @classmethod
    def _checkpoint_replaces_the_default_name(cls, data: object) -> object:
        if isinstance(data, dict) and data.get("checkpoint_id") is not None and "name" not in data:
            return {**data, "name": None}
        return data

    @model_validator(mode="after")
    def _one_source(self) -> ModelConfig:
        if (self.name is None) == (self.checkpoint_id is None):
            raise ValueError("give the model as exactly one of 'name' or 'checkpoint_id'")
        return self

    @property
    def label(self) -> str:
        """How messages name the model: its name, or its checkpoint id."""
        return self.name if self.name is not None else f"checkpoint {self.checkpoint_id}"


LoraModuleName = Annotated[Text, Field(min_length=1, max_length=256)]
LoraTargets = (
    Literal["all-linear"] | Annotated[list[LoraModuleName], Field(min_length=1, max_length=256)]
)


class LoraConfig(FrozenConfig):
    """Train low-rank adapters (LoRA, arXiv 2106.09685) with `peft` instead of every weight.

    Each adapted linear layer W (out × in) becomes W + (alpha / rank) · B A with A (rank × in)
    and B (out × rank, zero at the start, so step 0 samples the base model exactly); only A and
    B are trained and carry optimizer state. The routers of an MoE model stay frozen (they are
    never adapted, and naming one in `target_modules` is an error): routing changes only through
    the adapted layers around it, and Routing Replay hooks the same router modules as in full
    fine-tuning. The rollout engine samples from the merged weights W + (alpha / rank) · B A at
    its precision. LoRA usually wants a learning rate about 10× that of full fine-tuning.
    """

    rank: Int = Field(16, ge=1, le=1024, description="r: the inner dimension of A and B.")
    alpha: Float = Field(32.0, gt=0.0, le=1e6, description="The update is scaled by alpha / rank.")
    dropout: Float = Field(
        0.0,
        ge=0.0,
        lt=1.0,
        description="Dropout on each adapter's input in the gradient forwards only (π_old and "
        "the rollouts never use it); 0 = off, the paper's setting. With dropout > 0 the ratio "
        "π_θ/π_old of the first mini-batch is no longer exactly 1 at θ = θ_old.",
    )
    target_modules: LoraTargets = Field(
        "all-linear",
        description="`all-linear`: every `nn.Linear` of the decoder (attention, dense and "
        "shared-expert MLPs), not the LM head, embeddings or routers; fused MoE expert "
        "tensors are not adapted. Or a list of module names, each matching a module's full "
        "name or its last parts (`q_proj` matches every `...self_attn.q_proj`), as in peft.",
    )
