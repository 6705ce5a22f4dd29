"""The containers of the Tinker primitives, already decoded from the wire.

Field names and defaults follow the tinker SDK 0.38.0 (`tinker.types.Datum`, `AdamParams`,
`SamplingParams`, `ForwardBackwardOutput`, `SampledSequence`, `SampleResponse`); the API layer
turns its protobuf / JSON bodies into these and back. Arrays are numpy so this module needs no
torch.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

import numpy as np

StopReason = Literal["stop", "length"]


@dataclass(frozen=True)
class Datum:
    """One sequence of a forward / forward_backward call.

    tokens: the model input (the text chunks of Tinker's `ModelInput` concatenated); position i
        predicts `inputs["target_tokens"][i]`.
    inputs: `loss_fn_inputs` by name, dense and shaped (`target_tokens` int, the rest float),
        each of shape `[len(tokens)]`.
    """

    tokens: list[int]
    inputs: dict[str, np.ndarray]


@dataclass(frozen=True)
class AdamParams:
    """One AdamW step's hyperparameters (Tinker's defaults). `weight_decay` is decoupled (AdamW);
    `grad_clip_norm` > 0 clips the global gradient norm to it, 0 does not clip."""

    learning_rate: float = 1e-4
    beta1: float = 0.9
    beta2: float = 0.95
    eps: float = 1e-12
    weight_decay: float = 0.0
    grad_clip_norm: float = 0.0


@dataclass(frozen=True)
class SamplingParams:
    """How `sample` draws (Tinker's defaults).

    max_tokens: at most this many new tokens (None: Tinker leaves it to the server; the resident
        model then needs it, see `ResidentModel.sample`).
    top_k: -1 for no limit. seed: None draws from a fresh generator.
    stop: None stops at the model's EOS; a list of token ids stops at exactly those ids; a list of
        strings stops once the decoded completion contains one of them (and at EOS); `[]` never
        stops before `max_tokens`, not even at EOS.
    """

    max_tokens: int | None = None
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = -1
    seed: int | None = None
    stop: list[str] | list[int] | None = None


@dataclass
class ForwardResult:
    """Per datum (in order) the loss's output arrays, each `[len(tokens)]`: at least `logprobs`
    (log π_θ of the targets under the weights the call ran with) and `elementwise_loss` (each
    token's term of the summed loss). `metrics` keys carry Tinker's reduction suffix
    (`loss:sum`, `is/ess:mean`, `clip/ratio_max:max`), which the SDK uses to merge the chunks of
    one call."""

    outputs: list[dict[str, np.ndarray]]
    metrics: dict[str, float] = field(default_factory=dict)


@dataclass
class SampledSequence:
    """One completion: its tokens, the engine's log μ of each, and why it ended."""

    tokens: list[int]
    logprobs: list[float]
    stop_reason: StopReason


@dataclass
class SampleResult:
    """`num_samples` completions of one prompt; `prompt_logprobs` (when asked) has one entry per
    prompt token, None for the first (nothing predicts it)."""

    sequences: list[SampledSequence]
    prompt_logprobs: list[float | None] | None = None
