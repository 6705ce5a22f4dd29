"""The rollout engine's own weight copy at an inference precision (fp32 | bf16 | fp8).

Owns how the engine's weights differ from the trainer's, which is what makes the training–inference
mismatch of paper-spec §1 (the π_θold / μ_θold factor of Eq. 6) real and tunable on a CPU:

- fp32: an exact copy (the "no mismatch" control: μ logprobs equal the trainer's to ~1e-6);
- bf16: every floating tensor cast to bfloat16;
- fp8: the weight matrices of the linear and expert layers fake-quantized to float8_e4m3fn with one
  absmax scale per output channel (as fp8 inference kernels do), then held in bfloat16, the compute
  dtype. Embeddings, the LM head, norms and routers stay in bfloat16, as fp8 serving stacks
  leave them unquantized.
"""

from __future__ import annotations

import copy

import torch
from torch import nn

from keel_worker.engines.base import Precision

FP8_MAX = torch.finfo(torch.float8_e4m3fn).max  # 448
PRECISIONS: tuple[Precision, ...] = ("fp32", "bf16", "fp8")


def compute_dtype(precision: Precision) -> torch.dtype:
    if precision not in PRECISIONS:
        raise ValueError(f"unknown precision {precision!r}; expected one of {PRECISIONS}")
    return torch.float32 if precision == "fp32" else torch.bfloat16


def fake_quantize_fp8(weight: torch.Tensor) -> torch.Tensor:
    """Round `weight` to float8_e4m3fn with a per-output-channel (last dim) absmax scale.

    Returns float32 values on the fp8 grid times the scale; the caller casts to its compute dtype.
    """
    weight_f32 = weight.detach().float()
    scale = weight_f32.abs().amax(dim=-1, keepdim=True).clamp(min=1e-12) / FP8_MAX
    return (weight_f32 / scale).to(torch.float8_e4m3fn).float() * scale


def make_engine_copy(model: nn.Module, precision: Precision) -> nn.Module:
    """A frozen, eval-mode copy of `model` holding the weights at `precision`.

    Copy before hooking: `copy.deepcopy` also copies forward hooks, so the trainer must not be
    inside a RoutingReplay context when the engine is built.
    """
    engine_model = copy.deepcopy(model).eval()
    engine_model.to(compute_dtype(precision))
    engine_model.requires_grad_(False)
    copy_weights(engine_model, model, precision)
    return engine_model


@torch.no_grad()
def copy_weights(engine_model: nn.Module, source: nn.Module, precision: Precision) -> None:
    """Overwrite the engine copy in place with `source`'s weights at `precision`."""
    quantized = _fp8_parameter_names(engine_model) if precision == "fp8" else set()
    source_params = dict(source.named_parameters())
    for name, param in engine_model.named_parameters():
        value = source_params[name]
        if name in quantized:
            value = fake_quantize_fp8(value)
        param.copy_(value)
    source_buffers = dict(source.named_buffers())
    for name, buffer in engine_model.named_buffers():
        if name in source_buffers and buffer.is_floating_point():
            buffer.copy_(source_buffers[name])


def _fp8_parameter_names(model: nn.Module) -> set[str]:
    """Matrices that fp8 inference quantizes: linear and expert weights, not embeddings/heads."""
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
