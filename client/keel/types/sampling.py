"""Wire model of how a run's inference engine samples its rollouts: the engine, the precision of
its weights (the training–inference mismatch a run dials) and the sampling parameters.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from keel.types.common import Float, FrozenConfig, Int

# What each one does, and which serving stack does it: keel_worker/engines/precision.py.
RolloutPrecision = Literal[
    "fp32",
    "bf16",
    "fp8",
    "fp8_tensor",
    "int4",
    "int3",
    "int4_channel",
    "int4_router",
    "kv_fp8",
    "int4_kv_fp8",
    "int2",
    "int3_kv_fp8",
]


class RolloutConfig(FrozenConfig):
    """How the inference engine samples (the μ_θold of docs/concepts/algorithm.md §1.1)."""

    engine: Literal["hf", "vllm"] = Field(
        "hf",
        description="`hf`: transformers on the CPU, also on a CUDA worker (its decode loop is "
        "CPU-only; the trainer still uses the GPU); `vllm`: the GPU rollout engine.",
    )
    precision: RolloutPrecision = Field(
        "fp32",
        description="Inference weights: fp32 (exact copy), bf16, fp8 (float8_e4m3fn, a scale per "
        "output channel), fp8_tensor (one scale per tensor, fp8 activations, as vLLM's fp8), "
        "int4 (4-bit, a scale and zero point per group of 128 inputs, as AWQ/GPTQ), int3 (the "
        "same with 3 bits, as GPTQ bits=3), int4_channel (symmetric 4-bit, one scale per output "
        "channel, no groups), int4_router (int4 with the MoE router gates quantized too, as "
        "bitsandbytes 4-bit), kv_fp8 (fp32 weights, keys and values in an fp8 KV cache with "
        "scale 1, as vLLM's kv_cache_dtype=fp8), int4_kv_fp8 and int3_kv_fp8 (both), int2 (2-bit, "
        "groups of 16, as llama.cpp Q2_K). Every one but fp32, bf16 and fp8 is an emulation of "
        "the `hf` engine.",
    )
    max_new_tokens: Int = Field(
        64,
        ge=1,
        le=32768,
        description="Longest response in tokens (one that reaches it ends with finish reason "
        "`length`); also the held-out eval's limit and the constant divisor of "
        "`seq_mean_token_sum_norm`.",
    )
    temperature: Float = Field(
        1.0,
        gt=0.0,
        le=10.0,
        description="Sampling temperature T of the rollouts. The trainer divides its logits by "
        "the same T, so π_θ and μ are the same distribution; the held-out eval uses "
        "`eval_temperature`.",
    )
    top_p: Float = Field(
        1.0,
        gt=0.0,
        le=1.0,
        description="Nucleus sampling: draw only from the smallest set of most likely tokens "
        "whose probability mass reaches top_p; 1 = off. As with top_k, μ is reported from the "
        "full distribution.",
    )
    top_k: Int = Field(
        0,
        ge=0,
        le=1_000_000,
        description="Sample only among the k most likely tokens; 0 = off. Like top_p, it "
        "truncates what is drawn while μ is reported from the full distribution (vLLM's raw "
        "logprobs), a sampling mismatch no IS weight sees.",
    )
