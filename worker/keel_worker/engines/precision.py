"""The rollout engine's own weight copy at an inference precision.

Owns how the engine's weights differ from the trainer's, which is what makes the training–inference
mismatch of paper-spec §1 (the π_θold / μ_θold factor of Eq. 6) real and tunable on a CPU:

- fp32: an exact copy (the "no mismatch" control: μ logprobs equal the trainer's to ~1e-6);
- bf16: every floating tensor cast to bfloat16, computed in bfloat16;
- fp8: the weight matrices of the linear and expert layers fake-quantized to float8_e4m3fn with one
  absmax scale per output channel (as fp8 inference kernels do), computed in bfloat16;
- fp8_tensor: W8A8 as vLLM's `quantization="fp8"` serves a model: the same matrices on the
  float8_e4m3fn grid with ONE absmax scale per tensor, and the activations entering them
  quantized to fp8 with a dynamic per-tensor scale;
- int4: W4A16 as AWQ/GPTQ-served rollout models are: the same matrices rounded to 4-bit integers,
  asymmetric (a scale and a zero point) per group of `INT4_GROUP` input elements (AWQ's default;
  a row shorter than that is one group), activations in bfloat16.

fp8_tensor and int4 compute in float32 on values rounded to their formats (weights once,
activations by a forward pre-hook on every quantized linear and expert module), so the mismatch
they create is the same on every CPU, whatever its bf16 support. The fused expert modules of
transformers compute their inner (down-projection) input themselves; it is rounded only through
the weights. Embeddings, the LM head, norms and routers are never quantized, as serving stacks
leave them unquantized.
"""


from __future__ import annotations

from typing import get_args

import torch
from torch import nn

from keel_worker.engines.base import Precision
from keel_worker.engines.merged import plain_copy, policy_tensors

FP8_MAX = torch.finfo(torch.float8_e4m3fn).max  # 448
INT4_GROUP = 128  # AWQ's default q_group_size (GPTQ uses 32–128)
INT4_LEVELS = 15  # 16 levels: 0..15
PRECISIONS: tuple[Precision, ...] = get_args(Precision)
_BF16_COMPUTE = frozenset({"bf16", "fp8"})


def compute_dtype(precision: Precision) -> torch.dtype:
    if precision not in PRECISIONS:
        raise ValueError(f"unknown precision {precision!r}; expected one of {PRECISIONS}")
    return torch.bfloat16 if precision in _BF16_COMPUTE else torch.float32


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
    weight_f32 = weight.detach().float()
    group = min(group, weight_f32.shape[-1])
    if weight_f32.shape[-1] % group:
        raise ValueError(f"last dimension {weight_f32.shape[-1]} is not a multiple of {group}")
    grouped = weight_f32.reshape(*weight_f32.shape[:-1], -1, group)
    low = grouped.amin(dim=-1, keepdim=True).clamp(max=0.0)
    high = grouped.amax(dim=-1, keepdim=True).clamp(min=0.0)
    scale = ((high - low) / INT4_LEVELS).clamp(min=1e-12)
    zero = torch.round(-low / scale)
    levels = torch.clamp(torch.round(grouped / scale) + zero, 0, INT4_LEVELS)
    return ((levels - zero) * scale).reshape(weight_f32.shape)


def round_activation_fp8(x: torch.Tensor) -> torch.Tensor:
    """Dynamic per-tensor fp8 activation quantization (absmax scale of this very tensor)."""
    scale = x.detach().abs().amax().clamp(min=1e-12) / FP8_MAX
    return ((x / scale).to(torch.float8_e4m3fn).to(x.dtype) * scale).to(x.dtype)


def round_activation_bf16(x: torch.Tensor) -> torch.Tensor:
    return x.to(torch.bfloat16).to(x.dtype)


_ACTIVATION_ROUNDING = {"fp8_tensor": round_activation_fp8, "int4": round_activation_bf16}

_QUANTIZERS = {
    "fp8": fake_quantize_fp8,
    "fp8_tensor": fake_quantize_fp8_tensor,
    "int4": fake_quantize_int4,
}


def make_engine_copy(model: nn.Module, precision: Precision) -> nn.Module:
    """A frozen, eval-mode copy of `model` holding the weights at `precision`.

    A LoRA policy's copy is the plain model with its adapters merged. Copy before hooking:
    `copy.deepcopy` also copies forward hooks, so the trainer must not be inside a RoutingReplay
    context when the engine is built.
    """
    engine_model = plain_copy(model).eval()
    engine_model.to(compute_dtype(precision))
    engine_model.requires_grad_(False)
    copy_weights(engine_model, model, precision)
    _round_activations(engine_model, precision)
    return engine_model


def _round_activations(engine_model: nn.Module, precision: Precision) -> None:
    """Pre-hooks that round the floating inputs of every quantized module to `precision`'s
    activation format (none for fp32/bf16/fp8, whose compute dtype does it)."""
    rounding = _ACTIVATION_ROUNDING.get(precision)
    if rounding is None:
        return
    owners = {name.rsplit(".", 1)[0] for name in _quantized_parameter_names(engine_model)}

    def hook(_module, args):
        # Only the input activation: an expert module's later arguments are its routing.
        return (rounding(args[0]), *args[1:]) if args else args

    for name, module in engine_model.named_modules():
        if name in owners:
            module.register_forward_pre_hook(hook)


@torch.no_grad()
def copy_weights(engine_model: nn.Module, source: nn.Module, precision: Precision) -> None:
    """Overwrite the engine copy in place with `source`'s weights at `precision`; a LoRA
    policy's adapters are merged first (engines.merged), so the engine samples base + adapter."""
    quantize = _QUANTIZERS.get(precision)
    quantized = _quantized_parameter_names(engine_model) if quantize else set()
    params = dict(engine_model.named_parameters())
    buffers = {n: b for n, b in engine_model.named_buffers() if b.is_floating_point()}
    written: set[str] = set()
    for name, value in policy_tensors(source):
        if name in params:
            params[name].copy_(quantize(value) if name in quantized else value)
            written.add(name)
        elif name in buffers:
            buffers[name].copy_(value)
    if missing := sorted(params.keys() - written):
        raise ValueError(f"the policy has no weights for engine parameters {missing[:5]}")


def _quantized_parameter_names(model: nn.Module) -> set[str]:
    """Matrices that quantized inference rounds: linear and expert weights, not embeddings,
    heads or routers."""
    keep = {id(model.get_input_embeddings().weight)}
    output = model.get_output_embeddings()
    if output is not None:
        keep.add(id(output.weight))
    names: set[str] = set()
    for module_name, module in model.named_modules():
        if type(module).__name__.lower().endswith("router"):
            continue
        for param_name, param in module.named_parameters(recurse=False):
            if param.dim() >= 2 and id(param) not in keep and not isinstance(module, nn.Embedding):
                names.add(f"{module_name}.{param_name}" if module_name else param_name)
    return names


def bf16_is_native() -> bool:
    """Whether bfloat16 matmuls run in hardware here: CUDA, or a CPU with AMX or AVX512-BF16.

    On an AVX2-only CPU torch emulates them, 5–60× slower than fp32 (environment.md), so
    benchmarks and the vLLM tier pick fp32 there."""
    if torch.cuda.is_available():
        return torch.cuda.is_bf16_supported()
    return torch.cpu._is_amx_tile_supported() or torch.cpu._is_avx512_bf16_supported()
