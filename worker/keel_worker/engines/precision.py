"""The rollout engine's own weight copy at an inference precision.

Owns how the engine's weights differ from the trainer's, which is what makes the training–inference
mismatch of docs/concepts/algorithm.md §1.4 (the π_θold / μ_θold factor of Eq. 5 and Eq. 6) real and
tunable on a CPU:

- fp32: an exact copy (the "no mismatch" control: μ logprobs equal the trainer's to ~1e-6);
- bf16: every floating tensor rounded to bfloat16, computed in bfloat16;
- fp8: the weight matrices of the linear and expert layers fake-quantized to float8_e4m3fn with one
  absmax scale per output channel (as fp8 inference kernels do), computed in bfloat16;
- fp8_tensor: W8A8 as vLLM's `quantization="fp8"` serves a model: the same matrices on the
  float8_e4m3fn grid with ONE absmax scale per tensor, and the activations entering them
  quantized to fp8 with a dynamic per-tensor scale;
- int4: W4A16 as AWQ/GPTQ-served rollout models are: the same matrices rounded to 4-bit integers,
  asymmetric (a scale and a zero point) per group of `INT4_GROUP` input elements (AWQ's default;
  a row shorter than that is one group), activations in bfloat16;
- int3: W3A16, GPTQ's `bits=3` (and llama.cpp's 3-bit K-quants in spirit): the same groups with
  8 levels instead of 16, activations in bfloat16;
- int2: W2A16 as llama.cpp's Q2_K serves the big MoEs whose 2-bit files people run: asymmetric
  2-bit levels (a scale and a minimum) per block of `INT2_GROUP` = 16 inputs (Q2_K's sub-blocks;
  its 4-bit requantization of the scales themselves is left out), activations in bfloat16;
- int4_channel: W4A16 per output channel, symmetric (one absmax scale per row, levels −8..7, no
  zero point, no groups), as TensorRT-LLM's and vLLM's Marlin per-channel int4 weight-only
  kernels serve a model quantized without groups;
- int4_router: int4 with the MoE router gates quantized too, as a quantizer that treats the gate
  as one more linear layer does (bitsandbytes' `load_in_4bit` converts every `nn.Linear` but the
  LM head; AWQ, GPTQ and llama.cpp skip the gate): routing decisions made on 4-bit gate weights;
- kv_fp8: fp32 weights with the attention keys and values (after RoPE: what the cache holds)
  stored as float8_e4m3 with one per-tensor scale of `KV_FP8_SCALE` = 1, as vLLM's
  `kv_cache_dtype="fp8"` does for a checkpoint without calibrated k/v scales;
- int4_kv_fp8: int4 weights and the fp8 KV cache together, the usual memory-bound deployment of
  an AWQ model on vLLM; int3_kv_fp8: the same with GPTQ's 3-bit weights.

The weight-quantized precisions past fp8 compute in float32 on values rounded to their formats
(weights once at sync, activations by a forward pre-hook on every quantized linear and expert
module), so the mismatch they create is the same on every CPU, whatever its bf16 support. The
fused expert modules of transformers compute their inner (down-projection) input themselves; it
is rounded only through the weights. Embeddings, the LM head and norms are never quantized, and
routers only by int4_router, as serving stacks leave them unquantized.

bf16 and fp8 compute in bfloat16 only where the machine does so natively
(`engines.hardware.device_profile`: advertised and measured at least as fast as fp32). Elsewhere
(an AVX2-only CPU, where torch's bf16 GEMM runs 5–60× slower than fp32) the copy holds the same
bf16-rounded weights in float32, every module's floating input and outputs are rounded to
bfloat16 by hooks (what a bf16 forward stores between modules) and attention runs as the bf16
kernel computes it (`sdpa_bf16`); the products inside a matmul are exact in both cases (bf16 ×
bf16 fits fp32) and both accumulate in fp32, so the
emulated copy keeps the bf16 mismatch against the fp32 trainer (`tests/worker/engines/
test_precision.py` checks it against a native bf16 copy). `EmulatedBf16(linear=True)` does the same
for the trainer's `train_dtype="bf16"`: autocast's rounding of each matmul's inputs and output,
gradients included, computed in fp32.
"""

from __future__ import annotations

import math
from typing import Literal, get_args

import torch
import torch.nn.functional as F
from torch import nn
from torch.overrides import TorchFunctionMode
from transformers import AttentionInterface
from transformers.integrations.sdpa_attention import sdpa_attention_forward
from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS, AttentionMaskInterface

from keel.types.jobs import ComputeChoice, DeviceProfile, JobRuntime
from keel_worker.engines.base import Precision
from keel_worker.engines.hardware import device_profile
from keel_worker.engines.merged import aliasing_copy, plain_copy, policy_tensors
from keel_worker.engines.quantize import (
    ACTIVATION_ROUNDING,
    QUANTIZERS,
    round_activation_bf16,
    round_kv_fp8,
)

PRECISIONS: tuple[Precision, ...] = get_args(Precision)
_BF16_COMPUTE = frozenset({"bf16", "fp8"})


def compute_dtype(precision: Precision, *, bf16_native: bool) -> torch.dtype:
    """The dtype the engine copy computes in: bf16 for bf16/fp8 on a bf16-native machine."""
    if precision not in PRECISIONS:
        raise ValueError(f"unknown precision {precision!r}; expected one of {PRECISIONS}")
    return torch.bfloat16 if precision in _BF16_COMPUTE and bf16_native else torch.float32


def engine_bf16_native(precision: Precision) -> bool:
    """Whether the CPU the `hf` engine samples on computes `precision` in native bf16 (measured
    only for the precisions that compute in bf16)."""
    return precision in _BF16_COMPUTE and device_profile("cpu").bf16_native


def compute_report(
    *, rollout_engine: str, precision: Precision, train_dtype: str, train_device: str
) -> JobRuntime:
    """The compute dtypes this process uses for a run's rollouts (`rollout_engine` at
    `precision`) and training (`train_dtype` on `train_device`), with the device profiles they
    were chosen from (the `hf` engine samples on the CPU, `vllm` on CUDA where there is one)."""
    train_type = torch.device(train_device).type
    if rollout_engine == "vllm":  # vLLM computes where it runs: CUDA, or its CPU backend
        rollout_device = "cuda" if torch.cuda.is_available() else "cpu"
        rollout_native = precision in _BF16_COMPUTE and device_profile(rollout_device).bf16_native
    else:
        rollout_device, rollout_native = "cpu", engine_bf16_native(precision)
    rollout_dtype = compute_dtype(precision, bf16_native=rollout_native)
    train_bf16 = train_dtype == "bf16" and device_profile(train_device).bf16_native
    devices = {"cpu", train_device} | ({"cuda"} if rollout_device == "cuda" else set())
    return JobRuntime(
        rollout=ComputeChoice(
            device=rollout_device, requested=precision, compute_dtype=_DTYPE_NAMES[rollout_dtype]
        ),
        training=ComputeChoice(
            device=train_type,
            requested=train_dtype,
            compute_dtype="bf16" if train_bf16 else "fp32",
        ),
        devices=[DeviceProfile(**p.to_json()) for p in _distinct_profiles(devices)],
    )


_DTYPE_NAMES = {torch.float32: "fp32", torch.bfloat16: "bf16"}


def _distinct_profiles(devices: set[str]):
    """One profile per device ("cuda" and "cuda:0" are the same one)."""
    profiles = {}
    for name in sorted(devices):
        profile = device_profile(name)
        profiles.setdefault(profile.device, profile)
    return list(profiles.values())


_QUANTIZED_ROUTERS = frozenset({"int4_router"})
_FP8_KV_CACHE = frozenset({"kv_fp8", "int4_kv_fp8", "int3_kv_fp8"})


def make_engine_copy(
    model: nn.Module,
    precision: Precision,
    *,
    bf16_native: bool | None = None,
    share: bool = False,
) -> nn.Module:
    """A frozen, eval-mode copy of `model` holding the weights at `precision`.

    A LoRA policy's copy is the plain model with its adapters merged. `bf16_native` says
    whether bf16/fp8 compute in native bfloat16 or emulate it in float32; None measures the CPU
    (`engine_bf16_native`). `share` (fp32 only): the copy's parameters alias `model`'s storage
    where that is exact (`copy_weights`' "alias"); its modules are its own either way. Copy
    before hooking: `copy.deepcopy` also copies forward hooks, so the trainer must not be inside
    a RoutingReplay context when the engine is built.
    """
    if share and precision != "fp32":
        raise ValueError(f"only an fp32 engine can share the trainer's weights, not {precision}")
    if bf16_native is None:
        bf16_native = engine_bf16_native(precision)
    engine_model = (aliasing_copy(model) if share else plain_copy(model)).eval()
    engine_model.to(compute_dtype(precision, bf16_native=bf16_native))
    engine_model.requires_grad_(False)
    copy_weights(engine_model, model, precision, write="alias" if share else "in_place")
    if precision in _BF16_COMPUTE and not bf16_native:
        _emulate_bf16_storage(engine_model)
    else:
        _round_activations(engine_model, precision)
    if precision in _FP8_KV_CACHE:
        _store_kv_fp8(engine_model)
    return engine_model


def _store_kv_fp8(engine_model: nn.Module) -> None:
    """Attention that reads its keys and values from an fp8 cache (`FP8_KV_SDPA`)."""
    if engine_model.config._attn_implementation != "sdpa":
        raise ValueError(
            "kv_fp8 rounds the keys and values inside sdpa attention; this model uses "
            f"{engine_model.config._attn_implementation!r}"
        )
    engine_model.set_attn_implementation(FP8_KV_SDPA)


def _fp8_kv_sdpa_attention(module, query, key, value, attention_mask, **kwargs):
    """transformers' sdpa attention on keys and values rounded as an fp8 KV cache stores them
    (the query and the softmax stay fp32, as vLLM's fp8-cache kernels dequantize on read)."""
    return sdpa_attention_forward(
        module, query, round_kv_fp8(key), round_kv_fp8(value), attention_mask, **kwargs
    )


FP8_KV_SDPA = "keel_fp8_kv_sdpa"
AttentionInterface.register(FP8_KV_SDPA, _fp8_kv_sdpa_attention)
AttentionMaskInterface.register(FP8_KV_SDPA, ALL_MASK_ATTENTION_FUNCTIONS["sdpa"])


def _emulate_bf16_storage(engine_model: nn.Module) -> None:
    """Round what a bf16 forward stores to bfloat16: every module's first floating input and its
    floating outputs (hooks), and attention as the bf16 kernel computes it (`sdpa_bf16`, through
    an attention implementation of its own); a float32 copy of the bf16-rounded weights computes
    in between. Module hooks, not a torch function mode around the whole forward: a mode
    dispatches every torch call through Python, which made a SmolLM2 rollout 60 % slower."""

    def pre_hook(_module, args):
        if args and isinstance(args[0], torch.Tensor) and args[0].is_floating_point():
            return (round_activation_bf16(args[0]), *args[1:])
        return None

    def hook(_module, _args, output):
        return _round_floating(output)

    for module in engine_model.modules():
        module.register_forward_pre_hook(pre_hook)
        module.register_forward_hook(hook)
    if engine_model.config._attn_implementation == "sdpa":
        engine_model.set_attn_implementation(BF16_SDPA)


def _bf16_sdpa_attention(module, query, key, value, attention_mask, **kwargs):
    """transformers' sdpa attention with `sdpa_bf16` in place of the fp32 kernel."""
    with EmulatedBf16(linear=False):
        return sdpa_attention_forward(module, query, key, value, attention_mask, **kwargs)


BF16_SDPA = "keel_bf16_sdpa"
AttentionInterface.register(BF16_SDPA, _bf16_sdpa_attention)
# The same masks as sdpa (padding included); an unregistered name would get none at all.
AttentionMaskInterface.register(BF16_SDPA, ALL_MASK_ATTENTION_FUNCTIONS["sdpa"])


def _round_floating(output):
    """`output` with its floating tensors rounded to bf16 (a tensor, or a tuple/list of them);
    anything else (a model output object, integer routes) is left as it is."""
    if isinstance(output, torch.Tensor):
        return round_activation_bf16(output) if output.is_floating_point() else output
    if type(output) in (tuple, list):
        return type(output)(_round_floating(x) for x in output)
    return output


def _round_activations(engine_model: nn.Module, precision: Precision) -> None:
    """Pre-hooks that round the floating inputs of every quantized module to `precision`'s
    activation format (none for fp32, nor for bf16/fp8 computed natively: their compute dtype
    does it)."""
    rounding = ACTIVATION_ROUNDING.get(precision)
    if rounding is None:
        return
    routers = precision in _QUANTIZED_ROUTERS
    owners = {
        name.rsplit(".", 1)[0] for name in _quantized_parameter_names(engine_model, routers=routers)
    }

    def hook(_module, args):
        # Only the input activation: an expert module's later arguments are its routing.
        return (rounding(args[0]), *args[1:]) if args else args

    for name, module in engine_model.named_modules():
        if name in owners:
            module.register_forward_pre_hook(hook)


WeightWrite = Literal["in_place", "alias", "private"]


@torch.no_grad()
def copy_weights(
    engine_model: nn.Module,
    source: nn.Module,
    precision: Precision,
    *,
    write: WeightWrite = "in_place",
) -> None:
    """Give the engine copy `source`'s weights at `precision`; a LoRA policy's adapters are
    merged first (engines.merged), so the engine samples base + adapter (bf16 and fp8 round to
    bfloat16 whether the copy holds bfloat16 or emulates it in float32).

    `write` says how a parameter takes its value:
    - "in_place": copied into the engine's own storage (an engine that shares nothing);
    - "alias": the parameter becomes a view of `source`'s tensor where that is exact (fp32,
      same dtype and device, a plain tensor; a LoRA layer's merged matrix is a fresh tensor the
      engine then holds alone), so `source`'s in-place updates reach the engine without a copy;
      elsewhere it gets a private copy;
    - "private": a fresh private copy, never a write into the storage the parameter held,
      which may be the trainer's: how a sharing engine loads weights that are not the trainer's.
    Floating buffers (rotary frequencies) are the engine's own and copied in place.
    """
    quantize = QUANTIZERS.get(precision)
    routers = precision in _QUANTIZED_ROUTERS
    quantized = _quantized_parameter_names(engine_model, routers=routers) if quantize else set()
    storage = torch.bfloat16 if precision in _BF16_COMPUTE else torch.float32
    params = dict(engine_model.named_parameters())
    buffers = {n: b for n, b in engine_model.named_buffers() if b.is_floating_point()}
    written: set[str] = set()
    for name, value in policy_tensors(source):
        if name in params:
            weight = (quantize(value) if name in quantized else value).to(storage)
            _write(params[name], weight, write)
            written.add(name)
        elif name in buffers:
            buffers[name].copy_(value.to(storage))
    if missing := sorted(params.keys() - written):
        raise ValueError(f"the policy has no weights for engine parameters {missing[:5]}")


def _write(param: nn.Parameter, weight: torch.Tensor, write: WeightWrite) -> None:
    if write == "in_place":
        param.copy_(weight)
    elif write == "alias" and _can_alias(param, weight):
        param.data = weight  # `weight` is `source`'s tensor itself: `.to` of its own dtype
    else:
        param.data = weight.to(device=param.device, dtype=param.dtype, copy=True)


def _can_alias(param: nn.Parameter, weight: torch.Tensor) -> bool:
    """Whether `param` can be `weight` itself: a plain tensor (not a sharded DTensor) of the
    same dtype, shape and device."""
    return (
        type(weight) is torch.Tensor
        and weight.dtype == param.dtype
        and weight.shape == param.shape
        and weight.device == param.device
    )


def _quantized_parameter_names(model: nn.Module, *, routers: bool = False) -> set[str]:
    """Matrices that quantized inference rounds: linear and expert weights, not embeddings,
    heads, nor routers unless `routers`."""
    keep = {id(model.get_input_embeddings().weight)}
    output = model.get_output_embeddings()
    if output is not None:
        keep.add(id(output.weight))
    names: set[str] = set()
    for module_name, module in model.named_modules():
        if type(module).__name__.lower().endswith("router") and not routers:
            continue
        for param_name, param in module.named_parameters(recurse=False):
            if param.dim() >= 2 and id(param) not in keep and not isinstance(module, nn.Embedding):
                names.add(f"{module_name}.{param_name}" if module_name else param_name)
    return names


def bf16_is_native() -> bool:
    """Whether bfloat16 matmuls run natively on the device this process computes on (CUDA if
    present, else the CPU): the measured device profile's verdict (`engines.hardware`). On an
    AVX2-only CPU torch emulates them, 5–60× slower than fp32 (environment.md), so benchmarks
    and the vLLM tier pick fp32 there."""
    return device_profile("cuda" if torch.cuda.is_available() else "cpu").bf16_native


class EmulatedBf16(TorchFunctionMode):
    """bf16 numerics computed in float32 (a torch function mode, entered like torch.autocast).

    Inside it, `scaled_dot_product_attention` runs as `sdpa_bf16`, and the inputs and output of
    every other matmul-like op (`_MATMULS`; with `linear=True` also `F.linear`, as bf16
    autocast casts the trainer's float32 weights) are rounded to bfloat16.
    The rounding is `x.to(bf16).to(x.dtype)`, whose backward rounds the gradient the same way,
    so a backward sees bf16-rounded operands as autocast's does; the weights themselves stay
    float32 (the master copy the optimizer updates), as under autocast.
    """

    def __init__(self, *, linear: bool) -> None:
        super().__init__()
        self.rounded = _MATMULS | {F.linear} if linear else _MATMULS

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func is F.scaled_dot_product_attention:
            return sdpa_bf16(*args, **kwargs)
        if func not in self.rounded:
            return func(*args, **kwargs)
        args = tuple(_round_floating(a) for a in args)
        kwargs = {k: _round_floating(v) for k, v in kwargs.items()}
        return _round_floating(func(*args, **kwargs))


_MATMULS = frozenset(
    {
        torch.matmul,
        torch.Tensor.matmul,
        torch.Tensor.__matmul__,
        torch.mm,
        torch.bmm,
        torch.addmm,
        torch.baddbmm,
    }
)


def sdpa_bf16(
    query, key, value, attn_mask=None, dropout_p=0.0, is_causal=False, scale=None, enable_gqa=False
):
    """`F.scaled_dot_product_attention` as the CPU's bf16 flash-attention kernel computes it
    (fp32 scores and softmax statistics, the unnormalized probabilities rounded to bf16 for the
    product with V, the output rounded), on float32 tensors holding bf16 values.

    Measured against the native kernel: bit-identical up to one kernel block of keys, a few
    percent of outputs one bf16 step apart beyond (its blockwise running max).
    """
    if dropout_p:
        raise ValueError("emulated bf16 attention has no dropout (the engine and trainer use none)")
    query, key, value = (round_activation_bf16(t) for t in (query, key, value))
    if enable_gqa:
        repeat = query.shape[-3] // key.shape[-3]
        key, value = key.repeat_interleave(repeat, -3), value.repeat_interleave(repeat, -3)
    scale = scale if scale is not None else query.shape[-1] ** -0.5
    scores = (query @ key.transpose(-1, -2)) * scale
    if is_causal:
        causal = torch.ones(scores.shape[-2:], dtype=torch.bool, device=scores.device)
        scores = scores.masked_fill(~causal.tril(scores.shape[-1] - scores.shape[-2]), -math.inf)
    if attn_mask is not None:
        if attn_mask.dtype == torch.bool:
            scores = scores.masked_fill(~attn_mask, -math.inf)
        else:
            scores = scores + attn_mask
    # A fully masked row (a left-padding query) gives zeros, not NaN, as the kernel's does.
    peak = scores.amax(dim=-1, keepdim=True).clamp(min=torch.finfo(scores.dtype).min)
    unnormalized = torch.exp(scores - peak)
    total = unnormalized.sum(dim=-1, keepdim=True).clamp(min=torch.finfo(scores.dtype).tiny)
    return round_activation_bf16((round_activation_bf16(unnormalized) @ value) / total)
