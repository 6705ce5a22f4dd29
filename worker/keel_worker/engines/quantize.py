"""How serving stacks round numbers, as fake quantization in float32: weight quantizers (fp8 per
row or per tensor, group-wise int4/int3/int2, per-channel int4), activation rounding, and the
fp8 KV cache's rounding, with the precision names that use each (`QUANTIZERS`,
`ACTIVATION_ROUNDING`). `engines.precision` builds an engine copy from them.
"""

from __future__ import annotations

import torch

FP8_MAX = torch.finfo(torch.float8_e4m3fn).max  # 448
INT4_GROUP = 128  # AWQ's default q_group_size (GPTQ uses 32–128)
INT4_LEVELS = 15  # 16 levels: 0..15
INT3_LEVELS = 7  # 8 levels: 0..7
INT2_LEVELS = 3  # 4 levels: 0..3
INT2_GROUP = 16  # llama.cpp Q2_K's sub-block
# vLLM's k_scale = v_scale default when the checkpoint carries none: the cache holds the values
# themselves on the e4m3 grid (relative step 2^-3, subnormal below 2^-6).
KV_FP8_SCALE = 1.0


def fake_quantize_fp8(weight: torch.Tensor) -> torch.Tensor:
    """Round `weight` to float8_e4m3fn with a per-output-channel (last dim) absmax scale.

    Returns float32 values on the fp8 grid times the scale; the caller casts to its compute dtype.
    """
    weight_f32 = weight.detach().float()
    scale = weight_f32.abs().amax(dim=-1, keepdim=True).clamp(min=1e-12) / FP8_MAX
    return (weight_f32 / scale).to(torch.float8_e4m3fn).float() * scale


def fake_quantize_fp8_tensor(weight: torch.Tensor) -> torch.Tensor:
    """Round `weight` to float8_e4m3fn with one absmax scale for the whole tensor."""
    weight_f32 = weight.detach().float()
    scale = weight_f32.abs().amax().clamp(min=1e-12) / FP8_MAX
    return (weight_f32 / scale).to(torch.float8_e4m3fn).float() * scale


def fake_quantize_int4(weight: torch.Tensor, group: int = INT4_GROUP) -> torch.Tensor:
    """Round `weight` to asymmetric 4-bit integers per group of `group` input elements.

    Each group g of the last dimension gets scale s = (max − min) / 15 and zero point
    z = round(−min / s); a value w becomes s · (clamp(round(w / s) + z, 0, 15) − z).
    """
    return fake_quantize_grouped(weight, group=group, levels=INT4_LEVELS)


def fake_quantize_int3(weight: torch.Tensor, group: int = INT4_GROUP) -> torch.Tensor:
    """`fake_quantize_int4` with 3 bits: s = (max − min) / 7, levels clamped to 0..7."""
    return fake_quantize_grouped(weight, group=group, levels=INT3_LEVELS)


def fake_quantize_int2(weight: torch.Tensor, group: int = INT2_GROUP) -> torch.Tensor:
    """`fake_quantize_int4` with 2 bits on groups of 16: s = (max − min) / 3, levels 0..3."""
    return fake_quantize_grouped(weight, group=group, levels=INT2_LEVELS)


def fake_quantize_int4_channel(weight: torch.Tensor) -> torch.Tensor:
    """Round `weight` to symmetric 4-bit integers with one scale per output channel (row of the
    last dimension): s = absmax / 7, w becomes s · clamp(round(w / s), −8, 7). Without groups one
    outlier sets the step of its whole row, and −8 is reached only by values below −absmax."""
    weight_f32 = weight.detach().float()
    scale = weight_f32.abs().amax(dim=-1, keepdim=True).clamp(min=1e-12) / 7
    return torch.clamp(torch.round(weight_f32 / scale), -8, 7) * scale


def fake_quantize_grouped(weight: torch.Tensor, *, group: int, levels: int) -> torch.Tensor:
    """Asymmetric integer rounding to `levels` + 1 levels per group of `group` input elements."""
    weight_f32 = weight.detach().float()
    group = min(group, weight_f32.shape[-1])
    if weight_f32.shape[-1] % group:
        raise ValueError(f"last dimension {weight_f32.shape[-1]} is not a multiple of {group}")
    grouped = weight_f32.reshape(*weight_f32.shape[:-1], -1, group)
    low = grouped.amin(dim=-1, keepdim=True).clamp(max=0.0)
    high = grouped.amax(dim=-1, keepdim=True).clamp(min=0.0)
    scale = ((high - low) / levels).clamp(min=1e-12)
    zero = torch.round(-low / scale)
    rounded = torch.clamp(torch.round(grouped / scale) + zero, 0, levels)
    return ((rounded - zero) * scale).reshape(weight_f32.shape)


def round_activation_fp8(x: torch.Tensor) -> torch.Tensor:
    """Dynamic per-tensor fp8 activation quantization (absmax scale of this very tensor)."""
    scale = x.detach().abs().amax().clamp(min=1e-12) / FP8_MAX
    return ((x / scale).to(torch.float8_e4m3fn).to(x.dtype) * scale).to(x.dtype)


def round_activation_bf16(x: torch.Tensor) -> torch.Tensor:
    return x.to(torch.bfloat16).to(x.dtype)


def round_kv_fp8(x: torch.Tensor, scale: float = KV_FP8_SCALE) -> torch.Tensor:
    """A key or value tensor as an fp8 KV cache stores it: x / scale on the float8_e4m3fn grid
    (saturated at ±448, as vLLM's cache write clamps), times the scale. Elementwise with a fixed
    scale, so a token's cached key rounds the same at every decoding step and a second rounding
    changes nothing."""
    clamped = (x / scale).clamp(-FP8_MAX, FP8_MAX)
    return (clamped.to(torch.float8_e4m3fn).to(x.dtype) * scale).to(x.dtype)


ACTIVATION_ROUNDING = {
    "fp8_tensor": round_activation_fp8,
    "int4": round_activation_bf16,
    "int3": round_activation_bf16,
    "int4_channel": round_activation_bf16,
    "int4_router": round_activation_bf16,
    "int4_kv_fp8": round_activation_bf16,
    "int2": round_activation_bf16,
    "int3_kv_fp8": round_activation_bf16,
}

QUANTIZERS = {
    "fp8": fake_quantize_fp8,
    "fp8_tensor": fake_quantize_fp8_tensor,
    "int4": fake_quantize_int4,
    "int3": fake_quantize_int3,
    "int4_channel": fake_quantize_int4_channel,
    "int4_router": fake_quantize_int4,
    "int4_kv_fp8": fake_quantize_int4,
    "int2": fake_quantize_int2,
    "int3_kv_fp8": fake_quantize_int3,
}
