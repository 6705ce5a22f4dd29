"""Wire types of the Tinker-compatible surface (`/tinker/api/v1/*`): the JSON bodies the `tinker`
SDK (0.38.0) sends, the loss names a Tinker model accepts, and the paths of its saved weights.

These request models are lenient (`extra="ignore"`), unlike keel's own: the client is a foreign
SDK whose newer releases add optional fields, and refusing them would break a user's code on an
SDK upgrade. The fields keel acts on are typed and checked like any request field.
"""

from __future__ import annotations

from typing import Any, Literal, get_args

from pydantic import BaseModel, ConfigDict, Field

from keel.types.algorithm import ObjectiveName
from keel.types.common import MAX_INT

# Tinker's built-in losses; keel's own objectives are accepted by name as well.
TinkerBuiltinLoss = Literal["cross_entropy", "importance_sampling", "ppo", "cispo", "dro"]
TINKER_LOSSES: frozenset[str] = frozenset(get_args(TinkerBuiltinLoss)) | frozenset(
    get_args(ObjectiveName)
)

TINKER_KEY_PREFIX = "tml-"  # the SDK refuses any other key: `TINKER_API_KEY=tml-<keel key>`
TINKER_PATH_SCHEME = "tinker://"
# `tinker://<model id>/<kind>/<name>`: kind "weights" (training state) or "sampler_weights".
WeightsKind = Literal["weights", "sampler_weights"]
SeqId = Field(default=None, ge=0, le=MAX_INT)


class TinkerRequest(BaseModel):
    model_config = ConfigDict(extra="ignore", protected_namespaces=())


class CreateSessionRequest(TinkerRequest):
    tags: list[str] = []
    user_metadata: dict[str, Any] | None = None
    sdk_version: str = ""


class SessionHeartbeatRequest(TinkerRequest):
    session_id: str = Field(max_length=40)


class FinishReason(TinkerRequest):
    type: Literal["success", "errored", "interrupted"] = "success"


class FinishSessionRequest(TinkerRequest):
    """`ServiceClient.close(status, detail)`."""

    reason: FinishReason = FinishReason()
    detail: str | None = Field(default=None, max_length=2000)


class LoraConfig(TinkerRequest):
    rank: int = Field(ge=1, le=4096)
    seed: int | None = Field(default=None, ge=0, le=MAX_INT)


class CreateModelRequest(TinkerRequest):
    session_id: str = Field(max_length=40)
    model_seq_id: int = Field(ge=0, le=MAX_INT)
    base_model: str = Field(min_length=1, max_length=300)
    user_metadata: dict[str, Any] | None = None
    lora_config: LoraConfig | None = None  # None: full fine-tuning


class ModelRequest(TinkerRequest):
    """get_info, unload_model: a call naming only its model."""

    model_id: str = Field(max_length=40)


class AdamParams(TinkerRequest):
    """The SDK's defaults, sent on every call (`tinker.types.AdamParams`)."""

    learning_rate: float = Field(default=1e-4, ge=0, allow_inf_nan=False)
    beta1: float = Field(default=0.9, ge=0, lt=1)
    beta2: float = Field(default=0.95, ge=0, lt=1)
    eps: float = Field(default=1e-12, gt=0, allow_inf_nan=False)
    weight_decay: float = Field(default=0.0, ge=0, allow_inf_nan=False)
    grad_clip_norm: float = Field(default=0.0, ge=0, allow_inf_nan=False)


class OptimStepRequest(TinkerRequest):
    model_id: str = Field(max_length=40)
    seq_id: int | None = SeqId
    adam_params: AdamParams


class SaveWeightsRequest(TinkerRequest):
    """save_weights and save_weights_for_sampler: no `path` is an ephemeral save."""

    model_id: str = Field(max_length=40)
    seq_id: int | None = SeqId
    path: str | None = Field(default=None, min_length=1, max_length=200, pattern=r"^[\w.\-]+$")
    sampling_session_seq_id: int | None = Field(default=None, ge=0, le=MAX_INT)


class LoadWeightsRequest(TinkerRequest):
    model_id: str = Field(max_length=40)
    seq_id: int | None = SeqId
    path: str = Field(min_length=1, max_length=400)
    optimizer: bool = False


class CreateSamplingSessionRequest(TinkerRequest):
    session_id: str = Field(max_length=40)
    sampling_session_seq_id: int = Field(ge=0, le=MAX_INT)
    base_model: str | None = Field(default=None, max_length=300)
    model_path: str | None = Field(default=None, max_length=400)


class EncodedTextChunk(TinkerRequest):
    type: Literal["encoded_text"] = "encoded_text"
    tokens: list[int] = Field(min_length=1)


class ModelInput(TinkerRequest):
    chunks: list[EncodedTextChunk] = Field(min_length=1)


class SamplingParams(TinkerRequest):
    max_tokens: int | None = Field(default=None, ge=1, le=MAX_INT)
    seed: int | None = None
    stop: str | list[str] | list[int] | None = None
    temperature: float = Field(default=1.0, ge=0, allow_inf_nan=False)
    top_k: int = -1
    top_p: float = Field(default=1.0, gt=0, le=1)


class SampleRequest(TinkerRequest):
    num_samples: int = Field(default=1, ge=1, le=1024)
    prompt: ModelInput
    sampling_params: SamplingParams
    base_model: str | None = Field(default=None, max_length=300)
    model_path: str | None = Field(default=None, max_length=400)
    # `<model_id>` or `<model_id>/<kind>/<name>` (services.tinker.create_sampling_session)
    sampling_session_id: str | None = Field(default=None, max_length=400)
    seq_id: int | None = SeqId
    prompt_logprobs: bool | None = None


class WeightsInfoRequest(TinkerRequest):
    tinker_path: str = Field(min_length=1, max_length=400)


class FutureRetrieveRequest(TinkerRequest):
    request_id: str = Field(max_length=40)
    allow_metadata_only: bool = False


__all__ = [
    "TINKER_KEY_PREFIX",
    "TINKER_LOSSES",
    "TINKER_PATH_SCHEME",
    "AdamParams",
    "CreateModelRequest",
    "CreateSamplingSessionRequest",
    "CreateSessionRequest",
    "EncodedTextChunk",
    "FutureRetrieveRequest",
    "LoadWeightsRequest",
    "LoraConfig",
    "ModelInput",
    "ModelRequest",
    "OptimStepRequest",
    "SampleRequest",
    "SamplingParams",
    "SaveWeightsRequest",
    "SessionHeartbeatRequest",
    "TinkerBuiltinLoss",
    "TinkerRequest",
    "WeightsInfoRequest",
    "WeightsKind",
]
